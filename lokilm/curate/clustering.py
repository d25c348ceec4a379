"""k-means over document embeddings, shared by SemDeDup and prototype pruning."""

from __future__ import annotations

import math

import numpy as np


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


def cluster_documents(docs: list, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit embeddings, cluster of each document, unit centroids); clusters 0 means sqrt(n / 2)."""
    x = np.stack([d.metadata["embedding"] for d in docs])
    labels, centroids = kmeans(x, clusters or default_clusters(len(docs)), seed)
    return x, labels, centroids
