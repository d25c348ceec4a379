"""The `loki` command: one subcommand per stage, each taking a YAML config and key=value overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys

from lokilm.errors import LokiError

STAGE_HELP = "a YAML config (e.g. configs/quickstart.yaml) followed by key=value overrides (e.g. train.max_steps=200)"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config value, e.g. model.position=rope")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loki", description="lokilm: build a small language model end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenizer", help="build a tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    _config_args(tok_sub.add_parser("train", help="build the config's tokenizer on its data (a byte-level BPE, "
                                    "or cl100k_base adapted when tokenizer.kind=adapt)", description=STAGE_HELP))
    _config_args(tok_sub.add_parser("adapt", help="prune cl100k_base to the tokenizer size on the config's data "
                                    "(tokenizer.kind=adapt)", description=STAGE_HELP))
    _config_args(tok_sub.add_parser("compare", help="held-out bytes per token of cl100k_base, the adapted vocabulary "
                                    "and a fresh BPE of the same size", description=STAGE_HELP))

    _config_args(sub.add_parser(
        "curate", help="curate data.inputs into run_dir/curate/ (`loki curate train-classifier CONFIG`: train the "
        "quality classifier; `loki curate annotate CONFIG`: score a sample 0-5 with a local instruct model)", description=STAGE_HELP))
    _config_args(sub.add_parser("tokenize", help="tokenize the config's data into train/val shards", description=STAGE_HELP))
    restart = ("start training over: the run's checkpoints, metrics and events are moved to RUN_DIR/discarded-TIME/ "
               "(kept, not deleted); needed when every checkpoint is corrupt")
    train = sub.add_parser("train", help="train (or resume training) a model", description=STAGE_HELP)
    _config_args(train)
    train.add_argument("--restart", action="store_true", help=restart)
    run = sub.add_parser("run", help="every stage in order: curate (when curate.enabled), tokenizer, tokenize, "
                         "distill (the teacher caches, when distill.enabled), train, eval, generate, report",
                         description=STAGE_HELP)
    _config_args(run)
    run.add_argument("--restart", action="store_true", help=restart)

    dis = sub.add_parser("distill", help="multi-teacher knowledge distillation (distill.teachers)")
    dis_sub = dis.add_subparsers(dest="distill_command", required=True)
    dgen = dis_sub.add_parser("generate", help="each teacher continues the KD windows' prefixes into its teacher "
                              "cache (run_dir/distill/TEACHER/); resumes where it stopped", description=STAGE_HELP)
    _config_args(dgen)
    dgen.add_argument("--restart", action="store_true", help="discard existing teacher caches and start over")
    _config_args(dis_sub.add_parser("experiment", help="train two students with and without KD from the same seed, "
                                    "data and token budget, evaluate both and compare them pairwise "
                                    "(run_dir/ablation.md)", description=STAGE_HELP))

    gen = sub.add_parser("generate", help="sample from a run's latest checkpoint")
    gen.add_argument("run_dir")
    gen.add_argument("--prompt", action="append", help="prompt text (repeatable); default: the run config's prompts")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int, help="0 turns top-k off")
    gen.add_argument("--top-p", type=float, help="1 turns nucleus sampling off")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--exit-threshold", type=float, metavar="P", help="early exit: leave the model at the first "
                     "layer whose top next-token probability exceeds P (lokilm/speculative.py)")
    gen.add_argument("--self-speculative", type=int, metavar="E", help="draft with the first E layers, verify with "
                     "all of them; greedy (--temperature 0), the same text as the full model")

    ev = sub.add_parser("eval", help="benchmarks (lm-evaluation-harness), bits per byte, WinoBias and the paper's "
                        "prompts for a run's latest checkpoint; writes RUN_DIR/eval/PRESET/ "
                        "(with --limit N: RUN_DIR/eval/PRESET-limitN/)")
    ev.add_argument("run_dir")
    ev.add_argument("--preset", help="quick (default), openllm or lokilm-paper")
    ev.add_argument("--tasks", help="comma-separated subset of the preset's tasks")
    ev.add_argument("--limit", type=int, help="score only the first N items of each task and of each WinoBias file "
                    "(a smoke test, written to RUN_DIR/eval/PRESET-limitN/ beside the full results)")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="eval settings, e.g. eval.winobias=false")

    ck = sub.add_parser("checkpoint", help="checkpoint tools")
    ck_sub = ck.add_subparsers(dest="checkpoint_command", required=True)
    co = ck_sub.add_parser("consolidate", help="turn a sharded (FSDP) checkpoint into the single-file form that "
                           "generate, eval and export read (in place, or as a new run directory with --out)")
    co.add_argument("run_dir")
    co.add_argument("--step", type=int, help="the checkpoint's step (default: the newest)")
    co.add_argument("--out", help="write a new run directory here instead of rewriting the checkpoint in place")

    cmp = sub.add_parser("compare", help="paired comparison of two evaluated runs on the same items")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--preset", default="quick", help="the evaluation both runs have (default quick)")
    cmp.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    cmp.add_argument("--limit", type=int, help="compare the runs' `loki eval --limit N` smoke tests instead of their "
                     "full evaluations")
    from lokilm.interop import cli as interop_cli

    interop_cli.add_parser(sub)  # loki export, loki import, loki chat
    from lokilm.experiments import cli as experiments_cli

    experiments_cli.add_parser(sub)  # loki ablate, loki report
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after the options too (`loki eval RUN --limit 2 eval.winobias=false`)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
    try:
        return _dispatch(args)
    except LokiError as e:
        print(f"loki: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nloki: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from lokilm import stages
    from lokilm.config import load_config
    from lokilm.parallel.dist import env_rank
    from lokilm.rundir import RunDir

    if args.command == "generate":
        return _generate(args)
    if args.command in ("ablate", "report"):
        from lokilm.experiments import cli as experiments_cli

        return experiments_cli.run(args)
    if args.command in ("export", "import", "chat"):
        from lokilm.interop import cli as interop_cli

        return interop_cli.run(args)
    if args.command in ("eval", "compare"):
        from lokilm.eval.cli import compare_command, eval_command

        return eval_command(args) if args.command == "eval" else compare_command(args)
    if args.command == "curate":
        return _curate(args)
    if args.command == "checkpoint":
        from lokilm.checkpoint.sharded import consolidate

        # it writes into the run's checkpoints (unless --out), where a running `loki train` prunes old ones
        with _holding(RunDir.open(args.run_dir).cfg, "checkpoint consolidate"):
            print(f"single-file checkpoint: {consolidate(args.run_dir, args.step, args.out)}")
        return 0
    if args.command == "distill":
        return _distill(args)
    subcommand = getattr(args, "tokenizer_command", None)
    cfg = load_config(args.config, args.overrides + (["tokenizer.kind=adapt"] if subcommand == "adapt" else []))
    stage = "tokenizer" if args.command == "tokenizer" else args.command
    main_process = env_rank() == 0  # under torchrun, rank 0 writes and reports for all
    with _holding(cfg, f"{args.command} {subcommand or ''}".strip()):
        if getattr(args, "restart", False) and main_process:  # one rank moves the history aside; rank 0
            _discard_training(cfg)                            # alone picks the checkpoint to resume from
        if args.command == "run":
            stages.run_all(cfg)
            if main_process:
                print(f"\nrun directory: {cfg.run_dir}  (stage summaries in {cfg.run_dir}/stages/)")
            return 0
        if main_process:
            RunDir(cfg).save_config()
        if subcommand == "compare":
            from lokilm.tokenizer.compare import compare_stage

            summary = compare_stage(cfg)
        else:
            summary = stages.STAGES[stage](cfg)
    if main_process:
        print(json.dumps({k: v for k, v in summary.items() if k not in ("read", "inputs")}, indent=2))
    return 0


def _holding(cfg, command: str):
    """The run directory's lock for a command that writes it (rank 0 holds it for a torchrun job)."""
    import contextlib

    from lokilm.parallel.dist import env_rank
    from lokilm.rundir import RunDir

    return RunDir(cfg).lock(command) if env_rank() == 0 else contextlib.nullcontext()


