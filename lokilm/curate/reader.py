"""lokilm's corpus readers as a datatrove reader step, so their ReadStats accounting survives into the report."""

from __future__ import annotations

import json
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from lokilm.data.readers import DataError, ReadStats, iter_documents


class LokiReader(PipelineStep):
    """Yields every document of `inputs` (any format lokilm.data.readers knows); rank r of n takes every n-th one.

    At the end rank 0 writes its ReadStats (what was skipped or repaired, and why) to `stats_folder`. A
    DataError (e.g. a folder with nothing readable) is written there too instead of raised, so the pipeline can
    stop with the reader's message rather than a worker's traceback.
    """

    name = "lokilm reader"
    type = "📖 - READER"

    def __init__(self, inputs: list[str], text_field: str, stats_folder: str):
        super().__init__()
        self.inputs, self.text_field, self.stats_folder = inputs, text_field, stats_folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        stats, error = ReadStats(), None
        try:
            docs, i = iter_documents(self.inputs, self.text_field, stats), 0
            while True:
                with self.track_time():  # reading and decompressing only, not the stages downstream
                    doc = next(docs, None)
                if doc is None:
                    break
                if i % world_size == rank:
                    self.stat_update("documents")
                    yield Document(text=doc.text, id=doc.id, metadata={"source": doc.source})
                i += 1
        except DataError as e:
            error = str(e)
        if rank == 0:  # every rank reads every file, so rank 0's account is the whole account
            out = Path(self.stats_folder)
            out.mkdir(parents=True, exist_ok=True)
            (out / "read.json").write_text(json.dumps({"read": stats.to_dict(), "error": error}))


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
