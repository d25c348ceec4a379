"""eval.json as a Markdown table laid out beside the LokiLM paper's Table 1, with error bars."""

from __future__ import annotations

from lokilm.eval.presets import HEADLINE

# Paper Table 1 (percent), as in docs/SPEC.md: LokiLM 1.4B and its peers
PAPER_COLUMNS = ["LokiLM 1.4B", "Gemma 2B", "Danube2 1.8B", "Qwen1.5 1.8B", "StableLM2 1.6B", "MPT 1.3B", "Phi-1.5 1.3B"]
PAPER = {
    "ARC-C": [43.9, 46.93, 43.34, 37.88, 43.34, 25.77, 52.9],
    "HellaSwag": [64.5, 72.48, 72.95, 61.42, 70.43, 26.08, 63.79],
    "MMLU": [54.8, 34.38, 40.20, 46.71, 36.95, 24.50, 43.89],
    "Winogrande": [67.8, 68.27, 68.03, 60.3, 64.56, 50.36, 72.22],
    "GSM8K": [34.2, 15.69, 29.80, 33.59, 17.44, 10.17, 12.43],
    "TruthfulQA": [31.9, 35.01, 38.01, 39.43, 36.78, 47.57, 40.89],
}


def _pct(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{100 * m['value']:.1f} ± {100 * m['stderr']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(ev: dict) -> str:
    """The headline table (this run beside the paper), then every metric of every task, then extras."""
    lines = [f"# Evaluation: `{ev['run_dir']}` step {ev['step']}, preset `{ev['preset']}`", "",
             ("Percent; this run's cells are value ± standard error [bootstrap 95% interval] (MMLU: clustered by "
              "subject). Paper cells are Table 1 of the LokiLM report."), "",
             "| | this run | shots | items | " + " | ".join(PAPER_COLUMNS) + " |",
             "|---|---|---|---|" + "---|" * len(PAPER_COLUMNS)]
    for row, (task, key) in HEADLINE.items():
        entry = ev["tasks"].get(task)
        m = entry["metrics"].get(key) if entry else None
        cell = _pct(m) if m and m["value"] is not None else "—"
        shots = entry["num_fewshot"] if entry else "—"
        n = entry["n"] if entry else "—"
        lines.append(f"| {row} ({key.split(',')[0]}) | {cell} | {shots} | {n} | " + " | ".join(map(str, PAPER[row])) + " |")
    lines += ["", "## Every metric", "", "| task | metric | shots | items | value ± se [95% CI] |", "|---|---|---|---|---|"]
    for task, entry in ev["tasks"].items():
        for key, m in entry["metrics"].items():
            if m["value"] is not None:
                lines.append(f"| {task} | {key} | {entry['num_fewshot']} | {m['n']} | {_pct(m)} |")
    if ev.get("bpb"):
        lines += ["", (f"Held-out bits per byte: {ev['bpb']['value']:.4f} ({ev['bpb']['windows']} windows of "
                       f"{ev['bpb']['tokens_per_window']} tokens).")]
        if ev["bpb"].get("by_source"):
            lines += ["", "| source | bits per byte |", "|---|---|"]
            lines += [f"| {name} | {v:.4f} |" for name, v in ev["bpb"]["by_source"].items()]
            lines += [f"| {name} | - ({why}) |" for name, why in ev["bpb"].get("unscored_sources", {}).items()]
    if ev.get("winobias"):
        wb = ev["winobias"]
        lines += ["", "## WinoBias", "", "| | accuracy |", "|---|---|"]
        for k in ("pro", "anti", "gap"):
            lines.append(f"| {k} | {_pct(wb[k])} |")
        lines += ["", "Paper Table 3 template (the model's pick for \"The person who last went to the bathroom was the\"):", "",
                  "| first | second | pronoun | picks |", "|---|---|---|---|"]
        for t in wb["template"]:
            lines.append(f"| {t['first']} | {t['second']} | {t['pronoun']} | {t['pick']} |")
    if ev.get("qualitative"):
        lines += ["", "## Qualitative prompts", ""]
        for q in ev["qualitative"]["samples"]:
            # four backticks: the factorial prompt holds a ``` block of its own
            lines += [f"**{q['name']}**", "", "````", q["prompt"] + q["completion"], "````", ""]
    lines.append(f"\nlm-eval {ev['lm_eval_version']} on {ev['device']}; {ev['seconds']} s in all.")
    return "\n".join(lines) + "\n"
