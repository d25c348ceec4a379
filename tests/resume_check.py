"""The check every model option must pass: it trains (the loss falls) and a halted run resumes exactly."""

from lokilm.train.metrics import read_metrics
from lokilm.train.trainer import train

COMMON = ["train.max_steps=12", "train.checkpoint_every=4", "train.eval_every=12"]


def records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


def trains_and_resumes(make_cfg, tmp_path, *overrides) -> dict[int, dict]:
    """Train 12 steps unbroken, and 6 + 6 with a resume between; returns the unbroken run's records."""
    full = train(make_cfg(tmp_path / "full", *COMMON, *overrides))
    assert full["status"] == "finished" and full["step"] == 12
    assert train(make_cfg(tmp_path / "split", *COMMON, *overrides, "train.halt_at_step=6"))["status"] == "halted"
    assert train(make_cfg(tmp_path / "split", *COMMON, *overrides))["status"] == "finished"
    a, b = records(tmp_path / "full"), records(tmp_path / "split")
    assert [b[s]["loss"] for s in range(7, 13)] == [a[s]["loss"] for s in range(7, 13)]  # bit-identical
    first, last = sum(a[s]["loss"] for s in (1, 2, 3)) / 3, sum(a[s]["loss"] for s in (10, 11, 12)) / 3
    assert last < first - 0.2, (first, last)
    return a
