import json

import numpy as np
import pytest

from lokilm.train.units import Step

from lokilm.distill.cache import (
    CacheError,
    TeacherCacheWriter,
    cache_root,
    kd_windows,
    prefix_tokens,
    shards_fingerprint,
)
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.rundir import RunDir
from lokilm.shards import TokenWindows
from lokilm.train.metrics import read_metrics
from lokilm.train.trainer import Trainer, train

TEACHERS = "distill.teachers=[{name: echo}, {name: noise}]"


def write_caches(cfg, n_windows=64, **identity):
    """Two hand-made teacher caches in the real format: `echo` continues each window with its own next
    tokens but stops after 10, `noise` with random tokens."""
    run = RunDir(cfg)
    train_windows = TokenWindows(run.shards, "train", cfg.model.context_length)
    p = prefix_tokens(cfg)
    rng = np.random.default_rng(0)
    for name in ("echo", "noise"):
        meta = {"teacher": name, "source": "test", "tokenizer_sha256": sha256_file(run.tokenizer),
                "shards_fingerprint": shards_fingerprint(run.shards), "context_length": cfg.model.context_length,
                "prefix_tokens": p, "sampling": {}, **identity}
        writer = TeacherCacheWriter(cache_root(cfg) / name, meta)
        for w in kd_windows(len(train_windows), n_windows, cfg.distill.seed):
            cont = train_windows[w][p: p + 10] if name == "echo" else rng.integers(0, 500, cfg.model.context_length + 1 - p)
            writer.add(w, cont, seed=0, regenerations=0)
        writer.finish({})


def kd_cfg(make_cfg, run_dir, cache_dir, *overrides):
    return make_cfg(run_dir, "distill.enabled=true", TEACHERS, f"distill.cache_dir={cache_dir}", *overrides)


def records(run_dir):
    return {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}


def events(run_dir):
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def test_every_fourth_step_is_a_kd_batch_and_resume_keeps_the_schedule(make_cfg, tmp_path, one_thread):
    cache = tmp_path / "cache"
    common = ["train.max_steps=16", "train.checkpoint_every=4", "model.dropout=0.1", "train.eval_every=8"]
    write_caches(kd_cfg(make_cfg, tmp_path / "full", cache, *common))
    full = train(kd_cfg(make_cfg, tmp_path / "full", cache, *common))
    assert full["step"] == 16
    a = records(tmp_path / "full")
    assert [s for s, r in a.items() if r.get("kd")] == [4, 8, 12, 16]
    for s in (4, 8, 12, 16):  # every sequence of the batch (16) is won by exactly one target
        assert sum(a[s][f"kd_wins.{t}"] for t in ("ground_truth", "echo", "noise")) == 16
        assert a[s]["kd_wins.noise"] == 0  # random tokens never beat the real text
        assert a[s]["loss"] <= a[s]["kd_loss.ground_truth"] + 1e-6
    assert a[16]["kd_wins.echo"] > 0  # by then the student predicts real text well enough to prefer it

    # halted after step 7, resumed: step 8 (a KD step) comes first; everything after is bit-identical
    train(kd_cfg(make_cfg, tmp_path / "split", cache, *common, "train.halt_at_step=7"))
    train(kd_cfg(make_cfg, tmp_path / "split", cache, *common))
    b = records(tmp_path / "split")
    assert sorted(b) == list(range(1, 17))
    assert [s for s, r in b.items() if r.get("kd")] == [4, 8, 12, 16]
    for s in range(8, 17):
        assert b[s]["loss"] == a[s]["loss"]
        assert {k: v for k, v in b[s].items() if k.startswith("kd")} == {k: v for k, v in a[s].items() if k.startswith("kd")}
    assert events(tmp_path / "split")[-1]["event"] == "resume"


