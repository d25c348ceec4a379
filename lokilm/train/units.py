"""The protocol of training units: features the training loop calls without knowing them by name.

A unit is built with the things it needs passed in explicitly (the model, the config, another unit) and
registered in the trainer's list (`lokilm.train.trainer.build_units`). The loop calls each hook on every unit,
in list order; a unit implements only the hooks it needs. A unit's `state_dict()` is saved in every checkpoint
under its `name` and given back to `load_state_dict` on resume and on rollback, so a unit with state (a
cursor, a history, a seed) resumes exactly.

One optimiser step, as the loop runs it:
    before_step(step)        shape the step: batch size, learning rate, dropout, `step.sync`
    batch_source(step)       the first unit that returns a BatchSource supplies this step's micro-batches and
                             their loss (distillation's KD steps); otherwise the run's training data does
    (forward, backward, optimiser step)
    after_step(step)         read or add to `step.record`; a unit may rewind the run (a spike rollback): the
                             units after it then do not see the discarded step
    after_rollback(count)    every unit, once the run has been restored to an older checkpoint
`start(resumed)` runs once before the first step, `finish(status)` once after the last (also on an error);
`summary()` adds its keys to stages/train.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


class BatchSource(Protocol):
    """Where one step's micro-batches and their loss come from."""

    def micro_batch(self, step: Step, i: int) -> tuple[Tensor, Tensor]:
        """The i-th micro-batch (inputs, targets) of the global batch of `step`."""

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The scalar loss of one micro-batch."""

    def consumed(self, step: Step) -> None:
        """The step was taken: advance the cursor by its batch."""


@dataclass
class Step:
    """One optimiser step, as the units shape it before it runs and describe it after."""
    number: int  # 1-based: the step about to run (the run's step counter after it)
    tokens: int  # training tokens before this step
    batch_size: int  # sequences in the global batch
    lr: float
    last: bool  # the final step of the run (max_steps, or a halt)
    sync: bool = False  # a unit reads device values on the host after this step (logging, checkpoint, eval)
    record: dict = field(default_factory=dict)  # the metrics record; values may stay device tensors until synced


class Unit:
    """Base class with every hook a no-op; subclasses override what they need."""
    name: str = ""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def start(self, resumed: bool) -> None:
        pass

    def before_step(self, step: Step) -> None:
        pass

    def batch_source(self, step: Step) -> BatchSource | None:
        return None

    def after_step(self, step: Step) -> None:
        pass

    def after_rollback(self, count: int) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def summary(self) -> dict:
        return {}
