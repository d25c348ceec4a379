import json
import shutil
import warnings

import pytest

from lokilm.errors import LokiError
from lokilm.checkpoint import single as ckpt_mod
from lokilm.checkpoint.single import latest_checkpoint, list_checkpoints
from faults import SpikeInjector

from lokilm.train.metrics import MetricsLog, read_metrics
from lokilm.train.spike import SpikeGuard
from lokilm.train.trainer import Trainer, train


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_resume_continues_exactly(make_cfg, tmp_path):
    common = ["train.max_steps=16", "train.checkpoint_every=4", "model.dropout=0.1", "train.eval_every=8"]
    full = train(make_cfg(tmp_path / "full", *common))
    assert full["status"] == "finished" and full["step"] == 16

    halted = train(make_cfg(tmp_path / "split", *common, "train.halt_at_step=6"))
    assert halted["status"] == "halted" and halted["step"] == 6
    resumed = train(make_cfg(tmp_path / "split", *common))  # the same command again resumes
    assert resumed["status"] == "finished"

    a, b = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert sorted(b) == list(range(1, 17))  # one record per step, none repeated
    assert [b[s] for s in range(7, 17)] == [a[s] for s in range(7, 17)]  # bit-identical after the resume
    events = [json.loads(x) for x in (tmp_path / "split" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "resume" and events[-1]["step"] == 6


def test_rerunning_a_halted_run_does_not_train_further(make_cfg, tmp_path):
    run = tmp_path / "halt"
    common = ["train.max_steps=8", "train.checkpoint_every=4", "train.halt_at_step=3"]
    assert train(make_cfg(run, *common))["step"] == 3
    again = train(make_cfg(run, *common))  # the same command again: already at the halt, so no step 4
    assert again["status"] == "halted" and again["step"] == 3
    assert sorted(losses(run)) == [1, 2, 3] and latest_checkpoint(run / "checkpoints").step == 3


def test_ranks_keep_distinct_dropout_seeds_after_a_rollback(make_cfg, tmp_path, monkeypatch):
    import torch

    cfg = make_cfg(tmp_path / "seeds", "train.max_steps=2", "train.checkpoint_every=2")
    train(cfg)
    seeds = []
    for rank in (0, 1):
        trainer = Trainer(cfg)
        trainer.dist.rank = rank  # a single-file checkpoint loads the same on any rank
        trainer.logging.main = False
        monkeypatch.setattr(torch, "manual_seed", seeds.append)
        trainer.checkpoint.roll_back(3, "test")
        monkeypatch.undo()
    assert seeds == [cfg.train.seed + 7919, cfg.train.seed + 7919 + 1]  # rank 0 unchanged, rank 1 its own


def test_a_failing_trainer_setup_closes_the_process_group(make_cfg, tmp_path):
    import torch.distributed as dist

    # train.fsdp=true starts a group of one; the vocabulary check then fails inside Trainer(cfg)
    cfg = make_cfg(tmp_path / "group", "train.fsdp=true", "train.device=cpu", "model.vocab_size=300")
    try:
        with pytest.raises(LokiError, match="raise model.vocab_size"):
            train(cfg)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():  # do not leak the group into the other tests when this one fails
            dist.destroy_process_group()


def test_a_cut_off_last_metrics_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n{"step": 3, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]  # eval, compare and plots read it as it is
    log = MetricsLog(tmp_path, 10, 2, tensorboard=False, progress=False)
    log.log({"step": 3, "loss": 3.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["metrics_partial_line_dropped"]


def test_a_damaged_metrics_line_in_the_middle_is_a_clear_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo\n{"step": 3, "loss": 3.0}\n')
    with pytest.raises(LokiError, match=r"metrics.jsonl line 2 is not valid JSON"):
        MetricsLog(tmp_path, 10, 3, tensorboard=False, progress=False)


def test_rewriting_metrics_is_atomic(tmp_path, monkeypatch):
    from lokilm import fileio

    path = tmp_path / "metrics.jsonl"
    before = '{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n'
    path.write_text(before)

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError):
        MetricsLog(tmp_path, 10, 1, tensorboard=False, progress=False)
    assert path.read_text() == before  # a crash mid-rewrite leaves the old file whole


def test_injected_spike_rolls_back_and_finishes(make_cfg, tmp_path):
    run = tmp_path / "spike"
    cfg = make_cfg(run, "train.max_steps=30", "train.checkpoint_every=5", "train.spike.min_history=10")
    summary = train(cfg, [lambda trainer: SpikeInjector(24)])
    assert summary["status"] == "finished" and summary["step"] == 30 and summary["rollbacks"] == 1
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    rollback = [e for e in events if e["event"] == "rollback"]
    assert len(rollback) == 1 and rollback[0]["step"] == 25 and rollback[0]["to_step"] == 20
    assert sorted(losses(run)) == list(range(1, 31))  # the rewound steps were redone, each logged once
    assert max(loss for step, loss in losses(run).items() if step > 5) < 6.5  # the wrecked weights are gone


def test_rollbacks_are_capped(make_cfg, tmp_path):
    # A detector so strict that every step after the history fills is a "spike": it must give up, clearly.
    cfg = make_cfg(tmp_path / "cap", "train.max_steps=20", "train.checkpoint_every=2",
                   "train.spike.min_history=3", "train.spike.zscore=-100", "train.spike.min_ratio=0",
                   "train.spike.max_rollbacks=2")
    with pytest.raises(LokiError, match="after 2 rollbacks"):
        train(cfg)
    events = (tmp_path / "cap" / "events.jsonl").read_text()
    assert events.count('"rollback"') == 2 and "rollback_limit" in events


def test_spike_guard_flags_nan_and_jumps():
    from lokilm.config import SpikeConfig

    guard = SpikeGuard(SpikeConfig(min_history=5))
    assert guard.check(float("nan"), 1.0).startswith("non-finite loss")
    assert guard.check(3.0, float("inf")).startswith("non-finite gradient")
    for loss in [3.0, 3.1, 2.9, 3.0, 3.05]:
        assert guard.check(loss, 1.0) is None
        guard.accept(loss)
    assert guard.check(3.2, 1.0) is None
    assert "recent mean" in guard.check(9.0, 1.0)


def test_corrupt_latest_checkpoint_is_rejected(make_cfg, tmp_path):
    run = tmp_path / "corrupt"
    train(make_cfg(run, "train.max_steps=8", "train.checkpoint_every=4"))
    steps = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert steps == ["step_00000000", "step_00000004", "step_00000008"]
    weights = run / "checkpoints" / "step_00000008" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step_00000008 is corrupt: model.safetensors fails its sha256"):
        assert latest_checkpoint(run / "checkpoints").step == 4
    # resuming picks the good one and trains on to the end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train(make_cfg(run, "train.max_steps=10", "train.checkpoint_every=4"))
    assert summary["step"] == 10
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1] == {**events[-1], "event": "resume", "step": 4}


def test_truncated_checkpoint_and_leftover_temp_folder(make_cfg, tmp_path):
    run = tmp_path / "trunc"
    train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2"))
    opt = run / "checkpoints" / "step_00000004" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    (run / "checkpoints" / ".tmp-step_00000006-123").mkdir()  # a save that died half way
    with pytest.warns(UserWarning, match="truncated"):
        assert latest_checkpoint(run / "checkpoints").step == 2


@pytest.mark.parametrize("where", ["_write", "save"])
def test_failed_save_keeps_previous_checkpoints(make_cfg, tmp_path, monkeypatch, where):
    # a full disk surfaces as an OSError from our own writes, or as a SafetensorError from safetensors itself
    from safetensors import SafetensorError

    run = tmp_path / "diskfull"
    train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2"))
    before = list_checkpoints(run / "checkpoints")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device") if where == "_write" else SafetensorError("I/O error: No space")

    monkeypatch.setattr(ckpt_mod, where, disk_full)
    with pytest.raises(LokiError, match="could not write checkpoint .* the previous checkpoints are intact"):
        train(make_cfg(run, "train.max_steps=6", "train.checkpoint_every=2"))
    assert list_checkpoints(run / "checkpoints") == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert latest_checkpoint(run / "checkpoints").step == 4


def test_changed_model_shape_is_refused_on_resume(make_cfg, tmp_path):
    run = tmp_path / "shape"
    train(make_cfg(run, "train.max_steps=2"))
    with pytest.raises(LokiError, match="model.d_ff"):
        train(make_cfg(run, "train.max_steps=4", "model.d_ff=96"))


def test_shards_of_another_tokenizer_are_refused(make_cfg, tmp_path, small_tokenizer):
    other = tmp_path / "other_tokenizer.json"
    small_tokenizer.save(str(other))
    with pytest.raises(LokiError, match="shards in .* were made with a different tokenizer"):
        train(make_cfg(tmp_path / "run", "train.max_steps=2", f"tokenizer.path={other}"))


def test_a_changed_tokenizer_is_refused_on_resume(make_cfg, prepared, tmp_path, small_tokenizer):
    # shards from before they recorded their tokenizer: the checkpoint's record is what catches the change
    shards = tmp_path / "shards"
    shutil.copytree(prepared / "shards", shards)
    meta = json.loads((shards / "meta.json").read_text())
    del meta["tokenizer_sha256"]
    (shards / "meta.json").write_text(json.dumps(meta))
    run = tmp_path / "tok"
    train(make_cfg(run, "train.max_steps=2", f"data.shards={shards}"))
    other = tmp_path / "other_tokenizer.json"
    small_tokenizer.save(str(other))
    with pytest.raises(LokiError, match="holds a checkpoint trained with a different tokenizer"):
        train(make_cfg(run, "train.max_steps=4", f"tokenizer.path={other}", f"data.shards={shards}"))


def test_batch_size_warmup_and_metrics(make_cfg, tmp_path):
    run = tmp_path / "warm"
    train(make_cfg(run, "train.max_steps=12", "train.batch_size=32", "train.batch_warmup_tokens=8192",
                   "train.batch_warmup_start=8", "train.eval_every=6", "train.tensorboard=true"))
    records = [r for r in read_metrics(run) if "loss" in r]
    sizes = [r["batch_size"] for r in records]
    assert sizes[0] == 8 and sizes[-1] == 32 and sizes == sorted(sizes)
    assert records[0]["tokens"] == 8 * 64 and records[-1]["tokens"] == sum(s * 64 for s in sizes)
    for r in records:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(r)
    assert records[0]["lr"] < records[1]["lr"]  # warmup, and smaller batches get a smaller lr
    assert [r["step"] for r in read_metrics(run) if "val_bpb" in r] == [0, 6, 12]
    assert list((run / "tensorboard").iterdir())


def test_training_lowers_held_out_bits_per_byte(make_cfg, tmp_path):
    run = tmp_path / "learn"
    train(make_cfg(run, "train.max_steps=60", "train.eval_every=30"))
    bpb = {r["step"]: r["val_bpb"] for r in read_metrics(run) if "val_bpb" in r}
    assert bpb[60] < 0.85 * bpb[0]


def test_compiled_training_matches_eager(make_cfg, tmp_path):
    # torch.compile must not change the numbers, only the speed (CPU Inductor here; CUDA on the GPU machine).
    eager = train(make_cfg(tmp_path / "eager", "train.max_steps=2"))
    compiled = train(make_cfg(tmp_path / "compiled", "train.max_steps=2", "train.compile=true"))
    assert eager["step"] == compiled["step"] == 2
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert b == pytest.approx(a, rel=1e-4)
