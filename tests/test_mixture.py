"""Weighted data mixtures and phases (issue 16, part 4): real stages on the bundled corpus, a tiny model, a few
steps. lokilm/data/mixture.py (the schedule), lokilm/train/mixture_data.py (the sampler unit)."""

import json
import random
import shutil

import pytest
import torch
from conftest import SMALL

from lokilm.cli import main
from lokilm.config import ConfigError, load_config
from lokilm.data.mixture import Schedule
from lokilm.train.metrics import read_metrics
from lokilm.train.trainer import train
from lokilm.train.units import Unit

WINDOW = 64  # model.context_length in SMALL: tokens per window
WEIGHTS = {"books": 0.4, "wiki": 0.3, "synthetic": 0.1, "hf": 0.2}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Four sources: two Gutenberg books, one WikiExtractor file, JSONL text (as a teacher cache holds), and a
    tiny Hugging Face datasets folder of Parquet shards (train and test)."""
    import lzma

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("sources")
    (root / "books").mkdir()
    for name in ("Carroll_Lewis__Through_the_Looking_Glass__4b8713e3", "Wharton_Edith__Xingu__e75d566e"):
        shutil.copy(f"data/corpus/gutenberg/{name}.txt.xz", root / "books")
    with lzma.open("data/corpus/shakespeare/sonnets_gut.txt.xz", "rt", encoding="utf-8") as f:
        text = f.read()
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 200]
    (root / "synthetic.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs[:120]))
    (root / "hf" / "data").mkdir(parents=True)
    for split, rows in (("train", paragraphs[120:124]), ("test", paragraphs[124:126])):
        pq.write_table(pa.table({"content": rows}), root / "hf" / "data" / f"{split}-00000-of-00001.parquet")
    (root / "hf" / "README.md").write_text("# a dataset card\n")
    return root


def mixture(sources, weights=WEIGHTS):
    inputs = {"books": sources / "books", "wiki": "data/corpus/wikipedia/wiki_01.xz",
              "synthetic": sources / "synthetic.jsonl", "hf": sources / "hf"}
    items = [f"{{name: {n}, inputs: [{inputs[n]}], weight: {w}" + (", text_field: content}" if n == "hf" else "}")
             for n, w in weights.items()]
    return f"data.mixture=[{', '.join(items)}]"


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory):
    """Tokenizer and per-source shards, built once by the real stages."""
    from lokilm import stages

    root = tmp_path_factory.mktemp("mixture")
    cfg = config(root, sources)
    stages.tokenizer_stage(cfg)
    summary = stages.tokenize_stage(cfg)
    return root, summary


def config(run_dir, sources, *more, shards=None):
    extra = [f"data.shards={shards}/shards", f"tokenizer.path={shards}/tokenizer.json"] if shards else []
    return load_config("configs/tiny.yaml", [*SMALL, f"run_dir={run_dir}", mixture(sources), "data.holdout_fraction=0.2",
                                             "tokenizer.train_max_bytes=300000", "train.eval_every=0",
                                             "train.checkpoint_every=3", *extra, *more])


class Windows(Unit):
    """Records the (source, window) pairs every step reads, from the sampler's plan for the step."""
    name = "windows_seen"

    def __init__(self, data):
        self.data, self.seen = data, {}

    def before_step(self, step):
        self.seen[step.number] = list(self.data.plan(step.batch_size)[0])


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def by_source(run_dir):
    return {r["step"]: r["tokens_by_source"] for r in read_metrics(run_dir)}


def within_one_window(tokens_by_source, weights, tokens):
    return all(abs(tokens_by_source[n] - w * tokens) < WINDOW for n, w in weights.items())


def test_the_schedule_keeps_every_source_within_one_window_at_every_slot():
    rng = random.Random(0)
    for _ in range(50):
        weights = [rng.random() ** 3 + 1e-3 for _ in range(rng.randint(2, 7))]
        items = ", ".join(f"{{name: s{i}, inputs: [x], weight: {w}}}" for i, w in enumerate(weights))
        cfg = load_config(None, [f"data.mixture=[{items}]"])
        schedule = Schedule(cfg.data, WINDOW)
        shares = schedule.phases[0].weights
        sources = schedule.assign(0, [0] * len(weights), 1500)[0]
        first, c = schedule.assign(0, [0] * len(weights), 600)  # in pieces (steps, resumes): the same slots
        assert first + schedule.assign(600, c, 900)[0] == sources
        seen = [0] * len(weights)
        for n, s in enumerate(sources, 1):
            seen[s] += 1
            assert all(abs(seen[i] - shares[i] * n) < 1 for i in range(len(weights)))


