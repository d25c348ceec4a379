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
from lokilm.model.attention import Attend, alibi_slopes, make_attention, rope_cos_sin, sincos_embedding
from lokilm.model.block import Attention, Block, Dropout, KVCache, SharedBlock, SwiGLU, build_layers  # noqa: F401
from lokilm.model.byte_level import ByteDecoder, ByteEncoder
from lokilm.model.config import ModelConfig
from lokilm.model.sharing import LoRA, is_lora


# Weights whose outputs are added to the residual stream: their init shrinks with depth (GPT-2).
RESIDUAL_PROJECTIONS = ("o_proj.weight", "down_proj.weight")


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.input == "bytes":
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
