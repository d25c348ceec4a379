"""Hostile review of distillation and training data (teacher caches, KD training, data mixtures): each test is
the regression test of one defect found (docs: /work/notes/hostile4.md), on real small data, no mocks."""

import json

import numpy as np
import pytest
import torch

from lokilm import stages
from lokilm.config import load_config
from lokilm.distill.cache import CacheError, TeacherCache, TeacherCacheWriter
from lokilm.distill.generate import generate_stage
from lokilm.errors import LokiError
from lokilm.train.metrics import read_metrics
from lokilm.train.trainer import train
from tests.conftest import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")

META = {"teacher": "t1", "source": "test", "tokenizer_sha256": "aa", "shards_fingerprint": "bb",
        "context_length": 16, "prefix_tokens": 8, "sampling": {"temperature": 0.8}}
OPEN = {"tokenizer_sha256": "aa", "shards_fingerprint": "bb", "context_length": 16}
PLAYS = "data/corpus/shakespeare"
MIXTURE = ("data.mixture=[{name: a, inputs: [%s/macbeth_gut.txt.xz, %s/tempest_gut.txt.xz, %s/sonnets_gut.txt.xz], "
           "weight: %s}, {name: b, inputs: [%s/julius_caesar_gut.txt.xz, %s/romeo_and_juliet_gut_f.txt.xz, "
           "%s/phoenix_and_the_turtle_gut.txt.xz], weight: %s}]")


def mixture(wa=0.5, wb=0.5):
    return MIXTURE % (PLAYS, PLAYS, PLAYS, wa, PLAYS, PLAYS, PLAYS, wb)


# ---- the teacher cache ----

def test_two_writers_of_one_cache_folder_are_refused(make_cfg, tmp_path):
    """Two `loki distill generate` on two run directories with one distill.cache_dir both appended to one tokens.bin
    (the run directory's lock does not cover a shared cache): 824 of 1000 continuations came out wrong."""
    held = TeacherCacheWriter(tmp_path / "shared" / "t", META)
    with pytest.raises(CacheError, match="'t1'.*is being written by pid"):
        TeacherCacheWriter(tmp_path / "shared" / "t", META)
    cfg = make_cfg(tmp_path / "other_run", "distill.enabled=true", "distill.decontaminate=false",
                   f"distill.cache_dir={tmp_path / 'shared'}", "distill.cache_sequences=4",
                   "distill.teachers=[{name: t, kind: lokilm, path: no/such/run}]")
    with pytest.raises(CacheError, match="'t': the cache in .*shared/t is being written"):
        generate_stage(cfg, progress=False)  # refused before the teacher is loaded or any file touched
    held.add(3, np.array([5, 6]), seed=1, regenerations=0)
    held.finish({})  # releases the lock
    w = TeacherCacheWriter(tmp_path / "shared" / "t", META)
    assert w.done == {3}
    w.close()


def test_a_damaged_meta_json_is_a_clear_error(tmp_path):
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(3, np.array([5, 6, 7]), seed=11, regenerations=0)
    w.finish({})
    for damage in ('{"teacher": "t1", garbage', "[1, 2]", "\xff\xfe"):
        (tmp_path / "t1" / "meta.json").write_text(damage, encoding="latin-1")
        for attempt in (lambda: TeacherCache.open(tmp_path / "t1", **OPEN), lambda: TeacherCacheWriter(tmp_path / "t1", META)):
            with pytest.raises(CacheError, match="'t1'.*meta.json.*--restart"):
                attempt()
    w = TeacherCacheWriter(tmp_path / "t1", META, restart=True)  # the fix the message names works
    assert w.done == set()
    w.close()


def test_a_truncated_tokens_file_is_not_padded_with_zeros(tmp_path):
    """The resuming writer cut tokens.bin to the index's end with truncate(), which pads a short file with zeros:
    a rerun of `loki distill generate` turned the lost continuations into runs of token 0 and marked the cache
    complete, so training read them."""
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(3, np.array([5, 6, 7]), seed=11, regenerations=0)
    w.add(4, np.array([8, 9]), seed=11, regenerations=0)
    w.finish({})
    tokens = tmp_path / "t1" / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:8])  # two of five tokens left
    with pytest.raises(CacheError, match="'t1'.*tokens.bin is truncated \\(2 tokens, the index needs 5\\).*--restart"):
        TeacherCacheWriter(tmp_path / "t1", META)
    assert tokens.stat().st_size == 8
    with pytest.raises(CacheError, match="truncated"):
        TeacherCache.open(tmp_path / "t1", **OPEN)


def test_a_negative_distill_seed_is_refused_by_the_config(make_cfg, tmp_path):
    with pytest.raises(LokiError, match="distill.seed: must be an integer >= 0, got -5"):
        make_cfg(tmp_path, "distill.seed=-5")


