"""`loki curate`: the stage list as datatrove pipelines, run by the configured executor, then the report.

The data flows through these stages, each switchable in the `curate:` config section:

    read -> normalise -> heuristics -> exact_dedup -> minhash -> [embed] -> classifier -> semdedup
         -> prototypes -> decontaminate -> facts -> write (curate/output/*.jsonl)

Deduplication is global, so the flow is cut into datatrove phases at each dedup: a phase writes its survivors
as JSONL and the dedup signatures; the next phases find the duplicates and filter the JSONL. The embedding
stages need all documents at once and run as one task. Every removing step hands what it drops to a removals
writer, and a Tally step after every stage counts documents and bytes, which the report balances.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.dedup import (
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from lokilm.config import Config
from lokilm.curate.accounting import Tally, removals_writer
from lokilm.curate.heuristics import RegexWordTokenizer, heuristic_filters
from lokilm.curate.normalise import Normalise
from lokilm.curate.reader import LokiReader, SizeLimit, read_report, reading_order_priority
from lokilm.curate.report import write_report
from lokilm.data.readers import DataError
from lokilm.errors import LokiError
from lokilm.data.inputs import curated_sources
from lokilm.fileio import fingerprint
from lokilm.rundir import RunDir


def doc_text(doc: Document) -> str:  # the exact-dedup key: normalisation has already run
    return doc.text


class RankJsonlReader(JsonlReader):
    """Reads back exactly the file this rank wrote in the previous phase: datatrove's dedup filters match
    documents by their position in the stream that rank signed."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl"
        if self.data_folder.exists(name):
            yield from self.read_files_shard([name])


def curated_record(writer, doc: Document) -> dict:
    """What the curated JSONL holds per document: lokilm's readers and `loki tokenize` read `text`."""
    record = {"id": doc.id, "text": doc.text, "source": doc.metadata.get("source")}
    if "quality" in doc.metadata:
        record["quality"] = doc.metadata["quality"]
    return record


def curate_stage(cfg: Config) -> dict:
    """Run the pipeline into run_dir/curate/ and return the summary. Skipped when done on the same input content and
    settings; an interrupted run on the same inputs goes on from its unfinished tasks. The summary says "done" only
    once the report is written and its accounting balances, so a killed or failed run is never taken as done."""
    run, c = RunDir(cfg), cfg.curate
    sources = curated_sources(cfg)
    if cfg.data.mixture and not cfg.curate.enabled:
        # curated_sources is empty then, and the status below blamed `curate: false` on sources that had none
        raise LokiError("data.mixture sources are curated only with curate.enabled=true (it is false here, so "
                        "`loki curate` has nothing to do and the tokenizer would read the sources uncurated)")
    if cfg.data.mixture and not sources:
        return {"status": "off (no data.mixture source is curated: each has curate: false)"}
    for path in [p for _, inputs, _ in sources for p in inputs] if sources else cfg.data.inputs:
        if not Path(path).exists():
            raise DataError(f"input path does not exist: {path}")
    _validate(c)
    # keyed by the inputs' content (adding a file re-runs, a moved corpus does not); where, and how many at once,
    # the tasks run does not change the output; the number of tasks names the files
    # a list, not a dict keyed by name: the sources' order is the reading order, which decides which copy of a
    # duplicate across two sources is kept, and dicts compare equal in any order (reordered sources were "done")
    data = ([{"name": name, "inputs": fingerprint(inputs), "text_field": field} for name, inputs, field in sources]
            if sources else fingerprint(cfg.data.inputs))
    wanted = {"data": data, "text_field": cfg.data.text_field,
              "curate": {**asdict(c), "executor": {"tasks": c.executor.tasks}}}
    done = run.finished("curate", wanted, run.curate_report, run.curated)
    if done:
        return done
    previous = run.read_summary("curate")
    if run.curate.exists() and not (previous and previous.get("inputs") == wanted):
        shutil.rmtree(run.curate)  # other inputs or settings: nothing from an earlier run may leak into this one
    for stale in (run.curate_report, run.curate_report_md, run.curate_removals):
        stale.unlink(missing_ok=True)  # a report exists only for a run whose accounting balanced
    _quiet_datatrove()
    work = run.curate_work
    phases = build_phases(cfg, work)
    if c.executor.kind == "slurm":
        _submit_slurm(phases, c, work)
        summary = {"status": "submitted to slurm", "inputs": wanted, "work": str(work)}
        run.write_summary("curate", summary)
        return summary
    run.write_summary("curate", {"status": "running", "inputs": wanted})  # run again, an interrupted run resumes
    start, timings = time.time(), {}
    for name, pipeline, tasks in phases:
        t0, logs = time.time(), work / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "console.log", "w") as console, contextlib.redirect_stderr(console):
            _executor(c.executor, pipeline, tasks, logs).run()  # datatrove's chatty logs go to the file
        timings[name] = round(time.time() - t0, 2)
        print(f"curate: {name} done in {timings[name]:.1f} s", flush=True)
        if name == "filter":
            _, error = read_report(work / "read")
            if error:
                raise DataError(error)
    summary = write_report(run, cfg, timings, round(time.time() - start, 2))  # raises if it does not balance
    a = summary["accounting"]
    if a["kept"] == 0:
        removed = ", ".join(f"{s['stage']} {sum(s['removed'].values()):,}" for s in summary["stages"] if s["removed"])
        raise LokiError(f"curation kept none of the {a['documents_in']:,} documents read (removed by: "
                        f"{removed or 'nothing'}); there is nothing to train on. See {run.curate_report_md} for "
                        "examples, and loosen the stage that removed them")
    summary = {"status": "done", "inputs": wanted, **summary}
    run.write_summary("curate", summary)
    for name, part in (summary.get("by_source") or {}).items():
        if not part["kept"]:  # said now: the tokenizer stops on such a source, after the curation reported "done"
            removed = ", ".join(f"{stage} {n:,}" for stage, n in part["removed"].items())
            print(f"loki: warning: curation kept none of data.mixture source {name!r} (removed by: {removed or '?'}); "
                  "the tokenizer will refuse it: loosen that stage, or give the source `curate: false`", file=sys.stderr)
    return summary


