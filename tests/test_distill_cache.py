"""The teacher cache (lokilm.distill.cache) and filling it (lokilm.distill.generate) with a real lokilm teacher."""

import json
import shutil

import numpy as np
import pytest

from lokilm.distill.cache import (
    CacheError,
    TeacherCache,
    TeacherCacheWriter,
    cache_root,
    kd_windows,
    prefix_tokens,
    shards_fingerprint,
)
from lokilm.distill.generate import generate_stage, kd_sequences
from lokilm.distill.settings import TeacherSettings
from lokilm.distill.teachers import load_teacher
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.tokenizer import decode, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

META = {"teacher": "t1", "source": "test", "tokenizer_sha256": "aa", "shards_fingerprint": "bb",
        "context_length": 16, "prefix_tokens": 8, "sampling": {"temperature": 0.8}}
OPEN = {"tokenizer_sha256": "aa", "shards_fingerprint": "bb", "context_length": 16}


def test_writer_round_trip_and_crash_before_commit(tmp_path):
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(3, np.array([5, 6, 7]), seed=11, regenerations=0)
    w.add(9, np.zeros(0), seed=12, regenerations=3, dropped="contaminated")
    w.commit()
    w.add(4, np.array([1, 2]), seed=13, regenerations=0)  # added, then the process dies before commit
    w.close()

    w = TeacherCacheWriter(tmp_path / "t1", META)
    assert w.done == {3, 9}  # the dropped window is done too: it is not retried on resume
    assert w.counts == {"generated": 1, "regenerated": 3, "dropped_contaminated": 1, "empty": 0}
    w.add(4, np.array([8]), seed=13, regenerations=1)
    w.finish({})

    cache = TeacherCache.open(tmp_path / "t1", **OPEN)
    assert cache.name == "t1" and cache.prefix_tokens == 8 and len(cache) == 2
    assert cache.windows.tolist() == [3, 4]  # the order they were generated in, dropped windows left out
    assert cache.continuation(3).tolist() == [5, 6, 7] and cache.continuation(4).tolist() == [8]
    assert cache.continuation(3).dtype == np.int64 and 9 not in cache
    with pytest.raises(CacheError, match="'t1'.*window 9"):
        cache.continuation(9)


def test_a_crash_between_the_index_and_meta_commits_keeps_the_counts_right(tmp_path, monkeypatch):
    from lokilm.distill import cache as cache_module

    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(3, np.array([5, 6, 7]), seed=11, regenerations=0)
    w.commit()
    w.add(9, np.zeros(0), seed=12, regenerations=2, dropped="contaminated")
    w.add(5, np.zeros(0), seed=12, regenerations=0)  # an empty continuation
    w.add(6, np.array([4]), seed=12, regenerations=1)

    def killed(*args, **kwargs):  # the index is committed; the process dies before meta.json is written
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        w.commit()
    w.close()
    monkeypatch.undo()
    assert json.loads((tmp_path / "t1" / "meta.json").read_text())["counts"]["generated"] == 1  # behind the index
    w = TeacherCacheWriter(tmp_path / "t1", META)
    assert w.done == {3, 9, 5, 6}
    assert w.counts == {"generated": 2, "regenerated": 3, "dropped_contaminated": 1, "empty": 1}
    w.finish({})
    assert json.loads((tmp_path / "t1" / "meta.json").read_text())["counts"] == w.counts
    assert TeacherCache.open(tmp_path / "t1", **OPEN).windows.tolist() == [3, 6]


def test_an_index_of_five_columns_still_opens_and_resumes(tmp_path):
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(3, np.array([5, 6, 7]), seed=11, regenerations=0)
    w.add(9, np.zeros(0), seed=12, regenerations=3, dropped="contaminated")
    w.finish({})
    index = tmp_path / "t1" / "index.npy"
    np.save(index, np.load(index)[:, :5])  # as written before the kind column
    cache = TeacherCache.open(tmp_path / "t1", **OPEN)
    assert cache.windows.tolist() == [3] and cache.continuation(3).tolist() == [5, 6, 7]
    w = TeacherCacheWriter(tmp_path / "t1", META)
    assert w.done == {3, 9} and w.counts["dropped_contaminated"] == 1  # meta.json's counts, kept
    w.add(4, np.array([1]), seed=13, regenerations=0)
    w.finish({})
    assert np.load(index).shape == (3, 6) and TeacherCache.open(tmp_path / "t1", **OPEN).windows.tolist() == [3, 4]


