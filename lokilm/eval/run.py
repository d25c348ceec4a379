"""`loki eval RUN_DIR`: evaluate a run's newest checkpoint and write eval.json, eval.md and the per-item results."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import torch

from lokilm.config import EvalConfig
from lokilm.errors import LokiError
from lokilm.fileio import write_json
from lokilm.rundir import RunDir


def eval_dir(run_dir: str | Path, preset: str, limit: int | None = None) -> Path:
    """Where one preset's results live: each preset keeps its own, so a quick eval never overwrites a full one,
    and a `--limit N` smoke test writes PRESET-limitN/, never the full results that `loki compare` reads."""
    return RunDir.open(run_dir).eval_dir(preset, limit)


def checkpoint_id(ckpt) -> str:
    """A checkpoint by content (its manifest's checksum), not by path: a copied or moved run is not re-evaluated."""
    from lokilm.fileio import sha256_file

    return f"{ckpt.step}:{sha256_file(ckpt.path / 'manifest.json')[:16]}"


class _Progress:
    """Prints a line each time a job passes another tenth of its requests."""

    def __init__(self):
        self.tenths = -1

    def __call__(self, done: int, total: int, what: str) -> None:
        tenths = 10 * done // total
        if total < 100 or (done < total and tenths == self.tenths):  # small jobs finish before anyone looks
            return
        self.tenths = -1 if done == total else tenths
        print(f"  {what} {done}/{total}", flush=True)


def evaluate_run(run_dir: str | Path, settings: EvalConfig, limit: int | None = None, device: str = "auto",
                 ckpt=None) -> dict:
    """Benchmarks (lm-eval), bits per byte, the WinoBias probe and the qualitative prompts for one run
    (on `ckpt`, default: its newest valid checkpoint)."""
    from lm_eval import __version__ as lm_eval_version

    from lokilm.eval import report, suite
    from lokilm.eval.harness import LokiLM
    from lokilm.eval.presets import preset_tasks
    from lokilm.checkpoint import load_model
    from lokilm.parallel.dist import resolve_device
    from lokilm.tokenizer import load_tokenizer
    from lokilm.checkpoint.single import latest_checkpoint

    preset_tasks(settings.preset, settings.tasks)  # an unknown preset or task fails before the model loads
    start = time.time()
    dev = resolve_device(device)
    # verify the checkpoint's checksums once: for a 1.4B run that is reading ~17 GB
    ckpt = ckpt or latest_checkpoint(RunDir.open(run_dir).checkpoints)
    if ckpt is None:
        raise LokiError(f"{run_dir} has no valid checkpoint to evaluate")
    model, cfg = load_model(run_dir, dev, ckpt)
    tok = load_tokenizer(RunDir(cfg).tokenizer)
    lm = LokiLM(model, tok, batch_size=settings.batch_size, progress=_Progress())
    out = {"run_dir": str(run_dir), "checkpoint": str(ckpt.path), "step": ckpt.step,
           "preset": settings.preset, "limit": limit, "lm_eval_version": lm_eval_version, "device": str(dev),
           "torch_threads": torch.get_num_threads()}

    print(f"eval: preset {settings.preset} on {ckpt.path}", flush=True)
    results, items = suite.run_preset(lm, settings.preset, settings.tasks, limit, settings.bootstrap_iters, settings.seed)
    out["tasks"] = results
    out["benchmark_seconds"] = round(time.time() - start, 1)
    if settings.bpb_windows:
        out["bpb"] = held_out_bpb(model, cfg, settings.bpb_windows, settings.batch_size, dev)
    if settings.winobias:
        from lokilm.eval.winobias import winobias_probe

        out["winobias"] = winobias_probe(lm, settings.bootstrap_iters, settings.seed, limit)
    if settings.qualitative:
        from lokilm.eval.qualitative import qualitative_suite

        out["qualitative"] = qualitative_suite(model, tok, settings.max_new_tokens, settings.temperature)
    out["seconds"] = round(time.time() - start, 1)

    folder = eval_dir(run_dir, settings.preset, limit)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "items.jsonl", "w") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)
    write_json(folder / "eval.json", out)
    (folder / "eval.md").write_text(report.markdown(out))
    print(report.markdown(out), flush=True)
    print(f"eval: {out['seconds']} s; results in {folder}/ (eval.json, eval.md, items.jsonl)", flush=True)
    return out