def test_tokenize_writes_one_shard_folder_per_source_and_reads_the_hf_train_split(prepared):
    root, summary = prepared
    assert {p.name for p in (root / "shards").iterdir()} == {"meta.json", *WEIGHTS}
    meta = json.loads((root / "shards" / "meta.json").read_text())
    assert list(meta["sources"]) == list(WEIGHTS)
    assert meta["splits"]["val"]["tokens"] == sum(s["splits"]["val"]["tokens"] for s in meta["sources"].values())
    hf = summary["read"]["hf"]
    assert hf["skipped"] == {"not_a_corpus_file": 1, "not_the_train_split": 1}  # README.md, the test split
    assert hf["documents"] == 4


def test_tokens_per_source_match_the_weights_exactly(prepared, sources, tmp_path):
    root, _ = prepared
    run = tmp_path / "run"
    summary = train(config(run, sources, "train.max_steps=6", "train.checkpoint_every=6", shards=root))
    assert summary["tokens"] == 6 * 16 * WINDOW and sum(summary["tokens_by_source"].values()) == summary["tokens"]
    assert within_one_window(summary["tokens_by_source"], WEIGHTS, summary["tokens"])
    records = [r for r in read_metrics(run) if "loss" in r]
    assert len(records) == 6
    for r in records:
        assert sum(r["tokens_by_source"].values()) == r["tokens"]
        assert within_one_window(r["tokens_by_source"], WEIGHTS, r["tokens"])
    assert records[-1]["tokens_by_source"] == summary["tokens_by_source"]
    assert json.loads((run / "stages" / "train.json").read_text())["tokens_by_source"] == summary["tokens_by_source"]


def test_upsampling_of_a_small_source_is_reported(prepared, sources, tmp_path):
    root, _ = prepared
    run = tmp_path / "run"
    summary = train(config(run, sources, "train.max_steps=6", "train.checkpoint_every=6", shards=root))
    hf_windows = json.loads((root / "shards" / "hf" / "meta.json").read_text())["splits"]["train"]["tokens"] // WINDOW
    assert 0.2 * 6 * 16 > hf_windows  # its share is more than it holds
    assert summary["upsampled"] == ["hf"] and summary["epochs_by_source"]["hf"] > 1
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    upsampled = [e for e in events if e["event"] == "source_upsampled"]
    assert [e["source"] for e in upsampled] == ["hf"] and upsampled[0]["epochs"] > 1
    assert any(e["event"] == "source_epoch" and e["source"] == "hf" and e["epoch"] == 2 for e in events)


def test_halt_and_resume_reads_the_same_windows_as_an_unbroken_run(prepared, sources, tmp_path):
    root, _ = prepared
    seen = {}

    def recorder(name):
        def make(trainer):
            seen[name] = Windows(trainer.data)
            return seen[name]
        return make

    train(config(tmp_path / "unbroken", sources, "train.max_steps=6", shards=root), [recorder("unbroken")])
    halted = tmp_path / "halted"
    train(config(halted, sources, "train.max_steps=6", "train.halt_at_step=3", shards=root), [recorder("first")])
    train(config(halted, sources, "train.max_steps=6", shards=root), [recorder("resumed")])
    assert losses(halted) == losses(tmp_path / "unbroken")  # bit-identical
    assert by_source(halted) == by_source(tmp_path / "unbroken")
    assert sorted(seen["resumed"].seen) == [4, 5, 6]
    assert {**seen["first"].seen, **seen["resumed"].seen} == seen["unbroken"].seen


