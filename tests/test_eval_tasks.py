"""The offline benchmark tasks: they load with no network and have the published item counts, and the
per-item results lokilm keeps reproduce every aggregate it (and lm-eval) reports."""

import os
import re

import numpy as np
import pytest
import torch

pytest.importorskip("lm_eval")

from lokilm.config import load_config
from lokilm.data import benchmarks
from lokilm.errors import LokiError
from lokilm.eval import suite
from lokilm.eval.harness import LokiLM
from lokilm.eval.presets import PRESETS, preset_tasks
from lokilm.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"arc_challenge": 1172, "hellaswag": 10042, "mmlu": 14042, "winogrande": 1267, "gsm8k": 1319,
          "truthfulqa_mc1": 817, "truthfulqa_mc2": 817}


def test_every_task_loads_offline_with_the_published_item_count(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, leaves = suite.load_tasks("quick")
    counts = {name: sum(len(loaded["tasks"][leaf].eval_docs) for leaf in group) for name, group in leaves.items()}
    assert counts == COUNTS
    assert len(leaves["mmlu"]) == 57


def test_presets_and_clear_errors():
    assert PRESETS["openllm"] == {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0,
                                  "winogrande": 5, "gsm8k": 5}
    assert PRESETS["lokilm-paper"]["gsm8k"] == 8
    with pytest.raises(LokiError, match="unknown eval preset"):
        preset_tasks("leaderboard")
    with pytest.raises(LokiError, match="not in preset"):
        preset_tasks("openllm", ["truthfulqa_mc1"])


def test_hellaswag_prompt_matches_the_hub_layout():
    loaded, _ = suite.load_tasks("quick", ["hellaswag"])
    task = loaded["tasks"]["hellaswag"]
    # hub: ctx_a "A man is sitting on a roof." + " " + ctx_b "he".capitalize()
    assert task.doc_to_text(task.eval_docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"


@pytest.fixture(scope="module")
def evaluated(small_tokenizer):
    """A random tiny model through the real lm-eval pipeline on 6 items of each task (few-shot where the
    standard task is), so every code path (few-shot prompts, mc2, generation, MMLU groups) runs."""
    torch.manual_seed(0)
    cfg = load_config("configs/tiny.yaml", ["model.vocab_size=512", "model.n_layer=1", "model.d_model=32",
                                            "model.n_head=2", "model.d_ff=64", "model.context_length=256"])
    model = Transformer(cfg.model)
    model.init_weights()
    lm = LokiLM(model.eval(), small_tokenizer, batch_size=16)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    only = ["arc_challenge", "hellaswag", "winogrande", "truthfulqa_mc2", "gsm8k", "mmlu"]
    results, items = suite.run_preset(lm, "lokilm-paper", only, limit=2, iters=200)
    return results, items


def test_stored_items_reproduce_every_reported_aggregate(evaluated):
    results, items = evaluated
    for name, entry in results.items():
        for key, m in entry["metrics"].items():
            values = [it["metrics"][key.split(",")[0]] for it in items
                      if (it["task"] == name or (name == "mmlu" and it["task"].startswith("mmlu_")))
                      and it["filter"] == key.split(",")[1]]
            assert m["value"] == pytest.approx(np.mean(values)), (name, key)
            assert m["ci95"][0] <= m["value"] + 1e-9 and m["value"] - 1e-9 <= m["ci95"][1]
            # and lm-eval's own aggregate (MMLU: its size-weighted group mean) is the same number
            assert entry["lm_eval"][key] == pytest.approx(m["value"]), (name, key)


def _norm(s: str) -> str:
    for pattern in [",", "\\$", "(?s).*#### ", "\\.$"]:
        s = re.sub(pattern, "", s)
    return s.lower().strip()


def test_metrics_recomputed_from_stored_loglikelihoods_and_answers(evaluated):
    _, items = evaluated
    truthful = benchmarks.load_truthfulqa()
    seen = set()
    for it in items:
        seen.add(it["task"].split("_")[0])
        if "loglikelihoods" in it:
            lls = np.array(it["loglikelihoods"])
            if it["task"] == "winogrande":  # partial scoring: the options are contexts, the target is fixed
                gold = int(benchmarks.load_winogrande()[it["doc_id"]]["answer"]) - 1
                assert it["metrics"]["acc"] == float(np.argmax(lls) == gold)
            elif it["task"] == "truthfulqa_mc2":
                labels = np.array(truthful[it["doc_id"]]["mc2_targets"]["labels"])
                p = np.exp(lls) / np.exp(lls).sum()
                assert it["metrics"]["acc"] == pytest.approx(p[labels == 1].sum())
            else:
                gold = int(it["target"])
                assert it["metrics"]["acc"] == float(np.argmax(lls) == gold)
                if "acc_norm" in it["metrics"]:  # lm-eval divides by the answer's length in characters
                    lengths = np.array([len(c) - 1 for c in it["choices"]])  # less the " " target delimiter
                    assert it["metrics"]["acc_norm"] == float(np.argmax(lls / lengths) == gold)
        else:
            assert it["task"] == "gsm8k"
            assert it["metrics"]["exact_match"] == float(_norm(it["extracted"]) == _norm(it["target"]))
    assert seen == {"arc", "hellaswag", "winogrande", "truthfulqa", "gsm8k", "mmlu"}


PROMPT_KEYS = ["output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list", "generation_kwargs",
               "filter_list", "process_results", "description", "fewshot_config", "target_delimiter", "fewshot_delimiter"]


@pytest.mark.parametrize("ours, theirs", [
    ("arc_challenge.yaml", "arc/arc_challenge.yaml"), ("hellaswag.yaml", "hellaswag/hellaswag.yaml"),
    ("winogrande.yaml", "winogrande/default.yaml"), ("gsm8k.yaml", "gsm8k/gsm8k.yaml"),
    ("truthfulqa_mc1.yaml", "truthfulqa/truthfulqa_mc1.yaml"), ("truthfulqa_mc2.yaml", "truthfulqa/truthfulqa_mc2.yaml"),
    ("mmlu/mmlu_anatomy.yaml", "mmlu/default/mmlu_anatomy.yaml"), ("mmlu/_mmlu.yaml", "mmlu/default/_mmlu.yaml"),
])
def test_task_yamls_keep_lm_evals_prompts_and_metrics(ours, theirs):
    """Only where the data comes from differs from lm-eval's standard task (function references compared
    by name: ours name lm-eval's own functions, or lokilm's memoised wrapper of one)."""
    from pathlib import Path

    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    mine = load_yaml(suite.TASKS_DIR / ours, resolve_func=False)
    upstream = load_yaml(Path(lm_eval.tasks.__file__).parent / theirs, resolve_func=False)
    for key in PROMPT_KEYS + ["task", "group", "aggregate_metric_list", "tag"]:
        a, b = mine.get(key), upstream.get(key)
        if isinstance(a, str) and isinstance(b, str) and "/" in b:  # !function paths
            a, b = a.rsplit(".", 1)[-1], b.rsplit(".", 1)[-1]
        assert a == b, (ours, key)
