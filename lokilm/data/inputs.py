"""What the tokenizer and tokenize stages read: the raw inputs, the curated documents when curation is on, or each
source of a data mixture; and what those inputs are by content, for skipping a finished stage."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import zip_longest

from lokilm.config import Config
from lokilm.data.readers import DataError, Document, ReadStats, iter_documents
from lokilm.fileio import fingerprint
from lokilm.rundir import RunDir
from lokilm.shards import holdout_cut, split_of


def documents_in(cfg: Config) -> tuple[list[str], str]:
    """(inputs, text field): the curated JSONL when curation is on."""
    if cfg.curate.enabled:
        return [str(RunDir(cfg).curated)], "text"
    return cfg.data.inputs, cfg.data.text_field


def curated_sources(cfg: Config) -> list[tuple[str, list[str], str]]:
    """(name, inputs, text field) of each data.mixture source the curation reads: with curate.enabled, every
    source but those marked `curate: false`; all of them go through one pipeline together."""
    if not cfg.curate.enabled:
        return []
    return [(s.name, s.inputs, s.text_field or cfg.data.text_field) for s in cfg.data.mixture if s.curate]


def uses_curation(cfg: Config) -> bool:
    """Whether the tokenizer and tokenize stages read curated documents (all, or some mixture sources')."""
    return cfg.curate.enabled and (not cfg.data.mixture or bool(curated_sources(cfg)))


def sources_in(cfg: Config) -> dict[str, tuple[list[str], str]]:
    """Each data.mixture source's (inputs, text field), in the mixture's order: its curated documents when it
    is curated (RunDir.curated_source), else its own inputs."""
    run, curated = RunDir(cfg), {name for name, _, _ in curated_sources(cfg)}
    return {s.name: ([str(run.curated_source(s.name))], "text") if s.name in curated
            else (s.inputs, s.text_field or cfg.data.text_field) for s in cfg.data.mixture}


def source_documents(cfg: Config, name: str, stats: ReadStats) -> Iterator[Document]:
    """The documents of one mixture source; unreadable or empty inputs are an error naming the source."""
    inputs, text_field = sources_in(cfg)[name]
    if any(n == name for n, _, _ in curated_sources(cfg)) and not RunDir(cfg).curated_source(name).is_dir():
        raise DataError(f"data.mixture source {name!r}: curation kept none of its documents (see "
                        f"{RunDir(cfg).curate_report_md}); loosen the stage that removed them, or give the source "
                        "`curate: false`")
    before = stats.documents
    try:
        yield from iter_documents(inputs, text_field, stats=stats)
    except DataError as e:
        raise DataError(f"data.mixture source {name!r}: {e}") from None
    if stats.documents == before:
        raise DataError(f"data.mixture source {name!r} has no documents in {inputs} (text field {text_field!r}; "
                        f"skipped: {stats.skipped or 'nothing'})")


def _all_documents(cfg: Config, stats: ReadStats) -> Iterator[Document]:
    """Every document of the run. A mixture's sources are interleaved one document each in turn, so a sample cut
    at a byte budget (the tokenizer's) holds some of every source, not only the first."""
    if not cfg.data.mixture:
        yield from iter_documents(*documents_in(cfg), stats=stats)
        return
    for docs in zip_longest(*(source_documents(cfg, name, stats) for name in sources_in(cfg))):
        yield from (d for d in docs if d is not None)


def inputs_key(cfg: Config) -> dict:
    """The inputs by content (file sizes and sha256, names relative to each input): adding, removing or editing a
    file changes it; moving or copying the run directory does not."""
    run = RunDir(cfg)
    if uses_curation(cfg) and not (run.curate_report.is_file() and run.curated.is_dir()):
        raise DataError(f"curate.enabled is true but {run.curate} holds no finished curation: run `loki curate` first")
    if cfg.data.mixture:
        return {"mixture": {name: {"inputs": fingerprint(inputs), "text_field": field}
                            for name, (inputs, field) in sources_in(cfg).items()}}
    inputs, _ = documents_in(cfg)
    return fingerprint(inputs)


def split_cut(cfg: Config) -> float:
    """The held-out cut of the run's documents (data.holdout_fraction, or data.holdout_bytes). A mixture has one cut
    for all its sources: holdout_bytes is the size of the held-out set of every source together."""
    return holdout_cut(cfg.data, lambda: _all_documents(cfg, ReadStats()))


def train_texts(cfg: Config, stats: ReadStats, cut: float) -> Iterator[str]:
    """Texts of the training split only: the tokenizer never sees held-out documents."""
    for doc in _all_documents(cfg, stats):
        if split_of(doc.id, cut) == "train":
            yield doc.text
