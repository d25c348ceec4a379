"""The bundled benchmark files (data/benchmarks) read into plain records, for evaluation and decontamination.

Each loader returns a list of dicts shaped like the Hugging Face copy of that benchmark, so the evaluation
task configs can use lm-evaluation-harness's standard prompt functions on them unchanged. No network.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import lzma
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from lokilm.errors import LokiError

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "data" / "benchmarks"


def _root(root: str | Path | None) -> Path:
    path = Path(root) if root is not None else DEFAULT_ROOT
    if not path.is_dir():
        raise LokiError(f"benchmark folder {path} does not exist (it ships in the lokilm repository's data/)")
    return path


def _jsonl_xz(path: Path) -> list[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_arc_challenge(root: str | Path | None = None) -> list[dict]:
    """ARC-Challenge test: id, question, choices {text, label}, answerKey (as on the hub)."""
    items = []
    for rec in _jsonl_xz(_root(root) / "arc" / "arc_challenge_test.jsonl.xz"):
        question = rec["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        labels = [chr(ord("A") + i) for i in range(len(rec["choices"]))]
        items.append({"id": rec["id"], "question": question, "choices": {"text": rec["choices"], "label": labels},
                      "answerKey": labels[rec["gold"]]})
    return items


def load_hellaswag(root: str | Path | None = None) -> list[dict]:
    """HellaSwag validation: activity_label, ctx, endings, label.

    The bundled file holds "activity_label: ctx_a ctx_b" on one line, so ctx_a and ctx_b cannot be told
    apart; `ctx` is everything after the label, exactly as written (ctx_b not capitalised).
    """
    with bz2.open(_root(root) / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise LokiError(f"hellaswag file has {len(lines)} lines, not a multiple of 6")
    items = []
    for i in range(0, len(lines), 6):
        label, _, ctx = lines[i].partition(": ")
        items.append({"ind": i // 6, "activity_label": label, "ctx": ctx, "label": int(lines[i + 1]),
                      "endings": lines[i + 2: i + 6]})
    return items


def load_mmlu(root: str | Path | None = None, split: str = "test") -> list[dict]:
    """MMLU (57 subjects): question, subject, choices, answer (0-3); split "test" or "dev" (few-shot)."""
    items = []
    with tarfile.open(_root(root) / "mmlu" / "mmlu.tar.xz", "r:xz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(f"{split}/")),
                         key=lambda m: m.name)
        for m in members:  # test/<subject>_test.csv, the larger ones xz-compressed inside the archive
            subject = Path(m.name).name.removesuffix(".xz").removesuffix(f"_{split}.csv")
            raw = tar.extractfile(m).read()
            raw = lzma.decompress(raw) if m.name.endswith(".xz") else raw
            reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
            for row in reader:
                items.append({"question": row["question"], "subject": subject,
                              "choices": [row[f"choice{i}"] for i in range(4)], "answer": int(row["answer"])})
    return items


def load_gsm8k(root: str | Path | None = None, split: str = "test") -> list[dict]:
    """GSM8K: question, answer (worked solution ending in "#### N"); split "test" or "train"."""
    return _jsonl_xz(_root(root) / "gsm8k" / f"{split}.jsonl.xz")


def load_winogrande(root: str | Path | None = None) -> list[dict]:
    """Winogrande dev (the validation split lm-eval scores): sentence, option1, option2, answer ("1"/"2")."""
    base = _root(root) / "winogrande"
    items = _jsonl_xz(base / "dev.jsonl.xz")
    labels = (base / "dev-labels.lst").read_text().split()
    if len(labels) != len(items):
        raise LokiError(f"winogrande: {len(items)} items but {len(labels)} labels")
    for item, label in zip(items, labels):
        if item.get("answer", label) != label:
            raise LokiError(f"winogrande item {item.get('qID')}: answer {item['answer']} disagrees with label {label}")
        item["answer"] = label
    return items


def load_truthfulqa(root: str | Path | None = None) -> list[dict]:
    """TruthfulQA multiple choice: question, mc1_targets and mc2_targets as {choices, labels} (hub layout)."""
    with lzma.open(_root(root) / "truthfulqa" / "mc_task.json.xz", "rt", encoding="utf-8") as f:
        raw = json.load(f)
    return [{"question": r["question"],
             "mc1_targets": {"choices": list(r["mc1_targets"]), "labels": list(r["mc1_targets"].values())},
             "mc2_targets": {"choices": list(r["mc2_targets"]), "labels": list(r["mc2_targets"].values())}}
            for r in raw]


def load_winobias(root: str | Path | None = None, split: str = "test") -> list[dict]:
    """WinoBias: sentence (brackets removed), entity, pronoun, stereotype ("pro"/"anti"), type (1/2)."""
    items = []
    base = _root(root) / "winobias"
    for stereotype in ("pro", "anti"):
        for kind in (1, 2):
            path = base / f"{stereotype}_stereotyped_type{kind}.txt.{split}"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                text = line.split(" ", 1)[1]  # drop the leading line number
                spans = [text[text.index("[", i) + 1: text.index("]", i)] for i in _bracket_starts(text)]
                if len(spans) < 2:  # the entity, then the pronoun (some sentences mark a second pronoun)
                    raise LokiError(f"{path}:{n}: expected [entity] and [pronoun] in brackets, found {spans}")
                items.append({"sentence": text.replace("[", "").replace("]", ""), "entity": spans[0],
                              "pronoun": spans[1], "stereotype": stereotype, "type": kind, "id": f"{path.name}:{n}"})
    return items


def _bracket_starts(text: str) -> list[int]:
    return [i for i, c in enumerate(text) if c == "["]


LOADERS: dict[str, Callable[..., list[dict]]] = {
    "arc_challenge": load_arc_challenge, "hellaswag": load_hellaswag, "mmlu": load_mmlu, "gsm8k": load_gsm8k,
    "winogrande": load_winogrande, "truthfulqa": load_truthfulqa, "winobias": load_winobias,
}


def decontamination_texts(root: str | Path | None = None) -> Iterator[tuple[str, str, str]]:
    """(benchmark, item id, text) for every prompt and every answer option of every evaluated benchmark."""
    for r in load_arc_challenge(root):
        yield from (("arc_challenge", r["id"], t) for t in [r["question"], *r["choices"]["text"]])
    for r in load_hellaswag(root):
        yield from (("hellaswag", str(r["ind"]), t) for t in [r["ctx"], *r["endings"]])
    for i, r in enumerate(load_mmlu(root)):
        yield from (("mmlu", f"{r['subject']}:{i}", t) for t in [r["question"], *r["choices"]])
    for i, r in enumerate(load_gsm8k(root)):
        yield from (("gsm8k", str(i), t) for t in [r["question"], r["answer"]])
    for r in load_winogrande(root):
        yield from (("winogrande", r["qID"], t) for t in [r["sentence"], r["option1"], r["option2"]])
    for i, r in enumerate(load_truthfulqa(root)):
        yield from (("truthfulqa", str(i), t) for t in [r["question"], *r["mc2_targets"]["choices"]])
