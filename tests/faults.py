"""Test-side training units: faults injected through the same hooks every feature uses, so the production
step carries no testing aids."""

from __future__ import annotations

import os
import signal

from lokilm.train.units import Step, Unit


class SpikeInjector(Unit):
    """Make step `at`'s update 1000x too large, once per process and run, the way real instabilities start: the
    next step's loss spikes and the guard must roll back past it. `injected` survives rollbacks (the fault
    happened; replaying the steps must not replay it) and is checkpointed for resumes."""
    name = "spike_injector"

    def __init__(self, at: int):
        self.at, self.injected = at, False

    def before_step(self, step: Step) -> None:
        if step.number == self.at and not self.injected:
            step.lr *= 1000
            self.injected = True

    def state_dict(self) -> dict:
        return {"injected": self.injected}

    def load_state_dict(self, state: dict) -> None:
        self.injected = self.injected or bool(state.get("injected"))


class StepCounter(Unit):
    """A toy feature with state: counts the steps it saw, through checkpoints and resumes."""
    name = "counter"

    def __init__(self):
        self.count, self.loaded = 0, None

    def after_step(self, step: Step) -> None:
        if step.number:
            self.count += 1
            step.record["counted"] = self.count

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = self.loaded = state["count"]


def send_sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)


class InterruptAt(Unit):
    """A real Ctrl-C (SIGINT to this process) while step `at` is in `phase`: data (its first micro-batch is being
    read), forward, backward, optimizer (inside optimizer.step), eval (held-out evaluation), checkpoint (while
    the checkpoint is written)."""
    name = "interrupt"
    PHASES = ("data", "forward", "backward", "optimizer", "eval", "checkpoint")

    def __init__(self, trainer, phase: str, at: int):
        self.trainer, self.phase, self.at, self.fired = trainer, phase, at, False
        self._hooks = []

    def _fire(self, *args, **kwargs) -> None:
        if not self.fired and self.trainer.state.step + (0 if self.phase in ("eval", "checkpoint") else 1) == self.at:
            self.fired = True
            send_sigint()

    def start(self, resumed: bool) -> None:
        t = self.trainer
        if self.phase == "forward":
            self._hooks.append(t.model.register_forward_pre_hook(lambda m, a: self._fire()))
        elif self.phase == "backward":
            self._hooks.append(t.model.tok_embeddings.weight.register_hook(lambda g: self._fire()))
        elif self.phase == "optimizer":
            self._hooks.append(t.optimizer.register_step_pre_hook(lambda o, a, k: self._fire()))
        elif self.phase == "eval":
            self._hooks.append(t.model.register_forward_pre_hook(
                lambda m, a: self._fire() if not m.training else None))
        elif self.phase == "checkpoint":
            import lokilm.checkpoint.single as single

            original = single._write

            def save_file(*args, **kwargs):
                self._fire()
                return original(*args, **kwargs)

            single._write = save_file
            self._hooks.append(type("Undo", (), {"remove": staticmethod(lambda: setattr(single, "_write", original))}))

    def batch_source(self, step: Step):
        if self.phase == "data":
            self._fire()
        return None

    def finish(self, status: str) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