@pytest.mark.parametrize("damage", ["garbage", "pickle", "shape"])
def test_a_damaged_index_is_a_clear_error(tmp_path, damage):
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(3, np.array([5, 6, 7]), seed=11, regenerations=0)
    w.finish({})
    index = tmp_path / "t1" / "index.npy"
    if damage == "garbage":
        index.write_bytes(b"\x93NUMPY garbage" * 3)
    elif damage == "pickle":
        np.save(index, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(index, np.zeros((2, 3), dtype=np.int64))
    for attempt in (lambda: TeacherCache.open(tmp_path / "t1", **OPEN), lambda: TeacherCacheWriter(tmp_path / "t1", META)):
        with pytest.raises(CacheError, match="'t1'.*index.npy.*--restart"):
            attempt()


@pytest.mark.parametrize("change, message", [
    ({"tokenizer_sha256": "zz"}, "'t1'.*another student tokenizer"),
    ({"shards_fingerprint": "zz"}, "'t1'.*other training shards"),
    ({"context_length": 32}, "'t1'.*context_length=16, the run uses 32"),
])
def test_open_refuses_a_cache_of_something_else(tmp_path, change, message):
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(0, np.array([1]), 0, 0)
    w.finish({})
    with pytest.raises(CacheError, match=message):
        TeacherCache.open(tmp_path / "t1", **{**OPEN, **change})


def test_open_refuses_missing_incomplete_and_empty_caches(tmp_path):
    with pytest.raises(CacheError, match="no teacher cache.*loki distill generate"):
        TeacherCache.open(tmp_path / "t1", **OPEN)
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(0, np.array([1]), 0, 0)
    w.commit()
    with pytest.raises(CacheError, match="'t1'.*incomplete"):
        TeacherCache.open(tmp_path / "t1", **OPEN)
    w.close()
    w = TeacherCacheWriter(tmp_path / "t2", {**META, "teacher": "t2"})
    w.add(0, [], 0, 0)
    w.finish({})
    with pytest.raises(CacheError, match="'t2'.*no continuation"):
        TeacherCache.open(tmp_path / "t2", **OPEN)


def test_writer_refuses_another_identity_unless_restarted(tmp_path):
    w = TeacherCacheWriter(tmp_path / "t1", META)
    w.add(0, np.array([1]), 0, 0)
    w.finish({})
    with pytest.raises(CacheError, match="'t1'.*other tokenizer_sha256.*--restart"):
        TeacherCacheWriter(tmp_path / "t1", {**META, "tokenizer_sha256": "new"})
    w = TeacherCacheWriter(tmp_path / "t1", {**META, "tokenizer_sha256": "new"}, restart=True)
    assert w.done == set()
    w.close()


def test_kd_windows_is_a_deterministic_subset():
    a = kd_windows(100, 30, seed=1)
    assert a.tolist() == kd_windows(100, 30, seed=1).tolist() != kd_windows(100, 30, seed=2).tolist()
    assert len(set(a.tolist())) == 30 and a.min() >= 0 and a.max() < 100
    assert kd_windows(100, 40, seed=1)[:30].tolist() == a.tolist()  # a larger cache extends a smaller one
    assert len(kd_windows(10, 50, seed=1)) == 10


def test_kd_sequences_follows_the_kd_steps(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, "train.max_steps=10", "distill.every=4")
    assert kd_sequences(cfg) == 2 * 16  # steps 3 and 7
    cfg = make_cfg(tmp_path, "train.max_steps=10", "distill.every=4", "train.batch_warmup_tokens=100000",
                   "train.batch_warmup_start=8")
    assert kd_sequences(cfg) == 2 * 8  # both KD steps fall inside the warmup (10 steps x <=16 x 64 tokens)
    cfg = make_cfg(tmp_path, "distill.cache_sequences=5")
    assert kd_sequences(cfg) == 5


# ---- filling the cache with a real teacher: a tiny lokilm model trained on the prepared shards ----

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, prepared):
    from lokilm import stages
    from lokilm.config import load_config
    from tests.conftest import SMALL

    root = tmp_path_factory.mktemp("teacher")
    cfg = load_config("configs/tiny.yaml", SMALL + [f"run_dir={root}", f"data.shards={prepared}/shards",
                                                    f"tokenizer.path={prepared}/tokenizer.json",
                                                    "train.max_steps=30", "train.checkpoint_every=30"])
    stages.train_stage(cfg)
    return root


