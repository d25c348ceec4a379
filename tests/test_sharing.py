"""Tests for lokilm.model.sharing: exact parameter counts, one copy of the shared weights, LoRA adapters, decoding
with a cache, and training and resuming with each kind of sharing."""

import pytest
import torch

from lokilm.config import load_config
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig
from lokilm.train.trainer import train
from resume_check import trains_and_resumes

pytestmark = pytest.mark.usefixtures("one_thread")

V, L, D, F, R = 97, 3, 48, 64, 4  # vocabulary, layers, width, SwiGLU width, LoRA rank


def model(**kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=V, n_layer=L, n_head=4, d_model=D, d_ff=F, context_length=32,
                                tie_embeddings=True, attention="reference", **kw)).double()
    m.init_weights()
    return m.eval()


ATTN, FFN, NORMS = 4 * D * D, 3 * D * F, 2 * D  # one layer's attention, SwiGLU and norms
LORA_FFN = R * (D + F) * 3  # rank-R A (R x in) and B (out x R) on gate, up (D -> F) and down (F -> D)
LORA_ATTN = R * (D + D) * 4
OUTER = V * D + D  # tied embedding and head, final norm


def test_parameter_counts_are_exact_and_ordered():
    counts = {
        "none": model().num_params(),
        "ffn": model(share="ffn").num_params(),
        "ffn+lora": model(share="ffn", share_lora_rank=R).num_params(),
        "block": model(share="block").num_params(),
        "block+lora": model(share="block", share_lora_rank=R).num_params(),
    }
    assert counts == {
        "none": OUTER + L * (ATTN + FFN + NORMS),
        "ffn": OUTER + L * (ATTN + NORMS) + FFN,
        "ffn+lora": OUTER + L * (ATTN + NORMS + LORA_FFN) + FFN,
        "block": OUTER + ATTN + FFN + NORMS,
        "block+lora": OUTER + ATTN + FFN + NORMS + L * (LORA_ATTN + LORA_FFN),
    }
    assert counts["block"] < counts["ffn"] < counts["ffn+lora"] < counts["none"]


@pytest.mark.parametrize("share", ["ffn", "block"])
def test_the_shared_weights_exist_once_and_get_every_layers_gradient(share):
    m = model(share=share)
    keys = list(m.state_dict())
    assert not any(k.startswith("layers.") and ".mlp." in k for k in keys)  # saved once, under shared.
    assert any(k.startswith("shared.") for k in keys)
    assert all(layer.mlp is (m.shared if share == "ffn" else m.shared.mlp) for layer in
               (m.layers if share == "ffn" else [layer.block for layer in m.layers]))
    x = torch.randint(0, V, (2, 9))
    m.train()
    m(x[:, :-1], x[:, 1:]).backward()
    grad = m.shared.down_proj.weight.grad if share == "ffn" else m.shared.mlp.down_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("share", ["ffn", "block"])
def test_fresh_lora_adapters_leave_the_shared_model_unchanged_and_then_make_layers_differ(share):
    plain, adapted = model(share=share), model(share=share, share_lora_rank=R)
    adapted.load_state_dict(plain.state_dict(), strict=False)  # same shared weights; adapters B = 0
    x = torch.randint(0, V, (2, 10))
    torch.testing.assert_close(adapted(x), plain(x), rtol=0, atol=0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if name.endswith(".B"):
                p.normal_(std=0.05)
    assert not torch.allclose(adapted(x), plain(x))


@pytest.mark.parametrize("kw", [dict(share="ffn", share_lora_rank=R), dict(share="block", share_lora_rank=R),
                                dict(share="block", n_kv_head=2, position="rope")])
def test_cached_decoding_matches_the_full_forward(kw):
    m = model(**kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".B"):
                p.normal_(std=0.05)  # adapters that do something
    x = torch.randint(0, V, (1, 12))
    full = m(x)
    cache = m.new_cache(1)
    steps = [m(x[:, :5], cache=cache)] + [m(x[:, i:i + 1], cache=cache) for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_bad_sharing_settings_are_refused():
    with pytest.raises(LokiError, match="model.share_lora_rank: adapts shared weights"):
        load_config("configs/tiny.yaml", ["model.share_lora_rank=4"])
    with pytest.raises(LokiError, match="model.share_lora_rank: must be >= 0"):
        load_config("configs/tiny.yaml", ["model.share=ffn", "model.share_lora_rank=-1"])
    with pytest.raises(LokiError, match="not a low rank"):
        load_config("configs/tiny.yaml", ["model.share=ffn", "model.share_lora_rank=128"])
    with pytest.raises(LokiError, match="model.share: 'all' is not one of"):
        load_config("configs/tiny.yaml", ["model.share=all"])


def test_ffn_sharing_with_lora_and_muon_trains_and_resumes(make_cfg, tmp_path):
    trains_and_resumes(make_cfg, tmp_path, "model.share=ffn", "model.share_lora_rank=4", "train.optimizer=muon")


def test_block_sharing_trains_and_resumes(make_cfg, tmp_path):
    trains_and_resumes(make_cfg, tmp_path, "model.share=block", "model.share_lora_rank=2")


def test_two_fsdp_processes_train_a_shared_model_like_one(make_cfg, tmp_path):
    """The shared block sits in the root's shard group (one copy, gathered once per forward; the layers' groups
    hold only their adapters): two ranks give the one-process losses. (FFN sharing passed too; left out for time.)"""
    from test_parallel import STEPS, losses, torchrun

    opts = ["model.share=block", "model.share_lora_rank=2", "train.halt_at_step=4"]
    train(make_cfg(tmp_path / "one", *STEPS, *opts))
    torchrun(make_cfg(tmp_path / "two", *STEPS, *opts))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4] and [two[s] for s in two] == pytest.approx([one[s] for s in two], rel=1e-5)