def test_a_phase_schedule_switches_mixtures_at_the_token_boundary(prepared, sources, tmp_path):
    root, _ = prepared
    run = tmp_path / "run"
    boundary = 2500  # inside step 3 (1024 tokens a step): window 40 is the first of the second phase
    phases = f"data.phases=[{{until_tokens: {boundary}, weights: {{synthetic: 0.5, hf: 0.5}}}}, " \
             "{weights: {books: 0.6, wiki: 0.4}}]"
    train(config(run, sources, "train.max_steps=5", "train.checkpoint_every=5", phases, shards=root))
    steps = by_source(run)
    first = -(-boundary // WINDOW) * WINDOW  # 40 windows
    assert steps[2] == {"books": 0, "wiki": 0, "synthetic": 1024, "hf": 1024}
    assert steps[3]["synthetic"] + steps[3]["hf"] == first and steps[3]["synthetic"] == first // 2
    assert steps[5]["synthetic"] == steps[3]["synthetic"] and steps[5]["hf"] == steps[3]["hf"]
    after = steps[5]["books"] + steps[5]["wiki"]
    assert after == 5 * 1024 - first and abs(steps[5]["books"] - 0.6 * after) < WINDOW
    assert [r["phase"] for r in read_metrics(run) if "loss" in r] == [0, 0, 1, 1, 1]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("override, named", [
    ("data.mixture=[{name: a, inputs: [x], weight: 0}]", "data.mixture[0].weight"),
    ("data.mixture=[{name: a, inputs: [x], weight: -1}]", "data.mixture[0].weight"),
    ("data.mixture=[{name: a, inputs: [x], weight: .nan}]", "data.mixture[0].weight"),
    ("data.mixture=[{name: a, inputs: [x]}, {name: a, inputs: [y]}]", "'a' names two sources"),
    ("data.mixture=[{inputs: [x]}]", "data.mixture[0].name"),
    ("data.mixture=[{name: 'a/b', inputs: [x]}]", "data.mixture[0].name"),
    ("data.mixture=[{name: a}]", "data.mixture[0].inputs"),
    ("data.phases=[{weights: {a: 1}}]", "data.phases: needs data.mixture"),
])
def test_bad_mixtures_are_one_line_errors_naming_the_key(capsys, tmp_path, override, named):
    code, err = cli(capsys, "train", "configs/tiny.yaml", f"run_dir={tmp_path}", override)
    assert code == 2 and err.startswith("loki: error: ") and named in err and len(err.strip().splitlines()) == 1


MIX = "data.mixture=[{name: books, inputs: [x], weight: 0.5}, {name: wiki, inputs: [y], weight: 0.5}]"


@pytest.mark.parametrize("override, named", [
    ("data.inputs=[data/corpus/wikipedia]", "set data.mixture or data.inputs, not both"),
    ("data.phases=[{until_tokens: 10, weights: {book: 1}}, {}]", "unknown source 'book'; did you mean 'books'?"),
    ("data.phases=[{until_tokens: 10, weights: {books: 1}}, {until_tokens: 10}, {}]", "data.phases[1].until_tokens"),
    ("data.phases=[{until_tokens: 10, weights: {books: 1}}]", "the last phase runs to the end"),
    ("data.phases=[{until_tokens: 10, weights: {books: -1}}, {}]", "data.phases[0].weights.books"),
    ("data.phases=[{until_tokens: 10, weights: {books: 0}}, {}]", "at least one source a positive weight"),
])
def test_bad_phases_and_combinations_are_refused(override, named):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", [MIX, override])
    assert named in str(e.value)


def test_weights_that_do_not_sum_to_one_are_normalised_with_a_note(capsys):
    cfg = load_config(None, ["data.mixture=[{name: a, inputs: [x], weight: 3}, {name: b, inputs: [y], weight: 1}]"])
    assert [s.weight for s in cfg.data.mixture] == [0.75, 0.25]
    assert "loki: note: data.mixture weights sum to 4, not 1; normalised to a 0.75, b 0.25" in capsys.readouterr().err


def test_a_source_with_no_documents_is_a_clear_error(capsys, tmp_path, sources):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no corpus here\n")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    for inputs, expected in ((tmp_path / "empty", "data.mixture source 'nothing': no readable documents in folder"),
                             (tmp_path / "blank.jsonl", "data.mixture source 'nothing' has no documents")):
        mix = (f"data.mixture=[{{name: books, inputs: [{sources / 'books'}], weight: 0.5}}, "
               f"{{name: nothing, inputs: [{inputs}], weight: 0.5}}]")
        code, err = cli(capsys, "tokenizer", "train", "configs/tiny.yaml", f"run_dir={tmp_path / 'run'}", mix,
                        "tokenizer.train_max_bytes=100000", "model.vocab_size=512", "train.progress=false")
        assert code == 2 and err.startswith("loki: error: ") and expected in err, err


