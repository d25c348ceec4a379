"""The trainer's distillation unit: which steps are KD batches, what they hold, and their minimum-rule loss.

Every `distill.every`-th optimiser step (the 4th, 8th, ... by default) the trainer takes its micro-batches and
their loss from this unit instead of the ordinary data order. KD batches walk their own list of training
windows (the windows every teacher's cache covers, in the cache's order) with a cursor kept in the trainer's
state (`kd_samples`), so a resumed or rolled-back run replays exactly the same KD batches; the ordinary data
order does not advance on KD steps. Both students of an experiment therefore see the same token budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lokilm.distill.cache import CacheError, TeacherCache, cache_root, kd_windows, shards_fingerprint
from lokilm.distill.losses import minimum_rule, soft_token_loss, token_ce
from lokilm.distill.teachers import cache_names, lokilm_checkpoint
from lokilm.errors import LokiError
from lokilm.shards import TokenWindows
from lokilm.train.units import Step, Unit

if TYPE_CHECKING:
    from lokilm.checkpoint.single import Checkpoint

GROUND_TRUTH = "ground_truth"


def all_train_windows(trainer) -> TokenWindows:
    """The run's training windows as `loki distill generate` numbers them (TokenWindows over the shards' train
    split). With data.mixture the batch source holds one TokenWindows per source (a dict): KD took len() of the
    dict (3 windows) and called .batch on it, an AttributeError traceback in logit mode and a false "the cache names
    windows the shards do not have" in sequence mode. shards/meta.json lists every source's train shards, so the
    KD windows are drawn from all sources together, as the cache was generated."""
    windows = trainer.data.windows
    if isinstance(windows, dict):  # opening it maps the shards, nothing is read
        return TokenWindows(trainer.run.shards, "train", trainer.cfg.model.context_length)
    return windows


class DistillUnit(Unit):
    """What both modes share: the KD schedule, the cursor over KD windows, and the per-step win counts. A trainer
    unit that is the batch source of every KD step; its cursor (`kd_samples`) is its checkpointed state."""
    name = "distill"

    def __init__(self, trainer, windows: np.ndarray, teachers: list[str]):
        self.windows = windows
        self.settings, self.micro = trainer.cfg.distill, trainer.cfg.train.micro_batch_size
        self.model, self.device, self.dist = trainer.step_model, trainer.device, trainer.dist
        self.train_windows, self.logging = all_train_windows(trainer), trainer.logging
        self.targets = [GROUND_TRUTH, *teachers]
        self.kd_samples = 0  # KD windows consumed: the ordinary data order does not advance on KD steps
        self._reset()

    @staticmethod
    def build(trainer) -> DistillUnit:
        d = trainer.cfg.distill
        cache_names(d.teachers, reserved=(GROUND_TRUTH,))
        return SequenceKD(trainer) if d.mode == "sequence" else LogitKD(trainer)

    def is_kd_step(self, number: int) -> bool:
        """Step `number` (1-based) is a KD batch if it is a multiple of k."""
        return number % self.settings.every == 0

    # ------------------------------------------------------------------ the unit's hooks

    def batch_source(self, step: Step) -> DistillUnit | None:
        if not self.is_kd_step(step.number):
            return None
        self.start_step(step)
        return self

    def micro_batch(self, step: Step, i: int) -> tuple[Tensor, Tensor]:
        """The i-th micro-batch of the current KD step: the next KD windows after the cursor, wrapping around."""
        first = self.kd_samples + i * self.micro
        return self._batch(self.windows[np.arange(first, first + self.micro) % len(self.windows)])

    def consumed(self, step: Step) -> None:
        self.kd_samples += step.batch_size
        step.record.update(self.record())

    def state_dict(self) -> dict:
        return {"kd_samples": self.kd_samples}

    def load_state_dict(self, state: dict) -> None:
        self.kd_samples = int(state.get("kd_samples", 0))

    def start_step(self, step: Step) -> None:
        """A KD step begins (on every rank): its win counts and per-target losses start from zero. The wrap is
        decided here from the whole batch, not per micro-batch: under torchrun it may fall in another rank's
        share, and only rank 0 logs."""
        self._reset()
        first, n = self.kd_samples, len(self.windows)
        # the step whose KD samples [first, first + batch) reach index n (window 0 again): once per run
        if first <= n < first + step.batch_size:
            self.logging.event("kd_windows_wrapped", step.number, windows=n,
                               note="every KD window has been used; starting over (generate a larger cache "
                                    "with distill.cache_sequences to avoid repeats)")

    def _reset(self) -> None:
        k = len(self.targets)
        self._wins, self._loss_sums, self._tokens = (torch.zeros(k, dtype=torch.float64) for _ in range(3))

    def _minimum(self, losses: Tensor, mask: Tensor) -> Tensor:
        loss, wins = minimum_rule(losses, mask, self.settings.reduction)
        m = mask.to(losses.dtype)
        self._wins += wins.detach().cpu().double()
        self._loss_sums += (losses.detach() * m).sum((1, 2)).cpu().double()
        self._tokens += m.sum((1, 2)).cpu().double()
        return loss

    def record(self) -> dict:
        """This KD step's figures for metrics.jsonl: how often each target won, and its mean loss per token,
        summed over every rank's micro-batches (each rank sees only its share of the batch)."""
        k = len(self.targets)
        wins, sums, tokens = self.dist.all_sum(
            torch.cat([self._wins, self._loss_sums, self._tokens])).cpu().split(k)
        out: dict = {"kd": True}
        for name, w, total, n in zip(self.targets, wins.tolist(), sums.tolist(), tokens.tolist()):
            out[f"kd_wins.{name}"] = round(w)
            out[f"kd_loss.{name}"] = total / n if n else float("nan")
        return out

    def _batch(self, windows: np.ndarray) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError


class SequenceKD(DistillUnit):
    """Teachers' continuations from the cache: target k of window w is w's first `prefix_tokens` tokens followed
    by teacher k's continuation. The student reads each target (one forward of K x B sequences) and is scored
    on every position that has a target: the prefix, shared by all, and the target's own continuation."""

    def __init__(self, trainer):
        cfg = trainer.cfg
        root, fingerprint = cache_root(cfg), shards_fingerprint(trainer.run.shards)
        self.caches = []
        for t in cfg.distill.teachers:  # a missing or mismatched cache: CacheError naming the teacher and the fix
            self.caches.append(TeacherCache.open(root / t.name, tokenizer_sha256=trainer.tokenizer_sha256,
                                                 shards_fingerprint=fingerprint,
                                                 context_length=cfg.model.context_length))
        windows = np.asarray([w for w in self.caches[0].windows if all(w in c for c in self.caches[1:])], np.int64)
        if not len(windows):
            raise CacheError(f"the teacher caches in {root} ({', '.join(c.name for c in self.caches)}) have no "
                             "training window in common; regenerate them with `loki distill generate`")
        if windows.max() >= len(all_train_windows(trainer)):
            raise CacheError(f"teacher {self.caches[0].name!r}: the cache in {root} names training windows the run's "
                             "shards do not have; rerun `loki distill generate`")
        super().__init__(trainer, windows, [c.name for c in self.caches])

    def _batch(self, windows: np.ndarray) -> tuple[Tensor, Tensor]:
        truth = self.train_windows.batch(windows)  # (B, T + 1)
        length = truth.shape[1]
        seqs = np.zeros((len(self.targets), *truth.shape), dtype=np.int64)
        valid = np.zeros(seqs.shape, dtype=bool)
        seqs[0], valid[0] = truth, True
        for k, cache in enumerate(self.caches, start=1):
            p = cache.prefix_tokens
            for b, w in enumerate(windows):
                cont = cache.continuation(w)[: length - p]
                seqs[k, b, :p], seqs[k, b, p: p + len(cont)] = truth[b, :p], cont
                valid[k, b, : p + len(cont)] = True
        y = np.where(valid[..., 1:], seqs[..., 1:], -1)  # no target past a continuation's end
        return torch.from_numpy(seqs[..., :-1]).to(self.device), torch.from_numpy(y).to(self.device)

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        K, B, T = x.shape
        logits = self.model(x.reshape(K * B, T))
        losses, mask = token_ce(logits.view(K, B, T, -1), y)
        return self._minimum(losses, mask)


