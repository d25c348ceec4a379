"""What the tokenizer and tokenize stages read: the raw inputs, or the curated documents when curation is on;
and what those inputs are by content, for skipping a finished stage."""

from __future__ import annotations

from collections.abc import Iterator

from lokilm.config import Config
from lokilm.data.readers import DataError, ReadStats, iter_documents
from lokilm.fileio import fingerprint
from lokilm.rundir import RunDir
from lokilm.shards import holdout_cut, split_of


def documents_in(cfg: Config) -> tuple[list[str], str]:
    """(inputs, text field): the curated JSONL when curation is on."""
    if cfg.curate.enabled:
        return [str(RunDir(cfg).curated)], "text"
    return cfg.data.inputs, cfg.data.text_field


def inputs_key(cfg: Config) -> dict:
    """The inputs by content (file sizes and sha256, names relative to each input): adding, removing or editing a
    file changes it; moving or copying the run directory does not."""
    run = RunDir(cfg)
    if cfg.curate.enabled and not (run.curate_report.is_file() and run.curated.is_dir()):
        raise DataError(f"curate.enabled is true but {run.curate} holds no finished curation: run `loki curate` first")
    inputs, _ = documents_in(cfg)
    return fingerprint(inputs)


def split_cut(cfg: Config) -> float:
    """The held-out cut of the run's documents (data.holdout_fraction, or data.holdout_bytes)."""
    return holdout_cut(cfg.data, lambda: iter_documents(*documents_in(cfg)))


def train_texts(cfg: Config, stats: ReadStats, cut: float) -> Iterator[str]:
    """Texts of the training split only: the tokenizer never sees held-out documents."""
    for doc in iter_documents(*documents_in(cfg), stats=stats):
        if split_of(doc.id, cut) == "train":
            yield doc.text
