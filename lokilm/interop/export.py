"""`loki export`: a run's checkpoint as a Hugging Face model folder that transformers, lm-eval's `hf` backend
and serving engines load: LlamaForCausalLM for RoPE models, LokiLM remote code for ALiBi and learned positions."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from tokenizers import processors

from lokilm.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, load_model
from lokilm.checkpoint.single import verify
from lokilm.config import to_dict
from lokilm.errors import LokiError
from lokilm.interop.llama import llama_config, to_llama_name
from lokilm.model.config import ModelConfig
from lokilm.rundir import RunDir
from lokilm.tokenizer import EOT, load_tokenizer

REMOTE_CODE = Path(__file__).with_name("modeling_lokilm.py")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Model settings an export reproduces; anything else a run sets (options added to the model later, such as
# weight sharing) must be at its default, or the export would silently compute something else.
EXPORTED_FIELDS = {"vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "context_length", "position",
                   "rope_theta", "tie_embeddings", "norm_eps", "init_std",
                   "dropout", "attention"}  # the last two are training and kernel choices, not part of the function


def chat_template_file(tokenizer_path: Path) -> Path:
    """Where an imported run keeps its tokenizer's Hugging Face settings (the chat template among them)."""
    return tokenizer_path.with_name("tokenizer_config.json")


def find_checkpoint(run: RunDir, step: int | None) -> Checkpoint:
    if step is None:
        ckpt = latest_checkpoint(run.checkpoints)
        if ckpt is None:
            raise LokiError(f"{run.root} has no valid checkpoint (train one with `loki train`)")
        return ckpt
    for path in list_checkpoints(run.checkpoints):
        if path.name == f"step_{step:08d}":
            problem = verify(path)
            if problem:
                raise LokiError(f"checkpoint {path} is corrupt: {problem}")
            state = json.loads((path / "state.json").read_text())
            return Checkpoint(path=path, step=int(state["step"]), state=state)
    raise LokiError(f"{run.root} has no checkpoint at step {step}")


def check_exportable(m: ModelConfig) -> None:
    """Refuse, by name, model options the exported architecture would not compute."""
    defaults = to_dict(ModelConfig())
    share = getattr(m, "share", "none")
    if share not in (None, "none"):
        raise LokiError(f"model.share={share!r}: weight-shared models cannot be exported yet (Llama and the LokiLM "
                        "remote code hold one set of weights per layer)")
    extra = [f"model.{k}={v!r}" for k, v in to_dict(m).items() if k not in EXPORTED_FIELDS and v != defaults.get(k)]
    if m.position not in ("rope", "alibi", "learned"):
        extra.insert(0, f"model.position={m.position!r} (exported: rope, alibi, learned)")
    if extra:
        raise LokiError(f"the export cannot reproduce {', '.join(extra)} (only the plain architecture is exported)")


def _tokenizer_files(run: RunDir, out: Path, context: int) -> tuple[int, int]:
    """tokenizer.json with EOT put in front of every encoded text (lokilm documents start after EOT, so
    `AutoTokenizer` and lm-eval's `hf` backend feed the model what lokilm does), and tokenizer_config.json."""
    tok = load_tokenizer(run.tokenizer)
    eot = tok.token_to_id(EOT)
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B",
                                                       special_tokens=[(EOT, eot)])
    tok.save(str(out / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT, "pad_token": EOT,
                "model_max_length": context, "clean_up_tokenization_spaces": False}
    imported = chat_template_file(run.tokenizer)
    if imported.is_file():  # an imported model's chat template and its own end-of-turn tokens
        theirs = json.loads(imported.read_text())
        settings.update({k: theirs[k] for k in ("chat_template", "eos_token") if theirs.get(k)})
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps({k: settings[k] for k in ("bos_token", "eos_token", "pad_token")}))
    return eot, tok.get_vocab_size()


