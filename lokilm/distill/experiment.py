"""`loki distill experiment CONFIG`: two students, with and without distillation, from the same seed, data and
token budget, evaluated and compared item by item (issue 6) — an ablation (lokilm/experiments/ablate.py) of one
seed with the variants without_kd (the reference) and with_kd.

The data (curate, tokenizer, shards) and, in sequence mode, the teacher cache are made once in run_dir; the
students train in run_dir/without_kd-sSEED and run_dir/with_kd-sSEED on those shards; both are evaluated with
the config's eval preset, and run_dir/ablation.json + ablation.md hold both results and the paired deltas and
p-values (with_kd minus without_kd), for held-out bits per byte (per window) and for every benchmark. Every part
is skipped when already done, so the command can be run again after an interruption.
"""

from __future__ import annotations

from lokilm.config import Config

ARMS = {"without_kd": {"distill.enabled": False}, "with_kd": {"distill.enabled": True}}


def ablation(cfg: Config):
    from lokilm.experiments.ablate import Ablation

    return Ablation(config="(command line)", run_dir=cfg.run_dir, variants=ARMS, seeds=[cfg.train.seed],
                    benchmarks=cfg.eval.preset, windows=cfg.eval.bpb_windows, base=cfg)


def experiment(cfg: Config) -> dict:
    from lokilm.experiments.ablate import ablate

    return ablate(ablation(cfg))
