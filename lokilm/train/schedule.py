"""Learning-rate schedules (warmup + cosine / warmup-stable-decay) and batch-size warmup by tokens."""

from __future__ import annotations

import math

from lokilm.config import TrainConfig
from lokilm.train.units import Step, Unit


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step `step` (0-based), before any batch-size rescaling."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return peak
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # wsd: hold the peak, then decay linearly to the floor over the last decay_fraction of the steps
    decay_start = cfg.max_steps - max(1, int(cfg.decay_fraction * cfg.max_steps))
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / max(1, cfg.max_steps - decay_start))
    return peak + (floor - peak) * progress


class BatchSizeWarmup:
    """Grows the batch from `start` to the full size over the first `warmup_tokens` training tokens.

    The batch is counted in micro-batches (the forward shape never changes, so torch.compile sees one
    shape), a whole number of them per process; the learning rate follows the batch (sqrt scaling for Adam
    by default), which is the "rescaled accordingly" of the LokiLM recipe.
    """

    def __init__(self, cfg: TrainConfig, world_size: int = 1):
        self.micro = cfg.micro_batch_size * world_size
        self.full = cfg.batch_size
        self.start = (cfg.batch_warmup_start or self.micro) if cfg.batch_warmup_tokens else cfg.batch_size
        self.warmup_tokens = cfg.batch_warmup_tokens
        self.scaling = cfg.lr_batch_scaling

    def batch_size(self, tokens_seen: int) -> int:
        """Sequences in the next optimiser step: linear in tokens, rounded down to whole micro-batches."""
        if not self.warmup_tokens or tokens_seen >= self.warmup_tokens:
            return self.full
        size = self.start + (self.full - self.start) * tokens_seen / self.warmup_tokens
        return max(self.start, int(size) // self.micro * self.micro)

    def lr_scale(self, batch_size: int) -> float:
        ratio = batch_size / self.full
        return {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[self.scaling]


class BatchWarmup(Unit):
    """Batch-size warmup as a unit: sets each step's batch size from the tokens seen so far and rescales its
    learning rate. Stateless: the schedule is a function of the tokens, which the checkpoint holds."""
    name = "batch_warmup"

    def __init__(self, schedule: BatchSizeWarmup):
        self.schedule = schedule

    def before_step(self, step: Step) -> None:
        step.batch_size = self.schedule.batch_size(step.tokens)
        step.lr *= self.schedule.lr_scale(step.batch_size)


def batch_sizes(cfg: TrainConfig, context_length: int, world_size: int) -> list[int]:
    """The global batch size of every step of a run, in order: what the trainer will use on `world_size`
    processes. Distillation sizes its teacher cache from the same list (lokilm/distill/generate.py)."""
    schedule, tokens, sizes = BatchSizeWarmup(cfg, world_size), 0, []
    for _ in range(cfg.max_steps):
        sizes.append(schedule.batch_size(tokens))
        tokens += sizes[-1] * context_length
    return sizes
