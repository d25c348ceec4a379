"""`loki curate annotate`: a local instruct model scores documents 0-5 for educational value, FineWeb-Edu style.

phi-1 and FineWeb-Edu trained their quality classifiers on labels a language model gave to a large sample. Here a
small local model (SmolLM2-135M-Instruct by default, or any HF folder or GGUF file) reads the start of each
document under FineWeb-Edu's additive rubric, and its score is read off the next-token distribution after
"Educational score:" (the six digits' probabilities): one forward pass a document, no sampling, no parsing of
free text. Labels are appended to a JSONL file batch by batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import heapq
import inspect
import json
import time
from pathlib import Path

import numpy as np

from lokilm.curate.labels import read_annotations, read_labels
from lokilm.curate.settings import AnnotateSettings, ClassifierSettings
from lokilm.errors import LokiError

# FineWeb-Edu's annotation prompt (Penedo et al. 2024, HuggingFaceFW/fineweb-edu's prompt), with the request for a
# justification replaced by the score alone: the score is read from the model's next-token probabilities.
RUBRIC = """Below is an extract from a web page. Evaluate whether the page has a high educational value and could be useful in an educational setting for teaching from primary school to grade school levels using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it includes some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align closely with educational standards. It might mix educational content with non-educational material, offering a superficial overview of potentially useful topics, or presenting information in a disorganized manner and incoherent writing style.
- Award a third point if the extract is appropriate for educational use and introduces key concepts relevant to school curricula. It is coherent though it may not be comprehensive or could include some extraneous information. It may resemble an introductory section of a textbook or a basic tutorial that is suitable for learning but has notable limitations like treating concepts that are too complex for grade school students.
- Grant a fourth point if the extract highly relevant and beneficial for educational purposes for a level not higher than grade school, exhibiting a clear and consistent writing style. It could be similar to a chapter from a textbook or a tutorial, offering substantial educational content, including exercises and solutions, with minimal irrelevant information, and the concepts aren't too advanced for grade school students. The content is coherent, focused, and valuable for structured learning.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for teaching either at primary school or grade school. It follows detailed reasoning, the writing style is easy to follow and offers profound and thorough insights into the subject matter, devoid of any non-educational or complex content.

The extract:
{text}

After examining the extract, give the total score (0 if no criterion is met) using the format: "Educational score: <total points>\""""
ANSWER_PREFIX = "Educational score:"
PROMPT_VERSION = 1  # part of the annotator's identity in the labels file: a new prompt means new labels


