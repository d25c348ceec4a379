"""The Transformer's building blocks: attention with its KV cache, SwiGLU, the pre-norm block and its shared
variants (sharing.py), and the layer stack of a config. transformer.py assembles the model from them; the byte-level
ends (byte_level.py) reuse the block.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lokilm.model.attention import Attend, apply_rope
from lokilm.model.config import ModelConfig
from lokilm.model.sharing import ATTENTION_PROJECTIONS, FFN_PROJECTIONS, adapters, borrow, project


class KVCache:
    """Keys and values of the positions seen so far, for every layer, for incremental decoding."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Positions filled; the model advances it after each forward. Speculative decoding moves it back to
        # discard rejected positions (what lies beyond it is never read, and is overwritten).
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one layer's new keys and values; return all of that layer's so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache is full: {end} positions do not fit in max_len={self.k.shape[3]}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        # Under autocast the new keys may be bf16 while the cache is float32; attention wants one dtype.
        return self.k[layer, :, :, :end].to(k.dtype), self.v[layer, :, :, :end].to(v.dtype)


class Dropout(nn.Module):
    """Dropout at the configured rate, or at `rate`, a 0-d tensor a dropout schedule shares between every layer and
    changes each step (Transformer.set_dropout): as a tensor it is a graph input to a compiled block, where a
    changing float would recompile it at every new value."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.rate: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if self.rate is None:
            return F.dropout(x, self.p, True)
        return x * (torch.rand_like(x) >= self.rate) / (1 - self.rate)


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
        self.dropout = Dropout(cfg.dropout)

    def kv(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, lora: nn.ModuleDict | None = None) -> tuple[Tensor, Tensor]:
        B, T, _ = x.shape
        k = project(self.k_proj, x, lora, "k_proj").view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = project(self.v_proj, x, lora, "v_proj").view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        return (k if rope is None else apply_rope(k, *rope)), v

    def forward(self, x: Tensor, attend: Attend, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, lora: nn.ModuleDict | None = None) -> Tensor:
        B, T, _ = x.shape
        q = project(self.q_proj, x, lora, "q_proj").view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q = apply_rope(q, *rope)
        k, v = self.kv(x, rope, lora)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = attend(q, k, v).transpose(1, 2).reshape(B, T, -1)
        return self.dropout(project(self.o_proj, y, lora, "o_proj"))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, lora: nn.ModuleDict | None = None) -> Tensor:
        h = F.silu(project(self.gate_proj, x, lora, "gate_proj")) * project(self.up_proj, x, lora, "up_proj")
        return self.dropout(project(self.down_proj, h, lora, "down_proj"))


class Block(nn.Module):
    """One pre-norm layer. With `mlp` given (FFN sharing) it borrows that SwiGLU instead of owning one; `lora`
    names the projections this layer adapts."""

    def __init__(self, cfg: ModelConfig, mlp: SwiGLU | None = None, lora: tuple[str, ...] = ()):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if mlp is None:
            self.mlp = SwiGLU(cfg)
        else:
            borrow(self, "mlp", mlp)
        self.lora = adapters({n: getattr(self.mlp, n) for n in lora}, cfg.share_lora_rank) if lora else None

    def forward(self, x: Tensor, attend: Attend, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, lora: nn.ModuleDict | None = None) -> Tensor:
        lora = self.lora if lora is None else lora
        x = x + self.attn(self.attn_norm(x), attend, rope, cache, layer, lora)
        return x + self.mlp(self.mlp_norm(x), lora)

    def fill_cache(self, x: Tensor, rope, cache: KVCache, layer: int, lora: nn.ModuleDict | None = None) -> None:
        """Store this layer's keys and values computed from x without running the layer: an early exit's way
        of giving the layers it skipped a cache entry for its position (CALM's state propagation)."""
        lora = self.lora if lora is None else lora
        cache.update(layer, *self.attn.kv(self.attn_norm(x), rope, lora))


class SharedBlock(nn.Module):
    """Layer i of an ALBERT-style model: the one block the model owns, applied with this layer's adapters."""

    def __init__(self, cfg: ModelConfig, block: Block):
        super().__init__()
        borrow(self, "block", block)
        linears = {n: getattr(block.attn, n) for n in ATTENTION_PROJECTIONS}
        linears.update({n: getattr(block.mlp, n) for n in FFN_PROJECTIONS})
        self.lora = adapters(linears, cfg.share_lora_rank)

    def forward(self, x: Tensor, attend: Attend, rope=None, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        return self.block(x, attend, rope, cache, layer, self.lora)

    def fill_cache(self, x: Tensor, rope, cache: KVCache, layer: int) -> None:
        self.block.fill_cache(x, rope, cache, layer, self.lora)


def build_layers(cfg: ModelConfig) -> tuple[nn.Module | None, nn.ModuleList]:
    """The module the layers share (owned by the model root; None without sharing) and the layers."""
    if cfg.share == "ffn":
        shared = SwiGLU(cfg)
        return shared, nn.ModuleList(Block(cfg, mlp=shared, lora=FFN_PROJECTIONS if cfg.share_lora_rank else ())
                                     for _ in range(cfg.n_layer))
    if cfg.share == "block":
        shared = Block(cfg)
        return shared, nn.ModuleList(SharedBlock(cfg, shared) for _ in range(cfg.n_layer))
    return None, nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
