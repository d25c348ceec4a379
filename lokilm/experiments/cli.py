"""`loki ablate ABLATION.yaml [--dry-run]` and `loki report RUN_DIR`: their argument parsers and handlers."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    ab = sub.add_parser("ablate", help="train every variant x seed of an ablation file, score them on the same held-out "
                        "windows and compare each with the reference (RUN_DIR/ablation.md, .json and plots)")
    ab.add_argument("ablation", help="ablation YAML (config, run_dir, seeds, overrides, variants; see configs/ablations/)")
    ab.add_argument("overrides", nargs="*", metavar="key=value",
                    help="added to the file's overrides for every variant (run_dir=... moves the whole ablation)")
    ab.add_argument("--dry-run", action="store_true", help="list the runs and their state; train nothing")
    ab.add_argument("--jobs", type=int, help="runs trained at once (default: the file's `jobs`, else 1)")
    rep = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and report.md: curves, events, "
                         "curation funnel, tokenizer, evaluation beside the paper, WinoBias, samples")
    rep.add_argument("run_dir")
    rep.add_argument("--no-heldout", action="store_true",
                     help="do not score held-out windows for the bits-per-byte section when the run has no scores yet")


def run(args: argparse.Namespace) -> int:
    from lokilm.errors import LokiError

    if args.command == "report":
        from lokilm.report.report import write_report

        out = write_report(args.run_dir, compute_heldout=not args.no_heldout)
        print(f"report: {out['html']} and {out['markdown']} ({', '.join(out['sections'])})")
        return 0
    from lokilm.experiments.ablate import ablate, dry_run, load_ablation

    ab = load_ablation(args.ablation, args.overrides)
    if args.jobs is not None:
        if args.jobs < 1:
            raise LokiError(f"--jobs must be at least 1, got {args.jobs}")
        ab.jobs = args.jobs
    if args.dry_run:
        print(dry_run(ab))
        return 0
    from lokilm.rundir import RunDir

    # a second `loki ablate` on the same folder would train the same run directories at once (interleaved
    # metrics, clobbered checkpoints): it is refused, naming this one
    with RunDir.at(ab.run_dir).lock("ablate"):
        ablate(ab)
    print(f"results: {ab.run_dir}/ablation.md, ablation.json, loss_curves.png, deltas.png")
    return 0