class Annotator:
    """An instruct model and its tokenizer, scoring batches of documents."""

    def __init__(self, a: AnnotateSettings):
        import torch

        from lokilm.distill.settings import TeacherSettings
        from lokilm.distill.teachers import load_teacher

        teacher = load_teacher(TeacherSettings(name="annotator", kind=a.kind, path=a.path, gguf_file=a.gguf_file))
        self.model, self.tok, self.a = teacher.model, teacher.tok, a
        self.identity = f"{teacher.source} prompt v{PROMPT_VERSION} max_tokens {a.max_tokens}"
        self.prefix_space, self.digit_ids = self._digit_tokens()
        self._head_cache = None
        self.torch = torch

    def _digit_tokens(self) -> tuple[str, list[int]]:
        """The six score tokens: " 0".." 5" where each is one token (GPT-2-style BPE), else "0".."5" after a space."""
        spaced = [self.tok.encode(f" {d}", add_special_tokens=False) for d in range(6)]
        if all(len(ids) == 1 for ids in spaced):
            return "", [ids[0] for ids in spaced]
        bare = [self.tok.encode(str(d), add_special_tokens=False) for d in range(6)]
        if not all(len(ids) == 1 for ids in bare):
            raise LokiError("the annotator's tokenizer does not have one token per digit 0-5; use another model")
        return " ", [ids[0] for ids in bare]

    def _prompt_parts(self) -> tuple[str, str]:
        """The prompt split around the extract: (what comes before it, the same for every document, and what comes
        after it), through the model's chat template when it has one."""
        marker = "\u0000EXTRACT\u0000"
        message = [{"role": "user", "content": RUBRIC.format(text=marker)}]
        if getattr(self.tok, "chat_template", None):
            whole = self.tok.apply_chat_template(message, tokenize=False, add_generation_prompt=True)
        else:  # a base model: the rubric, then the answer
            whole = message[0]["content"] + "\n\n"
        head, tail = whole.split(marker)
        return head, tail + ANSWER_PREFIX + self.prefix_space

    def prompt(self, text: str) -> str:
        head, tail = self._prompt_parts()
        return head + self._extract(text) + tail

    def _extract(self, text: str) -> str:
        return self.tok.decode(self.tok.encode(text, add_special_tokens=False)[: self.a.max_tokens])

    def score(self, texts: list[str]) -> np.ndarray:
        """The probabilities of the scores 0-5 (renormalised over the six digits), one row per text.

        The rubric before the extract is the same for every document: it is run through the model once and its
        key/value cache reused, so a batch computes only the extracts and the closing lines (about half the tokens).
        Rows are right-padded after it; each row's score is read at its own last token."""
        import copy

        torch = self.torch
        head, tail = self._prompt_parts()
        if self._head_cache is None:
            ids = self.tok(head, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                self._head_cache = (ids.shape[1], self.model(input_ids=ids, use_cache=True).past_key_values)
        n_head, cache = self._head_cache
        base = self.model.base_model
        # transformers 5 renamed past_key_values to cache; older versions know only the first
        cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        self.tok.padding_side = "right"
        enc = self.tok([self._extract(t) + tail for t in texts], return_tensors="pt", padding=True,
                       add_special_tokens=False)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(texts))
        full_mask = torch.cat([torch.ones(len(texts), n_head, dtype=mask.dtype), mask], dim=1)
        positions = n_head + torch.arange(ids.shape[1]).expand(len(texts), -1)
        with torch.no_grad():
            hidden = base(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                          **{cache_kw: batch_cache}).last_hidden_state
            last = hidden[torch.arange(len(texts)), mask.sum(1) - 1]  # the head only where the score is read
            logits = self.model.get_output_embeddings()(last)
        return torch.softmax(logits[:, self.digit_ids].float(), dim=-1).numpy()


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


def sample_documents(inputs: list[str], n: int, min_words: int, seed: int) -> list[dict]:
    """n documents of at least min_words words, the same ones on every run: the n smallest hashes of seed and id."""
    from lokilm.data.readers import iter_documents

    if n <= 0:
        return []
    chosen: list[tuple[str, int, dict]] = []  # a max-heap by hash, through negated keys
    for i, doc in enumerate(iter_documents(inputs)):
        if len(doc.text.split()) < min_words:
            continue
        key = hashlib.sha1(f"{seed}:{doc.id}".encode()).hexdigest()
        item = (_neg(key), i, {"id": doc.id, "source": "corpus", "text": doc.text})
        if len(chosen) < n:
            heapq.heappush(chosen, item)
        elif item[0] > chosen[0][0]:
            heapq.heapreplace(chosen, item)
    if not chosen:
        raise LokiError(f"curate.annotate: no document of at least {min_words} words in {inputs}")
    return [d for _, _, d in sorted(chosen, key=lambda c: c[1])]


def _neg(hexdigest: str) -> int:
    return -int(hexdigest[:15], 16)


def human_documents(cs: ClassifierSettings, n: int, seed: int) -> list[dict]:
    """n of the human-labelled documents (all with n = -1), chosen by hash of the text."""
    if n == 0:
        return []
    items = read_labels(cs.labels)
    items = sorted(items, key=lambda tl: hashlib.sha1(f"{seed}:{tl[0]}".encode("utf-8", "replace")).hexdigest())
    items = items if n < 0 else items[:n]
    return [{"id": f"human:{_sha1(t)[:16]}", "source": "human", "human_label": label, "text": t} for t, label in items]


