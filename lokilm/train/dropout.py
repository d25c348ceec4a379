"""Dropout schedules (Liu et al. 2023, "Dropout reduces underfitting"): the model's dropout rate as a function of
training progress, set by a unit before every step and logged in that step's metrics record."""

from __future__ import annotations

import torch

from lokilm.train.units import Step, Unit


def dropout_at(schedule: str, peak: float, done: float, until: float) -> float:
    """The rate after a fraction `done` of training: constant = peak; early = peak before `until`, then 0; late =
    0 before `until`, then peak; linear_up = 0 rising to peak at `until`; triangle = 0 up to peak at `until`, then
    down to 0 at the end."""
    if schedule == "constant":
        return peak
    if schedule == "early":
        return peak if done < until else 0.0
    if schedule == "late":
        return peak if done >= until else 0.0
    if schedule == "linear_up":
        return peak * min(1.0, done / until) if until > 0 else peak
    if schedule == "triangle":
        if done < until:
            return peak * done / until
        return peak * (1.0 - done) / (1.0 - until) if until < 1 else peak
    raise ValueError(f"unknown dropout schedule {schedule!r}")


class DropoutSchedule(Unit):
    """Sets every dropout layer of the model before each step. Stateless: the rate is a function of the step, so
    a resumed or rolled-back run gets the same rates."""
    name = "dropout_schedule"

    def __init__(self, model, schedule: str, peak: float, until: float, max_steps: int, device: torch.device):
        self.schedule, self.peak, self.until, self.max_steps = schedule, peak, until, max_steps
        self.rate = torch.zeros((), device=device)  # shared by every layer; changed in place
        model.set_dropout(self.rate)

    def before_step(self, step: Step) -> None:
        p = dropout_at(self.schedule, self.peak, (step.number - 1) / self.max_steps, self.until)
        self.rate.fill_(p)
        step.record["dropout"] = p
