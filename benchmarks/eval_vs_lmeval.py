"""Wall time of a benchmark preset: lokilm's lm-eval adapter (what `loki eval` runs) vs lm-eval's own `hf` model
on the exported weights, same task YAMLs, same items; and whether their per-item results agree.

    python benchmarks/eval_vs_lmeval.py --config configs/stlm-10m.yaml --limit 4
    python benchmarks/eval_vs_lmeval.py --run runs/quickstart --limit 20 --tasks arc_challenge,hellaswag

Without --run, builds the config's model with random weights and a byte-level BPE of the model's vocabulary
size learnt on bundled Shakespeare (equal vocabularies, so both softmaxes run over the same tokens); with
--run, uses that run's newest checkpoint. Both sides go through lokilm.eval.suite.run_preset (lm-eval's
simple_evaluate with lokilm's task YAMLs): only the model backend differs. Prints one JSON line with both
wall times and CPU times (this process's, all threads: less moved by other jobs on a shared machine), the
speed-ups, the largest per-item log-likelihood difference and how many items' metrics differ.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
METRIC_RTOL = 1e-4  # relative: a continuous metric of the two sides, equal within this


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/stlm-10m.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run", help="evaluate this run's checkpoint instead of a random model")
    p.add_argument("--preset", default="quick")
    p.add_argument("--tasks", help="comma-separated subset of the preset's tasks")
    p.add_argument("--limit", type=int, default=4, help="items per task (MMLU: per subject)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating which goes first; best kept")
    p.add_argument("--profile", action="store_true", help="then profile one more run of lokilm's side (cProfile): "
                                                          "where its time goes, and the share of the linear layers")
    args = p.parse_args()

    from lm_eval.models.huggingface import HFLM

    from lokilm.checkpoint import load_model
    from lokilm.config import load_config
    from lokilm.eval.harness import LokiLM
    from lokilm.eval.suite import run_preset
    from lokilm.interop.export import export
    from lokilm.interop.hf_import import save_as_run
    from lokilm.model import Transformer
    from lokilm.rundir import RunDir
    from lokilm.tokenizer import load_tokenizer, train_bpe

    torch.set_num_threads(args.threads)
    only = args.tasks.split(",") if args.tasks else None
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp) / "run"
        if not args.run:
            cfg = load_config(args.config, args.overrides)
            text = lzma.open("data/corpus/shakespeare/macbeth_gut.txt.xz", "rt", encoding="utf-8").read()
            tok = train_bpe([text] * 1, vocab_size=cfg.model.vocab_size, min_frequency=1)
            cfg.model.vocab_size = tok.get_vocab_size()  # a small text may give a few tokens fewer
            torch.manual_seed(0)
            model = Transformer(cfg.model)
            model.init_weights()
            save_as_run(model, tok, run, cfg)
        model, cfg = load_model(run)
        tok = load_tokenizer(RunDir(cfg).tokenizer)
        folder = export(run, Path(tmp) / "hf")

        def run_ours():
            return run_preset(LokiLM(model, tok, batch_size=args.batch_size), args.preset, only, limit=args.limit)[1]

        def run_theirs():
            hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", trust_remote_code=True,
                      batch_size=args.batch_size)
            return run_preset(hf, args.preset, only, limit=args.limit)[1]

        # the sides alternate which goes first (a first run pays one-time set-up); the best time of each is kept
        best, cpu, results = {"ours": float("inf"), "theirs": float("inf")}, {}, {}
        for r in range(args.repeats):
            for side in (("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")):
                t0, c0 = time.perf_counter(), time.process_time()
                results[side] = run_ours() if side == "ours" else run_theirs()
                best[side] = min(best[side], time.perf_counter() - t0)
                cpu[side] = min(cpu.get(side, float("inf")), time.process_time() - c0)
        ours, theirs, t_ours, t_theirs = results["ours"], results["theirs"], best["ours"], best["theirs"]
        if args.profile:
            profile(run_ours)

    diffs = [abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a.get("loglikelihoods", []), b.get("loglikelihoods", []))]
    print(json.dumps({
        "model": f"{cfg.model.n_layer}x{cfg.model.d_model}, vocab {cfg.model.vocab_size}, {cfg.model.position}",
        "preset": args.preset, "tasks": only or "all", "limit": args.limit, "items": len(ours),
        "threads": args.threads, "repeats": args.repeats, "loki_eval_s": round(t_ours, 1), "lm_eval_hf_s": round(t_theirs, 1),
        "speedup": round(t_theirs / t_ours, 2), "loki_eval_cpu_s": round(cpu["ours"], 1),
        "lm_eval_hf_cpu_s": round(cpu["theirs"], 1), "cpu_speedup": round(cpu["theirs"] / cpu["ours"], 2),
        "max_loglikelihood_diff": max(diffs, default=0.0),
        # a metric that is a probability (truthfulqa_mc2) moves with the log-likelihoods' last digits: equal means
        # equal within METRIC_RTOL; 0/1 accuracies and exact matches must be identical
        "metric_rtol": METRIC_RTOL,
        "items_with_different_metrics": sum(not same_metrics(a, b) for a, b in zip(ours, theirs)),
        "different_items": [{"task": a["task"], "doc_id": a["doc_id"], "loki": a["metrics"], "lm_eval_hf": b["metrics"]}
                            for a, b in zip(ours, theirs) if not same_metrics(a, b)][:10],
        "same_items": [(a["task"], a["doc_id"]) for a in ours] == [(b["task"], b["doc_id"]) for b in theirs],
    }), flush=True)


def profile(run) -> None:
    """lokilm's side once more under cProfile (after the timed runs, so set-up costs are paid): the top functions by
    cumulative time, and the time in torch's linear layers, which lm-eval's hf backend computes just the same."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.runcall(run)
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof)
    linear = sum(v[3] for k, v in stats.stats.items() if k[2] == "<built-in method torch._C._nn.linear>")
    print(f"profile: lokilm's side {wall:.1f} s under cProfile, {linear:.1f} s of it in torch._C._nn.linear")
    stats.sort_stats("cumulative").print_stats(25)


def same_metrics(a: dict, b: dict) -> bool:
    ma, mb = a["metrics"], b["metrics"]
    return ma.keys() == mb.keys() and all(
        math.isclose(ma[k], mb[k], rel_tol=METRIC_RTOL, abs_tol=1e-30) if isinstance(ma[k], float) else ma[k] == mb[k]
        for k in ma)


if __name__ == "__main__":
    main()
