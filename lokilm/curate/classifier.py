"""The quality classifier: a logistic-regression head on MiniLM embeddings, its training, and its filter step."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from lokilm.curate.embeddings import MODEL_NAME, Embedder
from lokilm.curate.settings import ClassifierSettings, EmbeddingSettings
from lokilm.errors import LokiError
from lokilm.shards import split_of


def read_labels(paths: list[str]) -> list[tuple[str, int]]:
    """(text, label) from JSONL files (optionally .xz) with `text` and a 0/1 `label`; repeated texts once."""
    files = [f for p in paths for f in (sorted(Path(p).glob("*.jsonl*")) if Path(p).is_dir() else [Path(p)])]
    if not files:
        raise LokiError(f"no labelled JSONL files in {paths}")
    seen: dict[str, int] = {}
    for f in files:
        opener = lzma.open if f.suffix == ".xz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    seen.setdefault(r["text"], int(r["label"]))
    return list(seen.items())


def train_classifier(cs: ClassifierSettings, es: EmbeddingSettings, embedder: Embedder | None = None) -> dict:
    """Train on the labelled set minus a held-out share (chosen by hash of the text, as the shards' split is),
    and report the accuracy on that held-out share."""
    from sklearn.linear_model import LogisticRegression

    items = read_labels(cs.labels)
    held = np.array([split_of(text, cs.holdout_fraction) == "val" for text, _ in items])
    x = (embedder or Embedder(es)).embed([t for t, _ in items])
    y = np.array([label for _, label in items])
    if len(set(y[~held])) < 2:
        raise LokiError(f"the labelled set {cs.labels} needs documents of both labels (0 and 1) in its training part")
    head = LogisticRegression(C=1.0, max_iter=2000).fit(x[~held], y[~held])
    nan = float("nan")
    acc = float((head.predict(x[held]) == y[held]).mean()) if held.any() else nan
    model = {"embedding": MODEL_NAME, "chunk_words": es.chunk_words, "max_chunks": es.max_chunks,
             "coef": head.coef_[0].tolist(), "intercept": float(head.intercept_[0]),
             "train_items": int((~held).sum()), "heldout_items": int(held.sum()), "heldout_accuracy": acc,
             "heldout_majority_baseline": float(max(y[held].mean(), 1 - y[held].mean())) if held.any() else nan,
             "train_accuracy": float((head.predict(x[~held]) == y[~held]).mean()), "labels": cs.labels}
    path = Path(cs.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model))  # JSON, not a pickle: loading a classifier never runs code
    return model


def load_classifier(cs: ClassifierSettings, es: EmbeddingSettings) -> dict:
    path = Path(cs.path)
    model = json.loads(path.read_text()) if path.is_file() else None
    if model is None or (model["chunk_words"], model["max_chunks"]) != (es.chunk_words, es.max_chunks):
        why = "no quality classifier" if model is None else "the quality classifier was trained on other chunking"
        print(f"curate: {why} at {path}; training one on {cs.labels}", flush=True)
        return train_classifier(cs, es)
    return model


class QualityFilter(BaseFilter):
    name = "quality classifier"

    def __init__(self, model: dict, threshold: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.w, self.b, self.threshold = np.array(model["coef"], np.float32), model["intercept"], threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        p = float(1 / (1 + np.exp(-(doc.metadata["embedding"] @ self.w + self.b))))
        doc.metadata["quality"] = round(p, 4)
        doc.metadata["filter_detail"] = f"quality {p:.2f} < {self.threshold}"
        return p >= self.threshold or (False, "quality_below_threshold")