class Recording:
    """The real teacher, with a count of calls, optionally stopping the process (Ctrl-C) after `stop_after` calls."""

    def __init__(self, teacher, stop_after=None, plant=None):
        self.teacher, self.stop_after, self.plant = teacher, stop_after, plant
        self.name, self.vocab_size = teacher.name, teacher.vocab_size
        self.calls, self.prompts, self.seeds = 0, [], []

    @property
    def tokens_generated(self):
        return self.teacher.tokens_generated

    def generate(self, prompts, max_new_tokens, seed, temperature, top_k, top_p):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.prompts += prompts
        self.seeds.append(seed)
        out = self.teacher.generate(prompts, max_new_tokens, seed, temperature, top_k, top_p)
        if self.plant and self.plant[1](self):  # a benchmark sentence in front of the first output
            out[0] = " " + self.plant[0] + out[0]
        return out


def _distill_cfg(make_cfg, run_dir, teacher_run, *overrides):
    cfg = make_cfg(run_dir, "distill.cache_sequences=6", "distill.gen_batch_size=2", "distill.prefix_fraction=0.25",
                   *overrides)
    cfg.distill.teachers = [TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run))]
    return cfg


def _open(cfg, name="tiny"):
    from lokilm.rundir import RunDir

    run = RunDir(cfg)
    return TeacherCache.open(cache_root(cfg) / name, tokenizer_sha256=sha256_file(run.tokenizer),
                             shards_fingerprint=shards_fingerprint(run.shards),
                             context_length=cfg.model.context_length)


def test_generate_resumes_where_it_stopped(make_cfg, tmp_path, teacher_run, prepared):
    teacher = load_teacher(TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run)))
    cfg = _distill_cfg(make_cfg, tmp_path / "a", teacher_run)
    interrupted = Recording(teacher, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_stage(cfg, progress=False, teachers={"tiny": interrupted})
    meta = json.loads((cache_root(cfg) / "tiny" / "meta.json").read_text())
    assert meta["windows"] == 4 and not meta["complete"]  # two committed batches of two

    resumed = Recording(teacher)
    summary = generate_stage(cfg, progress=False, teachers={"tiny": resumed})
    assert resumed.calls == 1 and summary["teachers"]["tiny"]["resumed_with"] == 4  # only the last batch
    assert len(resumed.prompts) == 2 and not set(resumed.prompts) & set(interrupted.prompts)

    # The same as a run that was never interrupted: same windows, same seeds, same continuations
    whole = _distill_cfg(make_cfg, tmp_path / "b", teacher_run)
    generate_stage(whole, progress=False, teachers={"tiny": teacher})
    a, b = _open(cfg), _open(whole)
    assert a.windows.tolist() == b.windows.tolist()
    assert all(a.continuation(w).tolist() == b.continuation(w).tolist() for w in a.windows)

    # the cache holds the plan's windows; each continuation fits the tail and follows the window's prefix
    tok = load_tokenizer(f"{prepared}/tokenizer.json")
    plan = kd_windows(_n_windows(cfg), 6, cfg.distill.seed)
    assert summary["windows_planned"] == 6 and set(a.windows.tolist()) <= set(plan.tolist())
    tail = cfg.model.context_length + 1 - prefix_tokens(cfg)
    assert all(1 <= len(a.continuation(w)) <= tail for w in a.windows)
    assert decode(tok, a.continuation(a.windows[0]).tolist())  # real text


def test_the_lokilm_teacher_decodes_a_batch_as_it_would_each_prompt_alone(teacher_run):
    from lokilm.config import GenerateConfig
    from lokilm.generate import generate_ids
    from lokilm.tokenizer import encode, eot_id

    teacher = load_teacher(TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run)))
    prompts = ["The king", "Macbeth shall never vanquished be until", "O", "What is the night?"]
    batch = teacher.generate(prompts, 12, seed=5, temperature=0.0, top_k=None, top_p=None)
    eot = eot_id(teacher.tok)
    alone = [decode(teacher.tok, list(generate_ids(teacher.model, [eot] + encode(teacher.tok, p),
                                                     GenerateConfig(max_new_tokens=12, temperature=0.0, seed=0,
                                                                    top_k=None, top_p=None),
                                                     teacher.vocab_size, stop_id=eot))) for p in prompts]
    assert batch == alone and len(set(batch)) > 1 and teacher.tokens_generated > 0
    # sampled rows: each row's own generator, so a row does not depend on the others beside it
    first = teacher.generate(prompts, 8, seed=5, temperature=0.9, top_k=None, top_p=None)
    assert teacher.generate(prompts[:1], 8, seed=5, temperature=0.9, top_k=None, top_p=None) == first[:1]
    assert teacher.generate([], 8, seed=5, temperature=0.9, top_k=None, top_p=None) == []


