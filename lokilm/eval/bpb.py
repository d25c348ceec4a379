"""Bits per byte on held-out token windows: STLM's tokenizer-independent perplexity."""

from __future__ import annotations

import math

import numpy as np
import torch


@torch.no_grad()
def bits_per_byte(model, windows, token_bytes: np.ndarray, n_windows: int, batch_size: int,
                  device: torch.device, autocast=None) -> float:
    """Summed next-token loss (nats) over the first `n_windows` windows, divided by ln 2 and by the
    UTF-8 bytes of the predicted tokens. Special tokens (0 bytes) are left out of both sums, so the
    figure compares models with different tokenizers."""
    was_training = model.training
    model.eval()
    lengths = torch.as_tensor(token_bytes, device=device)
    nats, n_bytes = 0.0, 0
    n = min(n_windows, len(windows))
    for start in range(0, n, batch_size):
        batch = torch.as_tensor(windows.batch(range(start, min(n, start + batch_size))), device=device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            # the model's own nats per target: a byte-level model sums its byte predictions per token
            loss = model(x, y, reduction="none").float().flatten()
        b = lengths[y.flatten()]
        nats += float((loss * (b > 0)).sum())
        n_bytes += int(b.sum())
    model.train(was_training)
    return nats / (math.log(2) * max(1, n_bytes))
