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

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

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
        missing, unexpected = load_model(model, str(self.path / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        tensors = load_file(str(self.path / "optimizer.safetensors"))
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": self.state["optimizer_param_groups"]})

    def rng_states(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "rng.safetensors"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(folder: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        opt = optimizer.state_dict()
        save_file({f"state.{i}.{name}": t.detach().contiguous().cpu() for i, s in opt["state"].items()
                   for name, t in s.items()}, str(tmp / "optimizer.safetensors"))
        save_file(rng_states(), str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer_param_groups": opt["param_groups"]}, indent=1))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {folder / f'step_{step:08d}'} ({e}); the previous "
                              f"checkpoints are intact") from e
    return commit_checkpoint(tmp, folder, step, keep)


def commit_checkpoint(tmp: Path, folder: Path, step: int, keep: int) -> Path:
    """Seal a checkpoint written into the temporary folder `tmp` (every file fsynced, then the manifest), rename
    it into place as step_N, and delete all but the newest `keep` checkpoints."""
    final = folder / f"step_{step:08d}"
    try:
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        for name in files:  # flush to disk before the manifest vouches for them
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        manifest = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files}
        with open(tmp / MANIFEST, "w") as f:
            json.dump({"step": step, "files": manifest}, f, indent=1)
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
        raise CheckpointError(f"could not write checkpoint {final} ({e}); the previous checkpoints are intact") from e
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


def latest_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The newest checkpoint that passes verification; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(folder)):
        problem = verify(path)
        if problem is None:
            try:
                state = json.loads((path / "state.json").read_text())
                return Checkpoint(path=path, step=int(state["step"]), state=state)
            except (OSError, ValueError, KeyError, SafetensorError) as e:
                problem = f"unreadable state.json ({e})"
        warnings.warn(f"checkpoint {path} is corrupt: {problem}; falling back to the previous one", stacklevel=2)
    return None