def test_a_rerun_with_nothing_to_do_keeps_the_last_run_statistics(make_cfg, tmp_path, teacher_run):
    teacher = load_teacher(TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run)))
    cfg = _distill_cfg(make_cfg, tmp_path, teacher_run, "distill.cache_sequences=2")
    generate_stage(cfg, progress=False, teachers={"tiny": teacher})
    meta = cache_root(cfg) / "tiny" / "meta.json"
    first = json.loads(meta.read_text())["last_run"]
    assert first["student_tokens"] > 0 and first["generate_s"] > 0
    again = Recording(teacher)
    assert generate_stage(cfg, progress=False, teachers={"tiny": again})["teachers"]["tiny"]["student_tokens"] == 0
    assert again.calls == 0 and json.loads(meta.read_text())["last_run"] == first


def _n_windows(cfg):
    from lokilm.rundir import RunDir
    from lokilm.shards import TokenWindows

    return len(TokenWindows(RunDir(cfg).shards, "train", cfg.model.context_length))


def test_a_changed_tokenizer_or_shards_invalidate_the_cache(make_cfg, tmp_path, teacher_run, prepared):
    cfg = _distill_cfg(make_cfg, tmp_path, teacher_run, "distill.cache_sequences=2")
    generate_stage(cfg, progress=False)  # loads the teacher from its settings
    assert len(_open(cfg)) >= 1
    other_shards = tmp_path / "shards"
    shutil.copytree(f"{prepared}/shards", other_shards)
    meta = json.loads((other_shards / "meta.json").read_text())
    meta["holdout_fraction"] = 0.3  # as if tokenised again with other settings
    (other_shards / "meta.json").write_text(json.dumps(meta))
    cfg.data.shards = str(other_shards)
    with pytest.raises(CacheError, match="'tiny'.*other training shards"):
        _open(cfg)
    with pytest.raises(CacheError, match="'tiny'.*other shards_fingerprint"):
        generate_stage(cfg, progress=False)
    cfg.data.shards = f"{prepared}/shards"
    other_tok = tmp_path / "tokenizer.json"
    other_tok.write_text((prepared / "tokenizer.json").read_text() + "\n")  # the same vocabulary, other bytes
    cfg.tokenizer.path = str(other_tok)
    with pytest.raises(CacheError, match="'tiny'.*another student tokenizer"):
        _open(cfg)


def _benchmark_sentence():
    from lokilm.data.benchmarks import decontamination_texts

    return next((b, t) for b, _, t in decontamination_texts(None) if 14 <= len(t.split()) <= 18)