def test_kd_batches_in_two_processes_match_one_with_the_win_counts_of_the_whole_batch(make_cfg, tmp_path, one_thread):
    """FSDP2 over two CPU processes (gloo): each rank takes half of every KD batch, and the logged win counts
    and per-target losses are those of the whole batch, as in one process."""
    from test_parallel import torchrun

    cache = tmp_path / "cache"
    common = ["train.micro_batch_size=4", "train.max_steps=8", "train.checkpoint_every=8", "train.eval_every=0"]
    write_caches(kd_cfg(make_cfg, tmp_path / "one", cache, *common))
    train(kd_cfg(make_cfg, tmp_path / "one", cache, *common))
    torchrun(kd_cfg(make_cfg, tmp_path / "two", cache, *common))
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert sorted(two) == list(range(1, 9))
    assert [two[s]["loss"] for s in range(1, 9)] == pytest.approx([one[s]["loss"] for s in range(1, 9)], rel=1e-5)
    for s in (4, 8):
        targets = ("ground_truth", "echo", "noise")
        assert sum(two[s][f"kd_wins.{t}"] for t in targets) == 16
        assert [two[s][f"kd_wins.{t}"] for t in targets] == [one[s][f"kd_wins.{t}"] for t in targets]
        assert [two[s][f"kd_loss.{t}"] for t in targets] == pytest.approx([one[s][f"kd_loss.{t}"] for t in targets],
                                                                           rel=1e-5)


def test_a_small_cache_wraps_around_and_says_so_once(make_cfg, tmp_path, one_thread):
    cfg = kd_cfg(make_cfg, tmp_path / "wrap", tmp_path / "cache", "train.max_steps=12", "distill.every=2")
    write_caches(cfg, n_windows=20)
    train(cfg)
    wrapped = [e for e in events(tmp_path / "wrap") if e["event"] == "kd_windows_wrapped"]
    assert len(wrapped) == 1 and wrapped[0]["step"] == 4 and wrapped[0]["windows"] == 20  # KD steps 2, 4: 32 > 20
    assert [s for s, r in records(tmp_path / "wrap").items() if r.get("kd")] == [2, 4, 6, 8, 10, 12]


class Events:
    def __init__(self):
        self.logged = []

    def event(self, name, step, **fields):
        self.logged.append((name, step))


def test_the_wrap_is_logged_by_rank_0_when_it_falls_in_another_ranks_micro_batches(make_cfg, tmp_path, one_thread):
    """Rank 0 of two, as under torchrun: the KD batch of step 4 holds samples 16..31 and the wrap (index 28)
    falls in rank 1's micro-batches 2 and 3; rank 0, the one that logs, still says so, once."""
    cfg = kd_cfg(make_cfg, tmp_path / "r", tmp_path / "cache", "train.micro_batch_size=4", "distill.every=2")
    write_caches(cfg, n_windows=28)
    trainer = Trainer(cfg)
    unit = trainer.unit("distill")
    unit.logging = log = Events()
    for number, kd_samples in ((2, 0), (4, 16), (6, 32)):  # KD steps 2, 4, 6
        unit.kd_samples = kd_samples
        step = Step(number=number, tokens=0, batch_size=16, lr=0.0, last=False)
        assert unit.batch_source(step) is unit
        for i in (0, 1):  # rank 0's share of the four micro-batches
            unit.micro_batch(step, i)
    assert log.logged == [("kd_windows_wrapped", 4)]


def test_a_cache_for_other_shards_or_tokenizer_is_refused_naming_the_teacher(make_cfg, tmp_path, one_thread):
    cfg = kd_cfg(make_cfg, tmp_path / "bad", tmp_path / "cache", "train.max_steps=4")
    with pytest.raises(CacheError, match="teacher 'echo': no teacher cache .*`loki distill generate`"):
        Trainer(cfg)
    write_caches(cfg, shards_fingerprint="0" * 64)
    with pytest.raises(CacheError, match="teacher 'echo': .* other training shards"):
        Trainer(cfg)
    write_caches(kd_cfg(make_cfg, tmp_path / "bad", tmp_path / "cache2"), tokenizer_sha256="0" * 64)
    with pytest.raises(CacheError, match="teacher 'echo': .* another student tokenizer"):
        Trainer(kd_cfg(make_cfg, tmp_path / "bad", tmp_path / "cache2"))


