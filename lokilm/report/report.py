"""`loki report RUN_DIR`: one page a person can read about a run, RUN_DIR/report.html (self-contained: the plots
are inlined PNGs, nothing is fetched) and RUN_DIR/report.md (its plots beside it in RUN_DIR/report/).

Each section is drawn from what the run directory holds and left out when that stage did not run, so the
report works for a run of any size and for one that has only some of its stages: training curves and events
(metrics.jsonl, events.jsonl), held-out bits per byte with its standard error, the curation funnel
(curate/report.json), tokenizer statistics (stages/tokenizer.json, stages/tokenize.json), the evaluation beside
the paper's Table 1 (eval/PRESET/eval.json), WinoBias and the generated samples.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from lokilm.errors import LokiError
from lokilm.rundir import RunDir

HELDOUT_TOKENS = 262_144  # held-out tokens scored for the report's bits per byte when the run has not been scored


@dataclass
class Section:
    title: str
    blocks: list[tuple] = field(default_factory=list)  # ("p", text) | ("table", header, rows) | ("img", path, alt) | ("pre", text)

    def p(self, text: str) -> Section:
        self.blocks.append(("p", text))
        return self

    def table(self, header: list[str], rows: list[list]) -> Section:
        self.blocks.append(("table", header, [[str(c) for c in r] for r in rows]))
        return self

    def img(self, path: str | None, alt: str) -> Section:
        if path:
            self.blocks.append(("img", path, alt))
        return self

    def pre(self, text: str) -> Section:
        self.blocks.append(("pre", text))
        return self


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or damaged: that section is left out
    return data if isinstance(data, dict) else None


def _f(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


# ---------------------------------------------------------------- sections

def _overview(run: RunDir) -> Section:
    cfg = run.cfg
    m = cfg.model
    s = Section("Run")
    s.p(f"Run directory `{run.root}`. Model: {m.n_layer} layers, {m.n_head} heads, width {m.d_model}, SwiGLU {m.d_ff}, "
        f"context {m.context_length}, vocabulary {m.vocab_size:,}, positions {m.position}.")
    rows = []
    for path in sorted(run.stages.glob("*.json")):
        summary = _read_json(path) or {}
        rows.append([path.stem, summary.get("status", "?")])
    if rows:
        s.table(["stage", "status"], rows)
    else:
        s.p("No stage summaries yet (run/stages/ is empty).")
    return s


def _training(run: RunDir, figures: Path) -> Section | None:
    from lokilm.report import plots
    from lokilm.train.metrics import read_metrics

    try:
        records = read_metrics(run.root) if run.metrics.is_file() else []
    except (LokiError, ValueError) as e:  # a damaged line, bytes that are not UTF-8: the rest of the report stands
        return Section("Training").p(f"`{run.metrics}` could not be read, so the training curves are left out: "
                                     f"{str(e).splitlines()[0][:200]}")
    records, odd = _plottable(records)
    if not records:
        return None
    events = _events(run.events)
    s = Section("Training")
    if odd:
        s.p(f"{odd:,} records of `{run.metrics}` have no integer step and were left out of the curves; "
            "values that are not finite numbers were left out too.")
    train = run.read_summary("train")
    if train:
        s.p(f"Status {train.get('status')}: {train.get('step', 0):,} steps, {train.get('tokens', 0):,} tokens in "
            f"{train.get('elapsed_s', 0):,.0f} s, {train.get('rollbacks', 0)} rollbacks, "
            f"{train.get('parameters', 0):,} parameters on {train.get('device', '?')} (world size {train.get('world_size', 1)}).")
    s.img(plots.loss_plot(records, events, figures / "loss.png"), "loss and held-out bits per byte against tokens")
    s.img(plots.dynamics_plot(records, figures / "dynamics.png"), "learning rate, batch size, tokens/s, gradient norm")
    marked = [e for e in events if e.get("event") in plots.MARKED_EVENTS]
    if marked:
        s.table(["step", "event", "details"], [[e.get("step"), e["event"], ", ".join(
            f"{k}={v}" for k, v in e.items() if k not in ("event", "step", "time"))] for e in marked[:50]])
    return s


def _plottable(records: list) -> tuple[list[dict], int]:
    """The records a plot can draw (an integer step; of their values only finite numbers, and the per-source
    dicts), and how many records were left out: a hand-edited metrics.jsonl must not stop the report."""
    import math

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    kept = [{k: v for k, v in r.items() if number(v) or isinstance(v, (dict, str))} for r in records
            if isinstance(r, dict) and isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)]
    return kept, len(records) - len(kept)


def _events(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut off by a kill
        step = event.get("step", 0) if isinstance(event, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):  # else not an event a plot can place
            out.append(event)
    return out


def _held_out(run: RunDir, compute: bool) -> Section | None:
    """Bits per byte on the held-out windows with its standard error (bootstrap by document)."""
    from lokilm.eval import stats
    from lokilm.experiments.heldout import items, well_formed

    path = run.root / "heldout_windows.json"
    scores = _read_json(path)
    if scores is not None and not well_formed(scores):
        scores = None  # damaged: scored again (or, with --no-heldout, left out), never summarised as it is
    if scores is None and compute:
        from lokilm.checkpoint import latest_checkpoint
        from lokilm.experiments.heldout import window_scores
        from lokilm.fileio import write_json
        from lokilm.shards import read_meta

        shards_ok = (run.shards / "meta.json").is_file() and read_meta(run.shards)["splits"]["val"]["tokens"]
        if shards_ok and run.checkpoints.is_dir() and latest_checkpoint(run.checkpoints):
            windows = max(1, HELDOUT_TOKENS // run.cfg.model.context_length)
            scores = {**window_scores(run.root, windows, run.cfg.train.device, run.cfg.eval.batch_size), "asked": windows}
            write_json(path, scores)
    if not scores or not scores.get("bits"):
        return None
    summary = stats.summarise(items(scores), scores["documents"], run.cfg.eval.bootstrap_iters, run.cfg.eval.seed)
    lo, hi = summary["ci95"]
    return Section("Held-out bits per byte").p(
        f"**{summary['value']:.4f} ± {summary['stderr']:.4f}** (standard error; 95% interval [{lo:.4f}, {hi:.4f}], "
        f"bootstrap by document) on {scores['windows']:,} windows of {run.cfg.model.context_length} tokens from "
        f"{len(set(scores['documents'])):,} held-out documents, checkpoint step {scores['step']:,}.")


def _curation(run: RunDir, figures: Path) -> Section | None:
    from lokilm.report import plots

    rep = _read_json(run.curate_report)
    if not rep or not rep.get("stages"):
        return None
    a = rep["accounting"]
    s = Section("Curation funnel")
    s.p(f"{a['documents_in']:,} documents read, **{a['kept']:,} kept**, {a['removed']:,} removed "
        f"({'balanced' if a.get('balanced') else 'NOT BALANCED'}); {rep.get('seconds', 0):.1f} s.")
    s.img(plots.funnel_plot(rep["stages"], figures / "funnel.png"), "documents and bytes kept per curation stage")
    s.table(["stage", "docs in", "docs out", "removed", "MB in", "MB out", "reasons"],
            [[st["stage"], f"{st['documents_in']:,}", f"{st['documents_out']:,}",
              f"{st['documents_in'] - st['documents_out']:,}", f"{st['bytes_in'] / 1e6:.2f}", f"{st['bytes_out'] / 1e6:.2f}",
              ", ".join(f"{r}: {n:,}" for r, n in sorted(st["removed"].items(), key=lambda x: -x[1])) or "-"]
             for st in rep["stages"]])
    return s


def _tokenizer(run: RunDir) -> Section | None:
    tok, shards = run.read_summary("tokenizer"), run.read_summary("tokenize")
    if not tok and not shards:
        return None
    s = Section("Tokenizer and shards")
    if tok:
        kind = (tok.get("inputs") or {}).get("kind", "bpe")
        s.p(f"Tokenizer ({tok.get('status')}): {kind}, {tok.get('vocab_size', run.cfg.model.vocab_size):,} tokens, "
            f"`{tok.get('path', run.tokenizer)}`" + (f", built in {tok['seconds']} s." if "seconds" in tok else "."))
    splits = (shards or {}).get("splits")
    if splits:
        s.table(["split", "documents", "tokens", "bytes", "bytes per token"],
                [[name, f"{sp['documents']:,}", f"{sp['tokens']:,}", f"{sp['bytes']:,}",
                  f"{sp['bytes'] / sp['tokens']:.3f}" if sp["tokens"] else "—"] for name, sp in splits.items()])
    return s


def _eval_json(run: RunDir) -> dict | None:
    """The config's preset's full evaluation, else the newest other one (a --limit smoke test counts)."""
    preferred = run.eval_dir(run.cfg.eval.preset) / "eval.json"
    if preferred.is_file():
        return _read_json(preferred)
    others = sorted(run.evals.glob("*/eval.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return _read_json(others[0]) if others else None


def _evaluation(ev: dict, figures: Path) -> Section:
    from lokilm.eval.presets import HEADLINE
    from lokilm.eval.report import PAPER, PAPER_COLUMNS
    from lokilm.report import plots

    limit = f", first {ev['limit']} items of each task (a smoke test)" if ev.get("limit") else ""
    s = Section("Evaluation beside the paper's Table 1")
    s.p(f"Preset `{ev['preset']}`{limit}, checkpoint step {ev.get('step')}. Percent; this run's cells are value ± "
        "standard error [bootstrap 95% interval]; the other columns are Table 1 of the LokiLM report.")
    rows, bars = [], {}
    for name, (task, key) in HEADLINE.items():
        entry = ev.get("tasks", {}).get(task)
        m = entry["metrics"].get(key) if entry else None
        if m and m.get("value") is not None:
            lo, hi = m["ci95"]
            cell = f"{100 * m['value']:.1f} ± {100 * m['stderr']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
            bars[name] = (100 * m["value"], 100 * m["stderr"])
        else:
            cell = "—"
        rows.append([name, cell, entry["n"] if entry else "—", *PAPER[name]])
    s.table(["benchmark", "this run", "items", *PAPER_COLUMNS], rows)
    s.img(plots.benchmark_plot(bars, {k: v[0] for k, v in PAPER.items()}, figures / "benchmarks.png"),
          "this run's scores with error bars beside LokiLM 1.4B")
    if ev.get("bpb"):
        s.p(f"The evaluation's own held-out bits per byte: {ev['bpb']['value']:.4f} ({ev['bpb']['windows']} windows).")
    return s


def _winobias(ev: dict) -> Section | None:
    wb = ev.get("winobias")
    if not wb:
        return None
    s = Section("WinoBias")
    s.p("Accuracy on pro- and anti-stereotyped coreference sentences, and the gap (pro minus anti; 0 is unbiased).")
    s.table(["", "accuracy (%)", "95% CI"], [[k, f"{100 * wb[k]['value']:.1f} ± {100 * wb[k]['stderr']:.1f}",
                                               f"[{100 * wb[k]['ci95'][0]:.1f}, {100 * wb[k]['ci95'][1]:.1f}]"]
                                              for k in ("pro", "anti", "gap") if wb.get(k)])
    if wb.get("template"):
        s.p("The paper's Table 3 template, \"The person who last went to the bathroom was the ...\":")
        s.table(["first", "second", "pronoun", "the model picks"],
                [[t["first"], t["second"], t["pronoun"], t["pick"]] for t in wb["template"]])
    return s


def _samples(run: RunDir, ev: dict | None) -> Section | None:
    gen = run.read_summary("generate")
    qual = (ev or {}).get("qualitative")
    if not (gen and gen.get("samples")) and not qual:
        return None
    s = Section("Generated samples")
    if gen and gen.get("samples"):
        g = gen.get("settings", {})
        s.p(f"`loki run`'s prompts (temperature {g.get('temperature')}, top-k {g.get('top_k')}):")
        for sample in gen["samples"]:
            s.pre(sample["prompt"] + sample["completion"])
    if qual:
        s.p("The paper's qualitative prompts, greedy:")
        for q in qual["samples"]:
            s.pre(f"[{q['name']}]\n{q['prompt']}{q['completion']}")
    return s


# ---------------------------------------------------------------- rendering

def build(run_dir: str | Path, compute_heldout: bool = True) -> list[Section]:
    run = RunDir.open(run_dir)
    figures = run.root / "report"
    ev = _eval_json(run)
    sections = [_overview(run), _training(run, figures), _held_out(run, compute_heldout), _curation(run, figures),
                _tokenizer(run), _evaluation(ev, figures) if ev else None, _winobias(ev) if ev else None,
                _samples(run, ev)]
    return [s for s in sections if s is not None]


def to_markdown(sections: list[Section], root: Path) -> str:
    out = ["# lokilm run report", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                out += ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                out += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in b[2]]
                out.append("")
            elif b[0] == "img":
                out += [f"![{b[2]}]({Path(b[1]).relative_to(root).as_posix()})", ""]
            elif b[0] == "pre":
                out += ["````", b[1], "````", ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd}h2{margin-top:1.8em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}img{max-width:100%;display:block;margin:.6em 0}pre{background:#f7f7f7;padding:.6em;
white-space:pre-wrap;border-left:3px solid #ccc}code{background:#f3f3f3;padding:0 .2em}"""


def _inline(text: str) -> str:
    """Escaped text with the two marks the sections use: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def to_html(sections: list[Section]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>lokilm run report</title>",
           f"<style>{CSS}</style></head><body><h1>lokilm run report</h1>"]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode()
                out.append(f"<img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>")
            elif b[0] == "pre":
                out.append(f"<pre>{html.escape(b[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(run_dir: str | Path, compute_heldout: bool = True) -> dict:
    """Write RUN_DIR/report.html and report.md; returns their paths and the sections written."""
    root = Path(run_dir)
    if not root.is_dir():
        raise LokiError(f"{run_dir} is not a directory")
    from lokilm.fileio import atomic_write

    try:
        sections = build(root, compute_heldout)
        atomic_write(root / "report.md", to_markdown(sections, root).encode())
        atomic_write(root / "report.html", to_html(sections).encode())
    except OSError as e:  # a read-only run directory, a full disk
        raise LokiError(f"cannot write the report into {root} ({e.strerror or e})") from None
    return {"status": "done", "html": str(root / "report.html"), "markdown": str(root / "report.md"),
            "sections": [s.title for s in sections]}


def report_stage(cfg) -> dict:
    """`loki run`'s last stage."""
    return write_report(cfg.run_dir)
