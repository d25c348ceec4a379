"""MB/s of each curation stage on the same documents, in one process; the heuristics and MinHash signatures both as
lokilm's fast versions and as datatrove's own, one after the other, with a check that they give identical results.

    .venv/bin/python benchmarks/curate_throughput.py --inputs ../shared/data/corpus [--json] [--every 4] [--repeat 2]

Stages, in the pipeline's order (each on what the previous one kept): read (lokilm's readers), normalise, the three
heuristic filters, exact-dedup signatures, MinHash signatures, benchmark decontamination (the index is built or
loaded first, untimed). MB/s is the UTF-8 text going into a stage over its time: by default the process's CPU time
(--clock wall for elapsed time), since on a shared machine elapsed time mostly measures the other jobs. With --repeat N each heuristic
chain runs N times alternately (lokilm, datatrove, lokilm, ...) and the fastest time of each filter counts, so a
load spike from another process does not favour either. The filters run as in the pipeline: each document through
quality, repetition, C4 in turn until one drops it, each call timed (lokilm's filters share one analysis of a text). --json prints one JSON line per stage: for the heuristics "stage",
"lokilm_mb_per_s", "datatrove_mb_per_s", "speedup" and "identical" (decisions, reasons and rewritten texts); the same
for MinHash, where "identical" compares every signature file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datatrove.data import Document  # noqa: E402

from lokilm.curate.heuristics import heuristic_filters  # noqa: E402
from lokilm.curate.normalise import Normalise  # noqa: E402
from lokilm.curate.settings import CurateConfig, HeuristicsSettings  # noqa: E402
from lokilm.data.readers import iter_documents  # noqa: E402

HEURISTICS = ("gopher_quality", "gopher_repetition", "c4")
CLOCK = time.process_time  # CPU seconds of this process: on a machine shared with other jobs, wall time measures them


def mb(docs) -> float:
    return sum(len(d.text.encode()) for d in docs) / 1e6


def run_chain(filters, docs: list[Document]) -> tuple[list[float], list[float], list[list]]:
    """The filters as the pipeline runs them: each document through one after the other until one drops it.
    Returns per filter: seconds, MB that reached it, and per document reaching it (result, text after)."""
    seconds, sizes, results = [0.0] * len(filters), [0.0] * len(filters), [[] for _ in filters]
    for d in docs:
        doc = Document(text=d.text, id=d.id, metadata=dict(d.metadata))
        for k, f in enumerate(filters):
            sizes[k] += len(doc.text.encode()) / 1e6
            start = CLOCK()
            result = f.filter(doc)
            seconds[k] += CLOCK() - start
            results[k].append((d.id, result, doc.text))
            if result is not True:
                break
    return seconds, sizes, results


def heuristics(docs: list[Document], repeat: int) -> tuple[list[dict], list[Document]]:
    ours = heuristic_filters(HeuristicsSettings(), None)
    theirs = heuristic_filters(HeuristicsSettings(engine="datatrove"), None)
    from lokilm.curate.fast_filters import _table

    _table()  # built once per process (about a second): not the filters' time
    best = {"lokilm": [float("inf")] * 3, "datatrove": [float("inf")] * 3}
    for _ in range(repeat):  # alternately, so a load spike from another process does not favour either
        for name, filters in (("lokilm", ours), ("datatrove", theirs)):
            seconds, sizes, results = run_chain(filters, docs)
            best[name] = [min(a, b) for a, b in zip(best[name], seconds)]
            if name == "lokilm":
                a = results
            else:
                b = results
    rows = []
    for k, name in enumerate(HEURISTICS):
        ours_s, theirs_s = best["lokilm"][k], best["datatrove"][k]
        rows.append({"stage": name, "documents": len(a[k]), "mb": round(sizes[k], 2),
                     "lokilm_mb_per_s": round(sizes[k] / ours_s, 2), "datatrove_mb_per_s": round(sizes[k] / theirs_s, 2),
                     "speedup": round(theirs_s / ours_s, 1), "identical": a[k] == b[k],
                     "lokilm_s": round(ours_s, 2), "datatrove_s": round(theirs_s, 2)})
    kept = {i for i, r, _ in a[-1] if r is True}
    texts = {i: t for i, _, t in a[-1]}
    return rows, [Document(text=texts[d.id], id=d.id, metadata=d.metadata) for d in docs if d.id in kept]


def timed_step(name: str, step, docs: list[Document]) -> dict:
    start = CLOCK()
    out = step.run(iter(Document(text=d.text, id=d.id, metadata=dict(d.metadata)) for d in docs))
    for _ in out or ():  # a signature step consumes its input and returns nothing
        pass
    seconds = CLOCK() - start
    return {"stage": name, "documents": len(docs), "mb": round(mb(docs), 2), "seconds": round(seconds, 2),
            "mb_per_s": round(mb(docs) / seconds, 2) if seconds else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", nargs="+", required=True, help="corpus files or folders (any format lokilm reads)")
    ap.add_argument("--json", action="store_true", help="one JSON line per stage instead of a table")
    ap.add_argument("--every", type=int, default=1, help="use every N-th document (a quick sample)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each heuristic filter and MinHash engine, alternating (fastest counts)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this process's CPU time (default; fair on a shared machine); wall: elapsed time")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.every < 1 or args.repeat < 1:
        ap.error("--every and --repeat must be >= 1")
    rows = []
    start = CLOCK()
    raw = [Document(text=d.text, id=d.id, metadata={"source": d.source, "reader_rank": 0})
           for d in iter_documents(args.inputs)]
    seconds = CLOCK() - start  # the whole read, before sampling
    rows.append({"stage": "read", "documents": len(raw), "mb": round(mb(raw), 2), "seconds": round(seconds, 2),
                 "mb_per_s": round(mb(raw) / seconds, 2)})
    docs = raw[::args.every]
    norm = Normalise()
    start = CLOCK()
    normalised = [Document(text=norm.format(d.text), id=d.id, metadata=d.metadata) for d in docs]
    seconds = CLOCK() - start
    rows.append({"stage": "normalise", "documents": len(docs), "mb": round(mb(docs), 2), "seconds": round(seconds, 2),
                 "mb_per_s": round(mb(docs) / seconds, 2)})
    h_rows, kept = heuristics(normalised, args.repeat)
    rows += h_rows
    rows += dedup_and_decontamination(kept, args.repeat)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        elif "lokilm_mb_per_s" in row:
            print(f"{row['stage']:>20}: {row['mb']:8.2f} MB, lokilm {row['lokilm_mb_per_s']:7.2f} MB/s "
                  f"({row['lokilm_s']:.1f} s), datatrove {row['datatrove_mb_per_s']:6.2f} MB/s ({row['datatrove_s']:.1f} s), "
                  f"x{row['speedup']}, identical: {row['identical']}")
        else:
            print(f"{row['stage']:>20}: {row['mb']:8.2f} MB, {row['mb_per_s']:7.2f} MB/s ({row['seconds']:.1f} s)")
    return 0 if all(r.get("identical", True) for r in rows) else 1


def dedup_and_decontamination(docs: list[Document], repeat: int) -> list[dict]:
    from datatrove.pipeline.dedup import ExactDedupSignature
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig

    from lokilm.curate.decontaminate import Decontaminate, NgramIndex
    from lokilm.curate.pipeline import doc_text
    from lokilm.curate.reader import reading_order_priority

    c = CurateConfig()
    d = c.decontaminate
    with tempfile.TemporaryDirectory() as tmp:
        exact = ExactDedupSignature(f"{tmp}/exact", ExactDedupConfig(content_getter=doc_text,
                                                                     document_priority=reading_order_priority))
        NgramIndex.for_benchmarks(d.n, d.benchmarks, d.cache_dir)  # built (or loaded) before the clock starts

        class Discard:  # the removals writer: nothing written, the time is the step's own
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def write(self, doc, rank=0):
                pass

        decont = Decontaminate(d.n, d.mode, d.benchmarks, d.cache_dir, Discard())
        return [timed_step("exact_dedup_signature", exact, docs), minhash(docs, repeat, tmp),
                timed_step("decontaminate", decont, docs)]


def minhash(docs: list[Document], repeat: int, tmp: str) -> dict:
    """lokilm's MinHash signature step against datatrove's, alternately, with their signature files compared."""
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    from lokilm.curate.fast_minhash import FastMinhashDedupSignature
    from lokilm.curate.words import RegexWordTokenizer

    m = CurateConfig().minhash
    config = MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                           seed=m.seed)
    best, files = {}, {}
    for _ in range(repeat):
        for name, cls in (("lokilm", FastMinhashDedupSignature), ("datatrove", MinhashDedupSignature)):
            out = Path(tmp) / f"mh_{name}"
            shutil.rmtree(out, ignore_errors=True)
            row = timed_step(name, cls(str(out), config, language=RegexWordTokenizer()), docs)
            best[name] = min(best.get(name, float("inf")), row["seconds"])
            files[name] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.sig"))}
    size = mb(docs)
    return {"stage": "minhash_signature", "documents": len(docs), "mb": round(size, 2),
            "lokilm_mb_per_s": round(size / best["lokilm"], 2), "datatrove_mb_per_s": round(size / best["datatrove"], 2),
            "speedup": round(best["datatrove"] / best["lokilm"], 1),
            "identical": bool(files["lokilm"]) and files["lokilm"] == files["datatrove"],
            "lokilm_s": round(best["lokilm"], 2), "datatrove_s": round(best["datatrove"], 2)}


if __name__ == "__main__":
    sys.exit(main())
