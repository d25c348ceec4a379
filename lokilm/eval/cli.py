"""The `loki eval` and `loki compare` subcommands: arguments in, results printed and written."""

from __future__ import annotations

import argparse

import yaml

from lokilm.config import set_value


def eval_command(args: argparse.Namespace) -> int:
    from lokilm.eval.run import evaluate_run
    from lokilm.rundir import RunDir

    cfg = RunDir.open(args.run_dir).cfg
    for item in args.overrides:
        key, _, raw = item.partition("=")
        set_value(cfg, key if key.startswith("eval.") else f"eval.{key}", yaml.safe_load(raw))
    if args.preset:
        cfg.eval.preset = args.preset
    if args.tasks:
        cfg.eval.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.batch_size:
        cfg.eval.batch_size = args.batch_size
    evaluate_run(args.run_dir, cfg.eval, limit=args.limit, device=args.device)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from lokilm.eval.compare import compare_runs, table

    result = compare_runs(args.run_a, args.run_b, args.preset, iters=args.bootstrap, limit=args.limit)
    limited = "" if args.limit is None else f" --limit {args.limit}"
    print(f"B = {args.run_b} minus A = {args.run_a}, preset {args.preset}{limited}, paired on the items both scored\n")
    print(table(result, "A", "B"))
    return 0
