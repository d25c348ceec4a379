"""Trackers: TensorBoard by default, wandb offline, MLflow's file store; an unknown name or a missing package
stops with a one-line message that says what to install."""

import importlib.util
import sys

import pytest

from lokilm.cli import main
from lokilm.config import ConfigError, load_config
from lokilm.errors import LokiError
from lokilm.train.metrics import MetricsLog
from lokilm.train.trackers import PACKAGES, open_trackers

def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'"):
        load_config("configs/tiny.yaml", ["train.trackers=[tensorbord]"])


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_a_missing_tracker_package_is_named_with_its_install_command(tmp_path, prepared, capsys, monkeypatch, name):
    # the package made absent for this test: a None entry in sys.modules is what Python's import system reads
    # as "not installed" (find_spec returns None, import raises ImportError)
    monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(LokiError, match=f"pip install {PACKAGES[name][1]}"):
        MetricsLog(tmp_path, 10, 0, tensorboard=True, progress=False, trackers=["tensorboard", name])
    assert not (tmp_path / "tensorboard").exists()  # checked before any tracker is opened
    # and through `loki train`, as a user meets it: one line, exit 2, no traceback
    code = main(["train", "configs/tiny.yaml", *make_cfg_overrides(prepared, tmp_path / "run"),
                 "train.tensorboard=true", f"train.trackers=[{name}]"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("loki: error:") and f"pip install {PACKAGES[name][1]}" in err
    assert "Traceback" not in err


def make_cfg_overrides(prepared, run_dir):
    from tests.conftest import SMALL

    return [*SMALL, f"run_dir={run_dir}", f"data.shards={prepared}/shards", f"tokenizer.path={prepared}/tokenizer.json",
            "train.max_steps=2"]


def test_tensorboard_receives_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, 3, 0, tensorboard=True, progress=False)
    for step in (1, 2, 3):
        log.log({"step": step, "loss": 1.0 / step, "val_bpb": 2.0 + step, "skipped": True})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [round(e.value, 6) for e in acc.Scalars("train/loss")] == [1.0, 0.5, round(1 / 3, 6)]
    assert [e.step for e in acc.Scalars("val_bpb")] == [1, 2, 3]
    assert "train/skipped" not in acc.Tags()["scalars"]  # booleans are not curves
    assert MetricsLog(tmp_path / "off", 3, 0, tensorboard=False, progress=False).trackers == []


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_runs_offline_and_a_resume_continues_the_same_run(tmp_path):
    for start in (0, 2):
        trackers = open_trackers(["wandb"], tmp_path, start)
        for step in (start + 1, start + 2):
            trackers[0].log({"loss": 1.0 / step}, step)
        trackers[0].close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "wandb" / "run_id").read_text()
    assert runs and all(r.name.endswith(run_id) for r in runs)  # one run id across the resume
    assert all((r / f"run-{run_id}.wandb").stat().st_size > 0 for r in runs)


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_file_store_holds_the_metrics(tmp_path):
    import mlflow

    trackers = open_trackers(["mlflow"], tmp_path, 0)
    for step in (1, 2):
        trackers[0].log({"loss": 3.0 - step}, step)
    trackers[0].close()
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    history = client.get_metric_history(trackers[0].run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
