"""The byte-level model's two ends (STLM §5.2): BPE tokens only mark chunk boundaries; each token's bytes are
embedded small, pooled into one d_model vector by a little transformer, and a little causal byte decoder
predicts the bytes of the next token from the core model's output. The loss is over bytes (plus one end-of-
token symbol per token), so its bits per byte compare directly with a BPE model's.

Token shards feed it unchanged: a (vocab_size, byte_context) table, a buffer saved with the weights, turns
each token id into its chunk of byte symbols.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lokilm.errors import LokiError
from lokilm.model.block import Block  # the core model's block, reused
from lokilm.model.config import ModelConfig

# Byte symbols: 0-255 the bytes, then padding, end of token, and one symbol per special token (EOT, ...).
PAD, END, FIRST_SPECIAL, MAX_SPECIAL = 256, 257, 258, 16
N_SYMBOLS = FIRST_SPECIAL + MAX_SPECIAL


def chunk_bytes(chunk: Tensor) -> bytes:
    """The bytes a chunk of symbols stands for (special and control symbols are none)."""
    return bytes(int(s) for s in chunk.tolist() if s < 256)


def _byte_config(cfg: ModelConfig) -> ModelConfig:
    """The shape of the little transformers: byte_d_model wide, its own heads, no positions of their own (a
    learned per-slot embedding is added instead), never shared."""
    return dataclasses.replace(cfg, d_model=cfg.byte_d_model, n_head=cfg.byte_n_head, n_kv_head=None,
                               d_ff=4 * cfg.byte_d_model, n_layer=cfg.byte_n_layer, position="none", share="none",
                               share_lora_rank=0, input="tokens", early_exit=False)


def _blocks(cfg: ModelConfig) -> nn.ModuleList:
    sub = _byte_config(cfg)
    return nn.ModuleList(Block(sub) for _ in range(sub.n_layer))


class ByteEncoder(nn.Module):
    """Token ids (B, T) or byte chunks (B, T, byte_context) -> one d_model vector per token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        table = torch.full((cfg.vocab_size, cfg.byte_context), PAD, dtype=torch.long)
        table[:, 0] = END
        self.register_buffer("table", table)  # filled from the tokenizer by set_table; saved with the weights
        self.register_buffer("specials", torch.full((MAX_SPECIAL,), -1, dtype=torch.long))
        self.embed = nn.Embedding(N_SYMBOLS, cfg.byte_d_model)
        self.pos = nn.Parameter(torch.empty(cfg.byte_context, cfg.byte_d_model))
        self.layers = _blocks(cfg)
        self.norm = nn.RMSNorm(cfg.byte_d_model, eps=cfg.norm_eps)
        self.proj = nn.Linear(cfg.byte_d_model, cfg.d_model, bias=False)

    @torch.no_grad()
    def set_table(self, table: Tensor, specials: Tensor) -> None:
        if table.shape != self.table.shape:
            raise LokiError(f"byte table of shape {tuple(table.shape)} does not fit {tuple(self.table.shape)}")
        self.table.copy_(table)
        self.specials.copy_(specials)

    def chunks(self, idx: Tensor) -> Tensor:
        return self.table[idx] if idx.dim() == 2 else idx

    def target_symbols(self, targets: Tensor) -> Tensor:
        """The symbols a byte decoder must produce for each target token id; ignored targets (-1) are all PAD."""
        return self.table[targets.clamp(min=0)].masked_fill((targets < 0)[..., None], PAD)

    def special_token(self, chunk: Tensor) -> int | None:
        """The special token id a chunk stands for, or None for ordinary bytes."""
        first = int(chunk[0])
        return int(self.specials[first - FIRST_SPECIAL]) if first >= FIRST_SPECIAL else None

    def forward(self, idx: Tensor) -> Tensor:
        c = self.chunks(idx)
        B, T, C = c.shape
        flat = c.reshape(B * T, C)
        keep = flat != PAD  # every chunk has at least one symbol (END at the least), so no row is all masked
        x = self.embed(flat) + self.pos.to(self.embed.weight.dtype)
        mask = keep[:, None, None, :]

        def attend(q, k, v):  # both ways within the chunk, padding masked out
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        for layer in self.layers:
            x = layer(x, attend)
        x = self.norm(x) * keep[..., None]
        pooled = x.sum(1) / keep.sum(1, keepdim=True).to(x.dtype)
        return self.proj(pooled).view(B, T, -1)

    def io_parameters(self) -> list[nn.Parameter]:
        return [self.embed.weight, self.pos]


