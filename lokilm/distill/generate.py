"""`loki distill generate`: every teacher continues the KD windows' prefixes into its teacher cache.

For each window of the plan (kd_windows), the first prefix_tokens student tokens are decoded to text,
the teacher continues that text, the continuation is re-tokenised with the student's tokenizer on its
own (so the prefix tokens stay exactly the window's) and cut to the window's tail. A continuation that
shares an n-gram with a benchmark is regenerated with the next seed, up to distill.max_regenerations
times, then dropped. Every batch is committed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
import time
import zlib

import numpy as np
import torch

from lokilm.config import Config
from lokilm.distill.cache import (
    CacheError,
    TeacherCacheWriter,
    cache_root,
    kd_windows,
    prefix_tokens,
    shards_fingerprint,
)
from lokilm.distill.teachers import Teacher, cache_names, load_teacher
from lokilm.fileio import sha256_file
from lokilm.rundir import RunDir
from lokilm.shards import TokenWindows
from lokilm.tokenizer import EOT, decode, encode, load_tokenizer

# Teacher tokens asked for per student token of the tail, until the teacher's own ratio is measured; the
# continuation is cut to the tail after re-tokenising, so the margin makes sure it fills it.
NEW_TOKENS_FACTOR = 1.25
MARGIN = 1.15


def kd_sequences(cfg: Config, world_size: int | None = None) -> int:
    """Training windows the run's KD batches consume: distill.cache_sequences, else the sum of the batch sizes
    of the KD steps (steps s with (s + 1) % every == 0), from the trainer's own schedule on the world size the
    training will run on (WORLD_SIZE under torchrun): batch-size warmup rounds to whole micro-batches per
    process, so 8 processes take smaller early batches than one."""
    from lokilm.parallel.dist import env_world_size
    from lokilm.train.schedule import batch_sizes

    d = cfg.distill
    if d.cache_sequences:
        return d.cache_sequences
    sizes = batch_sizes(cfg.train, cfg.model.context_length, world_size or env_world_size())
    return sum(size for step, size in enumerate(sizes) if (step + 1) % d.every == 0)


def prompt_text(tok, prefix: np.ndarray) -> str:
    """The prefix as text for a teacher; the student's document separator becomes a blank line, since a
    teacher would read the literal marker as text (or as its own, different special token)."""
    return decode(tok, prefix.tolist()).replace(EOT, "\n\n")


class Continuer:
    """Turns a teacher's text continuations into student tokens, regenerating contaminated ones."""

    def __init__(self, teacher: Teacher, tok, tail: int, cfg: Config, index=None):
        self.teacher, self.tok, self.tail, self.d, self.index = teacher, tok, tail, cfg.distill, index
        self.contaminated_hits = 0
        from lokilm.curate.decontaminate import BenchmarkHits

        self.hits = BenchmarkHits()  # per benchmark: continuations rejected, their bytes, matched n-grams
        self._student, self._teacher = 0, 0  # tokens of all continuations so far, in either tokenizer

    @property
    def max_new_tokens(self) -> int:
        """Enough teacher tokens to fill the tail: its length in teacher tokens by the ratio measured so far
        (a teacher with a larger vocabulary than the student's needs fewer), plus a margin."""
        if not self._student or not self._teacher:
            return max(1, math.ceil(self.tail * NEW_TOKENS_FACTOR))
        per_student = self._teacher / self._student
        return max(1, min(2 * self.tail, math.ceil(self.tail * per_student * MARGIN)))

    def contaminated(self, prompt: str, text: str) -> bool:
        """True if a benchmark n-gram reaches into `text`; the end of the prompt is included, so a teacher
        completing a benchmark item begun in the prefix is caught too."""
        if self.index is None:
            return False
        context = prompt[-2000:]
        found = [m for m in self.index.matches(context + text) if m[1] > len(context)]
        if found:
            self.hits.add(f"continuation {self.contaminated_hits}", context + text, found, "dropped", len(text.encode()))
        return bool(found)

    def run(self, prompts: list[str], seed: int) -> list[tuple[np.ndarray, int, int, str | None]]:
        """Per prompt: (student tokens, seed used, regenerations, None | "contaminated" | "empty")."""
        d = self.d
        results: list = [None] * len(prompts)
        pending = list(range(len(prompts)))
        for attempt in range(d.max_regenerations + 1):
            before = getattr(self.teacher, "tokens_generated", None)
            texts = self.teacher.generate([prompts[i] for i in pending], self.max_new_tokens, seed + attempt,
                                          d.temperature, d.top_k, d.top_p)
            encoded = [encode(self.tok, text) for text in texts]
            if before is not None:
                self._teacher += self.teacher.tokens_generated - before
                self._student += sum(map(len, encoded))
            still = []
            for i, text, full in zip(pending, texts, encoded):
                ids = np.asarray(full[: self.tail], dtype=np.int64)
                if not text.strip() or not len(ids):
                    results[i] = (ids[:0], seed + attempt, attempt, "empty")
                elif self.contaminated(prompts[i], decode(self.tok, ids.tolist())):
                    self.contaminated_hits += 1
                    still.append(i)
                else:
                    results[i] = (ids, seed + attempt, attempt, None)
            pending = still
            if not pending:
                break
        for i in pending:
            results[i] = (np.zeros(0, np.int64), seed + d.max_regenerations, d.max_regenerations, "contaminated")
        return results


