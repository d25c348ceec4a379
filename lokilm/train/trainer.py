"""The training loop, in one process or on every rank of a torchrun job.

The loop only runs steps: forward, backward, clip, optimiser step. Everything else (the data, batch-size warmup,
distillation batches, the spike guard and its rollbacks, held-out evaluation, logging, checkpoints) is a unit
(lokilm/train/units.py) built in `build_units` and called through the same hooks; parallelism is applied to the
model from outside (lokilm/parallel).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from lokilm.checkpoint import sharded
from lokilm.config import Config
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.model import Transformer
from lokilm.parallel.dist import Distributed, init_distributed
from lokilm.parallel.fsdp import clip_grad_norm, parallelize
from lokilm.parallel.precision import after_optimizer_step, autocast_for
from lokilm.rundir import RunDir
from lokilm.shards import TokenWindows, read_meta
from lokilm.tokenizer import load_tokenizer, token_byte_lengths
from lokilm.train.checkpointing import Checkpointing
from lokilm.train.data import TrainData
from lokilm.train.evaluation import HeldOutEval
from lokilm.train.logger import Logging
from lokilm.train.metrics import peak_flops
from lokilm.train.mixture_data import mixture_data
from lokilm.train.optimizer import build_optimizer, set_lr
from lokilm.train.schedule import BatchSizeWarmup, BatchWarmup, lr_at
from lokilm.train.spike import SpikeGuard
from lokilm.train.units import Step, Unit


@dataclass
class LoopState:
    """The loop's own counters; every other piece of state belongs to a unit."""
    step: int = 0
    tokens: int = 0
    rollbacks: int = 0
    elapsed_s: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        try:
            self.step, self.tokens = int(state["step"]), int(state["tokens"])
            self.rollbacks, self.elapsed_s = int(state["rollbacks"]), float(state["elapsed_s"])
        except (KeyError, TypeError, ValueError) as e:
            raise LokiError(f"the checkpoint's loop state is damaged ({e!r}): {state!r}") from None
        if self.step < 0 or self.tokens < 0:
            raise LokiError(f"the checkpoint's loop state is damaged (negative counters): {state!r}")


UnitFactory = Callable[["Trainer"], Unit]


