"""Loss-spike detection and rollback, as one unit: a loss far above its recent statistics, or a non-finite loss
or gradient, rolls the run back to an older checkpoint with a new data order.

The decision is computed on the device every step and read on the host only at sync steps (log intervals,
checkpoints, evaluations): reading the loss every step would stall a GPU twice a step (OLMo-core's
SkipStepOptimizer makes the same point). A spike found at a sync step rolls back to a checkpoint from before
the first flagged step; the steps in between are discarded, which costs nothing extra because the rollback
target is a checkpoint anyway, and every checkpoint save is a sync step, so no checkpoint is written after an
undetected spike.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import TYPE_CHECKING

import torch

from lokilm.config import SpikeConfig
from lokilm.train.units import Step, Unit

if TYPE_CHECKING:
    from lokilm.train.checkpointing import Checkpointing

PENDING_LIMIT = 256  # flags kept on the device between syncs; a sync is forced past this many


class SpikeGuard(Unit):
    """Only losses of accepted steps enter the history, so one spike does not raise the bar for the next. The
    history is part of the checkpoint, so a resumed run judges spikes exactly as an unbroken one."""
    name = "spike"

    def __init__(self, cfg: SpikeConfig, checkpoints: Checkpointing | None = None):
        self.cfg, self.checkpoints = cfg, checkpoints
        self.history: deque = deque(maxlen=cfg.window)  # losses (device tensors or floats)
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------ the rule

    def flag(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A boolean device tensor: is this step a spike? No host sync."""
        loss, grad_norm = torch.as_tensor(loss, dtype=torch.float64), torch.as_tensor(grad_norm, dtype=torch.float64)
        bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm.to(loss.device))
        if len(self.history) >= self.cfg.min_history:
            h = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=loss.device) for x in self.history])
            mean, std = h.mean(), h.std(unbiased=False)
            bad |= (loss > mean + self.cfg.zscore * std) & (loss > self.cfg.min_ratio * mean)
        return bad

    def reason(self, loss: float, grad_norm: float) -> str:
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        history = [float(x) for x in self.history]
        mean, std = statistics.fmean(history), statistics.pstdev(history)
        return f"loss {loss:.4f} vs recent mean {mean:.4f} (std {std:.4f})"

    def check(self, loss, grad_norm) -> str | None:
        """Why this step is a spike, or None (reads the values on the host)."""
        if not self.cfg.enabled or not bool(self.flag(loss, grad_norm)):
            return None
        return self.reason(float(loss), float(grad_norm))

    def accept(self, loss) -> None:
        self.history.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)

    # ------------------------------------------------------------------ as a unit

    def after_step(self, step: Step) -> None:
        if not self.cfg.enabled or "loss" not in step.record:
            return
        loss, grad_norm = step.record["loss"], step.record["grad_norm"]
        self._pending.append((step.number, self.flag(loss, grad_norm), loss, grad_norm))
        self.accept(loss)  # a flagged step's loss goes in too, but the rollback restores the history before it
        if not (step.sync or step.last or len(self._pending) >= PENDING_LIMIT):
            return
        flags = torch.stack([f for _, f, _, _ in self._pending]).cpu().tolist()  # the one host sync
        pending, self._pending = self._pending, []
        for (number, _, loss, grad_norm), bad in zip(pending, flags):
            if bad:
                self.checkpoints.roll_back(number, self.reason(float(loss), float(grad_norm)))
                return

    def after_rollback(self, count: int) -> None:
        self._pending = []

    def state_dict(self) -> dict:
        return {"history": [float(x) for x in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=self.cfg.window)
        self._pending = []
