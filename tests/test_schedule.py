import math

import pytest

from lokilm.config import TrainConfig
from lokilm.train.schedule import BatchSizeWarmup, lr_at


def test_cosine_warms_up_then_decays_to_floor():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_wsd_holds_then_decays_linearly():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, max_steps=100, lr_schedule="wsd", decay_fraction=0.2)
    assert lr_at(0, cfg) == lr_at(79, cfg) == 1.0
    assert lr_at(90, cfg) == pytest.approx(0.5)
    assert lr_at(100, cfg) == pytest.approx(0.0)


def test_batch_warmup_grows_by_tokens_in_whole_micro_batches():
    cfg = TrainConfig(micro_batch_size=4, batch_size=64, batch_warmup_tokens=1000, batch_warmup_start=8)
    w = BatchSizeWarmup(cfg)
    sizes = [w.batch_size(t) for t in range(0, 1200, 50)]
    assert sizes[0] == 8 and sizes[-1] == 64
    assert all(s % 4 == 0 for s in sizes)
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    assert w.batch_size(500) == 36
    assert w.lr_scale(16) == pytest.approx(math.sqrt(16 / 64))


def test_no_warmup_means_full_batch():
    w = BatchSizeWarmup(TrainConfig(micro_batch_size=4, batch_size=64))
    assert w.batch_size(0) == 64 and w.lr_scale(64) == 1.0
