"""`loki ablate`: identical variants come out exactly equal, an interrupted ablation trains only what is not
finished, the file and its runs are checked, and the write-up holds the statistics and the plots."""

import json
import os

import pytest
import yaml

from lokilm.cli import main
from lokilm.errors import LokiError
from lokilm.experiments.ablate import ablate, dry_run, load_ablation
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def wiki(prepared, tmp_path_factory):
    """Shards of the bundled Wikipedia articles with the prepared tokenizer, 60 kB held out: many short held-out
    documents, so the by-document statistics have clusters to work with."""
    from lokilm import stages
    from lokilm.config import load_config

    root = tmp_path_factory.mktemp("wiki")
    cfg = load_config("configs/tiny.yaml", [f"run_dir={root}", "data.inputs=[data/corpus/wikipedia]",
                                            f"tokenizer.path={prepared}/tokenizer.json", "data.holdout_bytes=60000",
                                            "model.vocab_size=512", "train.progress=false"])
    stages.tokenize_stage(cfg)
    return root


def _overrides(data, **extra):
    over = dict(item.split("=", 1) for item in SMALL)
    over = {k: yaml.safe_load(v) for k, v in over.items()}
    shards, tokenizer = data
    over.update({"data.shards": str(shards), "tokenizer.path": str(tokenizer),
                 "train.max_steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3, **extra})
    return over


def _write(path, data, variants, seeds=(1,), **extra):
    path.write_text(yaml.safe_dump({"config": "configs/tiny.yaml", "run_dir": str(path.parent / "abl"),
                                    "seeds": list(seeds), "windows": 0, "overrides": _overrides(data, **extra),
                                    "variants": variants}, sort_keys=False))
    return path


def _checkpoint_mtimes(run_dir):
    return {p: os.stat(p).st_mtime_ns for p in sorted((run_dir / "checkpoints").rglob("*")) if p.is_file()}


def test_identical_variants_are_equal_and_finished_runs_are_not_retrained(wiki, prepared, tmp_path, one_thread):
    data = (wiki / "shards", prepared / "tokenizer.json")
    # an "interrupted" ablation: only the reference got trained before the stop
    first = load_ablation(_write(tmp_path / "part.yaml", data, {"alibi": {}}))
    assert ablate(first)["trained"] == ["alibi-s1"]
    before = _checkpoint_mtimes(tmp_path / "abl" / "alibi-s1")
    ab = load_ablation(_write(tmp_path / "full.yaml", data,
                              {"alibi": {}, "same": {}, "rope": {"model.position": "rope"}}, seeds=(1, 2)))
    assert "alibi-s1 | alibi | 1 | (reference) |" in dry_run(ab) and "| finished |" in dry_run(ab)
    out = ablate(ab)
    assert out["skipped"] == ["alibi-s1"] and "alibi-s1" not in out["trained"] and len(out["trained"]) == 5
    assert _checkpoint_mtimes(tmp_path / "abl" / "alibi-s1") == before  # not touched, not even re-saved

    same = out["comparisons"]["same"]
    assert same["delta_bpb"] == 0.0 and same["p_value"] == 1.0 and same["ci"] == [0.0, 0.0]
    assert set(same["per_seed"].values()) == {0.0}
    a = json.loads((tmp_path / "abl" / "alibi-s2" / "heldout_windows.json").read_text())
    b = json.loads((tmp_path / "abl" / "same-s2" / "heldout_windows.json").read_text())
    assert a["bits"] == b["bits"]  # bit for bit, window by window
    rope = out["comparisons"]["rope"]
    assert rope["delta_bpb"] != 0 and 0 < rope["p_value"] <= 1 and rope["ci"][0] <= rope["delta_bpb"] <= rope["ci"][1]
    assert out["comparisons"]["same"]["p_holm"] == 1.0 and rope["p_holm"] >= rope["p_value"]
    assert out["noise_floor"]["sd"] > 0 and out["windows"] > 100 and out["held_out_documents"] > 10
    for name in ("ablation.json", "ablation.md", "loss_curves.png", "deltas.png"):
        assert (tmp_path / "abl" / name).stat().st_size > 0
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| same |" in md and "Noise floor" in md and "![deltas](deltas.png)" in md

    # run again: nothing is trained, the numbers are the same
    again = ablate(ab)
    assert again["trained"] == [] and again["comparisons"] == out["comparisons"]

    # the same run_dir with a different recipe is refused, not silently resumed
    changed = load_ablation(_write(tmp_path / "full.yaml", data, {"alibi": {}}, **{"train.lr": 1e-3}))
    with pytest.raises(LokiError, match="train.lr"):
        ablate(changed)


@pytest.mark.parametrize("content, message", [
    ({"run_dir": "x", "variants": {"a": {}}}, "`config` is missing"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {}}, "variants"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a/b": {}}}, "variant name"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a": {}}, "seeds": [1, 1]}, "repeats"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a": {}}, "seeds": "1"}, "seeds"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a": {}}, "varients": {}}, "unknown key 'varients'"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a": {"model.positon": "rope"}}}, "variant a: unknown config key"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a": {"model.position": "sinus"}}}, "model.position"),
    ({"config": "configs/nope.yaml", "run_dir": "x", "variants": {"a": {}}}, "does not exist"),
    ({"config": "configs/tiny.yaml", "run_dir": "x", "variants": {"a": {}}, "jobs": 0}, "jobs"),
])
def test_bad_ablation_files_give_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(LokiError, match=message):
        load_ablation(path)
    assert main(["ablate", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loki: error:") and "Traceback" not in err


def test_shipped_ablation_files_are_valid():
    for name in ("positions", "batch-warmup", "kd"):
        ab = load_ablation(f"configs/ablations/{name}.yaml")
        assert len(ab.seeds) == 3 and len(ab.variants) >= 2
    warm = {r.variant: r.cfg for r in __import__("lokilm.experiments.ablate", fromlist=["plan"]).plan(
        load_ablation("configs/ablations/batch-warmup.yaml"))}
    assert warm["warmup"].train.batch_warmup_tokens > 0 and warm["constant"].train.batch_warmup_tokens == 0


def test_distill_experiment_is_an_ablation_of_kd_off_and_on(make_cfg, tmp_path):
    from lokilm.distill.experiment import ablation
    from lokilm.experiments.ablate import plan

    cfg = make_cfg(tmp_path / "kd", "train.seed=7")
    runs = plan(ablation(cfg))
    assert [(r.name, r.cfg.distill.enabled) for r in runs] == [("without_kd-s7", False), ("with_kd-s7", True)]
    assert all(r.cfg.data.shards == cfg.data.shards and r.cfg.train.seed == 7 for r in runs)