def export(run_dir: str | Path, out_dir: str | Path, step: int | None = None, dtype: str = "float32",
           force: bool = False) -> Path:
    """Write the run's checkpoint (`step`, default the newest) to `out_dir` as a Hugging Face model folder."""
    if dtype not in DTYPES:
        raise LokiError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise LokiError(f"{out} already exists; pass --force to overwrite it")
    run = RunDir.open(run_dir)
    _check_replaceable(out, run.root)
    ckpt = find_checkpoint(run, step)
    try:
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        return _write(run, ckpt, out, dtype, run_dir)
    except (OSError, SafetensorError) as e:  # a full disk, a read-only folder: nothing is left half-written
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
        raise LokiError(f"the export to {out} failed ({reason})") from None


def _check_replaceable(out: Path, run_root: Path) -> None:
    """--force replaces an earlier export, never the run being exported, a folder holding it, or another run."""
    target, root = out.resolve(), run_root.resolve()
    if target == root or target in root.parents:
        raise LokiError(f"{out} is the run directory or holds it ({run_root}); export to another folder")
    if out.exists() and not out.is_dir():
        raise LokiError(f"{out} is a file, not a model folder; --force only replaces an earlier export")
    if out.is_dir() and ((out / "config.yaml").is_file() or (out / "checkpoints").is_dir()):
        raise LokiError(f"{out} is a lokilm run directory, not an export; --force only replaces an earlier export")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise LokiError(f"{out} is not a model folder (no config.json); --force only replaces an earlier export")


def _clean_stale(parent: Path) -> None:
    """Remove the scratch folders of exports that were killed (kill -9 skips the cleanup): each is named with
    its process id, and only those whose process is gone are removed, so a running export keeps its own."""
    for path in parent.glob(".loki-export-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _write(run: RunDir, ckpt: Checkpoint, out: Path, dtype: str, run_dir: str | Path) -> Path:
    _clean_stale(out.resolve().parent)
    with tempfile.TemporaryDirectory(prefix=f".loki-export-{os.getpid()}-", dir=out.resolve().parent) as tmp:
        tmp = Path(tmp)
        if ckpt.sharded:  # consolidated on the way, into a scratch run directory
            from lokilm.checkpoint.sharded import consolidate

            consolidate(run_dir, ckpt.step, tmp / "consolidated")
            model, _ = load_model(tmp / "consolidated", "cpu")
        else:
            model, _ = load_model(run_dir, "cpu", ckpt)
        m = model.cfg
        check_exportable(m)
        folder = tmp / "model"
        folder.mkdir()
        eot, n_tokens = _tokenizer_files(run, folder, m.context_length)
        tensors = {}
        for name, t in model.state_dict().items():
            if m.tie_embeddings and name == "head.weight":
                continue  # tied: stored once, as the embedding, and tied again on load
            t = t.detach().to(DTYPES[dtype]).contiguous().clone()
            tensors[to_llama_name(name) if m.position == "rope" else name] = t
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        if m.position == "rope":
            config = llama_config(m, bos=eot, eos=eot)
        else:
            config = {"architectures": ["LokiLMForCausalLM"], "model_type": "lokilm",
                      "auto_map": {"AutoConfig": "modeling_lokilm.LokiLMConfig",
                                   "AutoModelForCausalLM": "modeling_lokilm.LokiLMForCausalLM"},
                      **{k: getattr(m, k) for k in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff",
                                                    "context_length", "position", "rope_theta", "norm_eps", "init_std")},
                      "tie_word_embeddings": m.tie_embeddings, "bos_token_id": eot, "eos_token_id": eot,
                      "pad_token_id": eot, "use_cache": True}
            shutil.copy(REMOTE_CODE, folder / REMOTE_CODE.name)
        config["dtype"] = dtype
        config["lokilm"] = {"run": Path(run_dir).resolve().name, "step": ckpt.step}
        (folder / "config.json").write_text(json.dumps(config, indent=1))
        generation = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "max_length": m.context_length}
        if n_tokens < m.vocab_size:  # padded vocabulary rows no text maps to: lokilm never samples them
            generation["suppress_tokens"] = list(range(n_tokens, m.vocab_size))
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=1))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        folder.rename(out)
    return out
