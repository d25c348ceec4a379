"""The curation pipeline's embedding stage: every document embedded once (embeddings.Embedder) into its metadata,
for the classifier, SemDeDup and prototype pruning after it."""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.curate.embeddings import Embedder, backend_name
from lokilm.curate.settings import EmbeddingSettings


class Embed(PipelineStep):
    """Embeds every document (all at once: the stages after it need the whole set) into metadata["embedding"]."""

    name = "embed (all-MiniLM-L6-v2)"
    type = "🧭 - EMBED"

    def __init__(self, s: EmbeddingSettings):
        super().__init__()
        self.s = s
        self.name = f"embed ({backend_name(s)})"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        with self.track_time():
            embedder = Embedder(self.s)
            vecs = embedder.embed([d.text for d in docs])
        self.stat_update("chunks_embedded", value=embedder.chunks_embedded)
        for doc, v in zip(docs, vecs):
            doc.metadata["embedding"] = v
            yield doc
