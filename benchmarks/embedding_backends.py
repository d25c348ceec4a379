"""Embedding backends side by side: chunks/s, and how far each agrees with sentence-transformers MiniLM.

    .venv/bin/python benchmarks/embedding_backends.py --inputs ../shared/data/corpus/wikipedia ... [--docs 300]
        [--max-chunks 4] [--backends sentence-transformers onnx onnx-int8 model2vec] [--json]

On a sample of documents (at least 50 words, chosen by hash of id) it times each backend on the same chunks,
round-robin over --repeats rounds (the median is printed, so a busy machine slows every backend alike), then
compares each backend's document embeddings with MiniLM's (the first backend): the cosine (same space only), the
rank correlation of all pairwise similarities and the overlap of the 10 nearest neighbours (any space), what
SemDeDup removes at several eps, and what a quality head trained on the human labels with that backend keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lokilm.curate.annotate import sample_documents  # noqa: E402
from lokilm.curate.classifier import train_classifier  # noqa: E402
from lokilm.curate.clustering import default_clusters, kmeans  # noqa: E402
from lokilm.curate.embeddings import Embedder  # noqa: E402
from lokilm.curate.semdedup import semantic_duplicates  # noqa: E402
from lokilm.curate.settings import ClassifierSettings, EmbeddingSettings  # noqa: E402

VARIANTS = {"sentence-transformers": {}, "onnx": {"backend": "onnx"},
            "onnx-int8": {"backend": "onnx", "onnx_int8": True}, "model2vec": {"backend": "model2vec"}}
EPS = (0.05, 0.1, 0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", nargs="+", default=["data/corpus"])
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--max-chunks", type=int, default=4)
    ap.add_argument("--speed-chunks", type=int, default=256, help="chunks timed per backend per round")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--labels", nargs="+", default=["data/quality_labels"])
    ap.add_argument("--cache-dir", default="runs/.cache/embeddings", help="exported models and embeddings")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    docs = sample_documents(args.inputs, args.docs, 50, seed=0)
    texts = [d["text"] for d in docs]
    embedders = {b: Embedder(EmbeddingSettings(cache_dir=args.cache_dir, max_chunks=args.max_chunks, **VARIANTS[b]))
                 for b in args.backends}
    chunks = [c for t in texts for c in embedders[args.backends[0]].chunks(t)][: args.speed_chunks]
    for e in embedders.values():  # load, export or distil once, outside the timing
        e.backend.encode(chunks[:4])
    rates: dict[str, list[float]] = {b: [] for b in embedders}
    for _ in range(args.repeats):
        for b, e in embedders.items():
            start = time.perf_counter()
            e.backend.encode(chunks)
            rates[b].append(len(chunks) / (time.perf_counter() - start))

    x = {b: e.embed(texts) for b, e in embedders.items()}
    ref_name = args.backends[0]
    ref = x[ref_name]
    labels_ref, _ = kmeans(ref, default_clusters(len(ref)), 0)
    dup_ref = {eps: set(semantic_duplicates(ref, labels_ref, eps)) for eps in EPS}
    keep = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b, e in embedders.items():
            cs = ClassifierSettings(path=f"{tmp}/{b}.json", labels=args.labels)
            head = train_classifier(cs, e.s, e)
            p = 1 / (1 + np.exp(-(x[b] @ np.array(head["coef"]) + head["intercept"])))
            keep[b] = p >= 0.5
            labels_b, _ = kmeans(x[b], default_clusters(len(x[b])), 0)
            dups = {eps: set(semantic_duplicates(x[b], labels_b, eps)) for eps in EPS}
            row = {"backend": b, "chunks_per_s": round(statistics.median(rates[b]), 1),
                   "chunks_per_s_rounds": [round(r, 1) for r in rates[b]], "docs": len(texts), "dim": int(x[b].shape[1]),
                   **agreement(ref, x[b]),
                   "semdedup_removed": {str(eps): len(dups[eps]) for eps in EPS},
                   "semdedup_same_as_minilm": {str(eps): len(dups[eps] & dup_ref[eps]) for eps in EPS},
                   "classifier_heldout_accuracy": round(head["heldout_accuracy"], 4),
                   "classifier_kept": int(keep[b].sum()),
                   "classifier_decisions_differ_from_minilm": int((keep[b] != keep[ref_name]).sum())}
            rows.append(row)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['backend']:>22}: {row['chunks_per_s']:7.1f} chunks/s  cosine to MiniLM "
                  f"{row['cosine_median']} (min {row['cosine_min']})  pairwise rho {row['pairwise_spearman']}  "
                  f"10-NN overlap {row['knn10_overlap']}  SemDeDup removed {row['semdedup_removed']} "
                  f"(same docs {row['semdedup_same_as_minilm']})  classifier acc {row['classifier_heldout_accuracy']} "
                  f"kept {row['classifier_kept']}/{row['docs']} (differs on {row['classifier_decisions_differ_from_minilm']})")
    return 0


def agreement(ref: np.ndarray, x: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    out: dict = {"cosine_median": None, "cosine_min": None}
    if x.shape == ref.shape:
        cos = (x * ref).sum(1)
        out = {"cosine_median": round(float(np.median(cos)), 4), "cosine_min": round(float(cos.min()), 4)}
    iu = np.triu_indices(len(ref), 1)
    s_ref, s_x = ref @ ref.T, x @ x.T
    out["pairwise_spearman"] = round(float(spearmanr(s_ref[iu], s_x[iu]).statistic), 4)
    k = min(10, len(ref) - 1)
    np.fill_diagonal(s_ref, -2), np.fill_diagonal(s_x, -2)
    nn_ref, nn_x = np.argsort(-s_ref, 1)[:, :k], np.argsort(-s_x, 1)[:, :k]
    out["knn10_overlap"] = round(float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nn_ref, nn_x)])), 4)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
