import json

import pytest

from lokilm.cli import main
from lokilm.train.metrics import read_metrics


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["train", "configs/tiny.yaml", "train.max_step=3"], "unknown config key 'train.max_step'; did you mean train.max_steps?"),
    (["train", "configs/nope.yaml"], "config file configs/nope.yaml does not exist"),
    (["tokenizer", "train", "configs/tiny.yaml", "data.inputs=[no/such/dir]"], "input path does not exist: no/such/dir"),
    (["generate", "configs"], "configs is not a run directory"),
])
def test_bad_input_is_one_clear_line(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *argv, *([f"run_dir={tmp_path}"] if argv[0] != "generate" else []))
    assert code == 2
    assert err.startswith("loki: error: ") and message in err and "Traceback" not in err


def test_empty_data_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "empty.txt").write_text("")
    code, _, err = run_cli(capsys, "tokenizer", "train", "configs/tiny.yaml", f"run_dir={tmp_path}/run",
                           f"data.inputs=[{tmp_path}/data]")
    assert code == 2 and "no readable documents" in err and "empty_file" in err


def test_an_empty_data_file_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    code, _, err = run_cli(capsys, "tokenizer", "train", "configs/tiny.yaml", f"run_dir={tmp_path}/run",
                           f"data.inputs=[{tmp_path}/empty.txt]")
    assert code == 2 and "no documents could be read" in err and "empty_file" in err


def test_train_without_shards_says_what_to_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "configs/tiny.yaml", f"run_dir={tmp_path}")
    assert code == 2 and "run `loki tokenize` first" in err


def test_run_help_names_every_stage_it_runs(capsys):
    from lokilm.stages import STAGES

    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    text = out[out.index("run every stage in order:"):out.index("distill multi-teacher")]
    words = text.replace(",", " ").split()
    assert [w for w in words if w in STAGES] == list(STAGES)  # each stage, in the order `loki run` runs them


def test_quickstart_runs_end_to_end_and_learns(capsys, tmp_path):
    run = tmp_path / "qs"
    args = ["run", "configs/quickstart.yaml", f"run_dir={run}", "train.max_steps=60", "train.eval_every=30",
            "train.progress=false", "generate.max_new_tokens=12",
            # the eval stage in brief (tests/test_eval_* cover it whole)
            "eval.tasks=[winogrande]", "eval.winobias=false", "eval.qualitative=false", "eval.bpb_windows=4"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    for stage in ["curate", "tokenizer", "tokenize", "train", "eval", "generate"]:
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["status"] in ("done", "finished")
    bpb = {r["step"]: r["val_bpb"] for r in read_metrics(run) if "val_bpb" in r}
    assert sorted(bpb) == [0, 30, 60] and bpb[60] < 0.8 * bpb[0]
    samples = json.loads((run / "stages" / "generate.json").read_text())["samples"]
    assert [s["prompt"] for s in samples] == ["The King said", "Once upon a time"]
    assert all(s["completion"] in out for s in samples)

    # Again: finished stages are skipped and training has nothing left to do.
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "== tokenizer: skipped (done)" in out and "== tokenize: skipped (done)" in out
    assert json.loads((run / "stages" / "train.json").read_text())["step"] == 60

    code, out, _ = run_cli(capsys, "generate", str(run), "--prompt", "Macbeth", "--max-new-tokens", "5",
                           "--temperature", "0")
    assert code == 0 and out.startswith("Macbeth")
