"""Checkpoints that survive crashes: written atomically, verified by checksum, no pickle anywhere.

A checkpoint is a folder `step_NNNNNNNN/` holding
    model.safetensors      weights (tied tensors stored once)
    optimizer.safetensors  optimiser state tensors, keyed "state.<param index>.<name>"
    rng.safetensors        torch RNG states (CPU and CUDA)
    state.json             trainer state, optimiser param groups, the run's config
    manifest.json          sha256 and size of every file above (written last)
An FSDP run writes the model and optimiser as one torch distributed checkpoint in `dcp/` instead, and one
`rng_rank{r}.safetensors` per process (lokilm/parallel/dcp.py). DCP's `.metadata` is a pickle, so a sharded
checkpoint is a run's own working state, not a file to share: `loki checkpoint consolidate` turns it into
the single-file form.
It is built in a temporary folder and renamed into place, so a crash or a full disk mid-save leaves the
previous checkpoints untouched; loading checks every checksum and falls back to an older checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save

from lokilm.checkpoint.dcp_metadata import check_metadata
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file

MANIFEST = "manifest.json"
SHARDED = "dcp"  # the folder a sharded checkpoint keeps its model and optimiser in


class CheckpointError(LokiError):
    pass


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict  # state.json's content

    @property
    def sharded(self) -> bool:
        """Written by FSDP as a torch distributed checkpoint (lokilm/parallel/dcp.py) rather than single files."""
        return (self.path / SHARDED).is_dir()

    def load_model(self, model: torch.nn.Module) -> None:
        if self.sharded:
            raise CheckpointError(f"checkpoint {self.path} is sharded (written by an FSDP run); make it a single file "
                                  f"first: loki checkpoint consolidate {self.path.parent.parent}")
        try:
            missing, unexpected = load_model(model, str(self.path / "model.safetensors"), strict=False)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {self.path}: model.safetensors cannot be loaded ({e})") from None
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        try:
            tensors = load_file(str(self.path / "optimizer.safetensors"))
            state = _unflatten_optimizer_state(tensors, self.state.get("optimizer_quantized", {}))
            groups = self.state["optimizer_param_groups"]
            for group, current in zip(groups, optimizer.param_groups):
                for k, v in current.items():  # values the optimiser keeps as tensors (torchao: lr) go back as tensors
                    if isinstance(v, torch.Tensor) and k in group and not isinstance(group[k], torch.Tensor):
                        group[k] = torch.tensor(group[k], dtype=v.dtype, device=v.device)
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError, ImportError) as e:
            raise CheckpointError(f"checkpoint {self.path}: the optimiser state cannot be loaded ({e!r})") from None

    def rng_states(self) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.path / "rng.safetensors"))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {self.path}: rng.safetensors cannot be loaded ({e})") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, hashes: dict) -> None:
    """Write one file and record its checksum from the bytes in memory: no second read of the checkpoint (17 GB at
    1.4B parameters) just to hash it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    hashes[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


# Quantised optimiser states (torchao's 8-bit AdamW keeps its moments as OptimState8bit: uint8 codes, block scales
# and a code book) are tensor subclasses safetensors cannot write. They are stored as their inner tensors plus
# their attributes, and rebuilt on load, so a resumed 8-bit run continues from exactly the same moments. Only the
# classes named here are rebuilt: a checkpoint cannot make lokilm import and call anything else.
_QUANTIZED = {"OptimState8bit": "torchao.optim.subclass_8bit"}


def _flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    tensors, quantized = {}, {}
    for i, entries in state.items():
        for name, t in entries.items():
            key = f"state.{i}.{name}"
            cls = type(t).__name__
            if cls in _QUANTIZED:
                inner, (signed, dtype) = t.__tensor_flatten__()
                for attr in inner:
                    tensors[f"{key}@{attr}"] = getattr(t, attr).detach().contiguous().cpu()
                quantized[key] = {"class": cls, "signed": bool(signed), "dtype": str(dtype).removeprefix("torch.")}
            elif hasattr(t, "__tensor_flatten__"):
                raise CheckpointError(f"optimiser state {name} of parameter {i} is a {cls}, which lokilm cannot save")
            else:
                tensors[key] = torch.as_tensor(t).detach().contiguous().cpu()
    return tensors, quantized


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], quantized: dict) -> dict[int, dict]:
    import importlib

    state: dict[int, dict] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if "@" in key:
            base, attr = key.split("@", 1)
            parts.setdefault(base, {})[attr] = value
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    if set(parts) != set(quantized):
        raise ValueError(f"quantised states {sorted(parts)[:3]} do not match state.json's {sorted(quantized)[:3]}")
    for key, info in quantized.items():
        if info.get("class") not in _QUANTIZED or not isinstance(info.get("signed"), bool):
            raise ValueError(f"unknown quantised optimiser state {info!r}")
        cls = getattr(importlib.import_module(_QUANTIZED[info["class"]]), info["class"])
        dtype = getattr(torch, str(info.get("dtype")), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"bad dtype in {info!r}")
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = cls.__tensor_unflatten__(parts[key], [info["signed"], dtype])
    return state


