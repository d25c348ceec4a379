"""Tests for lokilm.model: every attention path against the reference, KV-cache decoding, presets, init, loss."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lokilm.config import ModelConfig, load_config
from lokilm.model import KVCache, Transformer, alibi_slopes, make_attention
from lokilm.model.attention import causal_bias

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CPU = torch.device("cpu")


pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.usefixtures("one_thread")]


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, n_layer=2, n_head=6, d_model=48, d_ff=64, context_length=32, attention="reference")
    return ModelConfig(**{**base, **overrides})


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_config(**overrides)).double()
    model.init_weights()
    return model.eval()


def with_attention(model: Transformer, backend: str) -> Transformer:
    other = Transformer(dataclasses.replace(model.cfg, attention=backend)).double().eval()
    other.load_state_dict(model.state_dict())
    return other


POSITIONS = ["alibi", "rope", "learned", "sincos", "none"]
KV_HEADS = [None, 2]  # multi-head, and grouped-query with 3 query heads per key/value head


# ---------------------------------------------------------------- ALiBi

def test_alibi_slopes_for_8_heads_halve_from_one_half():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]


def test_alibi_slopes_for_6_heads_follow_the_reference_code():
    # 4 heads give 1/4 .. 1/256; the 2 extra heads take every other slope of 8 heads: 1/2, 1/8.
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]


def test_alibi_bias_is_slope_times_distance_to_the_past_and_masks_the_future():
    slopes = alibi_slopes(4)
    bias = causal_bias(3, 5, slopes, CPU, torch.float64)  # the 3 queries sit at positions 2, 3, 4
    for h in range(4):
        for i, q_pos in enumerate([2, 3, 4]):
            for k_pos in range(5):
                expected = slopes[h].item() * (k_pos - q_pos) if k_pos <= q_pos else float("-inf")
                assert bias[h, i, k_pos].item() == pytest.approx(expected)


# ---------------------------------------------------------------- kernels against the reference

@pytest.mark.parametrize("alibi", [True, False])
@pytest.mark.parametrize("n_kv_head", [6, 2, 1])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("q_len,kv_len", [(13, 13), (4, 13), (1, 13)])
def test_attention_kernel_matches_reference(backend, n_kv_head, alibi, q_len, kv_len):
    torch.manual_seed(0)
    q = torch.randn(2, 6, q_len, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, n_kv_head, kv_len, 8, dtype=torch.float64)
    slopes = alibi_slopes(6) if alibi else None
    expected = make_attention("reference", q_len, kv_len, slopes, CPU, q.dtype)(q, k, v)
    actual = make_attention(backend, q_len, kv_len, slopes, CPU, q.dtype)(q, k, v)
    torch.testing.assert_close(actual, expected)


def test_reference_attention_is_causal_softmax_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 5, 4, dtype=torch.float64)
    out = make_attention("reference", 5, 5, None, CPU, q.dtype)(q, k, v)
    for t in range(5):  # position t sees exactly positions 0..t
        weights = (q[..., t:t + 1, :] @ k[..., : t + 1, :].transpose(-2, -1) / 2).softmax(-1)
        torch.testing.assert_close(out[..., t:t + 1, :], weights @ v[..., : t + 1, :])


# ---------------------------------------------------------------- the model

@pytest.mark.parametrize("n_kv_head", KV_HEADS)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@torch.no_grad()
def test_model_matches_reference_attention(backend, position, n_kv_head):
    model = tiny_model(position=position, n_kv_head=n_kv_head)
    idx = torch.randint(0, 97, (2, 20))
    torch.testing.assert_close(with_attention(model, backend)(idx), model(idx))


@pytest.mark.parametrize("n_kv_head", KV_HEADS)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex"])
@torch.no_grad()
def test_kv_cache_decoding_matches_full_forward(backend, position, n_kv_head):
    model = with_attention(tiny_model(position=position, n_kv_head=n_kv_head), backend)
    idx = torch.randint(0, 97, (2, 12))
    full = model(idx)
    cache = model.new_cache(batch_size=2, max_len=16)
    steps = [model(idx[:, :5], cache=cache)]  # prefill the prompt, then one token at a time
    steps += [model(idx[:, t:t + 1], cache=cache) for t in range(5, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_kv_cache_refuses_to_overflow():
    model = tiny_model()
    cache = model.new_cache(batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_new_cache_has_the_model_shape_device_and_dtype():
    cache = tiny_model(n_kv_head=2).new_cache(batch_size=3)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 3, 2, 32, 8) and cache.k.dtype == torch.float64


def test_learned_positions_stop_at_context_length():
    with pytest.raises(ValueError, match="context_length"):
        tiny_model(position="learned")(torch.zeros(1, 33, dtype=torch.long))


def test_tied_embeddings_share_storage_even_after_meta_init():
    with torch.device("meta"):
        model = Transformer(tiny_config(tie_embeddings=True))
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.head.weight is model.tok_embeddings.weight
    assert model.head.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
    assert model.num_params() == Transformer(tiny_config(tie_embeddings=False)).num_params() - 97 * 48


def test_no_parameter_has_a_bias():
    model = Transformer(tiny_config(position="learned", n_kv_head=2))
    assert not [name for name, _ in model.named_parameters() if "bias" in name]
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_init_scales_residual_projections_with_depth():
    torch.manual_seed(0)
    model = Transformer(tiny_config(n_layer=8, d_model=192, d_ff=384, init_std=0.02))
    model.init_weights()
    block = model.layers[0]
    assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.o_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert block.mlp.down_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert torch.equal(block.attn_norm.weight, torch.ones(192))


def test_loss_is_cross_entropy_of_the_logits_ignoring_minus_one():
    model = tiny_model()
    idx, targets = torch.randint(0, 97, (2, 2, 10))
    targets[0, :3] = -1
    logits = model(idx)
    expected = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
    torch.testing.assert_close(model(idx, targets), expected)


@pytest.mark.parametrize("position", POSITIONS)
def test_gradient_reaches_every_parameter(position):
    model = tiny_model(position=position, n_kv_head=2, tie_embeddings=True, attention="auto").train()
    idx, targets = torch.randint(0, 97, (2, 2, 16))
    model(idx, targets).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dropout_acts_in_training_only():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 97, (1, 8))
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))


def test_flops_per_token_is_six_matmul_params_plus_attention():
    model = Transformer(tiny_config(tie_embeddings=True))
    assert model.num_params(exclude_embeddings=True) == model.num_params() - 97 * 48
    # The embedding lookup does no matmul, but the tied head does, with the same 97 x 48 weights.
    matmul_params = model.num_params()
    assert model.flops_per_token() == 6 * matmul_params + 12 * 2 * 48 * 32
    assert model.flops_per_token(seq_len=8) == 6 * matmul_params + 12 * 2 * 48 * 8


# ---------------------------------------------------------------- presets

PRESET_PARAMS = {
    "tiny": 1_377_408,
    "quickstart": 1_377_408,  # the tiny model
    "curate-full": 1_377_408,  # a curation config over tiny
    "distill-experiment": 725_664,  # the KD experiment's student
    "distill-seq-experiment": 3_443_136,  # the sequence-mode KD experiment's student
    # the STLM presets: RoPE and grouped-query attention, 4 key/value heads (the STLM repository's baseline)
    "stlm-10m": 9_965_824,
    "stlm-50m": 55_888_896,
    "stlm-100m": 100_092_672,
    "stlm-ffn-sharing": 4_706_560,
    "stlm-block-sharing": 3_441_408,
    "stlm-byte": 9_058_304,
    "stlm-early-exit": 9_965_824,  # early exit adds losses, not weights
    "mixture": 1_377_408,  # tiny on a mixture of sources
    "lokilm-1.4b": 1_402_046_464,
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_preset_builds_on_meta_with_its_parameter_count(path):
    assert path.stem in PRESET_PARAMS, f"new preset {path.stem}: add its parameter count here"
    with torch.device("meta"):
        model = Transformer(load_config(path).model)
    assert model.num_params() == PRESET_PARAMS[path.stem]