def _validate(c) -> None:
    """Values that would crash deep in a worker or silently keep nothing."""
    checks = [(c.heuristics.min_doc_words is None or c.heuristics.min_doc_words >= 1, "curate.heuristics.min_doc_words",
               "must be >= 1 (datatrove's rule divides by the word count)"),
              (0 < c.prototypes.keep_fraction <= 1, "curate.prototypes.keep_fraction", "must be in (0, 1]"),
              (c.decontaminate.n >= 1, "curate.decontaminate.n", "must be >= 1"),
              (c.executor.tasks >= 1 and c.executor.workers >= 1, "curate.executor.tasks",
               "tasks and workers must be >= 1"),
              (c.read.max_doc_bytes > 0, "curate.read.max_doc_bytes", "must be positive")]
    for ok, key, message in checks:
        if not ok:
            raise LokiError(f"{key} {message}")


def build_phases(cfg: Config, work: Path) -> list[tuple[str, list, int]]:
    """(name, datatrove pipeline, tasks) in order."""
    c, tasks = cfg.curate, cfg.curate.executor.tasks
    removed = str(work / "removals")
    steps = [LokiReader(cfg.data.inputs, cfg.data.text_field, str(work / "read"), curated_sources(cfg) or None),
             Tally("input"),
             SizeLimit(c.read.max_doc_bytes, removals_writer(removed, "read", "document_too_large")), Tally("read")]
    if c.normalise.enabled:
        steps += [Normalise(c.normalise.form), Tally("normalise")]
    if c.heuristics.enabled:
        rules = heuristic_filters(c.heuristics, removals_writer(removed, "heuristics", "heuristic_rule"))
        steps += [*rules, Tally("heuristics")]
    phases, current = [], "filter"

    def cut(signer=None):  # end the current phase: write its survivors, optionally sign them for a dedup
        nonlocal steps, current
        out = str(work / current)
        phases.append((current, steps + [JsonlWriter(out, output_filename="${rank}.jsonl", compression=None)]
                       + ([signer] if signer else []), tasks))
        steps = [RankJsonlReader(out, compression=None, add_file_path=False)]

    if c.exact_dedup.enabled:
        exact = ExactDedupConfig(content_getter=doc_text, document_priority=reading_order_priority)
        cut(ExactDedupSignature(str(work / "exact_sigs"), exact))
        phases.append(("exact_find", [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), exact)], 1))
        current = "exact_dedup"
        dropped = removals_writer(removed, "exact_dedup", "exact_duplicate")
        steps += [ExactDedupFilter(str(work / "exact_dups"), exact, dropped), Tally("exact_dedup")]
    if c.minhash.enabled:
        m = c.minhash
        mh = MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                           seed=m.seed)
        if m.engine == "lokilm":
            from lokilm.curate.fast_minhash import FastMinhashDedupSignature as signature
        else:
            signature = MinhashDedupSignature
        cut(signature(str(work / "mh_sigs"), mh, language=RegexWordTokenizer()))
        buckets, remove = str(work / "mh_buckets"), str(work / "mh_remove")
        phases.append(("minhash_buckets", [MinhashDedupBuckets(str(work / "mh_sigs"), buckets, config=mh)], m.num_buckets))
        phases.append(("minhash_cluster", [MinhashDedupCluster(buckets, remove, config=mh)], 1))
        current = "minhash"
        steps += [MinhashDedupFilter(remove, removals_writer(removed, "minhash", "near_duplicate")),
                  Tally("minhash")]

    embedding = c.classifier.enabled or c.semdedup.enabled or c.prototypes.enabled
    if embedding and tasks > 1:  # the embedding stages see every document, in one task
        cut()
        steps, current = [JsonlReader(str(work / current), compression=None, add_file_path=False)], "embed"
    if embedding:
        steps += _embedding_steps(cfg, removed)
    if c.decontaminate.enabled:
        d = c.decontaminate
        steps += [_decontaminate(d, removed, str(work / "decontaminate")), Tally("decontaminate")]
    if c.facts.enabled:
        from lokilm.curate.facts import FactPruner

        steps += [FactPruner(), Tally("facts")]
    # a mixture's documents are written per source (curate/output/<source>/), which its shards are made from
    name = "${mixture_source}/${rank}.jsonl" if cfg.data.mixture else "${rank}.jsonl"
    steps += [JsonlWriter(str(RunDir(cfg).curated), output_filename=name, compression=None, adapter=curated_record)]
    phases.append((current, steps, 1 if embedding else tasks))
    return phases


