"""Checkpoints as a unit: when to save, what a checkpoint holds ({unit: state} for every unit, like torchtitan's
`states` dict), resuming, and the rollback targets of the spike guard.

The formats themselves (single-file safetensors, sharded DCP) live in lokilm/checkpoint/.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

import torch

from lokilm.checkpoint import sharded
from lokilm.checkpoint.single import Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints
from lokilm.config import to_dict
from lokilm.errors import LokiError
from lokilm.train.units import Step, Unit


class Checkpointing(Unit):
    name = "checkpoint"

    def __init__(self, loop, every: int, keep: int, sharded_format: bool):
        self.loop, self.every, self.keep, self.sharded = loop, every, keep, sharded_format
        self.folder: Path = loop.run.checkpoints
        self.last_saved: Path | None = None
        self._suspect: int | None = None  # the checkpoint the last rollback went to, until a newer one is saved

    # ------------------------------------------------------------------ saving

    def _due(self, step: Step) -> bool:
        return step.number % self.every == 0 or step.last

    def before_step(self, step: Step) -> None:
        if self._due(step):
            step.sync = True  # the spike guard decides before anything is saved

    def after_step(self, step: Step) -> None:
        if self._due(step):
            self.save()

    def finish(self, status: str) -> None:
        if status in ("finished", "halted", "interrupted") and not self.saved_at_current_step():
            self.save()

    def saved_at_current_step(self) -> bool:
        return self.last_saved is not None and self.last_saved.name == f"step_{self.loop.state.step:08d}"

    def save(self) -> None:
        loop = self.loop
        state = {"step": loop.state.step, "loop": loop.state.state_dict(),
                 "units": {u.name: u.state_dict() for u in loop.units}, "config": to_dict(loop.cfg),
                 "tokenizer_sha256": loop.tokenizer_sha256}
        self.last_saved = sharded.save(self.folder, loop.state.step, loop.model, loop.optimizer, state, self.keep,
                                       loop.dist, self.sharded)
        self._suspect = None

    # ------------------------------------------------------------------ loading

    def start(self, resumed: bool) -> None:
        if resumed:
            self.loop.logging.event("resume", self.loop.state.step, checkpoint=str(self.last_saved))

    def clean_stale(self) -> None:
        """Temporary folders of saves that died (kill -9, full disk): only one process holds the run directory
        (RunDir.lock), so any that exist now belong to nobody."""
        if self.loop.dist.is_main and self.folder.is_dir():
            for p in self.folder.iterdir():
                if p.is_dir() and (p.name.startswith(".tmp-") or p.name.startswith(".old-")):
                    shutil.rmtree(p, ignore_errors=True)
        self.loop.dist.barrier()

    def _newest_valid(self, below: int | None = None) -> Checkpoint | None:
        """The newest checkpoint that passes verification (rank 0 checks the checksums and tells the others)."""
        return self.loop.dist.from_main(lambda: latest_checkpoint(self.folder, below=below))

    def resume(self) -> bool:
        """Restore the newest valid checkpoint, if the run has one. Checkpoints that all fail verification are a
        clear error, never a silent restart from step 0 (`loki train --restart` starts over, keeping them aside)."""
        self.clean_stale()
        found = list_checkpoints(self.folder)
        ckpt = self._newest_valid()
        if ckpt is None:
            if found:
                raise CheckpointError(f"all {len(found)} checkpoints in {self.folder} are corrupt or unreadable (see "
                                      "the warnings above); nothing was changed. To start this run over, run the same "
                                      "command with --restart (the old checkpoints are moved aside, not deleted)")
            return False
        if self.loop.dist.is_main:
            self._set_aside_newer(ckpt, "corrupt")
        self.loop.dist.barrier()
        self._check_compatible(ckpt)
        self.restore(ckpt)
        return True

    def _set_aside_newer(self, ckpt: Checkpoint, why: str) -> None:
        """Checkpoints newer than `ckpt` must not stay where they are: retention sorts by step, so they would outlive
        every new checkpoint, and a resume would pick them. Corrupt ones are renamed out of the way (a person may
        want to look at them); diverged ones (written after a bad update, the run is now redoing those steps) are
        deleted."""
        for path in list_checkpoints(self.folder):
            if path.name <= ckpt.path.name:
                continue
            if why == "diverged":
                shutil.rmtree(path, ignore_errors=True)
            else:
                aside = self.folder / f"{why}-{path.name}-{int(time.time())}"
                os.replace(path, aside)
                warnings.warn(f"checkpoint {path} is {why}; set aside as {aside.name}", stacklevel=2)

    def _check_compatible(self, ckpt: Checkpoint) -> None:
        loop = self.loop
        saved_model = ckpt.state["config"]["model"]
        current = to_dict(loop.cfg.model)
        if saved_model != current:
            changed = [k for k in current if saved_model.get(k) != current[k]]
            raise LokiError(f"{loop.run.root} holds a checkpoint of a different model (model.{', model.'.join(changed)} "
                            f"changed); use a new run_dir or restore those settings")
        if ckpt.state.get("tokenizer_sha256") != loop.tokenizer_sha256:
            raise LokiError(f"{loop.run.root} holds a checkpoint trained with a different tokenizer than "
                            f"{loop.run.tokenizer} (its data or settings changed since); use a new run_dir")

    def restore(self, ckpt: Checkpoint) -> None:
        """Weights, optimiser, RNG, the loop's counters and every unit's state, as they were at `ckpt`."""
        loop = self.loop
        sharded.load(ckpt, loop.model, loop.optimizer, loop.dist)
        loop.state.load_state_dict(ckpt.state["loop"])
        units = ckpt.state["units"]
        for u in loop.units:
            u.load_state_dict(units.get(u.name, {}))
        self.last_saved = ckpt.path

    # ------------------------------------------------------------------ rollback

    def roll_back(self, failed_step: int, reason: str) -> None:
        """Back to the newest good checkpoint from before `failed_step`, with a new data order and dropout seed;
        capped by train.spike.max_rollbacks. If the run spikes again before it saved anything newer than the
        checkpoint it last rolled back to, that checkpoint is suspect (it may already hold the bad update, e.g.
        a checkpoint written at the very step of a wild update), so the next rollback steps further back."""
        loop = self.loop
        t = loop.cfg.train
        count = loop.state.rollbacks + 1
        if count > t.spike.max_rollbacks:
            loop.logging.event("rollback_limit", failed_step, reason=reason, rollbacks=count - 1)
            raise LokiError(f"loss spike at step {failed_step} ({reason}) after {count - 1} rollbacks "
                            f"(train.spike.max_rollbacks={t.spike.max_rollbacks}); giving up. The last good "
                            f"checkpoint is {self.last_saved}")
        below = failed_step if self._suspect is None else self._suspect
        ckpt = self._newest_valid(below=below)
        if ckpt is None:
            raise LokiError(f"loss spike at step {failed_step} ({reason}) and no good checkpoint from before step "
                            f"{below} to roll back to")
        if loop.dist.is_main:
            self._set_aside_newer(ckpt, "diverged")
        loop.dist.barrier()
        self.restore(ckpt)
        loop.state.rollbacks = count
        self._suspect = ckpt.step
        torch.manual_seed(t.seed + loop.dist.rank + 7919 * count)  # new dropout masks too, still distinct per rank
        loop.optimizer.zero_grad(set_to_none=True)
        for u in loop.units:
            u.after_rollback(count)
        loop.logging.event("rollback", failed_step, reason=reason, to_step=ckpt.step, rollbacks=count,
                           new_data_seed=loop.data.data_seed)
