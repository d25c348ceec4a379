"""Bits per byte on held-out token windows: STLM's tokenizer-independent perplexity."""

from __future__ import annotations

import math

import numpy as np
import torch


def spread(n: int, total: int) -> np.ndarray:
    """n window indices evenly spaced over 0..total-1 (all of them when n >= total). The held-out split lists
    its documents source by source (a mixture's sources, a corpus's folders): its first n windows would score
    only the first of them."""
    if n >= total:
        return np.arange(total)
    # spacing (total - 1) / (n - 1) >= 1, so the rounded indices are distinct
    return np.linspace(0, total - 1, max(n, 1)).round().astype(np.int64) if n > 0 else np.arange(0)


@torch.no_grad()
def bits_per_byte(model, windows, token_bytes: np.ndarray, n_windows: int, batch_size: int,
                  device: torch.device, autocast=None) -> float:
    """Summed next-token loss (nats) over `n_windows` windows spread evenly over the held-out split (all of
    them if it has no more), divided by ln 2 and by the UTF-8 bytes of the predicted tokens. Special tokens
    (0 bytes) are left out of both sums, so the figure compares models with different tokenizers."""
    was_training = model.training
    model.eval()
    lengths = torch.as_tensor(token_bytes, device=device)
    nats, n_bytes = 0.0, 0
    chosen = spread(n_windows, len(windows))
    for start in range(0, len(chosen), batch_size):
        batch = torch.as_tensor(windows.batch(chosen[start:start + batch_size]), device=device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            # the model's own nats per target: a byte-level model sums its byte predictions per token
            loss = model(x, y, reduction="none").float().flatten()
        b = lengths[y.flatten()]
        nats += float((loss * (b > 0)).sum())
        n_bytes += int(b.sum())
    model.train(was_training)
    return nats / (math.log(2) * max(1, n_bytes))
