"""Self-Supervised-Prototypes pruning (Sorscher et al. 2022): keep the share of documents farthest from their centroid.

Documents close to a k-means prototype are the "easy", typical ones; when data is plentiful, dropping them
costs little and keeps the informative rest."""

from __future__ import annotations

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.curate.clustering import cluster_documents


class PrototypePrune(PipelineStep):
    name = "prototype pruning"
    type = "🔻 - FILTER"

    def __init__(self, keep_fraction: float, clusters: int, seed: int, exclusion_writer):
        super().__init__()
        self.keep_fraction, self.clusters, self.seed, self.exclusion_writer = keep_fraction, clusters, seed, exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        if not docs:
            return
        with self.track_time():
            x, labels, centroids = cluster_documents(docs, self.clusters, self.seed)
            distance = 1 - np.einsum("ij,ij->i", x, centroids[labels])
            n_keep = round(self.keep_fraction * len(docs))
            order = np.lexsort((np.arange(len(docs)), -distance))  # farthest first; ties by input order
            keep = np.zeros(len(docs), bool)
            keep[order[:n_keep]] = True
            cutoff = distance[order[n_keep - 1]] if n_keep else float("inf")
        with self.exclusion_writer as removed:
            for doc, k, d in zip(docs, keep, distance):
                if k:
                    yield doc
                else:
                    doc.metadata["filter_detail"] = f"distance {d:.3f} to its prototype, cutoff {cutoff:.3f}"
                    removed.write(doc, rank)
