"""The lokilm decoder-only Transformer: pre-norm RMSNorm blocks, SwiGLU, ALiBi/RoPE/learned/sinusoidal/no
positions, no biases; optionally weight-shared layers (sharing.py), byte-level input and output (byte_level.py)
and losses at intermediate layers for early exit.

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

from lokilm.errors import LokiError
from lokilm.model.attention import Attend, alibi_slopes, apply_rope, make_attention, rope_cos_sin, sincos_embedding
from lokilm.model.config import ModelConfig
from lokilm.model.sharing import ATTENTION_PROJECTIONS, FFN_PROJECTIONS, LoRA, adapters, borrow, is_lora, project


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


# Weights whose outputs are added to the residual stream: their init shrinks with depth (GPT-2).
RESIDUAL_PROJECTIONS = ("o_proj.weight", "down_proj.weight")


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.input == "bytes":
            from lokilm.model.byte_level import ByteDecoder, ByteEncoder  # it builds on Block

            self.tok_embeddings, self.head = ByteEncoder(cfg), ByteDecoder(cfg)
        else:
            self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.pos_embeddings = nn.Embedding(cfg.context_length, cfg.d_model) if cfg.position == "learned" else None
        self.shared, self.layers = build_layers(cfg)
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # Layers (1-based) whose output also gets a training loss; the early-exit curriculum unit changes it.
        self.exit_layers: set[int] = set(range(1, cfg.n_layer)) if cfg.early_exit else set()
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the LM head use the embedding matrix, if configured (the byte model: its byte decoder's output
        uses the byte embeddings). `to_empty` and `load_state_dict(assign=True)` replace parameters one module at
        a time and so untie them; `init_weights` ties again."""
        if self.cfg.tie_embeddings:
            if self.cfg.input == "bytes":
                self.head.out.weight = self.tok_embeddings.embed.weight
            else:
                self.head.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights, residual projections scaled by 1/sqrt(2 n_layer), norms at one, LoRA
        adapters at zero (B) and 1/sqrt(fan_in) (A)."""
        self.tie_weights()
        for name, p in self.named_parameters():
            if is_lora(name):
                continue
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(p, std=self.cfg.init_std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, std=self.cfg.init_std)
        for module in self.modules():
            if isinstance(module, LoRA):
                module.reset_parameters()

    # ------------------------------------------------------------------ the forward pass, in its pieces

    def set_dropout(self, rate: Tensor) -> None:
        """Every dropout layer drops at `rate` (a 0-d tensor on the model's device, changed in place) from now on."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.rate = rate

    def embed(self, idx: Tensor, cache: KVCache | None = None) -> tuple[Tensor, Attend, tuple[Tensor, Tensor] | None]:
        """The input vectors of idx and what every layer attends with: the attention function and RoPE angles."""
        cfg = self.cfg
        T = idx.shape[1]
        start = 0 if cache is None else cache.length
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.tok_embeddings(idx)
        if start + T > cfg.context_length and cfg.position in ("learned", "sincos"):
            raise ValueError(f"{cfg.position} positions stop at context_length={cfg.context_length}, got {start + T}")
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(positions)
        elif cfg.position == "sincos":
            # scaled to the embeddings' initial size: unit-amplitude sinusoids would drown the token signal
            x = x + cfg.init_std * sincos_embedding(positions, cfg.d_model).to(x.dtype)
        rope = rope_cos_sin(positions, cfg.d_model // cfg.n_head, cfg.rope_theta) if cfg.position == "rope" else None
        slopes = alibi_slopes(cfg.n_head) if cfg.position == "alibi" else None
        dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type) else x.dtype
        return x, make_attention(cfg.attention, T, start + T, slopes, idx.device, dtype), rope

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                reduction: str = "mean", exit_layer: int | None = None) -> Tensor:
        """Logits (B, T, vocab_size) for token ids idx (B, T); with targets, the mean cross-entropy instead, or
        with reduction="none" the nats of each target (B, T) (byte model: summed over the target's bytes).

        Targets equal to -1 are ignored (0 nats). With a cache, idx continues the sequence the cache holds.
        exit_layer=E runs only the first E layers (early exit). The byte model takes token ids or byte chunks
        (B, T, byte_context) and, without targets, returns the final hidden states, which its `head` decodes.
        """
        training_exits = self.training and targets is not None and reduction == "mean" and exit_layer is None
        h, exits = self.hidden(idx, cache, exit_layer, self.exit_layers if training_exits else ())
        if targets is None:
            if self.cfg.input == "bytes":
                raise LokiError("the byte-level model has no token logits: score it with targets and "
                                "reduction='none', generate with lokilm.byte_generate")
            return self.head(h)
        loss = self.target_loss(h, targets, reduction)
        if not exits:
            return loss
        # LayerSkip: the exits' losses through the same norm and head, deeper exits weighted more, normalised so
        # the weights sum to one with the final layer's
        total, weight = loss, 1.0
        for layer, hidden in exits:
            w = self.cfg.early_exit_scale * layer / self.cfg.n_layer
            total, weight = total + w * self.target_loss(self.norm(hidden), targets, "mean"), weight + w
        return total / weight

    def hidden(self, idx: Tensor, cache: KVCache | None = None, exit_layer: int | None = None,
               collect: set[int] | tuple = ()) -> tuple[Tensor, list[tuple[int, Tensor]]]:
        """The final-normed hidden states after the first exit_layer layers (default all), and the residual
        stream after each layer in `collect` (1-based), for the early-exit losses."""
        x, attend, rope = self.embed(idx, cache)
        exits: list[tuple[int, Tensor]] = []
        for i in range(exit_layer or self.cfg.n_layer):
            x = self.layers[i](x, attend, rope, cache, i)
            if i + 1 in collect:
                exits.append((i + 1, x))
        if cache is not None:
            cache.length += idx.shape[1]
        return self.norm(x), exits

    def target_loss(self, h: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        if self.cfg.input == "bytes":
            return self.head.loss(h, self.tok_embeddings.target_symbols(targets), reduction)
        nats = F.cross_entropy(self.head(h).float().flatten(0, 1), targets.flatten(), ignore_index=-1,
                               reduction=reduction)
        return nats.view(targets.shape) if reduction == "none" else nats

    def logits_at(self, x: Tensor) -> Tensor:
        """Next-token logits from the residual stream after any layer: the shared final norm and head."""
        return self.head(self.norm(x))

    # ------------------------------------------------------------------ sizes

    def new_cache(self, batch_size: int, max_len: int | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for up to max_len positions (default: context_length), on the model's device and dtype."""
        weight = self.norm.weight
        attn = self.layers[0].attn if self.cfg.share != "block" else self.shared.attn
        return KVCache(self.cfg.n_layer, batch_size, attn.n_kv_head, max_len or self.cfg.context_length,
                       attn.head_dim, device or weight.device, dtype or weight.dtype)

    def io_parameters(self) -> list[nn.Parameter]:
        """The input tables and output projections (token or byte embeddings, positions, head): what Muon leaves
        to AdamW."""
        if self.cfg.input == "bytes":
            found = self.tok_embeddings.io_parameters() + self.head.io_parameters()
        else:
            found = [self.tok_embeddings.weight, self.head.weight]
        if self.pos_embeddings is not None:
            found.append(self.pos_embeddings.weight)
        unique = {id(p): p for p in found}  # a tied head is the embedding
        return list(unique.values())

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied head or a shared layer counts once); optionally without the input lookup
        tables (token or byte embeddings, learned positions)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            tables = [self.tok_embeddings if self.cfg.input == "tokens" else self.tok_embeddings.embed,
                      self.pos_embeddings]
            n -= sum(e.weight.numel() for e in tables if e is not None)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token, the PaLM (appendix B) / nanoGPT estimate: 6 N + 12 n_layer d_model seq_len.

        N counts the weights that do a matmul per token: all but the embedding lookups, the head included even
        when tied; a shared layer counts once per use. The attention term counts the full T x T score matrix, as
        PaLM does, though causal attention needs only half of it; MFU figures are comparable with published ones
        that way. The byte model's encoder and decoder run once per byte slot of a token (byte_context of them).
        """
        cfg = self.cfg
        core = sum(p.numel() for p in self.layers.parameters())
        if self.shared is not None:
            core += cfg.n_layer * sum(p.numel() for p in self.shared.parameters())
        core += self.norm.weight.numel()
        if cfg.input == "bytes":
            edge = cfg.byte_context * (sum(p.numel() for p in self.tok_embeddings.parameters())
                                       + sum(p.numel() for p in self.head.parameters()))
        else:
            edge = self.head.weight.numel()
        return 6 * (core + edge) + 12 * cfg.n_layer * cfg.d_model * (seq_len or cfg.context_length)