def test_held_out_bits_per_byte_spreads_a_small_budget_over_every_source(prepared):
    """The union val split lists the sources one after another; a budget of fewer windows than it holds must
    score windows from all of them, not the first source's alone."""
    import numpy as np
    import torch

    from lokilm.eval.bpb import bits_per_byte, spread
    from lokilm.model import Transformer
    from lokilm.shards import TokenWindows

    assert list(spread(3, 10)) == [0, 4, 9] and list(spread(12, 10)) == list(range(10)) and len(spread(0, 5)) == 0
    root, _ = prepared
    cfg = load_config("configs/tiny.yaml", SMALL)
    windows = TokenWindows(root / "shards", "val", cfg.model.context_length)
    owners = []  # the source of each val window, in the split's order
    for name, source in json.loads((root / "shards" / "meta.json").read_text())["sources"].items():
        if source["splits"]["val"]["tokens"]:  # a small source may hold no held-out document
            owners += [name] * len(TokenWindows(root / "shards" / name, "val", cfg.model.context_length))
    assert len(owners) == len(windows) and len(set(owners)) >= 3
    asked = []

    class Recording:
        def __len__(self):
            return len(windows)

        def batch(self, idx):
            asked.extend(idx)
            return windows.batch(idx)

    model = Transformer(cfg.model)
    model.init_weights()
    # spacing at most the smallest source's windows: every source's contiguous run is hit (the first n windows
    # would all be the first source's)
    from collections import Counter

    budget = len(windows) // min(Counter(owners).values()) + 2
    assert {owners[i] for i in range(budget)} != set(owners)
    bits_per_byte(model, Recording(), np.ones(cfg.model.vocab_size, dtype=np.int64), budget, 4, torch.device("cpu"))
    assert len(asked) == budget and {owners[i] for i in asked} == set(owners)


def test_held_out_bits_per_byte_is_reported_per_source_too(prepared, sources, tmp_path):
    """val_bpb/<source> beside val_bpb, from the same scored windows: the total is their byte-weighted mean, so it
    lies between the sources' figures."""
    root, _ = prepared
    run = tmp_path / "per-source"
    train(config(run, sources, "train.max_steps=2", "train.checkpoint_every=2", "train.eval_batches=40", shards=root))
    meta = json.loads((root / "shards" / "meta.json").read_text())
    with_val = {n for n, s in meta["sources"].items() if s["splits"]["val"]["tokens"]}
    last = [r for r in read_metrics(run) if "val_bpb" in r][-1]
    per = {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("val_bpb/")}
    assert set(per) == with_val and len(per) >= 3  # a budget of 40 x 8 windows covers every source
    assert min(per.values()) <= last["val_bpb"] <= max(per.values())
    # loki eval's held-out figure: the same per-source split, and at the training's window budget the same values
    from lokilm.checkpoint import load_model
    from lokilm.eval.report import markdown
    from lokilm.eval.run import held_out_bpb

    model, cfg = load_model(run, torch.device("cpu"))
    bpb = held_out_bpb(model, cfg, cfg.train.eval_batches * cfg.train.micro_batch_size, 8, torch.device("cpu"))
    assert bpb["by_source"] == pytest.approx(per, abs=1e-6) and bpb["value"] == pytest.approx(last["val_bpb"], abs=1e-6)
    table = markdown({"run_dir": str(run), "step": 2, "preset": "quick", "tasks": {}, "bpb": bpb,
                      "lm_eval_version": "-", "device": "cpu", "seconds": 0})
    assert all(f"| {name} | {v:.4f} |" in table for name, v in per.items())
