"""Accounting steps: a removals writer every removing stage hands its dropped documents to, and a tally step."""

from __future__ import annotations

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers import JsonlWriter

EXCERPT_CHARS = 160


class RemovalRecord:
    """A writer adapter: one small record per removed document (the text itself is not kept)."""

    def __init__(self, stage: str, default_reason: str):
        self.stage, self.default_reason = stage, default_reason

    def __call__(self, writer, doc: Document) -> dict:
        return {"id": doc.id, "stage": self.stage, "reason": doc.metadata.get("filter_reason") or self.default_reason,
                "detail": doc.metadata.get("filter_detail", ""), "bytes": len(doc.text.encode()),
                "excerpt": doc.text[:EXCERPT_CHARS]}


def removals_writer(folder: str, stage: str, default_reason: str) -> JsonlWriter:
    return JsonlWriter(f"{folder}/{stage}", output_filename="${rank}.jsonl", compression=None,
                       adapter=RemovalRecord(stage, default_reason))


class Tally(PipelineStep):
    """Counts the documents and UTF-8 bytes passing this point; the report reads the counts from datatrove's stats."""

    type = "🧮 - TALLY"

    def __init__(self, point: str):
        self.name = f"tally {point}"  # before PipelineStep.__init__, which names the stats after it
        super().__init__()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(doc.text.encode()))
            yield doc