def _discard_training(cfg) -> None:
    """`--restart`: move the run's training history aside (nothing is deleted), so training starts at step 0."""
    import time

    from lokilm.rundir import RunDir

    run = RunDir(cfg)
    moved = [p for p in (run.checkpoints, run.metrics, run.events, run.tensorboard, run.stage_summary("train"))
             if p.exists()]
    if moved:
        aside = run.root / f"discarded-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for p in moved:
            p.rename(aside / p.name)
        print(f"loki: --restart: moved {', '.join(p.name for p in moved)} to {aside}", flush=True)


def _curate(args: argparse.Namespace) -> int:
    from lokilm.config import load_config
    from lokilm.rundir import RunDir

    train = args.config == "train-classifier"
    sub = args.config if args.config in ("train-classifier", "annotate") else None
    if sub:
        if not args.overrides:
            raise LokiError(f"usage: loki curate {sub} CONFIG [key=value ...]")
        args.config, args.overrides = args.overrides[0], args.overrides[1:]
    cfg = load_config(args.config, args.overrides)
    if sub == "annotate":
        from lokilm.curate.annotate import run

        return run(cfg)
    if train:
        from lokilm.curate.classifier import train_classifier

        model = train_classifier(cfg.curate.classifier, cfg.curate.embedding)
        print(json.dumps({k: v for k, v in model.items() if k != "coef"}, indent=2))
        print(f"classifier written to {cfg.curate.classifier.path}")
        return 0
    from lokilm.curate.pipeline import curate_json, curate_stage

    with _holding(cfg, "curate"):
        RunDir(cfg).save_config()
        summary = curate_stage(cfg)
    print(curate_json(summary))
    if RunDir(cfg).curate_report_md.is_file():  # none when curation is off or was only submitted to slurm
        print(f"report: {RunDir(cfg).curate_report_md}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    from lokilm.config import load_config

    cfg = load_config(args.config, args.overrides)
    with _holding(cfg, f"distill {args.distill_command}"):
        return _distill_locked(args, cfg)


def _distill_locked(args: argparse.Namespace, cfg) -> int:
    from lokilm.rundir import RunDir

    RunDir(cfg).save_config()
    if args.distill_command == "generate":
        from lokilm.distill.generate import generate_stage

        print(json.dumps(generate_stage(cfg, restart=args.restart), indent=2))
    elif args.distill_command == "experiment":
        from lokilm.distill.experiment import experiment

        experiment(cfg)
        print(f"results: {cfg.run_dir}/ablation.md and ablation.json")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lokilm.generate import Sampler
    from lokilm.rundir import RunDir

    cfg = RunDir.open(args.run_dir).cfg
    g = cfg.generate
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(g, name, value)
    cfg.validate()  # --max-new-tokens -5, --top-p 5, --temperature nan: the same clear errors as in a config
    for prompt in args.prompt or []:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise LokiError(f"--prompt {prompt.encode('utf-8', 'surrogateescape')[:60]!r} is not valid UTF-8 text") from None
    if args.exit_threshold is not None or args.self_speculative is not None or cfg.model.input == "bytes":
        from lokilm.speculative import Decoder
        sampler = Decoder(args.run_dir, args.exit_threshold, args.self_speculative)
    else:
        sampler = Sampler(args.run_dir)
    prompts = args.prompt or g.prompts
    if len(prompts) > 1 and isinstance(sampler, Sampler):  # decoded together; each text is what it gets alone
        for prompt, text in zip(prompts, sampler.complete_batch(prompts, g)):
            print(prompt + text, flush=True)
        return 0
    for prompt in prompts:
        shown = []  # the prompt is echoed with the first new text: a prompt refused (too long, say) is not echoed

        def out(text: str, prompt=prompt, shown=shown) -> None:
            if not shown:
                shown.append(print(prompt, end="", flush=True))
            print(text, end="", flush=True)

        sampler.complete(prompt, g, stream=out)
        if not shown:
            print(prompt, end="")
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
