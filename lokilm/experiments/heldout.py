"""Per-window held-out scores of a trained run: the items every paired comparison of an ablation is made on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def window_scores(run_dir: str | Path, n_windows: int = 0, device: str = "auto", batch_size: int = 32) -> dict:
    """Bits and UTF-8 bytes of each of the first `n_windows` held-out windows (0: all of them), and the document
    each window belongs to, from the run's newest valid checkpoint.

    Special tokens (0 bytes) are left out of the bits, as in lokilm/eval/bpb.py, so the overall bits per byte
    is sum(bits) / sum(bytes): `items(scores)` turns this into per-window items whose mean is exactly that.
    """
    from lokilm.checkpoint import latest_checkpoint, load_model
    from lokilm.parallel.dist import resolve_device
    from lokilm.parallel.precision import autocast_for
    from lokilm.rundir import RunDir
    from lokilm.shards import TokenWindows
    from lokilm.tokenizer import load_tokenizer, token_byte_lengths

    dev = resolve_device(device)
    ckpt = latest_checkpoint(RunDir.open(run_dir).checkpoints)
    model, cfg = load_model(run_dir, dev, ckpt)
    run = RunDir(cfg)
    windows = TokenWindows(run.shards, "val", cfg.model.context_length)
    n = len(windows) if not n_windows else min(n_windows, len(windows))
    lengths = torch.as_tensor(token_byte_lengths(load_tokenizer(run.tokenizer)), device=dev)
    autocast = autocast_for(dev, cfg.train.precision)
    bits, n_bytes = [], []
    for start in range(0, n, batch_size):
        batch = torch.as_tensor(windows.batch(range(start, min(n, start + batch_size))), device=dev)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast():
            logits = model(x)
        nats = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
        b = lengths[y]
        bits += ((nats * (b > 0)).sum(1) / math.log(2)).tolist()
        n_bytes += b.sum(1).tolist()
    return {"checkpoint": str(ckpt.path), "step": ckpt.step, "windows": n, "bits": bits, "bytes": n_bytes,
            "documents": windows.documents(n).tolist()}


def well_formed(scores: dict) -> bool:
    """Whether a kept heldout_windows.json is what window_scores wrote: bits, bytes and documents, one number per
    window each, some bytes scored (a hand-edited or damaged file is scored again instead of summarised)."""
    try:
        n = scores["windows"]
        lists = [scores[k] for k in ("bits", "bytes", "documents")]
        return (isinstance(n, int) and isinstance(scores["step"], int)
                and all(isinstance(x, list) and len(x) == n for x in lists)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for x in lists for v in x)
                and sum(scores["bytes"]) > 0)
    except (KeyError, TypeError):
        return False


def items(scores: dict) -> np.ndarray:
    """Per-window bits over the mean bytes of a window: their mean is the run's bits per byte (sum of bits over
    sum of bytes), and two runs on the same windows differ item by item exactly as their bits do."""
    return np.asarray(scores["bits"], dtype=float) / float(np.mean(scores["bytes"]))