# ---- data mixtures, and distillation on them ----

@pytest.fixture(scope="module")
def mixed(tmp_path_factory, prepared):
    """Two sources of three plays each, tokenized by the real stage with the shared tokenizer."""
    root = tmp_path_factory.mktemp("mixed")
    cfg = mix_cfg(root, prepared)
    stages.tokenize_stage(cfg)
    return root


def mix_cfg(run_dir, prepared, *more, shards=None, weights=(0.5, 0.5)):
    return load_config("configs/tiny.yaml", [*SMALL, f"run_dir={run_dir}", f"tokenizer.path={prepared}/tokenizer.json",
                                             mixture(*weights), "data.holdout_fraction=0.3",
                                             *([f"data.shards={shards}/shards"] if shards else []), *more])


def test_changed_mixture_weights_on_resume_are_said(mixed, prepared, tmp_path, capsys):
    """A resume with other weights went on with the old counts under the new weights, and config.yaml was rewritten
    as if the whole run had used them, without a word."""
    common = ["train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=8"]
    assert train(mix_cfg(tmp_path, prepared, *common, "train.halt_at_step=4", shards=mixed))["status"] == "halted"
    assert train(mix_cfg(tmp_path, prepared, *common, "train.max_steps=6", shards=mixed))["status"] == "finished"
    assert "changed since the checkpoint" not in capsys.readouterr().err  # the same weights: nothing to say
    assert train(mix_cfg(tmp_path, prepared, *common, shards=mixed, weights=(0.9, 0.1)))["status"] == "finished"
    err = capsys.readouterr().err
    assert "loki: note: data.mixture weights or data.phases changed since the checkpoint (window 96)" in err
    assert "a 0.5, b 0.5; it continues with windows 0-end: a 0.9, b 0.1" in err
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    changed = [e for e in events if e["event"] == "mixture_changed"]
    assert len(changed) == 1 and changed[0]["step"] == 6 and changed[0]["phases"][0]["weights"] == {"a": 0.9, "b": 0.1}


@pytest.fixture(scope="module")
def mixed_teacher(mixed, prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_teacher")
    train(mix_cfg(root, prepared, "train.max_steps=4", "train.checkpoint_every=4", "train.eval_every=4", shards=mixed))
    return root


@pytest.mark.parametrize("mode", ["logit", "sequence"])
def test_distillation_trains_on_a_mixture(mixed, mixed_teacher, prepared, tmp_path, mode):
    """KD on a mixture took len() of the per-source dict as the number of training windows: logit mode died with
    AttributeError ('dict' object has no attribute 'batch'), sequence mode refused its own fresh cache ("names
    training windows the run's shards do not have")."""
    cfg = mix_cfg(tmp_path, prepared, "distill.enabled=true", f"distill.mode={mode}", "distill.decontaminate=false",
                  "distill.cache_sequences=16", "distill.gen_batch_size=8", "train.max_steps=4",
                  "train.checkpoint_every=4", "train.eval_every=4",
                  f"distill.teachers=[{{name: t, kind: lokilm, path: {mixed_teacher}}}]", shards=mixed)
    if mode == "sequence":
        assert generate_stage(cfg, progress=False)["teachers"]["t"]["generated"] == 16
    assert train(cfg)["status"] == "finished"
    kd = [r for r in read_metrics(tmp_path) if r.get("kd")]
    assert len(kd) == 1 and kd[0]["step"] == 4 and np.isfinite(kd[0]["loss"])


def test_a_cache_is_not_finished_with_a_newer_teacher_checkpoint(make_cfg, tmp_path):
    """A kind=lokilm teacher named by its run directory loads the newest checkpoint; a run that trained on between a
    kill of `loki distill generate` and the rerun (or before a larger cache_sequences) finished the cache with the
    newer checkpoint: continuations of two teachers in one cache, without a word."""
    teacher = tmp_path / "teacher"
    t = ["train.checkpoint_every=2", "train.eval_every=2"]
    train(make_cfg(teacher, "train.max_steps=2", *t))
    gen = ["distill.enabled=true", "distill.decontaminate=false", "distill.gen_batch_size=4",
           f"distill.teachers=[{{name: t, kind: lokilm, path: {teacher}}}]"]
    generate_stage(make_cfg(tmp_path / "student", *gen, "distill.cache_sequences=4"), progress=False)
    meta = tmp_path / "student" / "distill" / "t" / "meta.json"
    assert json.loads(meta.read_text())["loaded_from"].endswith("step_00000002")
    generate_stage(make_cfg(tmp_path / "student", *gen, "distill.cache_sequences=4"), progress=False)  # nothing to do
    assert json.loads(meta.read_text())["loaded_from"].endswith("step_00000002")  # kept by the no-op rerun
    train(make_cfg(teacher, "train.max_steps=4", *t))  # the teacher trains on: its newest checkpoint is step 4
    with pytest.raises(CacheError, match="'t'.*made with .*step_00000002, the teacher now loads .*step_00000004.*"
                                         "--restart"):
        generate_stage(make_cfg(tmp_path / "student", *gen, "distill.cache_sequences=8"), progress=False)
    assert json.loads(meta.read_text())["windows"] == 4  # untouched
    summary = generate_stage(make_cfg(tmp_path / "student", *gen, "distill.cache_sequences=8"), restart=True,
                             progress=False)
    assert summary["teachers"]["t"]["generated"] == 8


@pytest.mark.parametrize("name", ["../../escaped", "..", "a/b", " "])
def test_a_teacher_name_cannot_leave_the_cache_folder(make_cfg, tmp_path, name):
    """A teacher's name is its cache folder: "../../escaped" wrote a cache outside the run directory, ".." wrote
    meta.json, index.npy and tokens.bin into the run directory itself."""
    cfg = make_cfg(tmp_path / "run", "distill.enabled=true", "distill.decontaminate=false", "distill.cache_sequences=4",
                   f"distill.teachers=[{{name: '{name}', kind: lokilm, path: no/such/run}}]")
    with pytest.raises(LokiError, match=r"distill.teachers\[0\].name: .* must be a name of letters"):
        generate_stage(cfg, progress=False)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "run" / "meta.json").exists()