def test_planted_benchmark_sentence_is_detected_and_regenerated(make_cfg, tmp_path, teacher_run):
    teacher = load_teacher(TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run)))
    cfg = _distill_cfg(make_cfg, tmp_path, teacher_run, "distill.cache_sequences=2")
    benchmark, sentence = _benchmark_sentence()
    planted = Recording(teacher, plant=(sentence, lambda r: r.calls == 1))
    summary = generate_stage(cfg, progress=False, teachers={"tiny": planted})["teachers"]["tiny"]
    assert summary["contaminated_hits"] == 1 and summary["regenerated"] == 1 and summary["generated"] == 2
    hits = summary["contaminated_by_benchmark"]  # which benchmark the teacher copied, with the n-gram
    assert list(hits) == [benchmark] and hits[benchmark]["documents_dropped"] == 1
    assert hits[benchmark]["examples"][0]["ngram"].lower() in " ".join(sentence.split()).lower()
    assert planted.calls == 2 and planted.seeds[1] == planted.seeds[0] + 1  # only the hit row, with the next seed
    assert planted.prompts[2] == planted.prompts[0]
    cache = _open(cfg)
    tok = load_tokenizer(cfg.tokenizer.path)
    texts = [decode(tok, cache.continuation(w).tolist()) for w in cache.windows]
    assert not any(sentence.split()[0] + " " + sentence.split()[1] in t for t in texts)


def test_a_teacher_whose_outputs_are_all_contaminated_is_an_error(make_cfg, tmp_path, teacher_run):
    teacher = load_teacher(TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run)))
    cfg = _distill_cfg(make_cfg, tmp_path, teacher_run, "distill.cache_sequences=2", "distill.max_regenerations=1",
                       "distill.gen_batch_size=1")
    always = Recording(teacher, plant=(_benchmark_sentence()[1], lambda r: True))
    with pytest.raises(CacheError, match="teacher 'tiny': none of its 2 continuations.*2 contaminated"):
        generate_stage(cfg, progress=False, teachers={"tiny": always})
    assert always.calls == 4  # each window: the first try and one regeneration


def test_a_teacher_with_only_empty_outputs_or_no_name_is_an_error(make_cfg, tmp_path, teacher_run):
    teacher = load_teacher(TeacherSettings(name="tiny", kind="lokilm", path=str(teacher_run)))
    cfg = _distill_cfg(make_cfg, tmp_path, teacher_run, "distill.cache_sequences=2")
    silent = Recording(teacher)
    silent.generate = lambda prompts, *args: ["\n" for _ in Recording.generate(silent, prompts, *args)]
    with pytest.raises(CacheError, match="teacher 'tiny': none of its 2 continuations is usable \\(2 empty"):
        generate_stage(cfg, progress=False, teachers={"tiny": silent})
    cfg.distill.teachers[0].name = ""
    with pytest.raises(LokiError, match=r"distill.teachers\[0\] \(.*\) has no name"):
        generate_stage(cfg, progress=False)


def test_loki_run_fills_the_cache_before_training_and_skips_it_when_done(make_cfg, tmp_path, teacher_run):
    """The `distill` stage of `loki run`: sequence mode gets its caches first; a finished cache is not redone."""
    from lokilm import stages

    cfg = _distill_cfg(make_cfg, tmp_path / "run", teacher_run, "distill.enabled=true", "train.max_steps=4",
                       "distill.cache_sequences=16")
    assert list(stages.STAGES).index("distill") == list(stages.STAGES).index("train") - 1
    first = stages.distill_stage(cfg)
    assert first["status"] == "done" and first["teachers"]["tiny"]["resumed_with"] == 0
    again = stages.distill_stage(cfg)
    assert again["teachers"]["tiny"]["resumed_with"] == len(_open(cfg))  # nothing generated the second time
    summary = stages.train_stage(cfg)
    assert summary["status"] == "finished"
    kd = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if r.get("kd")]
    assert [r["step"] for r in kd] == [4] and kd[0]["kd_wins.ground_truth"] + kd[0]["kd_wins.tiny"] == 16

    off = _distill_cfg(make_cfg, tmp_path / "off", teacher_run)
    assert stages.distill_stage(off)["status"].startswith("off")
    off.distill.enabled, off.distill.mode = True, "logit"
    assert stages.distill_stage(off)["status"].startswith("live")