class Interrupt:
    """Ctrl-C during training: the first one lets the current step finish (and its evaluation, logging and
    checkpoint), then the run saves and stops, so the checkpoint always matches its step; a second one stops at
    once, and the last checkpoint stays the resume point."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nloki: interrupted; finishing this step and saving a checkpoint (Ctrl-C again to stop at once)",
              flush=True)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class Trainer:
    def __init__(self, cfg: Config, dist: Distributed | None = None, extra_units: Iterable[UnitFactory] = ()):
        self.cfg, t = cfg, cfg.train
        self.run = RunDir(cfg)
        self.dist = dist or init_distributed(t.device, t.fsdp)
        self.device = self.dist.device
        # Under FSDP its mixed-precision policy casts the parameters; autocast would only add casts.
        self.autocast = (lambda: torch.autocast(self.device.type, enabled=False)) if self.dist.fsdp \
            else autocast_for(self.device, t.precision)
        self._check_data()
        seq = cfg.model.context_length
        train_windows = TokenWindows(self.run.shards, "train", seq)
        meta = read_meta(self.run.shards)
        val_windows = TokenWindows(self.run.shards, "val", seq) if meta["splits"]["val"]["tokens"] else None

        self.model = self._build_model()
        self.step_model = self.model
        if self.dist.rank:
            torch.manual_seed(t.seed + self.dist.rank)  # ranks draw different dropout masks
        self.optimizer = build_optimizer(self.model, t)
        after_optimizer_step(self.model, self.optimizer, t.precision, self.dist.fsdp)
        schedule = BatchSizeWarmup(t, self.dist.world_size)
        for n in {schedule.start, schedule.full}:
            self.dist.share(n // t.micro_batch_size)  # the same number of micro-batches per rank, or a clear error
        self.state = LoopState()
        self.units: list[Unit] = []

        # The units, in the order their hooks run. Explicit dependencies only: nothing reaches into the trainer.
        loss, event = (lambda x, y: self.step_model(x, y)), (lambda *a, **k: self.logging.event(*a, **k))
        self.data = (mixture_data(cfg, self.run, self.device, loss, event) if cfg.data.mixture else
                     TrainData(train_windows, t.micro_batch_size, t.seed, self.device, loss))
        self.logging = Logging(self.run, cfg, self.state, self.dist.is_main, self.dist.world_size,
                               self.model.flops_per_token(), peak_flops(self.device))
        self.checkpoint = Checkpointing(self, t.checkpoint_every, t.keep_checkpoints,
                                        sharded.writes_sharded(t.checkpoint_format, self.dist.fsdp))
        units: list[Unit] = [self.data, BatchWarmup(schedule)]
        from lokilm.train.model_units import model_units  # byte table, dropout schedule, early-exit curriculum

        units += model_units(self.model, cfg, self.run.tokenizer, self.device)
        if cfg.distill.enabled:
            from lokilm.distill.unit import DistillUnit

            units.append(DistillUnit.build(self))
        units += [make(self) for make in extra_units]
        units.append(SpikeGuard(t.spike, self.checkpoint))
        if val_windows is not None:
            units.append(HeldOutEval(self.step_model, val_windows, token_byte_lengths(load_tokenizer(self.run.tokenizer)),
                                     t.eval_every, t.eval_batches * t.micro_batch_size, t.micro_batch_size,
                                     self.device, self.autocast, t.max_steps, val_windows.sources(), self.dist))
        units += [self.logging, self.checkpoint]
        names = [u.name for u in units]
        if len(set(names)) != len(names):
            raise LokiError(f"two training units share a name (their states would collide in checkpoints): {names}")
        self.units = units

    def unit(self, name: str) -> Unit:
        """The registered unit called `name` (for tests and tools that inspect one)."""
        found = [u for u in self.units if u.name == name]
        if not found:
            raise KeyError(f"no training unit {name!r}; the units are {[u.name for u in self.units]}")
        return found[0]

    def _check_data(self) -> None:
        cfg = self.cfg
        meta = read_meta(self.run.shards)  # missing or damaged shards: a clear ShardError naming the fix
        if not self.run.tokenizer.is_file():
            raise LokiError(f"no tokenizer at {self.run.tokenizer}: run `loki tokenizer train` (or `loki run`) first, "
                            "or set tokenizer.path")
        self.tokenizer_sha256 = sha256_file(self.run.tokenizer)
        # Shards made with another tokenizer would train on ids that mean other text (checked when the shards
        # record theirs; older shards do not)
        if meta.get("tokenizer_sha256", self.tokenizer_sha256) != self.tokenizer_sha256:
            raise LokiError(f"the shards in {self.run.shards} were made with a different tokenizer than "
                            f"{self.run.tokenizer} (sha256 {meta['tokenizer_sha256'][:12]} vs "
                            f"{self.tokenizer_sha256[:12]}): re-run `loki tokenize` or point tokenizer.path at "
                            "the shards' tokenizer")
        if meta["vocab_size"] > cfg.model.vocab_size:
            raise LokiError(f"the shards use a {meta['vocab_size']}-token vocabulary but model.vocab_size="
                            f"{cfg.model.vocab_size}; raise model.vocab_size")

    def _build_model(self) -> Transformer:
        """One process: built and initialised on the device. FSDP: rank 0 alone initialises the full model (on the
        CPU, from the run's seed: the same weights as a one-process run); every other rank builds it on the meta
        device, so no rank but 0 ever holds the full model; after sharding, rank 0 broadcasts the weights."""
        t = self.cfg.train
        torch.manual_seed(t.seed)
        if not self.dist.fsdp:
            model = Transformer(self.cfg.model).to(self.device)
            model.init_weights()
            self.setup_notes = parallelize(model, t, self.dist)
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = None
        if self.dist.is_main:
            full = Transformer(self.cfg.model)
            full.init_weights()
        with torch.device("meta"):
            model = Transformer(self.cfg.model)
        self.setup_notes = parallelize(model, t, self.dist)
        model.to_empty(device=self.device)
        set_model_state_dict(model, full.state_dict() if full is not None else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return model

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        t = self.cfg.train
        resumed = self.checkpoint.resume()
        status = "failed"
        with Interrupt() as interrupt:
            try:
                if self.setup_notes:
                    self.logging.event("setup", self.state.step, world_size=self.dist.world_size,
                                       device=str(self.device), applied="; ".join(self.setup_notes))
                for u in self.units:
                    u.start(resumed)
                if not resumed:  # step 0: a rollback target and a first held-out figure
                    self._after(Step(number=0, tokens=0, batch_size=0, lr=0.0, last=False, sync=True,
                                     record={"step": 0, "tokens": 0}))
                status = "finished"
                while self.state.step < t.max_steps:
                    # checked before the step, so rerunning a run halted at N stays at N instead of training N+1
                    if t.halt_at_step is not None and self.state.step >= t.halt_at_step:
                        status = "halted"
                        break
                    if self._stop_requested(interrupt):
                        status = "interrupted"
                        break
                    self.train_step()
                if status == "finished" and self._stop_requested(interrupt):
                    status = "interrupted"
            except BaseException:  # an error, or the second Ctrl-C: stop now, keep the last checkpoint as it is
                status = "failed"
                raise
            finally:
                for u in self.units:
                    u.finish(status)
        if status == "interrupted":
            self.logging.event("interrupted", self.state.step, checkpoint=str(self.checkpoint.last_saved))
            raise KeyboardInterrupt
        summary = {"status": status, "step": self.state.step, "tokens": self.state.tokens,
                   "rollbacks": self.state.rollbacks, "elapsed_s": round(self.state.elapsed_s, 2),
                   "parameters": self.model.num_params(), "device": str(self.device),
                   "world_size": self.dist.world_size, "checkpoint": str(self.checkpoint.last_saved)}
        for u in self.units:
            summary.update(u.summary())
        if self.dist.is_main:
            self.run.write_summary("train", summary)
        return summary

    def _stop_requested(self, interrupt: Interrupt) -> bool:
        """Every rank must stop at the same step, or the others hang in the next collective."""
        if self.dist.world_size == 1:
            return interrupt.requested
        flag = torch.tensor(float(interrupt.requested), device=self.device)
        return bool(self.dist.all_sum(flag) > 0)

    def train_step(self) -> None:
        """One optimiser step over a batch of micro-batches, then the units' after_step hooks."""
        t, s = self.cfg.train, self.state
        start = time.perf_counter()
        number = s.step + 1
        step = Step(number=number, tokens=s.tokens, batch_size=t.batch_size, lr=lr_at(s.step, t),
                    last=number == t.max_steps or number == t.halt_at_step)
        for u in self.units:
            u.before_step(step)
        source = next((src for u in self.units if (src := u.batch_source(step)) is not None), self.data)
        set_lr(self.optimizer, step.lr)
        n_micro = step.batch_size // t.micro_batch_size
        mine = self.dist.share(n_micro)  # this rank's micro-batches of the global batch
        total = torch.zeros((), device=self.device)
        for i in mine:
            x, y = source.micro_batch(step, i)
            with self.autocast():
                loss = source.loss(x, y)
            (loss / len(mine)).backward()  # FSDP averages the gradients over the ranks
            total += loss.detach()
        loss = self.dist.all_sum(total) / n_micro
        grad_norm = clip_grad_norm(self.model, t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        source.consumed(step)
        tokens = step.batch_size * self.cfg.model.context_length
        s.step, s.tokens, s.elapsed_s = number, s.tokens + tokens, s.elapsed_s + time.perf_counter() - start
        step.record.update(step=number, loss=loss, lr=step.lr, batch_size=step.batch_size, tokens=s.tokens,
                           grad_norm=grad_norm, elapsed_s=s.elapsed_s)
        self._after(step)

    def _after(self, step: Step) -> None:
        for u in self.units:
            u.after_step(step)
            if self.state.step != step.number:
                return  # a unit rewound the run (a rollback): this step no longer exists


def train(cfg: Config, extra_units: Iterable[UnitFactory] = ()) -> dict:
    """Train (or resume) the run of `cfg`. `extra_units`: factories of more units (tests, experiments)."""
    # Started here, not in Trainer, so the process group is closed even when Trainer(cfg) itself fails
    # (e.g. a missing teacher cache): a leaked group hangs or breaks the next one in this process.
    dist = init_distributed(cfg.train.device, cfg.train.fsdp)
    try:
        if dist.is_main:
            RunDir(cfg).save_config()
        return Trainer(cfg, dist, extra_units).fit()
    finally:
        dist.close()

