"""Experiment trackers: where a run's scalars go besides metrics.jsonl (TensorBoard, Weights & Biases offline,
MLflow with a local file store). Each is a small adapter with `log(scalars, step)` and `close()`; `open_trackers`
builds the ones `train.trackers` names, and a tracker whose package is missing stops the run with the install command."""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

from lokilm.config import TRACKERS
from lokilm.errors import ConfigError, LokiError
from lokilm.rundir import RunDir

# name -> (module to import, pip package)
PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}


assert tuple(PACKAGES) == TRACKERS, "config.TRACKERS names the trackers this module opens"


def check_names(names: list[str]) -> None:
    """Every name is a known tracker (the packages are checked when training starts)."""
    for name in names:
        if name not in PACKAGES:
            raise ConfigError(f"train.trackers: unknown tracker {name!r} (known: {', '.join(PACKAGES)})")


def _require(name: str) -> None:
    module, package = PACKAGES[name]
    top = module.split(".")[0]
    missing = importlib.util.find_spec(top) is None
    if not missing and name == "tensorboard":  # torch.utils.tensorboard needs the tensorboard package itself
        missing = importlib.util.find_spec("tensorboard") is None
    if missing:
        raise LokiError(f"train.trackers includes {name!r} but the {package} package is not installed: "
                        f"`pip install {package}`, or drop it from train.trackers")


def _tag(key: str) -> str:
    return key if key.startswith("val") else f"train/{key}"


class TensorBoard:
    def __init__(self, run_dir: Path, start_step: int, run_name: str):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run's events after its checkpoint are replaced, not drawn twice
        self.writer = SummaryWriter(str(RunDir.at(run_dir).tensorboard), purge_step=start_step + 1)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(_tag(k), v, step)

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """Weights & Biases in offline mode: files under run_dir/wandb/, nothing sent (`wandb sync` uploads later).
    A resumed run continues the same wandb run (its id is kept in run_dir/wandb/run_id)."""

    def __init__(self, run_dir: Path, start_step: int, run_name: str):
        import wandb

        id_file = run_dir / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.run = wandb.init(project="lokilm", name=run_name, id=run_id, resume="allow", mode="offline",
                              dir=str(run_dir), settings=wandb.Settings(silent=True, console="off"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log({_tag(k): v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """MLflow with a file store in run_dir/mlruns (`mlflow ui --backend-store-uri run_dir/mlruns`): plain files
    beside the run, no server or database (mlflow 3 asks for an explicit opt-in to its file store)."""

    def __init__(self, run_dir: Path, start_step: int, run_name: str):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self.client = mlflow.tracking.MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        experiment = self.client.get_experiment_by_name("lokilm")
        exp_id = experiment.experiment_id if experiment else self.client.create_experiment("lokilm")
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.client.log_metric(self.run_id, _tag(k).replace("/", "_"), v, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


KINDS = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": MLflow}


def open_trackers(names: list[str], run_dir: Path, start_step: int) -> list:
    """The trackers `names` lists, opened on run_dir; every package is checked before any is opened."""
    check_names(names)
    for name in names:
        _require(name)
    return [KINDS[name](Path(run_dir), start_step, Path(run_dir).resolve().name) for name in dict.fromkeys(names)]
