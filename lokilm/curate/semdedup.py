"""SemDeDup (Abbas et al. 2023): in each k-means cluster, drop documents nearly identical in meaning to a kept one."""

from __future__ import annotations

import math

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep


def default_clusters(n: int) -> int:
    return max(1, round(math.sqrt(n / 2)))


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows: (cluster of each row, unit centroids). faiss when installed, numpy otherwise."""
    k = min(k, len(x))
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        centroids = km.centroids
    else:
        rng = np.random.default_rng(seed)
        centroids = x[rng.choice(len(x), k, replace=False)].copy()
        for _ in range(iters):
            labels = np.argmax(x @ centroids.T, axis=1)
            for c in range(k):
                members = x[labels == c]
                if len(members):
                    centroids[c] = members.sum(0) / max(np.linalg.norm(members.sum(0)), 1e-12)
    labels = np.argmax(x @ centroids.T, axis=1)
    return labels, centroids


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
            x = np.stack([d.metadata["embedding"] for d in docs])
            labels, _ = kmeans(x, self.clusters or default_clusters(len(docs)), self.seed)
            duplicate_of: dict[int, tuple[int, float]] = {}
            for c in np.unique(labels):
                members = np.flatnonzero(labels == c)
                sims = x[members] @ x[members].T
                kept: list[int] = []
                for j in range(len(members)):
                    if kept:
                        best = kept[int(np.argmax(sims[j, kept]))]
                        if sims[j, best] > 1 - self.eps:
                            duplicate_of[members[j]] = (members[best], float(sims[j, best]))
                            continue
                    kept.append(j)
        with self.exclusion_writer as removed:
            for i, doc in enumerate(docs):
                if i in duplicate_of:
                    other, sim = duplicate_of[i]
                    doc.metadata["filter_detail"] = f"cosine {sim:.3f} to {docs[other].id}"
                    removed.write(doc, rank)
                else:
                    yield doc