def benchmark_index(cfg: Config):
    """The curate stage's benchmark n-gram index (built once and cached on disk by NgramIndex)."""
    from lokilm.curate.decontaminate import NgramIndex

    dc = cfg.curate.decontaminate
    return NgramIndex.for_benchmarks(dc.n, dc.benchmarks, dc.cache_dir)


def generate_stage(cfg: Config, restart: bool = False, progress: bool = True, teachers: dict | None = None) -> dict:
    """Fill every teacher's cache; `teachers` maps names to already loaded teachers (reused, not reloaded)."""
    d, run = cfg.distill, RunDir(cfg)
    names = cache_names(d.teachers)
    tok = load_tokenizer(run.tokenizer)
    ctx = cfg.model.context_length
    prefix = prefix_tokens(cfg)
    windows = TokenWindows(run.shards, "train", ctx)
    plan = kd_windows(len(windows), kd_sequences(cfg), d.seed)
    base_meta = {"tokenizer_sha256": sha256_file(run.tokenizer), "shards_fingerprint": shards_fingerprint(run.shards),
                 "context_length": ctx, "prefix_tokens": prefix,
                 "sampling": {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p, "seed": d.seed},
                 # not part of the identity: changing them keeps the continuations made so far
                 "decontaminate": d.decontaminate, "max_regenerations": d.max_regenerations}
    index = benchmark_index(cfg) if d.decontaminate else None
    summary = {"windows_planned": len(plan), "prefix_tokens": prefix, "tail_tokens": ctx + 1 - prefix,
               "torch_threads": torch.get_num_threads(), "teachers": {}}
    for settings, name in zip(d.teachers, names):
        teacher = (teachers or {}).get(name)
        summary["teachers"][name] = _fill(cfg, settings, name, teacher, tok, windows, plan, base_meta, index,
                                          restart, progress)
    run.write_summary("distill_generate", summary)
    return summary