def annotate(a: AnnotateSettings, cs: ClassifierSettings, inputs: list[str]) -> dict:
    """Score the sample, appending to cs.annotations; documents already scored by the same annotator are skipped."""
    for key, value in [("sample", a.sample), ("batch_size", a.batch_size), ("max_tokens", a.max_tokens)]:
        if value < (0 if key == "sample" else 1):
            raise LokiError(f"curate.annotate.{key} must be {'>= 0' if key == 'sample' else 'positive'}, got {value}")
    if a.human_sample < -1:
        raise LokiError(f"curate.annotate.human_sample must be -1 (all), 0 or more, got {a.human_sample}")
    out = Path(cs.annotations)
    done = read_annotations(out)
    docs = human_documents(cs, a.human_sample, a.seed) + sample_documents(a.inputs or inputs, a.sample, a.min_words,
                                                                         a.seed)
    have = {r["id"] for r in done}
    todo = [d for d in docs if d["id"] not in have]
    annotator, seconds = None, 0.0
    if todo:
        start = time.time()
        annotator = Annotator(a)
        load_s = time.time() - start
        other = {r["annotator"] for r in done} - {annotator.identity}
        if other:
            raise LokiError(f"{out} holds labels from another annotator ({sorted(other)[0]}); set "
                            "curate.classifier.annotations to a new file or delete this one")
        print(f"annotate: {len(todo)} documents to score ({len(docs) - len(todo)} already in {out}); "
              f"model loaded in {load_s:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(out)
        start = time.time()
        with open(out, "a", encoding="utf-8") as f:
            for first in range(0, len(todo), a.batch_size):
                batch = todo[first: first + a.batch_size]
                probs = annotator.score([d["text"] for d in batch])
                for d, p in zip(batch, probs):
                    row = {"id": d["id"], "source": d["source"], "human_label": d.get("human_label"),
                           "score": int(np.argmax(p)), "expected": round(float(p @ np.arange(6)), 4),
                           "probs": [round(float(x), 4) for x in p], "annotator": annotator.identity,
                           "text": d["text"]}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()  # a batch is either in the file or redone
                done_n = first + len(batch)
                if done_n % (a.batch_size * 8) == 0 or done_n == len(todo):
                    print(f"annotate: {done_n}/{len(todo)} ({done_n / (time.time() - start):.2f} docs/s)", flush=True)
        seconds = time.time() - start
    wanted = {d["id"] for d in docs}
    rows = [r for r in read_annotations(out) if r["id"] in wanted]
    summary = {"annotations": str(out), "annotator": annotator.identity if annotator else
               (rows[0]["annotator"] if rows else None), "documents": len(rows), "scored_now": len(todo),
               "seconds": round(seconds, 1), "docs_per_s": round(len(todo) / seconds, 3) if seconds else None,
               **agreement(rows, cs.annotation_positive)}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _drop_partial_line(path: Path) -> None:
    if path.is_file() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def agreement(rows: list[dict], positive: int) -> dict:
    """The score distribution per source, and on the human-labelled documents how well the annotator agrees:
    accuracy of "score >= cut" against the human 0/1 label for each cut, and the ROC AUC of the expected score."""
    dist = {src: [sum(r["score"] == s for r in rows if r["source"] == src) for s in range(6)]
            for src in sorted({r["source"] for r in rows})}
    human = [r for r in rows if r.get("human_label") is not None]
    out: dict = {"score_counts": dist}
    if human:
        y = np.array([r["human_label"] for r in human])
        score, expected = np.array([r["score"] for r in human]), np.array([r["expected"] for r in human])
        by_cut = {cut: round(float(((score >= cut) == y).mean()), 4) for cut in range(1, 6)}
        out["human_agreement"] = {
            "documents": len(human), "positive_at": positive, "accuracy": by_cut[positive] if positive in by_cut
            else round(float(((score >= positive) == y).mean()), 4),
            "accuracy_by_cut": by_cut, "majority_baseline": round(float(max(y.mean(), 1 - y.mean())), 4),
            "auc_expected_score": _auc(expected, y)}
    return out


def _auc(score: np.ndarray, y: np.ndarray) -> float | None:
    if len(set(y.tolist())) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, score)), 4)


def run(cfg) -> int:
    summary = annotate(cfg.curate.annotate, cfg.curate.classifier, cfg.data.inputs)
    print(json.dumps(summary, indent=2))
    print(f"labels in {cfg.curate.classifier.annotations}; train on them: loki curate train-classifier CONFIG "
          "curate.classifier.train_on=annotations (or both)")
    return 0
