"""The curation report: per stage, documents and bytes in/out, time, removals by reason with examples; JSON + Markdown.

Numbers come from the Tally steps (documents and bytes after each stage) and the step timings in datatrove's
stats.json of each phase; removals from the per-stage removals files. The accounting must balance: documents
in = kept + removed (by stage and reason); a stage that does not balance is reported and fails the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from lokilm.curate.reader import read_report
from lokilm.errors import LokiError
from lokilm.rundir import write_json

EXAMPLES = 3
TALLY = "tally "


# Stages that edit text rather than drop documents: counters of theirs the report shows.
EDIT_COUNTERS = {"factual-statement pruning": ("facts", ("sentences_removed", "bytes_removed")),
                 "benchmark decontamination": ("decontaminate", ("spans_cut", "bytes_cut"))}


def _phase_stats(work: Path, timings: dict) -> tuple[dict, dict, dict]:
    """(stage -> {documents, bytes}) after each stage, (stage -> seconds) spent getting there, and the edit counters."""
    counts, seconds, edits, pending = {}, {}, {}, 0.0
    for phase, wall in timings.items():
        steps = _merged_stats(work / "logs" / phase)
        if not any(TALLY in s["name"] for s in steps):
            pending += wall  # a dedup phase between two tallies: its whole wall time belongs to that stage
            continue
        for step in steps:
            name, stats = step["name"], step["stats"]
            if TALLY in name:
                stage = name.split(TALLY, 1)[1]
                counts[stage] = {"documents": _total(stats.get("documents", 0)), "bytes": _total(stats.get("bytes", 0))}
                if stage != "input":  # the reader's time belongs to the read stage, which ends at the next tally
                    seconds[stage], pending = round(pending, 3), 0.0
            elif isinstance(step["time_stats"], dict):
                pending += step["time_stats"]["total"]
            for label, (stage, keys) in EDIT_COUNTERS.items():
                if name.endswith(label):
                    edits[stage] = {k: _total(stats.get(k, 0)) for k in keys}
    seconds["write"] = round(pending, 3)
    return counts, seconds, edits


def _merged_stats(logs: Path) -> list[dict]:
    """The phase's stats summed over every task's own file (stats/NNNNN.json). Not stats.json: the local executor
    writes there only the tasks it ran this time, so after an interrupted run resumed (finished tasks skipped)
    the counts left the finished tasks out and the accounting "did not balance" on every later try."""
    from datatrove.utils.stats import PipelineStats

    files = sorted((logs / "stats").glob("*.json"))
    if not files:
        return json.loads((logs / "stats.json").read_text())
    merged = sum((PipelineStats.from_json(json.loads(f.read_text())) for f in files), start=PipelineStats())
    return json.loads(merged.to_json())


def _total(stat) -> int:  # a count merged over tasks is a number (local executor) or {"total": ...} (Ray)
    return stat["total"] if isinstance(stat, dict) else stat


def _removals(work: Path) -> dict[str, list[dict]]:
    """stage -> removal records."""
    by_stage: dict[str, list[dict]] = {}
    for folder in sorted((work / "removals").glob("*")):
        for f in sorted(folder.glob("*.jsonl")):
            by_stage.setdefault(folder.name, []).extend(json.loads(line) for line in f.read_text().splitlines() if line)
    return by_stage


def write_report(run, cfg, timings: dict, seconds_total: float) -> dict:
    """Balance the accounting, then write removals.jsonl, report.md and (when a document was kept) report.json;
    return the summary. When it does not balance, none of them is written (the figures go to work/unbalanced.json)
    and a LokiError says why."""
    work = run.curate_work
    read, _ = read_report(work / "read")
    counts, seconds, edits = _phase_stats(work, timings)
    removals = _removals(work)
    stages, problems, records = [], [], []
    previous = counts["input"]
    order = [s for s in ("read", "normalise", "heuristics", "exact_dedup", "minhash", "embed", "classifier", "semdedup",
                         "prototypes", "decontaminate", "facts") if s in counts]
    for name in order:
        now, removed = counts[name], removals.get(name, [])
        records.extend(json.dumps({k: r[k] for k in ("id", "stage", "reason", "detail", "bytes")}) + "\n" for r in removed)
        reasons: dict[str, int] = {}
        for r in removed:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        examples: dict[str, list] = {}
        for r in removed:
            if len(examples.setdefault(r["reason"], [])) < EXAMPLES:
                examples[r["reason"]].append({k: r[k] for k in ("id", "detail", "excerpt")})
        secs = seconds.get(name, 0.0)
        stage = {"stage": name, "documents_in": previous["documents"], "documents_out": now["documents"],
                 "bytes_in": previous["bytes"], "bytes_out": now["bytes"], "removed": reasons,
                 "seconds": secs, "mb_per_s": round(previous["bytes"] / 1e6 / secs, 2) if secs > 0 else None,
                 "edited": edits.get(name, {}), "examples": examples}
        if previous["documents"] - now["documents"] != len(removed):
            problems.append(f"{name}: {previous['documents']} in, {now['documents']} out, but {len(removed)} removals recorded")
        stages.append(stage)
        previous = now
    kept = previous["documents"]
    removed_total = sum(len(v) for v in removals.values())
    accounting = {"documents_in": counts["input"]["documents"], "kept": kept, "removed": removed_total,
                  "balanced": counts["input"]["documents"] == kept + removed_total and not problems,
                  "reader_skipped": read["skipped"], "reader_repaired": read["repaired"]}
    summary = {"seconds": seconds_total, "phase_seconds": timings, "write_seconds": seconds.get("write", 0.0),
               "accounting": accounting, "output": str(run.curated), "bytes_out": previous["bytes"],
               "read": read, "stages": stages}
    if "decontaminate" in counts:
        from lokilm.curate.decontaminate import read_hits

        summary["decontaminate"] = {"by_benchmark": read_hits(work / "decontaminate")}
    if cfg.data.mixture:
        summary["by_source"] = _by_source(run, removals)
    if not accounting["balanced"]:
        write_json(work / "unbalanced.json", summary)
        raise LokiError(f"curation accounting does not balance ({'; '.join(problems) or accounting}); the figures are "
                        f"in {work / 'unbalanced.json'}")
    run.curate_removals.write_text("".join(records))
    run.curate_report_md.write_text(_markdown(summary))
    if kept:  # last: report.json marks a finished curation with something in it, which `loki tokenize` reads
        write_json(run.curate_report, summary)
    return summary


def _by_source(run, removals: dict) -> dict:
    """A mixture's curation per source: documents kept (and their bytes on disk) and removed, by stage. A curated
    document's id starts with its source's name (lokilm.curate.reader)."""
    out: dict[str, dict] = {}
    for stage, removed in removals.items():
        for r in removed:
            entry = out.setdefault(r["id"].split(":", 1)[0], {"kept": 0, "kept_bytes": 0, "removed": {}})
            entry["removed"][stage] = entry["removed"].get(stage, 0) + 1
    if run.curated.is_dir():
        for folder in sorted(p for p in run.curated.iterdir() if p.is_dir()):
            entry = out.setdefault(folder.name, {"kept": 0, "kept_bytes": 0, "removed": {}})
            for f in folder.glob("*.jsonl"):
                with open(f, "rb") as fh:
                    entry["kept"] += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
                entry["kept_bytes"] += f.stat().st_size
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _markdown(s: dict) -> str:
    a, read = s["accounting"], s["read"]
    lines = [
        "# Curation report", "",
        f"{a['documents_in']:,} documents read -> **{a['kept']:,} kept**, {a['removed']:,} removed "
        f"({'balanced' if a['balanced'] else 'NOT BALANCED'}); {s['seconds']:.1f} s in all. Output: `{s['output']}`.", "",
        f"Reader: {read['files']:,} files. Skipped before becoming documents: {read['skipped'] or 'nothing'}. "
        f"Repaired and kept: {read['repaired'] or 'nothing'}. Boilerplate stripped: {read['stripped'] or 'nothing'}.", "",
        "| stage | docs in | docs out | MB in | MB out | seconds | MB/s | removed (by reason) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for st in s["stages"]:
        reasons = ", ".join(f"{r}: {n:,}" for r, n in sorted(st["removed"].items(), key=lambda x: -x[1])) or "-"
        if any(st["edited"].values()):
            reasons += " (edited: " + ", ".join(f"{k} {v:,}" for k, v in st["edited"].items()) + ")"
        lines.append(f"| {st['stage']} | {st['documents_in']:,} | {st['documents_out']:,} | {_mb(st['bytes_in'])} | "
                     f"{_mb(st['bytes_out'])} | {st['seconds']:.1f} | {st['mb_per_s'] or '-'} | {reasons} |")
    if s.get("by_source"):
        lines += ["", "## By mixture source", "", "| source | kept | MB on disk | removed (by stage) |", "|---|---:|---:|---|"]
        for name, e in s["by_source"].items():
            removed = ", ".join(f"{k}: {v:,}" for k, v in e["removed"].items()) or "-"
            lines.append(f"| {name} | {e['kept']:,} | {_mb(e['kept_bytes'])} | {removed} |")
    lines += _decontamination_markdown(s.get("decontaminate"))
    lines += ["", f"Writing the output took {s['write_seconds']:.1f} s. Stage times are the time spent in the stage's own "
              "steps (dedup: including its signature, index and intermediate files), summed over a phase's parallel "
              "tasks; wall time per phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["phase_seconds"].items()) + ".",
              "", "## Examples of removals", ""]
    for st in s["stages"]:
        for reason, examples in st["examples"].items():
            lines.append(f"### {st['stage']}: {reason}")
            for e in examples:
                excerpt = " ".join(e["excerpt"].split())[:120]
                lines.append(f"- `{e['id']}`{' (' + e['detail'] + ')' if e['detail'] else ''}: {excerpt}...")
            lines.append("")
    return "\n".join(lines) + "\n"


def _decontamination_markdown(d: dict | None) -> list[str]:
    if d is None:
        return []
    lines = ["", "## Benchmark contamination", ""]
    if not d["by_benchmark"]:
        return lines + ["No document shares an n-gram with a benchmark."]
    lines += ["A document matching two benchmarks counts for both. Bytes: a dropped document's, or those cut from it.",
              "", "| benchmark | documents dropped | documents cut | MB | example matched n-gram |", "|---|---:|---:|---:|---|"]
    for name, b in d["by_benchmark"].items():
        example = b["examples"][0] if b["examples"] else {"id": "", "ngram": ""}
        ngram = example["ngram"][:100].replace("|", "\\|")
        lines.append(f"| {name} | {b['documents_dropped']:,} | {b['documents_cut']:,} | {_mb(b['bytes'])} | "
                     f"\"{ngram}\" (`{example['id']}`) |")
    return lines
