"""Tests for early exit: the intermediate-layer training losses, the curriculum unit, exit-threshold decoding and
self-speculative decoding (lokilm/model/early_exit.py, lokilm/speculative.py, lokilm/train/model_units.py)."""

import pytest
import torch

from lokilm.cli import main
from lokilm.config import GenerateConfig, load_config
from lokilm.errors import LokiError
from lokilm.generate import generate_ids
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig
from lokilm.model.early_exit import exit_step
from lokilm.speculative import DecodeStats, early_exit_ids, self_speculative_ids
from lokilm.train.model_units import active_exits
from resume_check import trains_and_resumes

pytestmark = pytest.mark.usefixtures("one_thread")
V = 97


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**{**dict(vocab_size=V, n_layer=4, n_head=4, d_model=32, d_ff=64, context_length=64,
                                          tie_embeddings=True, early_exit=True), **kw})).double()
    m.init_weights()
    with torch.no_grad():  # sharper than a fresh init, so greedy drafts are sometimes rejected
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return m.eval()


def test_training_adds_each_exits_loss_through_the_shared_norm_and_head():
    m = model(early_exit_scale=0.5)
    x = torch.randint(0, V, (2, 17))
    x, y = x[:, :-1], x[:, 1:]
    # the reference: each exit's loss from a model cut after that layer
    per_exit = {e: m(x, y, exit_layer=e) for e in range(1, 5)}
    weights = {e: 0.5 * e / 4 for e in range(1, 4)}
    expected = (per_exit[4] + sum(weights[e] * per_exit[e] for e in range(1, 4))) / (1 + sum(weights.values()))
    m.train()
    torch.testing.assert_close(m(x, y), expected)
    m.exit_layers = {2}
    torch.testing.assert_close(m(x, y), (per_exit[4] + weights[2] * per_exit[2]) / (1 + weights[2]))
    m.eval()
    torch.testing.assert_close(m(x, y), per_exit[4])  # evaluation scores the final layer alone


def test_curricula_choose_the_exits():
    assert active_exits("all", 4, 7, 100, 2) == {1, 2, 3}
    assert [active_exits("rotational", 5, s, 100, 2) for s in (1, 2)] == [{1, 3}, {2, 4}]
    assert [active_exits("gradual", 4, s, 90, 2) for s in (1, 30, 31, 61, 90)] == [{3}, {3}, {2, 3}, {1, 2, 3}, {1, 2, 3}]


@pytest.mark.parametrize("kw", [dict(), dict(position="rope", n_kv_head=2), dict(share="ffn", share_lora_rank=2)])
@pytest.mark.parametrize("draft_layers", [1, 2, 3])
@pytest.mark.parametrize("n_draft", [1, 4])
def test_self_speculative_greedy_is_exactly_plain_greedy(kw, draft_layers, n_draft):
    m = model(**kw)
    greedy = GenerateConfig(max_new_tokens=30, temperature=0.0)
    prompt = [5, 17, 42, 3]
    plain = list(generate_ids(m, prompt, greedy, V))
    stats = DecodeStats()
    assert list(self_speculative_ids(m, prompt, greedy, V, None, draft_layers, n_draft, stats)) == plain
    assert stats.tokens == 30 and 0 <= stats.accepted <= stats.drafted


def test_self_speculative_stops_where_plain_greedy_stops_and_fills_the_context():
    m = model(context_length=20)
    greedy = GenerateConfig(max_new_tokens=100, temperature=0.0)
    plain = list(generate_ids(m, [1, 2, 3], greedy, V))
    assert len(plain) == 17  # up to the context length
    assert list(self_speculative_ids(m, [1, 2, 3], greedy, V, None, 2, 5)) == plain
    stop = plain[6]
    assert list(self_speculative_ids(m, [1, 2, 3], greedy, V, stop, 2, 5)) == plain[:plain.index(stop)]


def test_self_speculative_refuses_sampling_and_bad_draft_depths():
    m = model()
    with pytest.raises(LokiError, match="pass --temperature 0"):
        list(self_speculative_ids(m, [1], GenerateConfig(temperature=0.8), V, None, 2))
    with pytest.raises(LokiError, match=r"E must be in 1..3"):
        list(self_speculative_ids(m, [1], GenerateConfig(temperature=0.0), V, None, 4))


def test_an_exit_threshold_above_one_runs_every_layer_and_matches_plain_decoding():
    m = model()
    settings = GenerateConfig(max_new_tokens=12, temperature=0.8, seed=3)
    stats = DecodeStats()
    assert list(early_exit_ids(m, [4, 5, 6], settings, V, None, 1.0, stats)) == list(generate_ids(m, [4, 5, 6], settings, V))
    assert stats.layers == [4] * 12


def test_a_low_exit_threshold_exits_at_the_first_layer_and_still_fills_the_cache():
    m = model()
    cache = m.new_cache(1)
    m(torch.tensor([[1, 2, 3]]), cache=cache)
    logits, layers = exit_step(m, torch.tensor([[4]]), cache, threshold=1e-9)
    assert layers == 1 and cache.length == 4
    torch.testing.assert_close(logits, m(torch.tensor([[1, 2, 3, 4]]), exit_layer=1)[:, -1])
    assert all(cache.k[j, :, :, 3].abs().sum() > 0 for j in range(4))  # the skipped layers got keys too
    with pytest.raises(LokiError, match="must be in"):
        list(early_exit_ids(m, [1], GenerateConfig(), V, None, 0.0))


def test_early_exit_model_trains_resumes_and_decodes_from_the_cli(make_cfg, tmp_path, capsys):
    trains_and_resumes(make_cfg, tmp_path, "model.early_exit=true", "train.early_exit_curriculum=gradual",
                       "model.n_layer=4")
    run = str(tmp_path / "full")
    capsys.readouterr()
    outputs = {}
    for name, flags in {"plain": [], "speculative": ["--self-speculative", "2"], "exit": ["--exit-threshold", "0.5"]}.items():
        assert main(["generate", run, "--prompt", "The king", "--temperature", "0", "--max-new-tokens", "20", *flags]) == 0
        outputs[name] = capsys.readouterr().out
    assert outputs["speculative"] == outputs["plain"] and outputs["plain"].startswith("The king")
    assert outputs["exit"].startswith("The king")
    assert main(["generate", run, "--self-speculative", "9", "--temperature", "0"]) == 2
    assert "E must be in 1..3" in capsys.readouterr().err


def test_early_exit_settings_are_checked():
    with pytest.raises(LokiError, match="train.early_exit_curriculum: 'random' is not one of"):
        load_config("configs/tiny.yaml", ["train.early_exit_curriculum=random"])
    with pytest.raises(LokiError, match="model.early_exit_scale: must be in"):
        load_config("configs/tiny.yaml", ["model.early_exit_scale=-1"])
