"""Held-out bits per byte during training, as a unit: at step 0, every `train.eval_every` steps and at the end."""

from __future__ import annotations

from lokilm.eval.bpb import bits_per_byte_by_group
from lokilm.train.units import Step, Unit


class HeldOutEval(Unit):
    name = "eval"

    def __init__(self, model, windows, token_bytes, every: int, n_windows: int, batch_size: int, device, autocast,
                 max_steps: int, groups=None, dist=None):
        """`groups`: the source of each held-out window (a data mixture), for val_bpb/<source> beside val_bpb.
        `dist`: under FSDP the ranks share the windows (lokilm.eval.bpb), each scoring 1/world_size of them."""
        self.groups, self.dist = groups, dist
        self.model, self.windows, self.token_bytes = model, windows, token_bytes
        self.every, self.n_windows, self.batch_size = every, n_windows, batch_size
        self.device, self.autocast, self.max_steps = device, autocast, max_steps

    def _due(self, number: int) -> bool:
        return (self.every and number % self.every == 0) or number == self.max_steps

    def before_step(self, step: Step) -> None:
        if self._due(step.number):
            step.sync = True

    def after_step(self, step: Step) -> None:
        if self._due(step.number):
            total, by_source = self.evaluate_by_source()
            step.record["val_bpb"] = total
            step.record.update({f"val_bpb/{name}": v for name, v in by_source.items()})

    def evaluate(self) -> float:
        return self.evaluate_by_source()[0]

    def evaluate_by_source(self) -> tuple[float, dict[str, float]]:
        return bits_per_byte_by_group(self.model, self.windows, self.token_bytes, self.n_windows, self.batch_size,
                                      self.device, self.autocast, self.groups, self.dist)