def held_out_bpb(model, cfg, n_windows: int, batch_size: int, device: torch.device) -> dict | None:
    """Bits per byte on the run's held-out shards (lokilm.eval.bpb), or None if the run has no val split; for a
    data mixture also per source (`by_source`), from the same scored windows, as val_bpb/<source> in training."""
    from lokilm.eval.bpb import bits_per_byte_by_group
    from lokilm.shards import TokenWindows, read_meta
    from lokilm.tokenizer import load_tokenizer, token_byte_lengths

    run = RunDir(cfg)
    if not (run.shards / "meta.json").is_file() or not read_meta(run.shards)["splits"]["val"]["tokens"]:
        return None
    windows = TokenWindows(run.shards, "val", cfg.model.context_length)
    token_bytes = token_byte_lengths(load_tokenizer(run.tokenizer))
    from lokilm.parallel.precision import autocast_for

    # the benchmarks' precision policy too (bf16 on CUDA): one policy for every figure of an evaluation
    value, by_source = bits_per_byte_by_group(model, windows, token_bytes, n_windows, batch_size, device,
                                              autocast_for(device, cfg.train.precision), windows.sources())
    out = {"value": value, "windows": min(n_windows, len(windows)), "tokens_per_window": cfg.model.context_length}
    if not by_source:
        return out
    # a source with no scored window was left out of by_source without a word, as if the mixture had no such
    # source: name it and say why, so the table shows every source
    counts = collections.Counter(windows.sources())
    unscored = {name: ("its held-out split holds no window" if not counts[name] else
                       f"none of its {counts[name]} held-out windows is among the {out['windows']} scored")
                for name in windows.meta["sources"] if name not in by_source}
    return {**out, "by_source": by_source, **({"unscored_sources": unscored} if unscored else {})}


def load_items(run_dir: str | Path, preset: str, limit: int | None = None) -> list[dict]:
    """The per-item results of a full evaluation, or of a `--limit N` one when `limit` is given."""
    path = eval_dir(run_dir, preset, limit) / "items.jsonl"
    if not path.is_file():
        flag = "" if limit is None else f" --limit {limit}"
        raise LokiError(f"{run_dir} has no {preset!r}{flag} evaluation ({path} missing): run "
                        f"`loki eval {run_dir} --preset {preset}{flag}`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_stage(cfg) -> dict:
    """`loki run`'s eval stage: the config's preset on the newest checkpoint, skipped if already done for it."""
    from lokilm.checkpoint.single import latest_checkpoint

    run = RunDir(cfg)
    ckpt = latest_checkpoint(run.checkpoints)
    # keyed by the checkpoint's content (its manifest), so a copied run directory is not evaluated again
    wanted = {"checkpoint_id": checkpoint_id(ckpt) if ckpt else None, "preset": cfg.eval.preset}
    done = ckpt and run.finished("eval", wanted, run.eval_dir(cfg.eval.preset) / "eval.json")
    if done:
        return done
    out = evaluate_run(cfg.run_dir, cfg.eval, device=cfg.train.device, ckpt=ckpt)
    from lokilm.eval.presets import HEADLINE

    headline = {row: out["tasks"][task]["metrics"].get(key) for row, (task, key) in HEADLINE.items() if task in out["tasks"]}
    summary = {"status": "done", "inputs": wanted, "checkpoint": out["checkpoint"], "checkpoint_id": checkpoint_id(ckpt),
               "preset": out["preset"], "seconds": out["seconds"],
               "headline": headline, "bpb": out.get("bpb"), "path": str(eval_dir(cfg.run_dir, cfg.eval.preset))}
    run.write_summary("eval", summary)
    return summary
