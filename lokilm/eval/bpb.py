"""Bits per byte on held-out token windows: STLM's tokenizer-independent perplexity."""

from __future__ import annotations

import math

import numpy as np
import torch


def spread(n: int, total: int) -> np.ndarray:
    """n window indices evenly spaced over 0..total-1 (all of them when n >= total). The held-out split lists
    its documents source by source (a mixture's sources, a corpus's folders): its first n windows would score
    only the first of them."""
    if n >= total or n <= 0:
        return np.arange(total if n > 0 else 0)
    # spacing (total - 1) / (n - 1) >= 1, so the rounded indices are distinct
    return np.linspace(0, total - 1, n).round().astype(np.int64)


def bits_per_byte(model, windows, token_bytes: np.ndarray, n_windows: int, batch_size: int,
                  device: torch.device, autocast=None) -> float:
    """Summed next-token loss (nats) over `n_windows` windows spread evenly over the held-out split (all of
    them if it has no more), divided by ln 2 and by the UTF-8 bytes of the predicted tokens. Special tokens
    (0 bytes) are left out of both sums, so the figure compares models with different tokenizers."""
    return bits_per_byte_by_group(model, windows, token_bytes, n_windows, batch_size, device, autocast)[0]


@torch.no_grad()
def bits_per_byte_by_group(model, windows, token_bytes: np.ndarray, n_windows: int, batch_size: int,
                           device: torch.device, autocast=None, groups=None, dist=None) -> tuple[float, dict[str, float]]:
    """bits_per_byte, and the same over the scored windows of each group when `groups` names one per window
    of the split (a mixture's source): the one forward pass serves both.

    `dist` (lokilm.parallel.dist.Distributed, under FSDP): each rank scores every world_size-th batch of the
    same windows and the per-window sums are added over the ranks, so the figure is the one-process figure
    (each window's nats come from exactly one rank) for 1/world_size of the forward passes. A sharded model's
    forward is collective, so a rank with one batch fewer runs its first batch again and discards it."""
    was_training = model.training
    model.eval()
    lengths = torch.as_tensor(token_bytes, device=device)
    chosen = spread(n_windows, len(windows))
    nats, n_bytes = np.zeros(len(chosen)), np.zeros(len(chosen))
    starts = list(range(0, len(chosen), batch_size))
    world, rank = (dist.world_size, dist.rank) if dist is not None and dist.fsdp else (1, 0)
    mine = starts[rank::world]
    rounds = -(-len(starts) // world)  # the same number of forwards on every rank
    for k in range(rounds):
        start = mine[k] if k < len(mine) else (mine or starts)[0]
        rows = chosen[start:start + batch_size]
        batch = torch.as_tensor(windows.batch(rows), device=device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            # the model's own nats per target: a byte-level model sums its byte predictions per token
            loss = model(x, y, reduction="none").float().reshape(y.shape)
        if k >= len(mine):
            continue  # the padding forward
        b = lengths[y]
        nats[start:start + len(rows)] = (loss * (b > 0)).sum(dim=1).double().cpu().numpy()
        n_bytes[start:start + len(rows)] = b.sum(dim=1).double().cpu().numpy()
    if world > 1:  # every window was scored on exactly one rank: the sum over ranks is each window's figure
        both = dist.all_sum(torch.from_numpy(np.stack([nats, n_bytes]))).cpu().numpy()
        nats, n_bytes = both[0], both[1]
    model.train(was_training)

    def value(mask) -> float:
        return float(nats[mask].sum()) / (math.log(2) * max(1, int(n_bytes[mask].sum())))

    total = value(np.ones(len(chosen), dtype=bool))
    if groups is None:
        return total, {}
    owner = np.asarray(groups)[chosen]
    return total, {g: value(owner == g) for g in dict.fromkeys(owner.tolist())}
