"""`loki report`: a full run (every stage) and partial ones (only some stages) give a report.html that holds
everything inline and a report.md beside its plots; with Chromium present, the page is rendered and looked at."""

import json
import lzma
import re
import shutil
import subprocess

import pytest

from lokilm import stages
from lokilm.cli import main
from lokilm.config import load_config
from lokilm.report.report import write_report
from tests.conftest import ROOT, SMALL


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Every stage of `loki run` on 150 Wikipedia articles, with a halt and a resume in the middle of training."""
    root = tmp_path_factory.mktemp("full")
    docs = re.findall(r"<doc [^>]*>(.*?)</doc>", lzma.open(ROOT / "data/corpus/wikipedia/wiki_00.xz", "rt").read(), re.S)
    with open(root / "articles.jsonl", "w") as f:
        f.writelines(json.dumps({"id": f"wiki{i}", "text": t.strip()}) + "\n" for i, t in enumerate(docs[:400]) if len(t) > 400)
    over = [*SMALL, f"run_dir={root / 'run'}", f"data.inputs=[{root / 'articles.jsonl'}]", "data.holdout_fraction=0.15",
            "curate.enabled=true", "curate.classifier.enabled=false", "curate.semdedup.enabled=false",
            "train.max_steps=8", "train.eval_every=4", "train.checkpoint_every=4", "eval.tasks=[arc_challenge]",
            "eval.bpb_windows=8", "eval.max_new_tokens=6", "generate.max_new_tokens=6", "generate.prompts=[The]",
            "eval.bootstrap_iters=100"]
    cfg = load_config("configs/tiny.yaml", over + ["train.halt_at_step=4"])
    for name in ("curate", "tokenizer", "tokenize", "train"):
        stages.STAGES[name](cfg)
    cfg = load_config("configs/tiny.yaml", over)
    stages.train_stage(cfg)  # resumes at step 4
    # the evaluation as `loki eval --limit 10` (the full quick preset takes minutes here; the report reads either)
    from lokilm.eval.run import evaluate_run

    evaluate_run(cfg.run_dir, cfg.eval, limit=10, device="cpu")
    stages.generate_stage(cfg)
    assert list(stages.STAGES)[-1] == "report"  # `loki run` ends with the report
    stages.STAGES["report"](cfg)
    return root / "run"


def test_report_of_a_full_run_has_every_section(full_run):
    html = (full_run / "report.html").read_text()
    md = (full_run / "report.md").read_text()
    for title in ("Training", "Held-out bits per byte", "Curation funnel", "Tokenizer and shards",
                  "Evaluation beside the paper", "WinoBias", "Generated samples"):
        assert f"<h2>{title}" in html and f"## {title}" in md
    # self-contained: every picture inline, nothing to fetch
    assert html.count("src='data:image/png;base64,") == 4 and "http" not in html.replace("http-equiv", "")
    for png in ("loss", "dynamics", "funnel", "benchmarks"):
        assert f"](report/{png}.png)" in md and (full_run / "report" / f"{png}.png").stat().st_size > 5000
    assert "resume" in md  # the resume at step 4 is listed (and drawn on the loss plot)
    assert re.search(r"\*\*\d\.\d{4} ± 0\.\d{4}\*\*", md)  # held-out bits per byte with its standard error
    assert "LokiLM 1.4B" in md and "43.9" in md  # beside the paper's Table 1
    assert "first 10 items of each task" in md  # a --limit evaluation says so


def test_report_of_partial_runs(tmp_path, prepared, full_run, capsys):
    # only the data stages: a tokenizer and shards, nothing trained
    cfg = load_config("configs/tiny.yaml", [*SMALL, f"run_dir={tmp_path / 'data'}", "data.inputs=[data/corpus/shakespeare]",
                                            f"tokenizer.path={prepared}/tokenizer.json", "data.holdout_fraction=0.3"])
    from lokilm.rundir import RunDir

    RunDir(cfg).save_config()
    stages.tokenize_stage(cfg)
    out = write_report(tmp_path / "data")
    assert out["sections"] == ["Run", "Tokenizer and shards"]
    # a training run killed early: metrics but no finished summary, no eval
    part = tmp_path / "killed"
    shutil.copytree(full_run, part, ignore=shutil.ignore_patterns("eval", "curate", "report*", "heldout_windows.json"))
    for summary in ("train", "eval", "generate", "report"):
        (part / "stages" / f"{summary}.json").unlink(missing_ok=True)
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:10])  # cut off mid-line
    assert main(["report", str(part), "--no-heldout"]) == 0
    assert "Training" in capsys.readouterr().out
    md = (part / "report.md").read_text()
    assert "## Training" in md and "## Evaluation" not in md and "## Curation" not in md
    # not a run directory at all: one clear line
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("loki: error:")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_chromium_renders_the_report(full_run, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", (full_run / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 3000)
    # the page drew something across its height: text and plots, not a blank or error page
    bands = [image.crop((0, y, 1200, y + 500)).getextrema() for y in range(0, 2500, 500)]
    assert all(lo < 100 for lo, _ in bands)
