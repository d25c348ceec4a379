"""Run a benchmark preset through lm-evaluation-harness and turn its per-item output into scores with error bars."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from lokilm.errors import LokiError
from lokilm.eval import stats
from lokilm.eval.presets import QUICK_ITEMS, preset_tasks, spread

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def task_manager():
    """lm-eval's task index over lokilm's offline task YAMLs only (so nothing can reach the hub)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read when `datasets` is first imported
    import datasets
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()
    for name in ("lm_eval", "lm-eval"):  # lm-eval logs a warning per task for the custom_dataset hook
        logging.getLogger(name).setLevel(logging.ERROR)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def load_tasks(preset: str, only: list[str] | None = None) -> tuple[dict, dict[str, list[str]]]:
    """lm-eval's loaded tasks for a preset with its shot counts set, and {preset task: its leaf tasks}."""
    shots = preset_tasks(preset, only)
    tm = task_manager()
    loaded = tm.load(list(shots))
    leaves = {}
    for name, n in shots.items():
        group = loaded["groups"].get(name)
        leaves[name] = sorted(t.task_name for t in group.get_all_tasks()) if group else [name]
        for leaf in leaves[name]:
            loaded["tasks"][leaf].set_config(key="num_fewshot", value=n)
    top = [loaded["groups"].get(name) or loaded["tasks"][name] for name in shots]
    return {"tm": tm, "top": top, "tasks": loaded["tasks"], "shots": shots}, leaves


def run_preset(lm, preset: str, only: list[str] | None = None, limit: int | None = None,
               iters: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Scores (with standard errors and bootstrap intervals) and per-item records for a preset."""
    from lm_eval import simple_evaluate

    loaded, leaves = load_tasks(preset, only)
    samples = None
    if preset == "quick" and limit is None:
        samples = {leaf: spread(len(loaded["tasks"][leaf].eval_docs), QUICK_ITEMS[name])
                   for name, group in leaves.items() for leaf in group}
    out = simple_evaluate(model=lm, tasks=loaded["top"], task_manager=loaded["tm"], limit=limit, samples=samples,
                          log_samples=True, bootstrap_iters=0, num_fewshot=None)
    if out is None:
        raise LokiError("lm-evaluation-harness returned no results")
    items = [_item(leaf, ex) for name, group in leaves.items() for leaf in group for ex in out["samples"][leaf]]
    results = aggregate(items, leaves, iters, seed)
    for name, entry in results.items():
        entry["num_fewshot"] = loaded["shots"][name]
        entry["lm_eval"] = {k: v for k, v in out["results"].get(name, {}).items()
                            if "," in k and "stderr" not in k and isinstance(v, (int, float))}
    return results, items


def _item(task: str, ex: dict) -> dict:
    """What is kept of one scored item: enough to recompute every metric and to pair it with another run's."""
    rec = {"task": task, "doc_id": ex["doc_id"], "filter": ex["filter"], "doc_hash": ex["doc_hash"],
           "target": ex["target"], "metrics": {m: float(ex[m]) for m in ex["metrics"]}}
    if ex["arguments"] and len(ex["arguments"][0]) == 2 and isinstance(ex["arguments"][0][1], str):
        rec["choices"] = [a[1] for a in ex["arguments"]]  # the scored continuations
        rec["loglikelihoods"] = [float(r[0]) for r in ex["filtered_resps"]]
    else:
        rec["response"] = ex["resps"][0][0]
        rec["extracted"] = ex["filtered_resps"][0]
    return rec


def item_scores(items: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{task: {"metric,filter": [(doc_id, score), ...]}} from per-item records."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for it in items:
        for metric, value in it["metrics"].items():
            out[it["task"]][f"{metric},{it['filter']}"].append((it["doc_id"], value))
    return out


def aggregate(items: list[dict], leaves: dict[str, list[str]], iters: int, seed: int) -> dict:
    """Each preset task's metrics from the per-item records; a group (MMLU) pools its subjects' items,
    weighted by size as lm-eval does, with the bootstrap resampling whole subjects."""
    scores = item_scores(items)
    results = {}
    for name, group in leaves.items():
        entry = {"n": 0, "metrics": {}}
        keys = sorted({k for leaf in group for k in scores[leaf]})
        for key in keys:
            values, clusters = [], []
            for leaf in group:
                values += [v for _, v in scores[leaf][key]]
                clusters += [leaf] * len(scores[leaf][key])
            entry["metrics"][key] = stats.summarise(values, clusters if len(group) > 1 else None, iters, seed)
            entry["n"] = max(entry["n"], len(values))
        if len(group) > 1:
            entry["subtasks"] = {leaf: {k: sum(v for _, v in s) / len(s) for k, s in scores[leaf].items()}
                                 for leaf in group}
        results[name] = entry
    return results
