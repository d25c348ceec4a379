"""Early exit at inference (LayerSkip, Elhoushi et al. 2024): one decoding step that stops at the first layer
whose next-token distribution, through the shared final norm and head, is confident enough.

The layers a position skips still get cache entries, computed from the residual stream where it exited (CALM's
state propagation), so later positions can attend to it at every layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lokilm.model.transformer import KVCache, Transformer


@torch.no_grad()
def exit_step(model: Transformer, idx: Tensor, cache: KVCache, threshold: float,
              vocab_size: int | None = None) -> tuple[Tensor, int]:
    """Logits (B, V) for the last position of idx, and the number of layers run: the first layer whose top
    probability exceeds `threshold` (all of them if none does). vocab_size: ignore padded vocabulary rows."""
    x, attend, rope = model.embed(idx, cache)
    n_layer = model.cfg.n_layer
    for i in range(n_layer):
        x = model.layers[i](x, attend, rope, cache, i)
        if i + 1 == n_layer:
            break
        logits = model.logits_at(x[:, -1:])[:, -1]
        if vocab_size is not None:
            logits[:, vocab_size:] = float("-inf")
        if float(logits.softmax(-1).max()) > threshold:
            for j in range(i + 1, n_layer):
                model.layers[j].fill_cache(x, rope, cache, j)
            cache.length += idx.shape[1]
            return logits, i + 1
    cache.length += idx.shape[1]
    return model.logits_at(x[:, -1:])[:, -1], n_layer