def _jsonable(groups: list[dict]) -> list[dict]:
    """Optimiser param groups for state.json: tensors (torchao keeps lr as one) become numbers."""
    return [{k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in g.items()} for g in groups]


def save_checkpoint(folder: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` checkpoints."""
    folder = Path(folder)
    tmp = folder / f".tmp-step_{step:08d}-{os.getpid()}"
    hashes: dict = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write(tmp / "model.safetensors", save_model_bytes(model), hashes)
        opt = optimizer.state_dict()
        tensors, quantized = _flatten_optimizer_state(opt["state"])
        _write(tmp / "optimizer.safetensors", save(tensors), hashes)
        _write(tmp / "rng.safetensors", save(rng_states()), hashes)
        _write(tmp / "state.json", json.dumps({**state, "optimizer_param_groups": _jsonable(opt["param_groups"]),
                                               **({"optimizer_quantized": quantized} if quantized else {})},
                                              indent=1).encode(), hashes)
    except (OSError, SafetensorError) as e:  # a full disk surfaces as either
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {folder / f'step_{step:08d}'} ({e}); the previous "
                              f"checkpoints are intact") from None
    return commit_checkpoint(tmp, folder, step, keep, hashes)


def save_model_bytes(model: torch.nn.Module) -> bytes:
    """The model's weights as safetensors bytes, exactly what safetensors' save_model writes: shared (tied) tensors
    stored once, the dropped names recorded in the metadata."""
    from safetensors.torch import _remove_duplicate_names

    sd, metadata = model.state_dict(), {}
    for kept, removed in _remove_duplicate_names(sd).items():
        for name in removed:
            metadata[name] = kept
            del sd[name]
    return save({k: v.contiguous() for k, v in sd.items()}, metadata=metadata or None)


def commit_checkpoint(tmp: Path, folder: Path, step: int, keep: int, hashes: dict | None = None) -> Path:
    """Seal a checkpoint written into the temporary folder `tmp` (every file fsynced, then the manifest), rename
    it into place as step_N, and delete all but the newest `keep` checkpoints. `hashes`: checksums taken while
    writing; files without one (DCP writes its own) are hashed here."""
    final = folder / f"step_{step:08d}"
    hashes = dict(hashes or {})
    try:
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        for name in files:
            if name in hashes:
                continue
            with open(tmp / name, "rb+") as f:  # flush to disk before the manifest vouches for them
                os.fsync(f.fileno())
            hashes[name] = {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        with open(tmp / MANIFEST, "w") as f:
            json.dump({"step": step, "files": {name: hashes[name] for name in files}}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            _fsync_dir(d)
        if final.exists():  # re-saving a step after a rollback: move the old one aside first
            old = folder / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final} ({e}); the previous checkpoints are intact") from None
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_states() -> dict[str, torch.Tensor]:
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{i}"] = s
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Finished checkpoint folders, oldest first (temporary folders of an interrupted save are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step_"))


def verify(path: Path) -> str | None:
    """None if every file matches the manifest, else what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable manifest ({e})"
    for name, info in files.items():
        p = path / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != info["bytes"]:
            return f"{name} has {p.stat().st_size} bytes, expected {info['bytes']} (truncated?)"
        if sha256_file(p) != info["sha256"]:
            return f"{name} fails its sha256 checksum"
    return None


def check_contents(path: Path) -> tuple[dict | None, str | None]:
    """(state.json's content, None), or (None, what is wrong): every safetensors header parses, the sharded
    metadata is one this package reads, and state.json holds what a resume needs. A checkpoint can pass its
    checksums and still be wrong (edited, then re-sealed), so this is checked too."""
    from safetensors import safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # safetensors raises several types for a file that is not one
            return None, f"{f.name} is not a safetensors file ({type(e).__name__}: {e})"
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError("no config")
        step = state["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 or path.name != f"step_{step:08d}":
            raise ValueError(f"step {step!r} does not match the folder name")
        if "loop" in state and not isinstance(state["loop"], dict) or not isinstance(state.get("units", {}), dict):
            raise ValueError("loop/units state is not a mapping")
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        return None, f"unreadable state.json ({e})"
    if (path / SHARDED).is_dir():
        problem = check_metadata(path / SHARDED)
        if problem:
            return None, problem
    return state, None


def latest_checkpoint(folder: str | Path, below: int | None = None) -> Checkpoint | None:
    """The newest checkpoint (before step `below`, if given) that passes verification; corrupt ones are
    reported and skipped."""
    paths = [p for p in list_checkpoints(folder) if below is None or p.name < f"step_{below:08d}"]
    for i, path in enumerate(reversed(paths)):
        problem = verify(path)
        state = None
        if problem is None:
            state, problem = check_contents(path)
        if state is not None:
            return Checkpoint(path=path, step=int(state["step"]), state=state)
        older = "trying the previous one" if i + 1 < len(paths) else "no older checkpoint to fall back to"
        warnings.warn(f"checkpoint {path} is corrupt: {problem}; {older}", stacklevel=2)
    return None