def _fill(cfg, settings, name, teacher, tok, windows, plan, base_meta, index, restart, progress) -> dict:
    from tqdm import tqdm

    d = cfg.distill
    path = cache_root(cfg) / name
    source = f"{settings.kind}:{settings.path}" + (f"/{settings.gguf_file}" if settings.gguf_file else "")
    writer = TeacherCacheWriter(path, {"teacher": name, "source": source, **base_meta}, restart=restart)
    todo = [int(w) for w in plan if int(w) not in writer.done]
    stats = {"windows": len(plan), "resumed_with": len(writer.done), "cache": str(path)}
    try:
        load_s = 0.0
        if todo and teacher is None:
            start = time.perf_counter()
            teacher = load_teacher(settings)
            load_s = time.perf_counter() - start
        # What was loaded (a lokilm teacher: its checkpoint) is not part of the identity, which is checked before
        # loading: a run directory that trained on between a kill and the rerun, or a larger cache_sequences
        # later, went on with the newer checkpoint, and the cache mixed two teachers without a word.
        loaded = getattr(teacher, "source", None) if teacher is not None else None
        before_now = writer.previous.get("loaded_from")
        if loaded and before_now and loaded != before_now and writer.done:
            raise CacheError(f"teacher {name!r}: the cache in {path} was made with {before_now}, the teacher now "
                             f"loads {loaded}: finishing it would mix two teachers; rerun with --restart to regenerate "
                             "it with the teacher as it is now")
        if loaded or before_now:
            writer.meta["loaded_from"] = loaded or before_now
        prefix, tail = base_meta["prefix_tokens"], base_meta["context_length"] + 1 - base_meta["prefix_tokens"]
        cont = Continuer(teacher, tok, tail, cfg, index) if todo else None
        gen_s, student_tokens, teacher_tokens, kept = 0.0, 0, 0, 0
        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc=f"teacher {name}", unit=" seq",
                   disable=not progress)
        for b in range(0, len(todo), d.gen_batch_size):
            batch = todo[b: b + d.gen_batch_size]
            prompts = [prompt_text(tok, windows[w][:prefix]) for w in batch]
            # One seed per batch, a function of the run's seed and the batch's first window: a resumed run
            # continues the same windows with the same seeds
            seed = zlib.crc32(f"{d.seed}:{batch[0]}".encode()) & 0x7FFFFFFF
            before = getattr(teacher, "tokens_generated", 0)
            start = time.perf_counter()
            for w, (ids, used, regen, dropped) in zip(batch, cont.run(prompts, seed)):
                writer.add(w, ids, used, regen, dropped=dropped)
                student_tokens, kept = student_tokens + len(ids), kept + (dropped is None)
            gen_s += time.perf_counter() - start
            teacher_tokens += getattr(teacher, "tokens_generated", 0) - before
            writer.commit()
            bar.update(len(batch))
            bar.set_postfix(student_tok_s=f"{student_tokens / gen_s:.1f}", contaminated=cont.contaminated_hits)
        bar.close()
        counts = writer.counts
        if counts["generated"] == 0:
            raise CacheError(f"teacher {name!r}: none of its {len(plan)} continuations is usable "
                             f"({counts['empty']} empty, {counts['dropped_contaminated']} contaminated after "
                             f"{d.max_regenerations} regenerations each); fix the teacher or its settings, "
                             "then rerun with --restart")
        run_stats = {"load_s": round(load_s, 2), "generate_s": round(gen_s, 2), "student_tokens": student_tokens,
                     "teacher_tokens": teacher_tokens,
                     "student_tokens_per_s": round(student_tokens / gen_s, 2) if gen_s else None,
                     "teacher_tokens_per_s": round(teacher_tokens / gen_s, 2) if gen_s and teacher_tokens else None,
                     "contaminated_hits": cont.contaminated_hits if cont else 0,
                     "contaminated_by_benchmark": cont.hits.to_dict() if cont else {}}
        if kept:
            # How much of the tail the continuations fill (1.0: all of it): the check on max_new_tokens
            run_stats["tail_fill"] = round(student_tokens / (tail * kept), 3)
        # a rerun with nothing left to generate keeps the statistics of the run that made the continuations
        last_run = run_stats if todo else writer.previous.get("last_run", run_stats)
        writer.finish({}, extra={"last_run": last_run})
        return {**stats, **dict(counts), **run_stats}
    finally:
        writer.close()
