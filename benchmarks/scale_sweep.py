"""Training throughput across precision x activation checkpointing x micro-batch, through the trainer's own
`parallelize` (8-bit layers, checkpointing, per-block torch.compile, FSDP2 under torchrun).

    python benchmarks/scale_sweep.py --config configs/lokilm-1.4b.yaml --out lokilm-1.4b.json
    python benchmarks/scale_sweep.py --config configs/stlm-100m.yaml model.vocab_size=50257 --out 124m.json
    torchrun --standalone --nproc_per_node=8 benchmarks/scale_sweep.py --config configs/lokilm-1.4b.yaml

For every precision (bf16, fp8_tensorwise, fp8_rowwise by default) and activation-checkpointing mode (none,
selective, full) the micro-batch grows through --micro-batches until memory runs out; each setting is timed
over full optimiser steps (forward, backward, clipping, AdamW) on random tokens after warmup steps that absorb
compilation. Prints a table (the best micro-batch of each row group in bold) and writes every row as JSON:
tokens/s per GPU and in total, MFU (against the GPU's dense bf16 peak, FP8 runs included), peak memory, and the
GPU-hours of a full run of --run-tokens tokens at that speed. Rows are also appended to --out as they finish,
so a run cut short keeps what it measured. Record the figures in docs/LOG.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import resource
import time

import torch

from lokilm.config import Config, load_config
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.parallel.dist import Distributed, init_distributed
from lokilm.parallel.fsdp import clip_grad_norm, parallelize
from lokilm.train.metrics import peak_flops
from lokilm.parallel.precision import autocast_for
from lokilm.train.optimizer import build_optimizer

PRECISIONS = ["bf16", "fp8_tensorwise", "fp8_rowwise"]
CHECKPOINTING = ["none", "selective", "full"]


def build_model(m, device: torch.device) -> Transformer:
    """The model built on the meta device and materialised on `device` (to_empty, then the model's own
    init_weights, which also ties the head again): a 1.4B built on the CPU first costs two CPU initialisations
    (nn.Linear's own and init_weights) and a copy, seconds per trial that the GPU's short lease cannot spare.
    A model with buffers (the byte-level one) is built on the device directly: to_empty would leave them unset."""
    with torch.device("meta"):
        model = Transformer(m)
    if any(True for _ in model.buffers()):
        with torch.device(device):
            model = Transformer(m)
    else:
        model = model.to_empty(device=device)
    model.init_weights()
    return model


def is_oom(e: BaseException) -> bool:
    """CUDA out of memory, also when torch.compile wraps it (raised while compiling, autotuning or running a
    compiled graph, it arrives as another exception whose message keeps the cause)."""
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure(cfg: Config, dist: Distributed, steps: int, warmup: int) -> dict:
    """Time `steps` optimiser steps of one micro-batch per GPU at cfg's settings."""
    m, t = cfg.model, cfg.train
    device = dist.device
    torch.manual_seed(0)
    model = build_model(m, device)
    applied = parallelize(model, t, dist)
    optimizer = build_optimizer(model, t)
    autocast = contextlib.nullcontext if dist.fsdp else autocast_for(device, t.precision)  # as the trainer does
    x = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.context_length + 1), device=device)

    def step() -> None:
        with autocast():
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        clip_grad_norm(model, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    per_gpu = steps * t.micro_batch_size * m.context_length / seconds
    peak = peak_flops(device)
    memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # CPU: the process's peak so far
    return {"tokens_per_s_per_gpu": round(per_gpu, 1), "tokens_per_s": round(per_gpu * dist.world_size, 1),
            "step_s": round(seconds / steps, 4),
            "mfu": round(model.flops_per_token() * per_gpu / peak, 4) if peak else None,
            "peak_memory_gib": round(memory / 2**30, 3), "parameters": model.num_params(), "applied": applied}


def _free(compiled: bool) -> None:
    # dynamo's caches hold the compiled blocks (and so the last model's weights): reset them before collecting,
    # or empty_cache cannot give the memory of a setting that ran out of it back before the next one
    if compiled:
        torch._dynamo.reset()  # each setting compiles its own graphs; keep the cache from filling up
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sweep(cfg: Config, dist: Distributed, precisions: list[str], checkpointing: list[str], micro_batches: list[int],
          steps: int, warmup: int, run_tokens: float, out: str | None = None) -> list[dict]:
    """One row per (precision, checkpointing, micro-batch) tried; the fastest micro-batch of each pair is `best`."""
    rows = []
    for precision in precisions:
        for ac in checkpointing:
            group = []
            for mb in sorted(micro_batches):
                setting = dataclasses.replace(cfg, train=dataclasses.replace(
                    cfg.train, precision=precision, activation_checkpointing=ac, micro_batch_size=mb))
                row = {"precision": precision, "activation_checkpointing": ac, "micro_batch": mb,
                       "context": cfg.model.context_length, "world_size": dist.world_size, "compile": cfg.train.compile}
                try:
                    row.update(status="ok", **measure(setting, dist, steps, warmup))
                    row["gpu_hours_full_run"] = round(run_tokens / row["tokens_per_s_per_gpu"] / 3600, 1)
                except LokiError as e:  # this hardware cannot run the precision: say so, measure the rest
                    row["status"] = f"refused: {e}"
                except Exception as e:  # noqa: BLE001 -- an OOM (wrapped or not) or a failed compile: the rest run
                    row["status"] = ("out of memory" if is_oom(e) else
                                     "error: " + f"{type(e).__name__}: {e}".strip().splitlines()[0][:300])
                _free(cfg.train.compile)
                group.append(row)
                if dist.is_main and out:
                    with open(out + "l", "a") as f:  # NAME.jsonl beside NAME.json, row by row
                        f.write(json.dumps(row) + "\n")
                if row["status"] != "ok":
                    break
            ok = [r for r in group if r["status"] == "ok"]
            if ok:
                max(ok, key=lambda r: r["tokens_per_s"])["best"] = True
            rows.extend(group)
            if group and group[0]["status"].startswith("refused"):
                break  # the same answer for every checkpointing mode
    return rows


def table(rows: list[dict]) -> str:
    head = ("| precision | act. ckpt | micro-batch | tokens/s/GPU | tokens/s total | MFU | peak GiB | GPU-h full run |"
            "\n|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['precision']} | {r['activation_checkpointing']} | {r['micro_batch']} | "
                         f"{r['status'][:80]} | | | | |")
            continue
        b = "**" if r.get("best") else ""
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        lines.append(f"| {r['precision']} | {r['activation_checkpointing']} | {b}{r['micro_batch']}{b} | "
                     f"{b}{r['tokens_per_s_per_gpu']:,.0f}{b} | {r['tokens_per_s']:,.0f} | {mfu} | "
                     f"{r['peak_memory_gib']:.1f} | {r['gpu_hours_full_run']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--precision", nargs="+", default=PRECISIONS,
                   choices=["bf16", "fp32", "fp8_tensorwise", "fp8_rowwise", "int8"])
    p.add_argument("--checkpointing", nargs="+", default=CHECKPOINTING, choices=CHECKPOINTING)
    p.add_argument("--micro-batches", nargs="+", type=int, default=[2, 4, 8, 12, 16, 24, 32])
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps per setting")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--run-tokens", type=float, default=500e9, help="tokens of the full run the GPU-hours are for")
    p.add_argument("--out", help="write the rows as JSON here (and NAME.jsonl row by row)")
    args = p.parse_args()

    cfg = load_config(args.config, args.overrides)
    dist = init_distributed(cfg.train.device, cfg.train.fsdp)
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = sweep(cfg, dist, args.precision, args.checkpointing, args.micro_batches, args.steps, args.warmup,
                 args.run_tokens, args.out)
    if dist.is_main:
        device = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu"
        result = {"config": args.config, "overrides": args.overrides, "device": device, "torch": torch.__version__,
                  "world_size": dist.world_size, "rows": rows}
        print(table(rows))
        print(json.dumps(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
    dist.close()


if __name__ == "__main__":
    main()
