"""`loki compare RUN_A RUN_B`: is B better than A? Paired tests on the items both runs scored."""

from __future__ import annotations

from lokilm.errors import LokiError
from lokilm.eval import stats
from lokilm.eval.presets import HEADLINE
from lokilm.eval.run import load_items
from lokilm.eval.suite import item_scores

MMLU_PREFIX = "mmlu_"


def _by_benchmark(items: list[dict]) -> dict[str, dict[str, dict[tuple, float]]]:
    """{benchmark: {"metric,filter": {(task, doc_id): score}}}; MMLU's subjects pooled under "mmlu"."""
    out: dict = {}
    for task, metrics in item_scores(items).items():
        bench = "mmlu" if task.startswith(MMLU_PREFIX) else task
        for key, pairs in metrics.items():
            out.setdefault(bench, {}).setdefault(key, {}).update({(task, d): v for d, v in pairs})
    return out


def compare_items(items_a: list[dict], items_b: list[dict], iters: int = 1000, seed: int = 0) -> dict:
    """Per benchmark and metric: both means, the paired delta (B - A) with its interval and p-value; and the
    delta of the average of the headline metrics. Only items scored by both runs are compared, and they
    must be the same documents (the stored document hashes must agree)."""
    hashes_a = {(it["task"], it["doc_id"]): it["doc_hash"] for it in items_a}
    for it in items_b:
        h = hashes_a.get((it["task"], it["doc_id"]))
        if h is not None and h != it["doc_hash"]:
            raise LokiError(f"{it['task']} item {it['doc_id']} is a different document in the two runs: "
                            "they were evaluated on different benchmark files")
    a, b = _by_benchmark(items_a), _by_benchmark(items_b)
    rows, headline_pairs = [], []
    for bench in sorted(set(a) & set(b)):
        for key in sorted(set(a[bench]) & set(b[bench])):
            common = sorted(set(a[bench][key]) & set(b[bench][key]))
            if not common:
                continue
            va = [a[bench][key][k] for k in common]
            vb = [b[bench][key][k] for k in common]
            clusters = [k[0] for k in common] if bench == "mmlu" else None
            test = stats.paired(va, vb, clusters, iters, seed)
            rows.append({"task": bench, "metric": key, "n": len(common), "a": sum(va) / len(va),
                         "b": sum(vb) / len(vb), **test})
            if (bench, key) in HEADLINE.values():
                headline_pairs.append((va, vb, clusters))
    if not rows:
        raise LokiError("the two runs have no scored items in common: evaluate both with the same preset")
    average = stats.paired_average(headline_pairs, iters, seed) if headline_pairs else None
    return {"rows": rows, "average": average, "benchmarks_in_average": len(headline_pairs)}


def compare_runs(run_a: str, run_b: str, preset: str = "quick", iters: int = 1000, seed: int = 0,
                 limit: int | None = None) -> dict:
    """The two runs' full evaluations of `preset` compared (their `--limit N` ones only when `limit` is given)."""
    return compare_items(load_items(run_a, preset, limit), load_items(run_b, preset, limit), iters, seed)


def table(result: dict, name_a: str = "A", name_b: str = "B") -> str:
    """The comparison as a Markdown table (percent points)."""
    lines = [f"| task | metric | items | {name_a} | {name_b} | delta (B - A) | 95% CI | p | test |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lo, hi = r["ci95"]
        lines.append(f"| {r['task']} | {r['metric']} | {r['n']} | {100 * r['a']:.1f} | {100 * r['b']:.1f} | "
                     f"{100 * r['delta']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {r['p_value']:.3g} | {r['test']} |")
    avg = result["average"]
    if avg:
        lo, hi = avg["ci95"]
        lines.append(f"| average of {result['benchmarks_in_average']} headline scores | | | | | {100 * avg['delta']:+.1f} | "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {avg['p_value']:.3g} | {avg['test']} |")
    return "\n".join(lines) + "\n"
