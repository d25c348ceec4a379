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
    _config_args(tok_sub.add_parser("train", help="train a byte-level BPE on the config's data", description=STAGE_HELP))

    _config_args(sub.add_parser("tokenize", help="tokenize the config's data into train/val shards", description=STAGE_HELP))
    _config_args(sub.add_parser("train", help="train (or resume training) a model", description=STAGE_HELP))
    _config_args(sub.add_parser("run", help="every stage in order: tokenizer, tokenize, train, generate", description=STAGE_HELP))

    gen = sub.add_parser("generate", help="sample from a run's latest checkpoint")
    gen.add_argument("run_dir")
    gen.add_argument("--prompt", action="append", help="prompt text (repeatable); default: the run config's prompts")
    gen.add_argument("--max-new-tokens", type=int)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int, help="0 turns top-k off")
    gen.add_argument("--top-p", type=float, help="1 turns nucleus sampling off")
    gen.add_argument("--seed", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    from lokilm.rundir import RunDir

    if args.command == "generate":
        return _generate(args)
    cfg = load_config(args.config, args.overrides)
    if args.command == "run":
        stages.run_all(cfg)
        print(f"\nrun directory: {cfg.run_dir}  (stage summaries in {cfg.run_dir}/stages/)")
        return 0
    stage = "tokenizer" if args.command == "tokenizer" else args.command
    RunDir(cfg).save_config()
    summary = stages.STAGES[stage](cfg)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("read", "inputs")}, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from lokilm.generate import generate_from_run, run_config

    cfg = run_config(args.run_dir)
    g = cfg.generate
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(g, name, value)
    for prompt in args.prompt or g.prompts:
        print(prompt, end="", flush=True)
        generate_from_run(args.run_dir, prompt, g, stream=lambda s: print(s, end="", flush=True))
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
