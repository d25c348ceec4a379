"""Training-step throughput of a preset on this device: tokens/s, MFU and peak memory.

    python benchmarks/train_throughput.py --config configs/lokilm-1.4b.yaml train.micro_batch_size=8
    python benchmarks/train_throughput.py --config configs/stlm-100m.yaml model.vocab_size=50257   # the 124M shape

Times full optimiser steps (forward, backward, AdamW) of the real model on random tokens, with the
training settings of the config (bf16 autocast on CUDA, torch.compile per block if train.compile, the
precision and activation checkpointing of the config), in one process, after warmup
steps that absorb compilation. Prints one JSON line; record the figures in docs/LOG.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from lokilm.config import load_config
from lokilm.model import Transformer
from lokilm.parallel.dist import Distributed, resolve_device
from lokilm.parallel.fsdp import parallelize
from lokilm.train.metrics import peak_flops
from lokilm.parallel.precision import autocast_for
from lokilm.train.optimizer import build_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimiser step")
    args = p.parse_args()

    cfg = load_config(args.config, args.overrides)
    m, t = cfg.model, cfg.train
    device = resolve_device(t.device)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(m)
    model.init_weights()
    parallelize(model, t, Distributed(0, 0, 1, device, fsdp=False))  # as the trainer: compile per block, 8-bit, ...
    optimizer = build_optimizer(model, t)
    autocast = autocast_for(device, t.precision)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    x = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.context_length + 1), device=device)

    def step() -> None:
        for _ in range(args.accum):
            with autocast():
                loss = model(x[:, :-1], x[:, 1:])
            (loss / args.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start

    tokens = args.steps * args.accum * t.micro_batch_size * m.context_length
    tps = tokens / seconds
    peak = peak_flops(device)
    result = {
        "config": args.config, "overrides": args.overrides, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "torch": torch.__version__, "parameters": model.num_params(),
        "micro_batch": t.micro_batch_size, "context": m.context_length, "position": m.position,
        "attention": m.attention, "compile": t.compile, "precision": t.precision,
        "tokens_per_s": round(tps, 1), "step_s": round(seconds / args.steps, 4),
        "mfu": round(model.flops_per_token() * tps / peak, 4) if peak else None,
        "peak_memory_gib": round((torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
