"""Metrics and events as a unit: each logged step's record to metrics.jsonl (and the trackers, the progress bar),
with throughput measured over the interval since the previous logged step."""

from __future__ import annotations

import time

import torch

from lokilm.train.metrics import MetricsLog, NullLog
from lokilm.train.units import Step, Unit


class Logging(Unit):
    """Rank 0 logs for all (`main=False` elsewhere). Values stay device tensors until a logged step, where they
    are read once: tokens/s is the interval's tokens over its wall time, which is honest on a GPU too (a single
    step's host time only measures how fast work was queued)."""
    name = "log"

    def __init__(self, run, cfg, state, main: bool, world_size: int, flops_per_token: float, peak_flops: float | None):
        self.run, self.t, self.state, self.main = run, cfg.train, state, main
        self.world_size, self.flops_per_token, self.peak_flops = world_size, flops_per_token, peak_flops
        self.log: MetricsLog | NullLog | None = None
        self._mark: tuple[float, int] | None = None  # (time, tokens) at the previous logged step

    def _open(self) -> MetricsLog | NullLog:
        if self.log is None:
            t = self.t
            self.log = (MetricsLog(self.run.root, t.max_steps, self.state.step, t.tensorboard, t.progress, t.trackers)
                        if self.main else NullLog())
        return self.log

    def event(self, kind: str, step: int, **info) -> None:
        self._open().event(kind, step, **info)

    def start(self, resumed: bool) -> None:
        self._open()
        self._mark = (time.perf_counter(), self.state.tokens)

    def _due(self, step: Step) -> bool:
        return step.number % self.t.log_every == 0 or step.last

    def before_step(self, step: Step) -> None:
        if self._due(step):
            step.sync = True

    def after_step(self, step: Step) -> None:
        if not (self._due(step) or "val_bpb" in step.record):
            return
        record = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in step.record.items()}
        now = time.perf_counter()
        if "loss" in record and self._mark is not None:
            seconds, tokens = now - self._mark[0], record["tokens"] - self._mark[1]
            if seconds > 0 and tokens > 0:
                record["tokens_per_s"] = tokens / seconds
                if self.world_size > 1:
                    record["tokens_per_s_per_gpu"] = record["tokens_per_s"] / self.world_size
                if self.peak_flops:
                    record["mfu"] = self.flops_per_token * record["tokens_per_s"] / (self.peak_flops * self.world_size)
        self._mark = (now, record["tokens"])
        self._open().log(record)

    def after_rollback(self, count: int) -> None:
        self._open().rewind(self.state.step)
        self._mark = (time.perf_counter(), self.state.tokens)

    def finish(self, status: str) -> None:
        if self.log is not None:
            self.log.close()