def _embedding_steps(cfg: Config, removed: str) -> list:
    from lokilm.curate.embed_step import Embed

    c, steps = cfg.curate, [Embed(cfg.curate.embedding), Tally("embed")]
    if c.classifier.enabled:
        from lokilm.curate.classifier import QualityFilter, load_classifier

        model = load_classifier(c.classifier, c.embedding)
        dropped = removals_writer(removed, "classifier", "quality_below_threshold")
        steps += [QualityFilter(model, c.classifier.threshold, dropped),
                  Tally("classifier")]
    if c.semdedup.enabled:
        from lokilm.curate.semdedup import SemDedup

        s = c.semdedup
        steps += [SemDedup(s.eps, s.clusters, s.seed, removals_writer(removed, "semdedup", "semantic_duplicate")),
                  Tally("semdedup")]
    if c.prototypes.enabled:
        from lokilm.curate.prototypes import PrototypePrune

        p = c.prototypes
        dropped = removals_writer(removed, "prototypes", "prototype_pruned")
        steps += [PrototypePrune(p.keep_fraction, p.clusters, p.seed, dropped, p.per, cfg.data.inputs),
                  Tally("prototypes")]
    return steps


def _decontaminate(d, removed: str, hits: str):
    from lokilm.curate.decontaminate import Decontaminate

    dropped = removals_writer(removed, "decontaminate", "benchmark_overlap")
    return Decontaminate(d.n, d.mode, d.benchmarks, d.cache_dir, dropped, hits)


def _die_with_parent() -> None:
    """In a forked child: be killed when the process that forked it dies. datatrove's Manager process (started even
    for one worker) and its pool workers outlived a `kill -9` of `loki curate`: the Manager waits forever, and a
    worker would go on writing files the next run rewrites."""
    with contextlib.suppress(Exception):
        _prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != _forking[0]:  # the parent died before the call above took effect
        os._exit(1)


_forking = [0]
try:  # looked up here, not in the child: a dlopen in a child forked from a threaded process can deadlock
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None
if _prctl is not None:
    os.register_at_fork(before=lambda: _forking.__setitem__(0, os.getpid()), after_in_child=_die_with_parent)


def _executor(e, pipeline: list, tasks: int, logging_dir: Path):
    """Local: `workers` processes on this machine. Ray: tasks on the cluster `ray.init()` finds (a local one if
    none); like the local executor, it returns when the phase is done. Both skip tasks finished by an earlier run."""
    if e.kind == "ray":
        from datatrove.executor import RayPipelineExecutor

        return RayPipelineExecutor(pipeline=pipeline, tasks=tasks, logging_dir=str(logging_dir))
    from datatrove.executor import LocalPipelineExecutor

    # forked workers inherit the redirected stderr, so their datatrove logs go to the phase's console.log too
    return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=max(1, min(e.workers, tasks)),
                                 logging_dir=str(logging_dir), skip_completed=True, start_method="fork")


def _submit_slurm(phases: list, c, work: Path) -> None:
    """The phases as dependent Slurm jobs. The report needs the finished work folder: run `loki curate` again with
    `curate.executor.kind=local` once the jobs are done (finished tasks are skipped, the report is written)."""
    from datatrove.executor import SlurmPipelineExecutor

    previous, e = None, c.executor
    for name, pipeline, tasks in phases:
        previous = SlurmPipelineExecutor(pipeline=pipeline, tasks=tasks, time=e.slurm_time, partition=e.slurm_partition,
                                         cpus_per_task=e.slurm_cpus_per_task, job_name=f"loki-curate-{name}",
                                         logging_dir=str(work / "logs" / name), depends=previous)
    previous.run()


def _quiet_datatrove() -> None:
    """datatrove logs every file it opens at INFO; keep warnings on the terminal (full logs are in work/logs/)."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def curate_json(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k not in ("settings", "stages", "read")}, indent=2)
