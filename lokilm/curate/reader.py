"""lokilm's corpus readers as a datatrove reader step, so their ReadStats accounting survives into the report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from lokilm.data.readers import DataError, ReadStats, iter_documents


class LokiReader(PipelineStep):
    """Yields the documents of `inputs` (any format lokilm.data.readers knows); rank r of n takes the r-th of n
    contiguous blocks of about equal bytes.

    Contiguous blocks keep the order (rank, position in rank) the same as the reading order, so datatrove's dedup
    steps, which keep the first of a set of duplicates in that order, keep the same copies whatever the number of
    tasks. With more than one task, every rank first reads the inputs through once to find the blocks (the whole
    ReadStats account comes from that pass), then reads up to the end of its own block.

    At the end rank 0 writes its ReadStats (what was skipped or repaired, and why) to `stats_folder`. A
    DataError (e.g. a folder with nothing readable) is written there too instead of raised, so the pipeline can
    stop with the reader's message rather than a worker's traceback.

    `sources` (a data mixture): (name, inputs, text field) of each source, read in turn instead of `inputs`; each
    document's metadata names its source (`mixture_source`, which the writer's file name uses) and its id starts
    with the source's name, so two sources' files of the same name stay two documents.
    """

    name = "lokilm reader"
    type = "📖 - READER"

    def __init__(self, inputs: list[str], text_field: str, stats_folder: str,
                 sources: list[tuple[str, list[str], str]] | None = None):
        super().__init__()
        self.inputs, self.text_field, self.stats_folder = inputs, text_field, stats_folder
        self.sources = sources

    def _documents(self, stats: ReadStats):
        """(document, mixture source name or None) in reading order."""
        if not self.sources:
            yield from ((d, None) for d in iter_documents(self.inputs, self.text_field, stats))
            return
        for name, inputs, text_field in self.sources:
            before = stats.documents
            try:
                yield from ((d, name) for d in iter_documents(inputs, text_field, stats))
            except DataError as e:
                raise DataError(f"data.mixture source {name!r}: {e}") from None
            if stats.documents == before:
                raise DataError(f"data.mixture source {name!r} has no documents in {inputs} (text field "
                                f"{text_field!r})")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        stats, error = ReadStats(), None
        try:
            start, stop = 0, None
            if world_size > 1:
                with self.track_time():
                    start, stop = self._block(rank, world_size, stats)
            docs = self._documents(stats if world_size == 1 else ReadStats())
            for i in itertools.count():
                if i == stop:
                    break
                with self.track_time():  # reading and decompressing only, not the stages downstream
                    doc, name = next(docs, (None, None))
                if doc is None:
                    break
                if i >= start:
                    self.stat_update("documents")
                    meta = {"source": doc.source, "reader_rank": rank}
                    if name is None:
                        yield Document(text=doc.text, id=doc.id, metadata=meta)
                    else:
                        yield Document(text=doc.text, id=f"{name}:{doc.id}", metadata={**meta, "mixture_source": name})
        except DataError as e:
            error = str(e)
        if rank == 0:  # rank 0 has read every file (in its only pass, or its first), so its account is whole
            out = Path(self.stats_folder)
            out.mkdir(parents=True, exist_ok=True)
            (out / "read.json").write_text(json.dumps({"read": stats.to_dict(), "error": error}))

    def _block(self, rank: int, world_size: int, stats: ReadStats) -> tuple[int, int]:
        """[start, stop) of this rank's documents: each goes to the block its middle byte falls in."""
        sizes = np.array([len(d.text.encode()) for d, _ in self._documents(stats)], np.int64)
        middle = np.cumsum(sizes) - sizes / 2
        owner = np.minimum((middle * world_size / max(int(sizes.sum()), 1)).astype(np.int64), world_size - 1)
        return int(np.searchsorted(owner, rank)), int(np.searchsorted(owner, rank + 1))


def reading_order_priority(doc: Document) -> int:
    """Exact dedup keeps the copy of highest priority, then of lowest position in its rank: with contiguous
    blocks, a lower rank first is the reading order."""
    return 65535 - doc.metadata["reader_rank"]


class SizeLimit(BaseFilter):
    """Removes a single document too large to process sensibly (one huge line defeats every later stage)."""

    name = "document size limit"

    def __init__(self, max_bytes: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.max_bytes = max_bytes

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        # a character is at most 4 UTF-8 bytes, so most documents pass without being encoded
        return len(doc.text) * 4 <= self.max_bytes or len(doc.text.encode()) <= self.max_bytes or (False, "document_too_large")


def read_report(stats_folder: str | Path) -> tuple[dict, str | None]:
    """The reader's ReadStats (as a dict) and its error message, if it stopped on one."""
    part = json.loads((Path(stats_folder) / "read.json").read_text())
    return part["read"], part["error"]