def test_re_tokenised_mixture_sources_on_resume_are_said(prepared, tmp_path, capsys):
    """Data added to a source between a kill and the resume (and `loki tokenize` rerun): the source's cursor went on
    in a new shuffled order of another length without a word, some windows read twice and others never."""
    common = ["train.max_steps=6", "train.checkpoint_every=3", "train.eval_every=6"]
    cfg = mix_cfg(tmp_path, prepared, *common, "train.halt_at_step=3")
    stages.tokenize_stage(cfg)
    assert train(cfg)["status"] == "halted"
    fewer = MIXTURE.replace("%s/macbeth_gut.txt.xz, ", "") % (PLAYS, PLAYS, 0.5, PLAYS, PLAYS, PLAYS, 0.5)
    cfg = load_config("configs/tiny.yaml", [*SMALL, f"run_dir={tmp_path}", f"tokenizer.path={prepared}/tokenizer.json",
                                            fewer, "data.holdout_fraction=0.3", *common])
    stages.tokenize_stage(cfg)  # source a loses Macbeth
    capsys.readouterr()
    assert train(cfg)["status"] == "finished"
    err = capsys.readouterr().err
    assert "loki: note: the shards of data.mixture source(s) changed since the checkpoint (a: " in err
    assert " b: " not in err and "changed since the checkpoint (window" not in err


def test_a_cache_folder_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CacheError, match="'t1': cannot create the cache folder .*a_file/t1 \\(Not a directory\\)"):
        TeacherCacheWriter(tmp_path / "a_file" / "t1", META)  # distill.cache_dir=a file: NotADirectoryError
    (tmp_path / "c" / "t1" / "meta.json").mkdir(parents=True)
    with pytest.raises(CacheError, match="'t1': .*meta.json is not a file"):
        TeacherCacheWriter(tmp_path / "c" / "t1", META)  # was IsADirectoryError at the first commit


def test_a_plain_run_resumed_on_re_tokenised_shards_says_so(tmp_path, small_tokenizer, sample_text, capsys):
    """The plain data unit (no mixture) records its window count: a resume on shards with another count is noted;
    the same shards, and a checkpoint from before the key, say nothing."""
    from lokilm.shards import TokenWindows, write_shards
    from lokilm.train.data import TrainData

    paras = [p for p in sample_text.split("\n\n") if p.strip()]
    windows = {}
    for name, docs in (("a", paras), ("b", paras[: len(paras) // 2])):
        write_shards([(f"d{i}", t) for i, t in enumerate(docs)], small_tokenizer, tmp_path / name, 0.2, progress=False)
        windows[name] = TokenWindows(tmp_path / name, "train", 64)
    assert len(windows["a"]) != len(windows["b"])
    unit = TrainData(windows["a"], 4, 0, torch.device("cpu"), None)
    unit.samples = 12
    state = unit.state_dict()
    capsys.readouterr()
    TrainData(windows["a"], 4, 0, torch.device("cpu"), None).load_state_dict(state)
    TrainData(windows["b"], 4, 0, torch.device("cpu"), None).load_state_dict(
        {k: v for k, v in state.items() if k != "train_windows"})
    assert "note" not in capsys.readouterr().err
    resumed = TrainData(windows["b"], 4, 0, torch.device("cpu"), None)
    resumed.load_state_dict(state)
    err = capsys.readouterr().err
    assert resumed.samples == 12 and f"{len(windows['a'])} -> {len(windows['b'])} train windows" in err
