"""Where training numbers go: metrics.jsonl (one object per step), events.jsonl, the trackers (TensorBoard by
default; lokilm/train/trackers.py), a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lokilm.errors import LokiError
from lokilm.fileio import atomic_write
from lokilm.rundir import RunDir


def peak_flops(device) -> float | None:
    """Dense bf16 peak of the GPU, for MFU; None where we do not know it (CPUs, unlisted GPUs)."""
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}
    return next((v for k, v in table.items() if k in name), None)


class MetricsLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, tensorboard: bool, progress: bool,
                 trackers: list[str] | None = None):
        """`tensorboard` false: no trackers at all; true: those `trackers` names (train.trackers; by
        default TensorBoard alone), each opened through lokilm/train/trackers.py."""
        from lokilm.train.trackers import open_trackers

        run = RunDir.at(run_dir)
        self.path, self.events_path = run.metrics, run.events
        # a resumed run rewrites the steps after its checkpoint
        dropped = _truncate_after(self.path, start_step)
        names = (["tensorboard"] if trackers is None else trackers) if tensorboard else []
        self.trackers = open_trackers(names, run_dir, start_step)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if dropped:
            self.event("metrics_partial_line_dropped", start_step, file=str(self.path))

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(scalars, record["step"])
        if self.bar is not None:
            shown = {"loss": f"{record['loss']:.3f}" if "loss" in record else None,
                     "tok/s": f"{record['tokens_per_s']:,.0f}" if "tokens_per_s" in record else None,
                     "tok/s/gpu": f"{record['tokens_per_s_per_gpu']:,.0f}" if "tokens_per_s_per_gpu" in record
                     else None,
                     "mfu": f"{record['mfu']:.1%}" if record.get("mfu") is not None else None,
                     "val_bpb": f"{record['val_bpb']:.3f}" if "val_bpb" in record else None}
            self.bar.set_postfix({k: v for k, v in shown.items() if v is not None}, refresh=False)
            self.bar.n = record["step"]
            self.bar.refresh()

    def rewind(self, step: int) -> None:
        """Forget the steps after `step` (a rollback will redo them)."""
        if _truncate_after(self.path, step):
            self.event("metrics_partial_line_dropped", step, file=str(self.path))

    def event(self, kind: str, step: int, **info) -> None:
        record = {"event": kind, "step": step, "time": time.time(), **info}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        message = f"[{kind}] step {step}: " + ", ".join(f"{k}={v}" for k, v in info.items())
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for tracker in self.trackers:
            tracker.close()


class NullLog:
    """The log of every rank but 0 in a multi-process job: rank 0 speaks for all."""

    def log(self, record: dict) -> None:
        pass

    def rewind(self, step: int) -> None:
        pass

    def event(self, kind: str, step: int, **info) -> None:
        pass

    def close(self) -> None:
        pass


def _records(path: Path) -> tuple[list[tuple[str, dict]], bool]:
    """(line, record) for every line of a metrics file, and True if an unparseable last line (a write cut off
    by a kill or a full disk) was skipped. An unparseable line before the last is damage we cannot explain."""
    if not path.exists():
        return [], False
    lines = [(n, line) for n, line in enumerate(path.read_bytes().splitlines(), 1) if line.strip()]
    out = []
    for i, (n, raw) in enumerate(lines):
        try:
            line = raw.decode()
            out.append((line, json.loads(line)))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i < len(lines) - 1:
                raise LokiError(f"{path} line {n} is not valid JSON: repair or delete that line, then resume") from None
            return out, True
    return out, False


def _truncate_after(path: Path, step: int) -> bool:
    """Keep the records up to `step`; True if a cut-off last line was dropped."""
    if not path.exists():
        return False
    records, dropped = _records(path)
    kept = "".join(line + "\n" for line, record in records if record.get("step", 0) <= step)
    atomic_write(path, kept.encode())  # a crash here leaves the old file whole
    return dropped


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of a run's metrics.jsonl (a cut-off last line, from a killed run, is skipped)."""
    return [record for _, record in _records(RunDir.at(run_dir).metrics)[0]]