class LogitKD(DistillUnit):
    """Live lokilm teachers with the student's tokenizer: targets are the ground truth (hard CE) and each
    teacher's next-token distribution (soft CE, or forward / reverse KL), all on the same windows."""

    def __init__(self, trainer):
        from lokilm.fileio import sha256_file
        from lokilm.checkpoint import load_model
        from lokilm.rundir import RunDir

        cfg, d = trainer.cfg, trainer.cfg.distill
        self.teachers = []
        for t in d.teachers:
            if t.kind != "lokilm":
                raise LokiError(f"teacher {t.name!r} is kind {t.kind}; distill.mode=logit needs lokilm teachers that "
                                "share the student's tokenizer (use distill.mode=sequence for other teachers)")
            run_dir, ckpt = _teacher_checkpoint(trainer, t)
            model_cfg = ckpt.state["config"]["model"]
            # checkpoints from before the trainer recorded it: the teacher run's tokenizer file
            tok_sha = ckpt.state.get("tokenizer_sha256") or sha256_file(RunDir.open(run_dir).tokenizer)
            if tok_sha != trainer.tokenizer_sha256 or model_cfg["vocab_size"] != cfg.model.vocab_size:
                raise LokiError(f"teacher {t.name!r} ({t.path}) has another vocabulary than the student (tokenizer "
                                f"sha256 {tok_sha[:12]} vs {trainer.tokenizer_sha256[:12]}, "
                                f"vocab_size {model_cfg['vocab_size']} vs {cfg.model.vocab_size}): logit-level KD needs "
                                "the same tokenizer; use distill.mode=sequence")
            if model_cfg["context_length"] < cfg.model.context_length:
                raise LokiError(f"teacher {t.name!r} has context_length {model_cfg['context_length']}, shorter than "
                                f"the student's {cfg.model.context_length}")
            model, _ = load_model(run_dir, trainer.device, ckpt)
            self.teachers.append(model.requires_grad_(False))
        n = len(all_train_windows(trainer))
        super().__init__(trainer, kd_windows(n, n, d.seed), [t.name for t in d.teachers])

    def _batch(self, windows: np.ndarray) -> tuple[Tensor, Tensor]:
        batch = torch.from_numpy(self.train_windows.batch(windows)).to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        d = self.settings
        logits = self.model(x)
        truth, mask = token_ce(logits, y)
        losses = [truth]
        for teacher in self.teachers:
            with torch.no_grad():
                soft_targets = teacher(x)
            losses.append(soft_token_loss(logits, soft_targets, d.logit_loss, d.logit_top_k) * mask)
        return self._minimum(torch.stack(losses), mask.expand(len(losses), *mask.shape))


def _teacher_checkpoint(trainer, t) -> tuple[Path, Checkpoint]:
    """A logit teacher's run directory and checkpoint, chosen once: rank 0 resolves the path (verifying the
    checksums) and tells the others, so every rank loads the same checkpoint even while the teacher's run
    is still writing new ones. A bad path is the same error on every rank rather than a hang in the broadcast."""
    def resolve():
        try:
            return lokilm_checkpoint(t, t.name)
        except LokiError as e:
            return e

    found = trainer.dist.from_main(resolve)
    if isinstance(found, LokiError):
        raise found
    return found
