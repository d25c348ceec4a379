"""The run directory: where every stage of one run reads its inputs and writes its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lokilm.config import Config, to_dict
from lokilm.fileio import atomic_write, write_json


class RunDir:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = Path(cfg.run_dir)

    @property
    def tokenizer(self) -> Path:
        return Path(self.cfg.tokenizer.path) if self.cfg.tokenizer.path else self.root / "tokenizer.json"

    @property
    def shards(self) -> Path:
        return Path(self.cfg.data.shards) if self.cfg.data.shards else self.root / "shards"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def stage_summary(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def write_summary(self, stage: str, summary: dict) -> None:
        write_json(self.stage_summary(stage), summary)

    def read_summary(self, stage: str) -> dict | None:
        path = self.stage_summary(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def save_config(self) -> None:
        # atomic: generate, eval and consolidate read it, possibly while another command rewrites it
        atomic_write(self.root / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False).encode())

