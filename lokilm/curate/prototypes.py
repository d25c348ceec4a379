"""Self-Supervised-Prototypes pruning (Sorscher et al. 2022): keep the share of documents farthest from their centroid.

Documents close to a k-means prototype are the "easy", typical ones; when data is plentiful, dropping them
costs little and keeps the informative rest. One global cutoff dropped every play and most books of the shared
corpus (books and plays sit in tight clusters: docs/LOG.md), so the share can be kept per cluster or per source
instead (`per`), and each kind of text keeps `keep_fraction` of itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.curate.clustering import cluster_documents


def source_of(path: str, inputs: list[str]) -> str:
    """The source a document's file belongs to: the input it was found under, and below a folder input its first
    subfolder (data/corpus/gutenberg/x.txt under the input data/corpus is "data/corpus/gutenberg")."""
    p = Path(path)
    for root in map(Path, inputs):
        try:
            rel = p.relative_to(root)
        except ValueError:
            continue
        return str(root / rel.parts[0]) if len(rel.parts) > 1 else str(root)
    return str(p.parent)


class PrototypePrune(PipelineStep):
    name = "prototype pruning"
    type = "🔻 - FILTER"

    def __init__(self, keep_fraction: float, clusters: int, seed: int, exclusion_writer, per: str = "global",
                 inputs: list[str] | None = None):
        super().__init__()
        self.keep_fraction, self.clusters, self.seed, self.exclusion_writer = keep_fraction, clusters, seed, exclusion_writer
        self.per, self.inputs = per, inputs or []

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        if not docs:
            return
        with self.track_time():
            keep, distance, cutoff, group = self.decide(docs)
        with self.exclusion_writer as removed:
            for i, doc in enumerate(docs):
                if keep[i]:
                    yield doc
                else:
                    doc.metadata["filter_detail"] = (f"distance {distance[i]:.3f} to its prototype, cutoff "
                                                     f"{cutoff[group[i]]:.3f} ({self.per}: {group[i]})")
                    removed.write(doc, rank)

    def decide(self, docs: list) -> tuple[np.ndarray, np.ndarray, dict, list]:
        """(keep mask, distance to the prototype, cutoff per group, group of each document)."""
        distance = np.zeros(len(docs))
        if self.per == "source":  # each source clustered on its own: its prototypes are its own kinds of text
            group = [d.metadata.get("mixture_source") or source_of(d.metadata.get("source") or "", self.inputs)
                     for d in docs]  # a mixture's source is the one it names
            for g in dict.fromkeys(group):
                idx = np.array([i for i, x in enumerate(group) if x == g])
                distance[idx] = _distances([docs[i] for i in idx], self.clusters, self.seed)
        else:
            x, labels, centroids = cluster_documents(docs, self.clusters, self.seed)
            distance = 1 - np.einsum("ij,ij->i", x, centroids[labels])
            group = [f"cluster {c}" for c in labels] if self.per == "cluster" else ["all"] * len(docs)
        keep, cutoff = np.zeros(len(docs), bool), {}
        for g in dict.fromkeys(group):
            idx = np.array([i for i, x in enumerate(group) if x == g])
            n_keep = round(self.keep_fraction * len(idx))
            order = idx[np.lexsort((idx, -distance[idx]))]  # farthest first; ties by input order
            keep[order[:n_keep]] = True
            cutoff[g] = distance[order[n_keep - 1]] if n_keep else float("inf")
        return keep, distance, cutoff, group


def _distances(docs: list, clusters: int, seed: int) -> np.ndarray:
    x, labels, centroids = cluster_documents(docs, clusters, seed)
    return 1 - np.einsum("ij,ij->i", x, centroids[labels])
