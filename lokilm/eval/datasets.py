"""The bundled benchmark files as `datasets` splits, for the task YAMLs' `custom_dataset` hook (no network).

Each function returns {split name: datasets.Dataset} under the split names lm-eval's standard task for that
benchmark reads, so the YAMLs keep lm-eval's prompts, splits and metrics. Where a split the standard task
draws few-shot examples from is not bundled, the YAML samples them from the evaluated split instead (lm-eval
then leaves the evaluated item out of its own prompt).
"""

from __future__ import annotations

import functools

import datasets
from lm_eval.tasks.hellaswag import utils as hellaswag_utils

from lokilm.data import benchmarks


@functools.cache
def _records(name: str, **kwargs) -> tuple:
    # MMLU is one archive read per subject task: cache the parse (57 x 3.6 s otherwise)
    return tuple(benchmarks.LOADERS[name](**kwargs))


def _ds(records) -> datasets.Dataset:
    return datasets.Dataset.from_list(list(records))


def arc_challenge(**_metadata) -> dict:
    return {"test": _ds(_records("arc_challenge"))}


def _capitalise_ctx_b(ctx: str) -> str:
    """The hub's HellaSwag prompt is ctx_a + " " + ctx_b.capitalize(); the bundled file has "ctx_a ctx_b"
    with ctx_b as written. ctx_b is the unfinished last sentence, in lower case, so when the text after the
    last sentence end starts with a lower-case letter we take it for ctx_b and apply str.capitalize to it
    (which, like the hub prompt, also lower-cases the rest of it). This rebuilds the hub prompt whenever
    ctx_b starts a sentence, which is how HellaSwag splits its contexts; 3,243 of the 10,042 contexts change."""
    cut = max(ctx.rfind(". "), ctx.rfind("? "), ctx.rfind("! "))
    start = cut + 2 if cut >= 0 else 0
    tail = ctx[start:]
    return ctx[:start] + tail.capitalize() if tail[:1].islower() else ctx


def hellaswag(**_metadata) -> dict:
    # Shaped like the hub rows so lm-eval's own hellaswag process_docs runs unchanged: the whole context
    # goes in ctx_a and ctx_b is empty (lm-eval's preprocess strips the resulting trailing space).
    rows = [{"activity_label": r["activity_label"], "ctx_a": _capitalise_ctx_b(r["ctx"]), "ctx_b": "",
             "endings": r["endings"], "label": str(r["label"]), "ind": r["ind"]} for r in _records("hellaswag")]
    return {"validation": _ds(rows)}


_processed: dict[str, datasets.Dataset] = {}


def hellaswag_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """lm-eval's hellaswag process_docs, run once per dataset: lm-eval calls it each time it asks for the
    documents, and 10k rows take seconds."""
    key = dataset._fingerprint
    if key not in _processed:
        _processed[key] = hellaswag_utils.process_docs(dataset)
    return _processed[key]


def mmlu(subject: str, **_metadata) -> dict:
    return {split: _ds(r for r in _records("mmlu", split=split) if r["subject"] == subject) for split in ("test", "dev")}


def winogrande(**_metadata) -> dict:
    return {"validation": _ds(_records("winogrande"))}


def gsm8k(**_metadata) -> dict:
    return {split: _ds(_records("gsm8k", split=split)) for split in ("test", "train")}


def truthfulqa(**_metadata) -> dict:
    return {"validation": _ds(_records("truthfulqa"))}