@pytest.fixture(scope="module")
def lokilm_teacher(prepared, tmp_path_factory):
    """A small lokilm model trained for a few steps on the same tokenizer: a logit-mode teacher."""
    from lokilm.config import load_config
    from tests.conftest import SMALL

    run = tmp_path_factory.mktemp("teacher")
    train(load_config("configs/tiny.yaml", SMALL + [f"run_dir={run}", f"data.shards={prepared}/shards",
                                                    f"tokenizer.path={prepared}/tokenizer.json", "train.max_steps=6",
                                                    "model.d_model=96", "model.n_head=3"]))
    return run


@pytest.mark.parametrize("loss", ["soft_ce", "reverse_kl"])
def test_logit_mode_with_a_lokilm_teacher(make_cfg, tmp_path, lokilm_teacher, loss, one_thread):
    run = tmp_path / "logit"
    train(make_cfg(run, "distill.enabled=true", "distill.mode=logit", f"distill.logit_loss={loss}",
                   "distill.logit_top_k=16", f"distill.teachers=[{{name: big, kind: lokilm, path: {lokilm_teacher}}}]",
                   "train.max_steps=8", "distill.reduction=token"))
    r = records(run)
    assert [s for s, x in r.items() if x.get("kd")] == [4, 8]
    assert r[8]["kd_wins.ground_truth"] + r[8]["kd_wins.big"] == 16 * 64  # token reduction: every position counted


def test_logit_mode_takes_a_teacher_checkpoint_as_well_as_a_run_directory(make_cfg, tmp_path, lokilm_teacher,
                                                                          one_thread):
    """kind=lokilm is a run directory (its newest checkpoint) or one of its checkpoints, as in sequence mode."""
    import torch

    from lokilm.checkpoint import load_model
    from lokilm.checkpoint.single import Checkpoint, list_checkpoints

    def teacher(path):
        return Trainer(make_cfg(tmp_path / "c", "distill.enabled=true", "distill.mode=logit",
                                f"distill.teachers=[{{name: big, kind: lokilm, path: {path}}}]")).unit("distill").teachers[0]

    checkpoints = list_checkpoints(lokilm_teacher / "checkpoints")
    assert len(checkpoints) >= 2
    for path, ckpt in ((lokilm_teacher, checkpoints[-1]), (checkpoints[0], checkpoints[0])):
        state = json.loads((ckpt / "state.json").read_text())
        expected, _ = load_model(lokilm_teacher, ckpt=Checkpoint(path=ckpt, step=state["step"], state=state))
        torch.testing.assert_close(teacher(path).state_dict(), expected.state_dict())
    with pytest.raises(LokiError, match="teacher 'big': .* is neither a lokilm run directory nor one of its checkpoints"):
        teacher(tmp_path)


def test_logit_mode_refuses_another_vocabulary_at_start_up(make_cfg, tmp_path, lokilm_teacher, one_thread):
    teacher = f"distill.teachers=[{{name: big, kind: lokilm, path: {lokilm_teacher}}}]"
    with pytest.raises(LokiError, match="teacher 'big' .* another vocabulary than the student"):
        Trainer(make_cfg(tmp_path / "v", "distill.enabled=true", "distill.mode=logit", teacher, "model.vocab_size=640"))
    with pytest.raises(LokiError, match="teacher 'smol' is kind package; distill.mode=logit needs lokilm"):
        Trainer(make_cfg(tmp_path / "v", "distill.enabled=true", "distill.mode=logit",
                         "distill.teachers=[{name: smol, kind: package, path: smollm2}]"))
