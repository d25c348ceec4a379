import pytest

from lokilm.data import benchmarks

COUNTS = {"arc_challenge": 1172, "hellaswag": 10042, "mmlu": 14042, "gsm8k": 1319, "winogrande": 1267,
          "truthfulqa": 817, "winobias": 1584}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_bundled_benchmark_loads_with_its_item_count(name):
    assert len(benchmarks.LOADERS[name]()) == COUNTS[name]


def test_records_have_the_hub_shape():
    arc = benchmarks.load_arc_challenge()[0]
    assert arc["question"].startswith("An astronomer") and arc["answerKey"] == "C"
    assert arc["choices"]["label"] == ["A", "B", "C", "D"]
    hs = benchmarks.load_hellaswag()[0]
    assert hs["activity_label"] == "Roof shingle removal" and hs["label"] == 3 and len(hs["endings"]) == 4
    mmlu = benchmarks.load_mmlu()
    assert len({r["subject"] for r in mmlu}) == 57 and len(benchmarks.load_mmlu(split="dev")) == 285
    assert benchmarks.load_gsm8k()[0]["answer"].endswith("#### 18")
    assert benchmarks.load_winogrande()[0]["answer"] == "2"
    tqa = benchmarks.load_truthfulqa()[0]
    assert tqa["mc1_targets"]["labels"][0] == 1 and sum(tqa["mc1_targets"]["labels"]) == 1
    wb = benchmarks.load_winobias(split="dev")[0]
    assert wb == {**wb, "entity": "The developer", "pronoun": "he", "stereotype": "pro", "type": 1}
    assert "[" not in wb["sentence"]


def test_decontamination_texts_cover_prompts_and_answers():
    texts = list(benchmarks.decontamination_texts())
    names = {b for b, _, _ in texts}
    assert names == {"arc_challenge", "hellaswag", "mmlu", "gsm8k", "winogrande", "truthfulqa"}
    assert any("Janet’s ducks lay 16 eggs" in t for _, _, t in texts)
    assert any(t == "Planetary days will become shorter." for _, _, t in texts)


def test_missing_folder_is_a_clear_error(tmp_path):
    from lokilm.errors import LokiError

    with pytest.raises(LokiError, match="does not exist"):
        benchmarks.load_arc_challenge(tmp_path / "nope")
