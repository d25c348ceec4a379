"""`loki import`: a local Hugging Face Llama-family folder or a GGUF file (read through transformers + gguf,
dequantised) as a lokilm run directory: config.yaml, tokenizer.json, one checkpoint at step 0."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from lokilm.checkpoint.single import save_checkpoint
from lokilm.config import Config, to_dict
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.interop.export import EXPORTED_FIELDS, chat_template_file
from lokilm.interop.llama import check_weights_fit, checked_model, from_llama_name, model_config_from_llama
from lokilm.model import Transformer
from lokilm.rundir import RunDir
from lokilm.tokenizer import EOT

# what a Hugging Face tokenizer_config.json keeps that lokilm's chat needs
TOKENIZER_SETTINGS = ("chat_template", "bos_token", "eos_token", "pad_token")


def save_as_run(model: Transformer, tokenizer: Tokenizer, run_dir: str | Path, cfg: Config | None = None,
                tokenizer_settings: dict | None = None) -> RunDir:
    """Write `model` as a lokilm run directory (config.yaml, tokenizer.json, checkpoints/step_00000000) that
    `loki generate`, `loki eval` and `loki train` (continued pretraining, from step 0) read."""
    from lokilm.train.optimizer import build_optimizer

    if tokenizer.token_to_id(EOT) is None:
        raise LokiError(f"the tokenizer has no {EOT} token, which lokilm uses to separate documents; it cannot be "
                        "imported as it is")
    cfg = cfg or Config()
    cfg.model = model.cfg
    cfg.run_dir = str(run_dir)
    cfg.tokenizer.path = None
    cfg.tokenizer.vocab_size = tokenizer.get_vocab_size()
    run = RunDir(cfg)
    run.root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(run.tokenizer))
    if tokenizer_settings:
        chat_template_file(run.tokenizer).write_text(json.dumps(tokenizer_settings, indent=1))
    run.save_config()
    # An optimiser with no state yet: continued pretraining starts its moments from zero, at step 0.
    optimizer = build_optimizer(model, cfg.train)
    # A run that has not trained yet, in the trainer's checkpoint layout (lokilm/train/checkpointing.py): the loop's
    # counters at zero and the data unit at the start of its order; the other units start from their defaults.
    state = {"step": 0, "loop": {"step": 0, "tokens": 0, "rollbacks": 0, "elapsed_s": 0.0},
             "units": {"data": {"samples": 0, "data_seed": cfg.train.seed}}, "config": to_dict(cfg),
             "tokenizer_sha256": sha256_file(run.tokenizer), "imported": True}
    save_checkpoint(run.checkpoints, 0, model, optimizer, state, keep=1)
    return run


def _load_hf(source: Path):
    """(transformers model in fp32, its config as a dict, fast tokenizer) from a folder or a GGUF file."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if source.is_file():
        if source.suffix != ".gguf":
            raise LokiError(f"{source} is a file but not a .gguf file; give a GGUF file or a Hugging Face model folder")
        folder, kwargs = source.parent, {"gguf_file": source.name}
    elif source.is_dir():
        if not (source / "config.json").is_file():
            raise LokiError(f"{source} is not a Hugging Face model folder (no config.json)")
        folder, kwargs = source, {}
    else:
        raise LokiError(f"{source} does not exist")
    try:
        config = AutoConfig.from_pretrained(folder, **kwargs)
    except Exception as e:  # transformers and gguf raise many kinds for an unreadable or unknown file
        raise LokiError(f"{source} could not be read as a model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    m = model_config_from_llama(config.to_dict(), str(source))  # refuse by name before loading any weights
    files = [source] if source.is_file() else [p for p in source.iterdir() if p.suffix in (".safetensors", ".bin")]
    check_weights_fit(m, str(source), sum(p.stat().st_size for p in files))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the GGUF reader prints progress
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    except Exception as e:
        raise LokiError(f"{source} failed to load ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return hf.eval(), config.to_dict(), tok


def llama_to_lokilm(hf, config: dict, source: str) -> Transformer:
    """A lokilm Transformer holding exactly the weights of a transformers Llama model."""
    m = model_config_from_llama(config, source)
    model = Transformer(m)
    state = {}
    for name, t in hf.state_dict().items():
        ours = from_llama_name(name)
        if ours is not None:
            state[ours] = t.detach().to(torch.float32).clone()
    if m.tie_embeddings:
        state.pop("head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (m.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise LokiError(f"{source}: the weights do not fit a lokilm model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


def _lokilm_export(source: Path, config: dict) -> Transformer:
    """A folder `loki export` wrote with LokiLM remote code: its config and weights are lokilm's own, read
    directly (so importing it never runs the folder's Python file)."""
    fields = {k: config[k] for k in EXPORTED_FIELDS if k in config}
    m = checked_model(str(source), {**fields, "tie_embeddings": bool(config.get("tie_word_embeddings", False))})
    weights = source / "model.safetensors"
    check_weights_fit(m, str(source), weights.stat().st_size if weights.is_file() else 0)
    model = Transformer(m)
    try:
        state = {k: t.to(torch.float32) for k, t in load_file(str(source / "model.safetensors")).items()}
        model.load_state_dict(state, strict=not m.tie_embeddings)
    except (OSError, RuntimeError, SafetensorError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # torch: a heading, then the mismatches
        raise LokiError(f"{source}/model.safetensors does not hold this model's weights ({lines[min(1, len(lines) - 1)][:200]})") from None
    model.tie_weights()
    return model.eval()


IMPORTING = ".importing"


def import_model(source: str | Path, run_dir: str | Path, force: bool = False) -> RunDir:
    """Import a Hugging Face Llama-family folder or GGUF file into a new run directory."""
    source, out = Path(source), Path(run_dir)
    marker = out / IMPORTING  # written first and removed last: a folder holding it is an import that never finished
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()):  # .lock: the importing command's own
        if marker.exists():
            print(f"loki: note: {out} holds an import that did not finish (killed?); replacing it", file=sys.stderr)
        elif not force:
            raise LokiError(f"{out} already exists; pass --force to overwrite it")
        for p in out.iterdir():  # all but the lock this command holds
            if p.name != ".lock":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"importing {source} (pid {os.getpid()})\n")
    config_file = source / "config.json"
    config = json.loads(config_file.read_text()) if source.is_dir() and config_file.is_file() else {}
    if config.get("model_type") == "lokilm":
        from transformers import PreTrainedTokenizerFast

        model = _lokilm_export(source, config)
        settings_file = source / "tokenizer_config.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(source / "tokenizer.json"),
                                      **{k: settings[k] for k in TOKENIZER_SETTINGS if settings.get(k)})
    else:
        hf, config, tok = _load_hf(source)
        model = llama_to_lokilm(hf, config, str(source))
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise LokiError(f"{source}: its tokenizer ({type(tok).__name__}) has no tokenizers-library form; lokilm "
                        "needs a tokenizer.json")
    settings = {k: str(v) for k in TOKENIZER_SETTINGS if (v := getattr(tok, k, None))}
    run = save_as_run(model, Tokenizer.from_str(backend.to_str()), out, tokenizer_settings=settings)
    marker.unlink()
    return run
