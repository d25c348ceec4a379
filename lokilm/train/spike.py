"""Loss-spike detection: a loss far above its recent statistics, or a non-finite loss or gradient."""

from __future__ import annotations

import math
import statistics
from collections import deque

from lokilm.config import SpikeConfig


class SpikeGuard:
    """Watches each step's loss; `check` says why a step is a spike (or None), before the optimiser steps.

    Only losses of accepted steps enter the history, so one spike does not raise the bar for the next.
    The history is part of the checkpoint so a resumed run judges spikes exactly as an unbroken one.
    """

    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)

    def check(self, loss: float, grad_norm: float) -> str | None:
        if not self.cfg.enabled:
            return None
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        if len(self.history) >= self.cfg.min_history:
            mean = statistics.fmean(self.history)
            std = statistics.pstdev(self.history)
            if loss > mean + self.cfg.zscore * std and loss > self.cfg.min_ratio * mean:
                return f"loss {loss:.4f} vs recent mean {mean:.4f} (std {std:.4f})"
        return None

    def accept(self, loss: float) -> None:
        self.history.append(loss)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.cfg.window)
