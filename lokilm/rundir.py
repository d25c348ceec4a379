"""The run directory: it owns every path a stage of one run reads or writes, the lock that keeps a second
process out, and the "skip when done" rule every stage uses.

No other module builds `run_dir/...` from strings: a run that is moved or copied keeps working because every
path is derived here from one root, and stage summaries record their inputs by content, not by path.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from lokilm.config import Config, ConfigError, from_dict, to_dict
from lokilm.errors import LokiError
from lokilm.fileio import atomic_write, exclusive_lock, write_json


class RunDir:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = Path(cfg.run_dir)

    @classmethod
    def open(cls, run_dir: str | Path) -> RunDir:
        """An existing run directory, with the config it was run with (the run may have been moved since)."""
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise LokiError(f"{run_dir} is not a run directory (no config.yaml); train a model first with `loki train`")
        try:
            data = yaml.safe_load(path.read_text())
            cfg = from_dict(data if isinstance(data, dict) else {})
        except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
            raise LokiError(f"{path} is not a valid run config ({e})") from None
        cfg.run_dir = str(run_dir)
        return cls(cfg)

    @classmethod
    def at(cls, run_dir: str | Path) -> RunDir:
        """The paths of the run directory `run_dir` without reading its config (defaults for the rest)."""
        cfg = Config()
        cfg.run_dir = str(run_dir)
        return cls(cfg)

    # ------------------------------------------------------------------ inputs

    @property
    def tokenizer(self) -> Path:
        return Path(self.cfg.tokenizer.path) if self.cfg.tokenizer.path else self.root / "tokenizer.json"

    @property
    def shards(self) -> Path:
        return Path(self.cfg.data.shards) if self.cfg.data.shards else self.root / "shards"

    @property
    def source_shards(self) -> dict[str, Path]:
        """Each data.mixture source's shard folder (a shard folder of its own, inside `shards`)."""
        return {s.name: self.shards / s.name for s in self.cfg.data.mixture}

    # ------------------------------------------------------------------ stage outputs

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def curate(self) -> Path:
        return self.root / "curate"

    @property
    def curated(self) -> Path:
        """The curated documents (JSONL) the tokenizer and tokenize stages read when curation is on."""
        return self.curate / "output"

    def curated_source(self, name: str) -> Path:
        """A data.mixture source's curated documents, inside `curated` (curation runs on every source at once)."""
        return self.curated / name

    @property
    def curate_work(self) -> Path:
        return self.curate / "work"

    @property
    def curate_report(self) -> Path:
        return self.curate / "report.json"

    @property
    def curate_report_md(self) -> Path:
        return self.curate / "report.md"

    @property
    def curate_removals(self) -> Path:
        return self.curate / "removals.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def tokenizer_compare(self) -> Path:
        return self.root / "tokenizer_compare"

    @property
    def distill_cache(self) -> Path:
        return Path(self.cfg.distill.cache_dir) if self.cfg.distill.cache_dir else self.root / "distill"

    @property
    def evals(self) -> Path:
        """One folder per evaluation (eval_dir)."""
        return self.root / "eval"

    def eval_dir(self, preset: str, limit: int | None = None) -> Path:
        return self.evals / (preset if limit is None else f"{preset}-limit{limit}")

    def child(self, name: str) -> Path:
        """A sub-run's directory (an experiment's arm, an ablation's variant x seed)."""
        return self.root / name

    # ------------------------------------------------------------------ stage summaries and skipping

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def stage_summary(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    def write_summary(self, stage: str, summary: dict) -> None:
        write_json(self.stage_summary(stage), summary)

    def read_summary(self, stage: str) -> dict | None:
        path = self.stage_summary(stage)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return None  # a damaged summary means "not done": the stage runs again
        return data if isinstance(data, dict) else None

    def finished(self, stage: str, inputs: dict, *outputs: Path) -> dict | None:
        """The summary of `stage` if it finished on exactly these inputs (a content key: see
        fileio.fingerprint) and its outputs are still there; None means run it. Stages write their summary
        last, after every check of their output passed, so a killed or failed stage is never "done"."""
        done = self.read_summary(stage)
        if done and done.get("status") == "done" and done.get("inputs") == inputs and all(p.exists() for p in outputs):
            return {**done, "status": "skipped (done)"}
        return None

    def save_config(self) -> None:
        # atomic: generate, eval and consolidate read it, possibly while another command rewrites it
        atomic_write(self.config_file, yaml.safe_dump(to_dict(self.cfg), sort_keys=False).encode())

    # ------------------------------------------------------------------ one writer at a time

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run directory for one writing command. A second `loki train` (or run, curate...) on the same
        directory is refused naming the holder. The OS drops the lock when its process dies, however it dies,
        so a stale lock file from a killed run never blocks the next one."""
        if self.root.exists() and not self.root.is_dir():
            raise LokiError(f"run_dir {self.root} is a file, not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LokiError(f"cannot create run_dir {self.root} ({e.strerror})") from None

        def busy(holder: str) -> LokiError:
            return LokiError(f"{self.root} is in use by {holder}; wait for it to finish (or stop it) before starting "
                             "another command that writes this run directory")

        with exclusive_lock(self.root / ".lock", f"`loki {command}` (pid {os.getpid()})", busy):
            yield
