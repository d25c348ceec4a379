"""The quality classifier: a logistic-regression head on document embeddings, trained on human labels, on a local
model's annotations (`loki curate annotate`) or both, and its filter step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from lokilm.curate.embeddings import Embedder, backend_name
from lokilm.curate.labels import read_annotations, read_labels
from lokilm.curate.settings import ClassifierSettings, EmbeddingSettings
from lokilm.errors import LokiError
from lokilm.shards import split_of


def annotated_labels(cs: ClassifierSettings) -> list[tuple[str, int]]:
    """(text, 0/1) from the annotator's labels: a score of at least annotation_positive is a good document."""
    rows = read_annotations(cs.annotations)
    if not rows:
        raise LokiError(f"curate.classifier.train_on={cs.train_on} needs the annotator's labels, and "
                        f"{cs.annotations} has none: run `loki curate annotate CONFIG` first")
    return list({r["text"]: int(r["score"] >= cs.annotation_positive) for r in rows}.items())


def training_items(cs: ClassifierSettings) -> tuple[list[tuple[str, int]], dict[str, int], dict[str, int]]:
    """The labelled texts the head learns from (per cs.train_on; the human label wins where a text has both),
    and the human and the annotator labels by text, for scoring against each."""
    def optional(read) -> dict[str, int]:  # labels not trained on are only scored against, when there are any
        try:
            return dict(read())
        except LokiError:
            return {}

    human = dict(read_labels(cs.labels)) if cs.train_on != "annotations" else optional(lambda: read_labels(cs.labels))
    annotated = dict(annotated_labels(cs)) if cs.train_on != "human" else optional(lambda: annotated_labels(cs))
    if cs.train_on == "human":
        items = dict(human)
    elif cs.train_on == "annotations":
        items = dict(annotated)
    else:
        items = {**annotated, **human}
    return list(items.items()), human, annotated


def train_classifier(cs: ClassifierSettings, es: EmbeddingSettings, embedder: Embedder | None = None) -> dict:
    """Train on the labelled set minus a held-out share (chosen by hash of the text, as the shards' split is),
    and report the accuracy on that held-out share, against the human labels and against the annotator's.

    The split is by text alone, so a held-out document is held out whichever labels it carries: training on the
    annotations never sees a held-out human-labelled document."""
    from sklearn.linear_model import LogisticRegression

    items, human, annotated = training_items(cs)
    embedder = embedder or Embedder(es)
    held = np.array([split_of(text, cs.holdout_fraction) == "val" for text, _ in items])
    x = embedder.embed([t for t, _ in items])
    y = np.array([label for _, label in items])
    if len(set(y[~held])) < 2:
        raise LokiError(f"the training part of the labels (curate.classifier.train_on={cs.train_on}) needs documents "
                        "of both labels (0 and 1)")
    head = LogisticRegression(C=1.0, max_iter=2000).fit(x[~held], y[~held])
    model = {"embedding": embedder.name, "chunk_words": es.chunk_words, "max_chunks": es.max_chunks,
             "coef": head.coef_[0].tolist(), "intercept": float(head.intercept_[0]), "train_on": cs.train_on,
             "train_items": int((~held).sum()), "heldout_items": int(held.sum()),
             **_heldout_scores(head, x[held], y[held]),
             "train_accuracy": float((head.predict(x[~held]) == y[~held]).mean()), "labels": cs.labels}
    for name, labels in [("human", human), ("annotations", annotated)]:
        texts = [t for t in labels if split_of(t, cs.holdout_fraction) == "val"]
        if texts:
            scores = _heldout_scores(head, embedder.embed(texts), np.array([labels[t] for t in texts]))
            model[f"heldout_vs_{name}"] = {"items": len(texts), **scores}
    path = Path(cs.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model))  # JSON, not a pickle: loading a classifier never runs code
    return model


def _heldout_scores(head, x: np.ndarray, y: np.ndarray) -> dict:
    if not len(y):
        return {"heldout_accuracy": float("nan"), "heldout_majority_baseline": float("nan")}
    return {"heldout_accuracy": float((head.predict(x) == y).mean()),
            "heldout_majority_baseline": float(max(y.mean(), 1 - y.mean()))}


def load_classifier(cs: ClassifierSettings, es: EmbeddingSettings) -> dict:
    path = Path(cs.path)
    model = json.loads(path.read_text()) if path.is_file() else None
    if model is None or (model["chunk_words"], model["max_chunks"], model["embedding"]) != (
            es.chunk_words, es.max_chunks, backend_name(es)) or model.get("train_on", "human") != cs.train_on:
        why = ("no quality classifier" if model is None else
               "the quality classifier was trained on other embeddings, chunking or labels")
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
