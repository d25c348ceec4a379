"""Tests for the dropout schedules (lokilm/train/dropout.py): the rate of each schedule, the unit that sets it
on every dropout layer, and the value in each step's metrics record."""

import pytest
import torch

from lokilm.config import load_config
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig
from lokilm.model.transformer import Dropout
from lokilm.train.dropout import DropoutSchedule, dropout_at
from lokilm.train.units import Step
from resume_check import trains_and_resumes

pytestmark = pytest.mark.usefixtures("one_thread")

DONE = [0.0, 0.25, 0.5, 0.75, 0.99]


@pytest.mark.parametrize("schedule, rates", [
    ("constant", [0.2, 0.2, 0.2, 0.2, 0.2]),
    ("early", [0.2, 0.2, 0.0, 0.0, 0.0]),
    ("late", [0.0, 0.0, 0.2, 0.2, 0.2]),
    ("linear_up", [0.0, 0.1, 0.2, 0.2, 0.2]),
    ("triangle", [0.0, 0.1, 0.2, 0.1, 0.004]),
])
def test_each_schedule_gives_its_rate(schedule, rates):
    assert [dropout_at(schedule, 0.2, d, 0.5) for d in DONE] == pytest.approx(rates)


def test_edge_fractions_do_not_divide_by_zero():
    assert dropout_at("linear_up", 0.3, 0.0, 0.0) == 0.3
    assert dropout_at("triangle", 0.3, 0.5, 1.0) == pytest.approx(0.15)
    assert dropout_at("triangle", 0.3, 0.0, 0.0) == pytest.approx(0.3)


def test_the_unit_sets_every_dropout_layer_and_records_the_rate():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=2, d_model=16, d_ff=32, context_length=8, dropout=0.5))
    unit = DropoutSchedule(m, "late", 0.5, 0.5, 10, torch.device("cpu"))
    drops = [mod for mod in m.modules() if isinstance(mod, Dropout)]
    assert len(drops) == 4 and all(d.rate is unit.rate for d in drops)
    x = torch.randn(64, 64)
    m.train()
    for number, expected in [(1, 0.0), (5, 0.0), (6, 0.5), (10, 0.5)]:
        step = Step(number=number, tokens=0, batch_size=1, lr=0.0, last=False)
        unit.before_step(step)
        assert step.record["dropout"] == expected
        dropped = float((drops[0](x) == 0).float().mean())
        assert dropped == pytest.approx(expected, abs=0.03)
    m.eval()
    assert torch.equal(drops[0](x), x)


def test_a_schedule_trains_resumes_and_logs_its_rate(make_cfg, tmp_path):
    records = trains_and_resumes(make_cfg, tmp_path, "model.dropout=0.2", "train.dropout_schedule=triangle",
                                 "train.dropout_schedule_until=0.5")
    assert [records[s]["dropout"] for s in (1, 4, 7, 10)] == pytest.approx([0.0, 0.1, 0.2, 0.1])


def test_bad_schedule_settings_are_refused():
    with pytest.raises(LokiError, match="train.dropout_schedule: 'cosine' is not one of"):
        load_config("configs/tiny.yaml", ["train.dropout_schedule=cosine"])
    with pytest.raises(LokiError, match="train.dropout_schedule_until: must be a fraction"):
        load_config("configs/tiny.yaml", ["train.dropout_schedule_until=2"])