class ByteDecoder(nn.Module):
    """From the core model's output at position t, the symbols of token t+1, one at a time (causal)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.in_proj = nn.Linear(cfg.d_model, cfg.byte_d_model, bias=False)
        self.embed = nn.Embedding(N_SYMBOLS, cfg.byte_d_model)
        self.pos = nn.Parameter(torch.empty(cfg.byte_context, cfg.byte_d_model))
        self.layers = _blocks(cfg)
        self.norm = nn.RMSNorm(cfg.byte_d_model, eps=cfg.norm_eps)
        self.out = nn.Linear(cfg.byte_d_model, N_SYMBOLS, bias=False)

    def logits(self, h: Tensor, prefix: Tensor) -> Tensor:
        """Logits (N, j+1, N_SYMBOLS) for slots 0..j of N chunks, given h (N, d_model) and the first j symbols."""
        x = torch.cat([self.in_proj(h)[:, None], self.embed(prefix)], dim=1)
        x = x + self.pos[: x.shape[1]].to(x.dtype)
        for layer in self.layers:
            x = layer(x, _causal)
        logits = self.out(self.norm(x)).float()
        # Symbols a slot may not hold: PAD anywhere; END in slot 0 (no empty token); a special symbol after
        # slot 0 (it only ever starts a chunk)
        never = torch.zeros(x.shape[1], N_SYMBOLS, dtype=torch.bool, device=x.device)
        never[:, PAD] = True
        never[0, END] = True
        never[1:, FIRST_SPECIAL:] = True
        return logits.masked_fill(never, float("-inf"))

    def loss(self, h: Tensor, symbols: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy of the target chunks (B, T, C) given h (B, T, d_model): nats per symbol (mean), or summed
        per token (reduction none)."""
        B, T, C = symbols.shape
        flat = symbols.reshape(B * T, C)
        logits = self.logits(h.reshape(B * T, -1), flat[:, :-1])
        nats = F.cross_entropy(logits.flatten(0, 1), flat.flatten(), ignore_index=PAD, reduction="none")
        if reduction == "none":
            return nats.view(B, T, C).sum(-1)
        return nats.sum() / (flat != PAD).sum().clamp(min=1)

    @torch.no_grad()
    def decode(self, h: Tensor, pick: Callable[[Tensor], Tensor]) -> Tensor:
        """The next token's chunk (N, C) for h (N, d_model), one symbol at a time; `pick` maps logits (N, S) to
        symbols (N,), e.g. greedy or sampling."""
        N, C = h.shape[0], self.pos.shape[0]
        chunk = torch.full((N, C), PAD, dtype=torch.long, device=h.device)
        done = torch.zeros(N, dtype=torch.bool, device=h.device)
        for j in range(C):
            s = pick(self.logits(h, chunk[:, :j])[:, -1])
            chunk[:, j] = torch.where(done, chunk[:, j], s)  # a finished chunk keeps its END
            ends = (s == END) | (s >= FIRST_SPECIAL)
            if j + 1 < C:  # a special token's chunk is the symbol and END, as in the table
                chunk[:, j + 1] = torch.where(~done & (s >= FIRST_SPECIAL), END, PAD)
            done |= ends
            if bool(done.all()):
                break
        return chunk

    def io_parameters(self) -> list[nn.Parameter]:
        return [self.embed.weight, self.pos, self.out.weight]


def _causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
