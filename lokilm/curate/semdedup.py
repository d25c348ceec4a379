"""SemDeDup (Abbas et al. 2023): in each k-means cluster, drop documents nearly identical in meaning to a kept one."""

from __future__ import annotations

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.curate.clustering import cluster_documents


def semantic_duplicates(x: np.ndarray, labels: np.ndarray, eps: float) -> dict[int, tuple[int, float]]:
    """{row: (the kept row it duplicates, their cosine)}: in each cluster, in row order, a row whose cosine to a kept
    row exceeds 1 - eps is a duplicate; otherwise it is kept."""
    duplicate_of: dict[int, tuple[int, float]] = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        sims = x[members] @ x[members].T
        kept: list[int] = []
        for j in range(len(members)):
            if kept:
                best = kept[int(np.argmax(sims[j, kept]))]
                if sims[j, best] > 1 - eps:
                    duplicate_of[int(members[j])] = (int(members[best]), float(sims[j, best]))
                    continue
            kept.append(j)
    return duplicate_of


class SemDedup(PipelineStep):
    """Keeps documents in input order; a later one whose cosine similarity to a kept one in its cluster exceeds
    1 - eps is removed, naming the document it duplicates."""

    name = "SemDeDup"
    type = "🫂 - DEDUPS"

    def __init__(self, eps: float, clusters: int, seed: int, exclusion_writer):
        super().__init__()
        self.eps, self.clusters, self.seed, self.exclusion_writer = eps, clusters, seed, exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        if not docs:
            return
        with self.track_time():
            x, labels, _ = cluster_documents(docs, self.clusters, self.seed)
            duplicate_of = semantic_duplicates(x, labels, self.eps)
        with self.exclusion_writer as removed:
            for i, doc in enumerate(docs):
                if i in duplicate_of:
                    other, sim = duplicate_of[i]
                    doc.metadata["filter_detail"] = f"cosine {sim:.3f} to {docs[other].id}"
                    removed.write(doc, rank)
                else:
                    yield doc
