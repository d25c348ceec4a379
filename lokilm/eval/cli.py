"""The `loki eval` and `loki compare` subcommands: arguments in, results printed and written."""

from __future__ import annotations

import argparse

from lokilm.config import apply_overrides
from lokilm.errors import LokiError


def eval_command(args: argparse.Namespace) -> int:
    from lokilm.eval.run import evaluate_run
    from lokilm.rundir import RunDir

    cfg = RunDir.open(args.run_dir).cfg
    if args.limit is not None and args.limit <= 0:
        raise LokiError(f"--limit must be a positive number of items, got {args.limit}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise LokiError(f"--batch-size must be positive, got {args.batch_size}")
    apply_overrides(cfg, args.overrides, section="eval")  # eval.winobias=false or winobias=false
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

    if args.bootstrap <= 0:
        raise LokiError(f"--bootstrap must be a positive number of replicates, got {args.bootstrap}")
    if args.limit is not None and args.limit <= 0:
        raise LokiError(f"--limit must be a positive number of items, got {args.limit}")

    result = compare_runs(args.run_a, args.run_b, args.preset, iters=args.bootstrap, limit=args.limit)
    limited = "" if args.limit is None else f" --limit {args.limit}"
    print(f"B = {args.run_b} minus A = {args.run_a}, preset {args.preset}{limited}, paired on the items both scored\n")
    print(table(result, "A", "B"))
    return 0
