"""Error bars and `loki compare`: a run against itself shows no difference; planted item-level differences
come out as the right deltas and p-values; and `loki eval` / `loki compare` work end to end on a trained run."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

pytest.importorskip("lm_eval")

from lokilm.cli import main
from lokilm.errors import LokiError
from lokilm.eval import stats
from lokilm.eval.compare import compare_items

pytestmark = pytest.mark.usefixtures("one_thread")


def _items(task, scores, metric="acc", filt="none"):
    return [{"task": task, "doc_id": i, "filter": filt, "doc_hash": f"{task}-{i}", "target": 0,
             "metrics": {metric: float(s)}} for i, s in enumerate(scores)]


def _run(arc, mmlu, mc2):
    items = _items("arc_challenge", arc, "acc_norm") + _items("truthfulqa_mc2", mc2)
    for subject, scores in mmlu.items():
        items += _items(f"mmlu_{subject}", scores)
    return items


@pytest.fixture
def base():
    rng = np.random.default_rng(1)
    return {"arc": (rng.random(100) < 0.4).astype(float),
            "mmlu": {s: (rng.random(20) < 0.3).astype(float) for s in ("anatomy", "virology", "law")},
            "mc2": rng.random(50)}


def test_compare_of_a_run_with_itself_reports_no_difference(base):
    items = _run(base["arc"], base["mmlu"], base["mc2"])
    result = compare_items(items, items, iters=200)
    for row in result["rows"]:
        assert row["delta"] == 0 and row["ci95"] == [0.0, 0.0] and row["p_value"] == 1.0
    assert result["average"]["delta"] == 0 and result["average"]["p_value"] == 1.0


def test_compare_finds_planted_differences(base):
    arc_b = base["arc"].copy()
    wrong, right = np.flatnonzero(arc_b == 0)[:10], np.flatnonzero(arc_b == 1)[:2]
    arc_b[wrong], arc_b[right] = 1, 0  # B gains 10 items and loses 2: +8 points
    mmlu_b = {s: v.copy() for s, v in base["mmlu"].items()}
    mmlu_b["law"][mmlu_b["law"] == 0] = 1  # every law item now right
    mc2_b = base["mc2"] + 0.1
    result = compare_items(_run(base["arc"], base["mmlu"], base["mc2"]), _run(arc_b, mmlu_b, mc2_b), iters=500)
    rows = {r["task"]: r for r in result["rows"]}
    arc = rows["arc_challenge"]
    assert arc["delta"] == pytest.approx(0.08) and (arc["b_only"], arc["a_only"]) == (10, 2)
    assert arc["p_value"] == pytest.approx(binomtest(10, 12, 0.5).pvalue) and arc["test"] == "mcnemar-exact"
    assert arc["ci95"][0] > 0
    gained = float((base["mmlu"]["law"] == 0).sum())
    assert rows["mmlu"]["delta"] == pytest.approx(gained / 60) and rows["mmlu"]["n"] == 60
    assert rows["truthfulqa_mc2"]["delta"] == pytest.approx(0.1) and rows["truthfulqa_mc2"]["p_value"] < 0.01
    assert result["average"]["delta"] == pytest.approx((0.08 + gained / 60 + 0.1) / 3)


def test_compare_refuses_different_documents(base):
    a = _run(base["arc"], base["mmlu"], base["mc2"])
    b = [dict(it, doc_hash="other") if it["task"] == "arc_challenge" else it for it in a]
    with pytest.raises(LokiError, match="different document"):
        compare_items(a, b)


def test_clustered_interval_is_wider_when_clusters_differ():
    values = np.r_[np.ones(50), np.zeros(50)]
    clusters = ["a"] * 50 + ["b"] * 50
    plain, clustered = stats.summarise(values, None, 500), stats.summarise(values, clusters, 500)
    assert plain["value"] == clustered["value"] == 0.5
    assert plain["stderr"] == pytest.approx(np.std(values, ddof=1) / 10)
    assert clustered["stderr"] > 2 * plain["stderr"]


def test_loki_eval_and_compare_end_to_end(make_cfg, tmp_path, capsys):
    from lokilm.train.trainer import train

    cfg = make_cfg(tmp_path / "run", "train.max_steps=4", "train.eval_every=0", "train.checkpoint_every=4")
    train(cfg)
    run = str(tmp_path / "run")
    assert main(["eval", run, "eval.bootstrap_iters=100", "eval.max_new_tokens=4", "eval.bpb_windows=2",
                 "--tasks", "arc_challenge,gsm8k", "--limit", "3", "--preset", "openllm"]) == 0
    # a --limit run is a smoke test: its own folder, never the full results that compare reads by default
    assert not (tmp_path / "run/eval/openllm").exists()
    out = json.loads((tmp_path / "run/eval/openllm-limit3/eval.json").read_text())
    assert out["tasks"]["arc_challenge"]["num_fewshot"] == 25 and out["tasks"]["arc_challenge"]["n"] == 3
    assert out["bpb"]["value"] > 0
    assert out["winobias"]["pairs"] == 6 and len(out["winobias"]["template"]) == 4  # 3 lines x 2 types
    assert out["qualitative"]["samples"][0]["name"] == "french_revolution"
    md = (tmp_path / "run/eval/openllm-limit3/eval.md").read_text()
    assert "| ARC-C (acc_norm) |" in md and "43.9" in md
    capsys.readouterr()
    assert main(["compare", run, run, "--preset", "openllm", "--bootstrap", "100"]) == 2
    assert "no 'openllm' evaluation" in capsys.readouterr().err
    assert main(["compare", run, run, "--preset", "openllm", "--limit", "3", "--bootstrap", "100"]) == 0
    table = capsys.readouterr().out
    assert "| arc_challenge | acc_norm,none | 3 |" in table and "+0.0" in table
    assert main(["eval", run, "--preset", "nope"]) == 2
    assert "unknown eval preset" in capsys.readouterr().err


def test_eval_stage_of_loki_run_is_skipped_once_done(make_cfg, tmp_path):
    from lokilm import stages
    from lokilm.train.trainer import train

    cfg = make_cfg(tmp_path / "run", "train.max_steps=2", "train.eval_every=0", "train.checkpoint_every=2",
                   "eval.tasks=[winogrande]", "eval.winobias=false", "eval.qualitative=false", "eval.bootstrap_iters=50")
    train(cfg)
    assert [s for s in stages.STAGES if s in ("train", "eval", "generate")] == ["train", "eval", "generate"]
    first = stages.STAGES["eval"](cfg)
    assert first["status"] == "done" and first["preset"] == "quick"
    assert first["headline"]["Winogrande"]["n"] == 150  # the quick preset's fixed subset
    assert stages.STAGES["eval"](cfg)["status"] == "skipped (done)"


def test_clear_errors_for_runs_that_cannot_be_evaluated_or_compared(make_cfg, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    cfg = make_cfg(tmp_path / "untrained")
    from lokilm.rundir import RunDir

    RunDir(cfg).save_config()
    assert main(["eval", str(tmp_path / "untrained")]) == 2
    assert "no valid checkpoint" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "untrained"), str(tmp_path / "untrained")]) == 2
    assert "loki eval" in capsys.readouterr().err
