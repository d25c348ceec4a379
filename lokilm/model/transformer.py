"""The lokilm decoder-only Transformer: pre-norm RMSNorm blocks, SwiGLU, ALiBi/RoPE/learned positions, no biases.

The model knows nothing of parallelism or training: FSDP, compile and checkpointing are applied from outside
(one `fully_shard` per entry of `layers`), and `init_weights()` is separate from construction so a model built
on the meta device can be sharded first and initialised after.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lokilm.model.config import ModelConfig
from lokilm.model.attention import Attend, alibi_slopes, apply_rope, make_attention, rope_cos_sin


class KVCache:
    """Keys and values of the positions seen so far, for every layer, for incremental decoding."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled; the model advances it after each forward

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new keys and values; return all of that layer's so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache is full: {end} positions do not fit in max_len={self.k.shape[3]}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        # Under autocast the new keys may be bf16 while the cache is float32; attention wants one dtype.
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head  # fewer key/value heads than query heads: GQA
        self.head_dim = cfg.d_model // cfg.n_head
        self.q_proj = nn.Linear(cfg.d_model, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attend: Attend, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = attend(q, k, v).transpose(1, 2).reshape(B, T, -1)
        return self.dropout(self.o_proj(y))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: Tensor, attend: Attend, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.attn_norm(x), attend, rope, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


# Weights whose outputs are added to the residual stream: their init shrinks with depth (GPT-2).
RESIDUAL_PROJECTIONS = ("o_proj.weight", "down_proj.weight")


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embeddings = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.position == "learned" else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the LM head use the embedding matrix, if configured. `to_empty` and `load_state_dict(assign=True)`
        replace parameters one module at a time and so untie them; `init_weights` ties again."""
        if self.cfg.tie_embeddings:
            self.head.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights, residual projections scaled by 1/sqrt(2 n_layer), norms at one."""
        self.tie_weights()
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(p, std=self.cfg.init_std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, std=self.cfg.init_std)

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Logits (B, T, vocab_size) for token ids idx (B, T); with targets, the mean cross-entropy instead.

        Targets equal to -1 are ignored. With a cache, idx continues the sequence the cache holds.
        """
        cfg = self.cfg
        T = idx.shape[1]
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.tok_embeddings(idx)
        if self.pos_embeddings is not None:
            if start + T > cfg.context_length:
                raise ValueError(f"learned positions stop at context_length={cfg.context_length}, got {start + T}")
            x = x + self.pos_embeddings(positions)
        rope = rope_cos_sin(positions, cfg.d_model // cfg.n_head, cfg.rope_theta) if cfg.position == "rope" else None
        slopes = alibi_slopes(cfg.n_head) if cfg.position == "alibi" else None
        dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type) else x.dtype
        attend = make_attention(cfg.attention, T, start + T, slopes, idx.device, dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, attend, rope, cache, i)
        if cache is not None:
            cache.length += T
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)

    def new_cache(self, batch_size: int, max_len: int | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for up to max_len positions (default: context_length), on the model's device and dtype."""
        weight = self.tok_embeddings.weight
        attn = self.layers[0].attn
        return KVCache(self.cfg.n_layer, batch_size, attn.n_kv_head, max_len or self.cfg.context_length,
                       attn.head_dim, device or weight.device, dtype or weight.dtype)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head counts once); optionally without the token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(e.weight.numel() for e in (self.tok_embeddings, self.pos_embeddings) if e is not None)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token, the PaLM (appendix B) / nanoGPT estimate: 6 N + 12 n_layer d_model seq_len.

        N counts the weights that do a matmul per token: all but the embedding lookups, the head included even
        when tied. The attention term counts the full T x T score matrix, as PaLM does, though causal attention
        needs only half of it; MFU figures are comparable with published ones that way.
        """
        cfg = self.cfg
        n = self.num_params(exclude_embeddings=True) + (self.head.weight.numel() if cfg.tie_embeddings else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.d_model * (seq_len or cfg.context_length)
