"""`loki export`, `loki import` and `loki chat`: argparse setup and handlers (hooked into lokilm/cli.py); light to
import, so `loki --help` does not load torch."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

EXPORT_HELP = "a run's checkpoint as a Hugging Face model folder (RoPE: LlamaForCausalLM; ALiBi and learned " \
              "positions: LokiLM remote code, load with trust_remote_code=True)"
IMPORT_HELP = "a local Hugging Face Llama-family folder or a GGUF file as a lokilm run directory"


def add_parser(sub) -> None:
    ex = sub.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP)
    ex.add_argument("run_dir")
    ex.add_argument("out_dir")
    ex.add_argument("--step", type=int, help="the checkpoint's step (default: the newest valid one)")
    ex.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16")
    ex.add_argument("--force", action="store_true", help="overwrite OUT_DIR if it exists")
    im = sub.add_parser("import", help=IMPORT_HELP, description=IMPORT_HELP)
    im.add_argument("source", help="a model folder (config.json, safetensors, tokenizer) or a .gguf file")
    im.add_argument("run_dir")
    im.add_argument("--force", action="store_true", help="overwrite RUN_DIR if it exists")
    ch = sub.add_parser("chat", help="talk to a run's model (streamed; /help for commands; when stdin is not a "
                        "terminal, one turn per line)")
    ch.add_argument("run_dir")
    ch.add_argument("--max-new-tokens", type=int, default=200)
    ch.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    ch.add_argument("--top-k", type=int, default=50, help="0 turns top-k off")
    ch.add_argument("--top-p", type=float, default=0.95, help="1 turns nucleus sampling off")
    ch.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.command == "chat":
        from lokilm.chat import run as chat

        return chat(args)
    if args.command == "export":
        from lokilm.interop.export import export

        out = export(args.run_dir, args.out_dir, step=args.step, dtype=args.dtype, force=args.force)
        print(f"exported to {out}")
        print(f"  lm_eval --model hf --model_args pretrained={out},trust_remote_code=True,dtype=float32 --tasks ...")
        return 0
    from lokilm.interop.hf_import import import_model
    from lokilm.rundir import RunDir

    # held while it writes (and, with --force, replaces) the run directory: never under a running `loki train`
    created = not Path(args.run_dir).exists()
    try:
        with RunDir.at(args.run_dir).lock("import"):
            run_dir = import_model(args.source, args.run_dir, force=args.force)
    except BaseException:
        if created:  # a failed import leaves nothing behind (not even the lock file's folder)
            shutil.rmtree(args.run_dir, ignore_errors=True)
        raise
    m = run_dir.cfg.model
    print(f"imported {args.source} into {run_dir.root}: {m.n_layer} layers, hidden {m.d_model}, {m.n_head} heads "
          f"({m.n_kv_head or m.n_head} KV), vocabulary {m.vocab_size}, context {m.context_length}")
    return 0
