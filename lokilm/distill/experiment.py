"""`loki distill experiment CONFIG`: two students, with and without distillation, from the same seed, data and
token budget, evaluated and compared item by item (issue 6).

The data (curate, tokenizer, shards) and, in sequence mode, the teacher cache are made once in run_dir; the
students train in run_dir/without_kd and run_dir/with_kd on those shards; each is evaluated with the config's
eval preset, and run_dir/experiment.json + experiment.md hold both results and the paired deltas and p-values
(with_kd minus without_kd), for held-out bits per byte (per window) and for every benchmark. Every part is
skipped when already done, so the command can be run again after an interruption.
"""

from __future__ import annotations

import copy
from pathlib import Path

from lokilm.config import Config
from lokilm.distill.cache import cache_root
from lokilm.fileio import write_json
from lokilm.rundir import RunDir

ARMS = {"without_kd": False, "with_kd": True}


def student_config(cfg: Config, arm: str) -> Config:
    """The parent config for one student: its own run directory, the parent's tokenizer, shards and cache."""
    run = RunDir(cfg)
    child = copy.deepcopy(cfg)
    child.run_dir = str(run.root / arm)
    child.tokenizer.path, child.data.shards = str(run.tokenizer), str(run.shards)
    child.curate.enabled = False
    child.distill.enabled = ARMS[arm]
    child.distill.cache_dir = str(cache_root(cfg))
    return child


def window_bpb(run_dir: str | Path, n_windows: int, device: str = "auto") -> list[float]:
    """Bits per byte of each of the first n held-out windows: the per-item scores of the paired bpb test."""
    from lokilm.eval.bpb import bits_per_byte
    from lokilm.checkpoint import load_model
    from lokilm.parallel.dist import resolve_device
    from lokilm.shards import TokenWindows
    from lokilm.tokenizer import load_tokenizer, token_byte_lengths

    dev = resolve_device(device)
    model, cfg = load_model(run_dir, dev)
    run = RunDir(cfg)
    windows = TokenWindows(run.shards, "val", cfg.model.context_length)
    token_bytes = token_byte_lengths(load_tokenizer(run.tokenizer))

    class One:  # window i alone, in the shape bits_per_byte reads
        def __init__(self, i):
            self.i = i

        def __len__(self):
            return 1

        def batch(self, _):
            return windows.batch([self.i])

    return [bits_per_byte(model, One(i), token_bytes, 1, 1, dev)
            for i in range(min(n_windows, len(windows)))]


def experiment(cfg: Config) -> dict:
    from lokilm import stages
    from lokilm.eval import stats
    from lokilm.eval.compare import compare_runs, table
    from lokilm.eval.run import eval_stage
    from lokilm.train.trainer import train

    run = RunDir(cfg)
    run.save_config()
    for name in ("curate", "tokenizer", "tokenize"):
        print(f"== {name}: {stages.STAGES[name](cfg).get('status')}", flush=True)
    if cfg.distill.mode == "sequence":
        from lokilm.distill.generate import generate_stage

        print("== teacher cache", flush=True)
        generate_stage(copy.deepcopy(student_config(cfg, "with_kd")), progress=cfg.train.progress)
    out: dict = {"config": str(run.root / "config.yaml"), "arms": {}}
    for arm in ARMS:
        child = student_config(cfg, arm)
        print(f"== train {arm} -> {child.run_dir}", flush=True)
        summary = train(child)
        print(f"== eval {arm}", flush=True)
        evaluated = eval_stage(child)
        out["arms"][arm] = {"run_dir": child.run_dir, "train": summary, "bpb": evaluated.get("bpb"),
                            "headline": evaluated.get("headline")}
    a, b = (str(run.root / arm) for arm in ARMS)
    per_window = {arm: window_bpb(run.root / arm, cfg.eval.bpb_windows, cfg.train.device) for arm in ARMS}
    out["bpb_paired"] = stats.paired(per_window["without_kd"], per_window["with_kd"],
                                     iters=cfg.eval.bootstrap_iters, seed=cfg.eval.seed)
    out["benchmarks"] = compare_runs(a, b, cfg.eval.preset, cfg.eval.bootstrap_iters, cfg.eval.seed)
    write_json(run.root / "experiment.json", out)
    (run.root / "experiment.md").write_text(markdown(out, table(out["benchmarks"], "without KD", "with KD")))
    print((run.root / "experiment.md").read_text(), flush=True)
    return out


def markdown(out: dict, benchmark_table: str) -> str:
    arms = out["arms"]
    p = out["bpb_paired"]
    lines = ["# Distillation experiment: with KD minus without KD\n",
             "| | without KD | with KD |", "|---|---|---|"]
    for key in ("step", "tokens", "elapsed_s"):
        lines.append(f"| train {key} | {arms['without_kd']['train'][key]} | {arms['with_kd']['train'][key]} |")
    bpb = [arms[a]["bpb"]["value"] if arms[a]["bpb"] else float("nan") for a in ARMS]
    lines.append(f"| held-out bits per byte | {bpb[0]:.4f} | {bpb[1]:.4f} |")
    lo, hi = p["ci95"]
    lines += ["", (f"Bits per byte, paired over {p['n']} held-out windows (lower is better): delta {p['delta']:+.4f} "
                   f"[{lo:+.4f}, {hi:+.4f}], p = {p['p_value']:.3g} ({p['test']})."), "",
              "Benchmarks (percent points, paired on the same items):", "", benchmark_table]
    return "\n".join(lines)
