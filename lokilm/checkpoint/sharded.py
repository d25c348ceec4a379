"""Sharded checkpoints: every rank writes its shards of the model and optimiser as one torch distributed
checkpoint (DCP), loaded back resharded onto however many processes resume it; `consolidate` turns one into
the single-file checkpoint (lokilm/train/checkpoint.py) that generate, eval and export read.

A sharded checkpoint is the same atomic, checksummed `step_N/` folder as a single-file one, holding `dcp/`,
one `rng_rank{r}.safetensors` per process and `state.json`; rank 0 seals it once every rank has written.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lokilm.config import from_dict
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.parallel.dist import Distributed
from lokilm.rundir import RunDir
from lokilm.train.optimizer import build_optimizer
from lokilm.checkpoint.single import (
    SHARDED,
    Checkpoint,
    CheckpointError,
    commit_checkpoint,
    list_checkpoints,
    restore_rng,
    rng_states,
    save_checkpoint,
    check_contents,
    verify,
)
from lokilm.checkpoint.dcp_metadata import check_metadata, read_metadata  # noqa: F401 (check_metadata: re-exported)


class _SafeReader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(dcp.DefaultLoadPlanner):
    """DCP stores non-tensor values (the optimiser's hyperparameters) as torch.save bytes and its default planner
    loads them with weights_only=False, i.e. unpickles anything; these are plain numbers and names."""

    def load_bytes(self, read_item, value) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def writes_sharded(checkpoint_format: str, fsdp: bool) -> bool:
    """train.checkpoint_format: auto is sharded exactly when the model is; an FSDP run cannot write single files."""
    if fsdp and checkpoint_format == "single":
        raise LokiError("train.checkpoint_format=single cannot be written by an FSDP run; use auto or sharded, "
                        "then `loki checkpoint consolidate RUN_DIR`")
    return checkpoint_format == "sharded" or (checkpoint_format == "auto" and fsdp)


def save(folder: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
         keep: int, dist: Distributed, sharded: bool) -> Path:
    """Checkpoint `step` in the single-file form (one process) or sharded (every rank calls this)."""
    if not sharded:
        return save_checkpoint(folder, step, model, optimizer, state, keep)
    folder = Path(folder)
    tmp = folder / f".tmp-step_{step:08d}-sharded"  # one name for every rank: they all write into it
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    content = {"model": get_model_state_dict(model)}
    if optimizer.state:  # none before the first step (the state-dict API would invent one with a fake step)
        content["optimizer"] = get_optimizer_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled")  # one process, on purpose
            dcp.save(content, checkpoint_id=tmp / SHARDED, no_dist=not dist.fsdp)
        save_file(rng_states(), str(tmp / f"rng_rank{dist.rank}.safetensors"))
        problem = None
    except (OSError, dcp.CheckpointException) as e:
        problem = f"could not write checkpoint {folder / f'step_{step:08d}'} ({e}); the previous checkpoints are intact"
    # Every rank's outcome, not only rank 0's: a rank that could not write its files leaves the checkpoint
    # incomplete, so nobody seals it
    failed = [(rank, p) for rank, p in enumerate(dist.gather(problem)) if p is not None]
    if failed and dist.world_size > 1:
        problem = "; ".join(f"rank {rank}: {p}" for rank, p in failed)

    def seal() -> str | None:
        if problem is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return problem
        try:
            (tmp / "state.json").write_text(json.dumps({**state, "world_size": dist.world_size,
                                                        "optimizer_saved": "optimizer" in content}, indent=1))
            commit_checkpoint(tmp, folder, step, keep)
        except (OSError, CheckpointError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            return str(e)
        return None

    problem = dist.from_main(seal)
    if problem is not None:
        raise CheckpointError(problem)
    return folder / f"step_{step:08d}"


def load(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: Distributed) -> None:
    """Weights, optimiser state and RNG from a checkpoint of either form, into a model sharded or not, on any
    number of processes: DCP reshards a sharded checkpoint to this run's processes."""
    if not ckpt.sharded and not dist.fsdp:
        ckpt.load_model(model)
        ckpt.load_optimizer(optimizer)
        restore_rng(ckpt.rng_states())
        return
    if not ckpt.sharded:
        _load_single_into_sharded(ckpt, model, optimizer, dist)
    else:
        content = {"model": get_model_state_dict(model)}
        if ckpt.state.get("optimizer_saved"):
            content["optimizer"] = get_optimizer_state_dict(model, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(content, storage_reader=_SafeReader(ckpt.path / SHARDED), planner=_SafeLoadPlanner(),
                     no_dist=not dist.fsdp)
        set_model_state_dict(model, content["model"])
        if "optimizer" in content:
            set_optimizer_state_dict(model, optimizer, content["optimizer"])
        else:
            optimizer.state.clear()  # a step-0 checkpoint: no moments yet
    rng = ckpt.path / f"rng_rank{dist.rank}.safetensors"
    if rng.is_file():  # a rank the saving run did not have keeps its own seed
        restore_rng(load_file(str(rng)))


def load_weights(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    """The weights alone of sharded checkpoint `ckpt`, into a plain model in this one process (what generate,
    eval and export need): DCP reads only the model's entries, through the same restricted reader."""
    content = {"model": get_model_state_dict(model)}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(content, storage_reader=_SafeReader(ckpt.path / SHARDED), planner=_SafeLoadPlanner(),
                     no_dist=True)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path}: its sharded weights cannot be loaded ({e})") from None
    set_model_state_dict(model, content["model"])


def _load_single_into_sharded(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              dist: Distributed) -> None:
    """A single-file checkpoint (a one-process run) resumed by FSDP: rank 0 reads it into a plain copy of the
    model and broadcasts the full state dicts, which every rank shards."""
    full = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    model_sd, optim_sd = {}, {}
    if dist.is_main:
        cfg = from_dict(ckpt.state["config"])
        plain = Transformer(cfg.model)
        plain_opt = build_optimizer(plain, cfg.train)
        ckpt.load_model(plain)
        ckpt.load_optimizer(plain_opt)
        model_sd = get_model_state_dict(plain, options=StateDictOptions(full_state_dict=True))
        if plain_opt.state:
            optim_sd = get_optimizer_state_dict(plain, plain_opt, options=StateDictOptions(full_state_dict=True))
    has_moments = dist.from_main(lambda: bool(optim_sd))
    set_model_state_dict(model, model_sd, options=full)
    if has_moments:
        set_optimizer_state_dict(model, optimizer, optim_sd, options=full)
    else:
        optimizer.state.clear()
    if dist.is_main:
        restore_rng(ckpt.rng_states())


def consolidate(run_dir: str | Path, step: int | None = None, out: str | Path | None = None) -> Path:
    """Rewrite sharded checkpoint `step` (default: the newest) of a run as a single-file checkpoint with the same
    weights, optimiser state and trainer state: in place, or as a new run directory `out` (config, tokenizer,
    checkpoints/step_N) that `loki generate` and `loki eval` read. Resuming works from either form."""
    run = RunDir.open(run_dir)
    cfg = run.cfg
    folders = [p for p in list_checkpoints(run.checkpoints) if step is None or p.name == f"step_{step:08d}"]
    if not folders:
        raise LokiError(f"{run_dir} has no checkpoint{'' if step is None else f' at step {step}'}")
    path = folders[-1]
    problem = verify(path)
    state = None
    if problem is None:
        state, problem = check_contents(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    ckpt = Checkpoint(path=path, step=int(state["step"]), state=state)
    if not ckpt.sharded:
        raise LokiError(f"checkpoint {path} is already a single-file checkpoint")
    saved = from_dict(state["config"])
    model = Transformer(saved.model)
    optimizer = build_optimizer(model, saved.train)
    load(ckpt, model, optimizer, Distributed(0, 0, 1, torch.device("cpu"), fsdp=False))
    for key in ("world_size", "optimizer_saved"):
        state.pop(key)
    target = run_dir
    if out is not None:
        target = Path(out)
        target.mkdir(parents=True, exist_ok=True)
        cfg.run_dir = str(target)
        if cfg.tokenizer.path is None:  # the run's own tokenizer goes with it
            shutil.copyfile(run.tokenizer, RunDir(cfg).tokenizer)
        RunDir(cfg).save_config()
    checkpoints = RunDir.open(target).checkpoints
    existing = len(list_checkpoints(checkpoints))
    return save_checkpoint(checkpoints, ckpt.step, model, optimizer, state, keep=existing + 1)
