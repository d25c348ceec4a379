"""Causal attention kernels (reference, SDPA, FlexAttention) and the position schemes: ALiBi, RoPE, sinusoids.

Every kernel takes q of shape (B, n_head, T, head_dim) and k, v of shape (B, n_kv_head, S, head_dim) with
S >= T: the queries are the last T of the S positions (S > T when decoding with a KV cache).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


# ---------------------------------------------------------------- positions

def alibi_slopes(n_head: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2022): the geometric sequence 2^(-8/n), 2^(-16/n), ...

    For a head count that is not a power of two, as in the paper's reference code: the slopes of the
    closest smaller power of two, then every other slope of the next power of two.
    """
    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(closest) + geometric(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Rotation angles for the given absolute positions: cos and sin of shape (T, head_dim // 2)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def sincos_embedding(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed sinusoidal position table of Vaswani et al. (2017), (T, dim): sin in even, cos in odd channels."""
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # Rotates the two halves of each head against each other (the GPT-NeoX / Hugging Face Llama layout),
    # so a RoPE model exports to Llama format without permuting the q and k weights.
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def causal_bias(q_len: int, kv_len: int, slopes: Tensor | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive bias of shape (n_head or 1, q_len, kv_len): ALiBi's slope * (k_pos - q_pos), -inf for the future."""
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    distance = (k_pos[None, :] - q_pos[:, None]).float()  # <= 0 for the past
    # In float32 first: bf16 cannot hold distances above 256 exactly.
    slope = torch.zeros(1, device=device) if slopes is None else slopes.to(device).float()
    bias = slope[:, None, None] * distance
    return bias.masked_fill(distance > 0, float("-inf")).to(dtype)


# ---------------------------------------------------------------- kernels

def _repeat_kv(x: Tensor, n_head: int) -> Tensor:
    return x.repeat_interleave(n_head // x.shape[1], dim=1)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, written out: the ground truth the fast kernels are tested against."""
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    return scores.softmax(dim=-1) @ v


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """PyTorch SDPA; bias None means plain causal attention over equal-length q and k."""
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    # With a float mask, enable_gqa would leave only the slow math kernel; repeated k/v keep the fused ones.
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))


@functools.cache
def _compiled_flex_attention() -> Callable:
    # Eager flex_attention materialises the full score matrix; on GPU it is only fast once compiled.
    return torch.compile(flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, score_mod: Callable | None, block_mask) -> Tensor:
    # Inside an already-compiled model, Dynamo compiles the plain call itself.
    run = _compiled_flex_attention() if q.is_cuda and not torch.compiler.is_compiling() else flex_attention
    return run(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _alibi_score_mod(slopes: Tensor) -> Callable:
    def alibi(score, b, h, q_idx, kv_idx):
        return score + (slopes[h] * (kv_idx - q_idx)).to(score.dtype)
    return alibi


def make_attention(backend: str, q_len: int, kv_len: int, slopes: Tensor | None,
                   device: torch.device, dtype: torch.dtype) -> Attend:
    """The causal attention function for one forward pass; its masks are built once and shared by all layers.

    backend: reference | sdpa | flex | auto (flex on CUDA, sdpa elsewhere). slopes: ALiBi slopes, or None.
    dtype: the dtype q will have (a float mask must match it).
    """
    if backend == "auto":
        backend = "flex" if device.type == "cuda" else "sdpa"
    # FlexAttention's query offset would be a Python constant in the compiled kernel, recompiling at every
    # decoding step; cached decoding (q_len < kv_len) therefore runs on SDPA with an explicit mask.
    if backend == "flex" and q_len == kv_len:
        block_mask = create_block_mask(_causal, None, None, q_len, kv_len, device=device)
        score_mod = None if slopes is None else _alibi_score_mod(slopes.to(device))
        return functools.partial(_flex, score_mod=score_mod, block_mask=block_mask)
    if backend == "reference":
        return functools.partial(reference_attention, bias=causal_bias(q_len, kv_len, slopes, device, dtype))
    if backend not in ("sdpa", "flex"):
        raise ValueError(f"unknown attention backend {backend!r} (expected auto, flex, sdpa or reference)")
    if slopes is None and q_len == kv_len:
        return sdpa_attention
    return functools.partial(sdpa_attention, bias=causal_bias(q_len, kv_len, slopes, device, dtype))
