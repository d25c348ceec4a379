"""The training loop, in one process or on every rank of a torchrun job; batch warmup, spike rollback, evaluation,
checkpoints and parallelism (lokilm/parallel) are units it calls."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import torch

from lokilm.config import Config, to_dict
from lokilm.distill.unit import DistillUnit
from lokilm.errors import LokiError
from lokilm.eval.bpb import bits_per_byte
from lokilm.fileio import sha256_file
from lokilm.model import Transformer
from lokilm.checkpoint import sharded as dcp
from lokilm.parallel.dist import Distributed, env_rank, init_distributed
from lokilm.parallel.fsdp import clip_grad_norm, parallelize
from lokilm.parallel.precision import after_optimizer_step, autocast_for
from lokilm.train.optimizer import build_optimizer
from lokilm.rundir import RunDir
from lokilm.shards import ShuffledOrder, TokenWindows, read_meta
from lokilm.tokenizer import load_tokenizer, token_byte_lengths
from lokilm.checkpoint.single import Checkpoint, latest_checkpoint
from lokilm.train.metrics import MetricsLog, NullLog, peak_flops
from lokilm.train.schedule import BatchSizeWarmup, lr_at
from lokilm.train.spike import SpikeGuard


@dataclass
class TrainState:
    """Everything besides weights, optimiser and RNG that a resumed run needs to continue exactly."""
    step: int = 0
    tokens: int = 0
    samples: int = 0  # training windows consumed; with data_seed it fixes the position in the data order
    data_seed: int = 0
    rollbacks: int = 0
    elapsed_s: float = 0.0
    spike_injected: bool = False
    kd_samples: int = 0  # KD windows consumed (the distillation unit's cursor; KD steps leave `samples` alone)


class Trainer:
    def __init__(self, cfg: Config, dist: Distributed | None = None):
        self.cfg, t = cfg, cfg.train
        self.run = RunDir(cfg)
        self.dist = dist or init_distributed(t.device, t.fsdp)
        self.device = self.dist.device
        # Under FSDP its mixed-precision policy casts the parameters; autocast would only add casts.
        self.autocast = contextlib.nullcontext if self.dist.fsdp else autocast_for(self.device, t.precision)
        self.sharded_checkpoints = dcp.writes_sharded(t.checkpoint_format, self.dist.fsdp)
        meta = read_meta(self.run.shards)
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
        seq = cfg.model.context_length
        self.train_windows = TokenWindows(self.run.shards, "train", seq)
        self.val_windows = TokenWindows(self.run.shards, "val", seq) if meta["splits"]["val"]["tokens"] else None
        self.token_bytes = token_byte_lengths(load_tokenizer(self.run.tokenizer))

        torch.manual_seed(t.seed)
        self.model = Transformer(cfg.model).to(self.device)
        self.model.init_weights()  # the whole model on every rank, then sharded: the same weights as one process
        self.setup_notes = parallelize(self.model, t, self.dist)
        self.step_model = self.model
        if self.dist.rank:
            torch.manual_seed(t.seed + self.dist.rank)  # ranks draw different dropout masks
        self.optimizer = build_optimizer(self.model, t)
        after_optimizer_step(self.model, self.optimizer, t.precision, self.dist.fsdp)
        self.batches = BatchSizeWarmup(t, self.dist.world_size)
        for n in {self.batches.start, self.batches.full}:
            self.dist.share(n // t.micro_batch_size)  # the same number of micro-batches per rank, or a clear error
        self.spike = SpikeGuard(t.spike)
        self.state = TrainState(data_seed=t.seed)
        self._order = ShuffledOrder(len(self.train_windows), self.state.data_seed)
        self.flops_per_token = self.model.flops_per_token()
        self.peak_flops = peak_flops(self.device)
        # The loss of one micro-batch; the distillation unit swaps in its own on KD batches.
        self.compute_loss = lambda x, y: self.step_model(x, y)
        self.distill = DistillUnit.build(self) if cfg.distill.enabled else None

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict:
        t = self.cfg.train
        resumed = self._resume()
        self.log = (MetricsLog(self.run.root, t.max_steps, self.state.step, t.tensorboard, t.progress)
                    if self.dist.is_main else NullLog())
        status = "finished"
        try:
            if self.setup_notes:
                self.log.event("setup", self.state.step, world_size=self.dist.world_size, device=str(self.device),
                               applied="; ".join(self.setup_notes))
            if resumed is None:
                self._save()  # step 0: a rollback target exists from the first step on
                self.log.log({"step": 0, "tokens": 0, "val_bpb": self.evaluate()} if self.val_windows else {"step": 0})
            else:
                self.log.event("resume", self.state.step, checkpoint=str(resumed.path))
            while self.state.step < t.max_steps:
                # checked before the step, so rerunning a run halted at N stays at N instead of training N+1
                if t.halt_at_step is not None and self.state.step >= t.halt_at_step:
                    status = "halted"
                    break
                record = self.train_step()
                if record is None:
                    continue  # rolled back
                self.after_step(record)
        except KeyboardInterrupt:
            self.log.event("interrupted", self.state.step)
            self._save()
            raise
        finally:
            self.log.close()
        if not self._saved_at_current_step():
            self._save()
        summary = {"status": status, "step": self.state.step, "tokens": self.state.tokens,
                   "rollbacks": self.state.rollbacks, "elapsed_s": round(self.state.elapsed_s, 2),
                   "parameters": self.model.num_params(), "device": str(self.device),
                   "world_size": self.dist.world_size, "checkpoint": str(self._last_saved)}
        if self.dist.is_main:
            self.run.write_summary("train", summary)
        return summary

    def train_step(self) -> dict | None:
        """One optimiser step over a batch of micro-batches; None if it was a spike and we rolled back."""
        t, seq = self.cfg.train, self.cfg.model.context_length
        start = time.perf_counter()
        batch_size = self.batches.batch_size(self.state.tokens)
        lr = lr_at(self.state.step, t) * self.batches.lr_scale(batch_size)
        if self.state.step + 1 == t.inject_spike_at_step and not self.state.spike_injected:
            # Testing aid: one wildly oversized update, the way real instabilities start; the loss of the
            # next step spikes and the guard must roll back past this one.
            lr, self.state.spike_injected = lr * 1000, True
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        n_micro = batch_size // t.micro_batch_size
        mine = self.dist.share(n_micro)  # this rank's micro-batches of the global batch
        total = torch.zeros((), device=self.device)
        kd = self.distill is not None and self.distill.is_kd_step(self.state.step)
        if kd:
            self.distill.start_step()
        for i in mine:
            x, y = self.distill.micro_batch(i) if kd else self.micro_batch(self.state.samples + i * t.micro_batch_size)
            with self.autocast():
                loss = (self.distill.loss if kd else self.compute_loss)(x, y)
            (loss / len(mine)).backward()  # FSDP averages the gradients over the ranks
            total += loss.detach()
        loss = self.dist.sum(total) / n_micro
        grad_norm = clip_grad_norm(self.model, t.grad_clip)
        reason = self.spike.check(loss, grad_norm)
        if reason is not None:
            self.rollback(reason)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.spike.accept(loss)
        tokens = batch_size * seq
        dt = time.perf_counter() - start
        s = self.state
        s.step, s.tokens, s.elapsed_s = s.step + 1, s.tokens + tokens, s.elapsed_s + dt
        if kd:
            s.kd_samples += batch_size
        else:
            s.samples += batch_size
        record = {"step": s.step, "loss": loss, "lr": lr, "batch_size": batch_size, "tokens": s.tokens,
                  "tokens_per_s": tokens / dt, "grad_norm": grad_norm, "elapsed_s": s.elapsed_s}
        if self.dist.world_size > 1:
            record["tokens_per_s_per_gpu"] = tokens / dt / self.dist.world_size
        if self.peak_flops:
            record["mfu"] = self.flops_per_token * tokens / dt / (self.peak_flops * self.dist.world_size)
        if kd:
            record.update(self.distill.record())
        return record

    def micro_batch(self, first_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._order.seed != self.state.data_seed:
            self._order = ShuffledOrder(len(self.train_windows), self.state.data_seed)
        idx = self._order.take(first_sample, self.cfg.train.micro_batch_size)
        batch = torch.from_numpy(self.train_windows.batch(idx))
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def after_step(self, record: dict) -> None:
        t, step = self.cfg.train, self.state.step
        if self.val_windows is not None and ((t.eval_every and step % t.eval_every == 0) or step == t.max_steps):
            record["val_bpb"] = self.evaluate()
        if step % t.log_every == 0 or "val_bpb" in record or step == t.max_steps:
            self.log.log(record)
        if step % t.checkpoint_every == 0 or step == t.halt_at_step:
            self._save()

    # ------------------------------------------------------------------ units the loop calls

    def evaluate(self) -> float:
        t = self.cfg.train
        return bits_per_byte(self.step_model, self.val_windows, self.token_bytes, t.eval_batches * t.micro_batch_size,
                             t.micro_batch_size, self.device, self.autocast)

    def rollback(self, reason: str) -> None:
        """Back to the last good checkpoint with a new data order and dropout seed; capped."""
        t = self.cfg.train
        failed_step, count = self.state.step + 1, self.state.rollbacks + 1
        if count > t.spike.max_rollbacks:
            self.log.event("rollback_limit", failed_step, reason=reason, rollbacks=count - 1)
            raise LokiError(f"loss spike at step {failed_step} ({reason}) after {count - 1} rollbacks "
                            f"(train.spike.max_rollbacks={t.spike.max_rollbacks}); giving up. The last good "
                            f"checkpoint is {self._last_saved}")
        ckpt = self._latest()
        if ckpt is None:
            raise LokiError(f"loss spike at step {failed_step} ({reason}) and no checkpoint to roll back to")
        injected = self.state.spike_injected
        self._load(ckpt)
        self.state.rollbacks, self.state.spike_injected = count, injected
        self.state.data_seed = t.seed + 1000 * count
        torch.manual_seed(t.seed + self.dist.rank + 7919 * count)  # new dropout masks too, still distinct per rank
        self.optimizer.zero_grad(set_to_none=True)
        self.log.rewind(ckpt.step)
        self.log.event("rollback", failed_step, reason=reason, to_step=ckpt.step, rollbacks=count,
                       new_data_seed=self.state.data_seed)

    def _latest(self) -> Checkpoint | None:
        """The newest valid checkpoint: rank 0 verifies the checksums and tells the others."""
        return self.dist.from_main(lambda: latest_checkpoint(self.run.checkpoints))

    def _resume(self) -> Checkpoint | None:
        ckpt = self._latest()
        if ckpt is None:
            return None
        saved_model = ckpt.state["config"]["model"]
        if saved_model != to_dict(self.cfg.model):
            changed = [k for k in saved_model if saved_model[k] != getattr(self.cfg.model, k, None)]
            raise LokiError(f"{self.run.root} holds a checkpoint of a different model (model.{', model.'.join(changed)} "
                            f"changed); use a new run_dir or restore those settings")
        if ckpt.state.get("tokenizer_sha256") != self.tokenizer_sha256:
            raise LokiError(f"{self.run.root} holds a checkpoint trained with a different tokenizer than "
                            f"{self.run.tokenizer} (its data or settings changed since); use a new run_dir")
        self._load(ckpt)
        return ckpt

    def _load(self, ckpt: Checkpoint) -> None:
        dcp.load(ckpt, self.model, self.optimizer, self.dist)
        self.state = TrainState(**ckpt.state["trainer"])
        self.spike.load_state_dict(ckpt.state["spike"])
        self._last_saved = ckpt.path

    def _save(self) -> None:
        state = {"step": self.state.step, "trainer": dataclasses.asdict(self.state),
                 "spike": self.spike.state_dict(), "config": to_dict(self.cfg),
                 "tokenizer_sha256": self.tokenizer_sha256}
        self._last_saved = dcp.save(self.run.checkpoints, self.state.step, self.model, self.optimizer, state,
                                    self.cfg.train.keep_checkpoints, self.dist, self.sharded_checkpoints)

    def _saved_at_current_step(self) -> bool:
        return getattr(self, "_last_saved", None) is not None and self._last_saved.name == f"step_{self.state.step:08d}"


def train(cfg: Config) -> dict:
    if env_rank() == 0:
        RunDir(cfg).save_config()
    # Started here, not in Trainer, so the process group is closed even when Trainer(cfg) itself fails
    # (e.g. a missing teacher cache): a leaked group hangs or breaks the next one in this process.
    dist = init_distributed(cfg.train.device, cfg.train.fsdp)
    try:
        return Trainer(cfg, dist).fit()
    finally:
        dist.close()
