"""Decode tokens/s: lokilm's batched KV-cache generation vs transformers' `generate` on the exported weights.

    python benchmarks/decode_throughput.py --config configs/stlm-10m.yaml --position rope
    python benchmarks/decode_throughput.py --config configs/stlm-10m.yaml --position alibi --batch 1 8

Builds the config's model with random weights (speed does not depend on them), writes it as a run directory,
exports it (RoPE: stock LlamaForCausalLM; ALiBi/learned: the LokiLM remote code), and times greedy decoding of
--new-tokens tokens after --prompt-tokens random prompt tokens, at each batch size, on the same machine in one
process: lokilm's `generate_batch` (what `loki generate` runs) and transformers' `model.generate` (its own
KV cache, do_sample=False, exactly --new-tokens tokens). The two alternate --repeats times and the best time
of each is kept (the machine may be shared). Checks that both produce the same tokens. Prints one JSON line
per batch size; record the figures in docs/LOG.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/stlm-10m.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--position", choices=["rope", "alibi", "learned"], help="override model.position")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()

    from tokenizers import Tokenizer, models

    from lokilm.config import GenerateConfig, load_config
    from lokilm.generate import generate_batch
    from lokilm.interop.export import export
    from lokilm.interop.hf_import import save_as_run
    from lokilm.model import Transformer
    from lokilm.tokenizer import EOT
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides + ([f"model.position={args.position}"] if args.position else []))
    m = cfg.model
    torch.manual_seed(0)
    model = Transformer(m)
    model.init_weights()
    model.eval()
    # a word-level vocabulary of the model's size: the tokenizer only has to exist for the export
    tok = Tokenizer(models.WordLevel({EOT: 0, **{f"t{i}": i for i in range(1, m.vocab_size)}}, unk_token=EOT))
    tok.add_special_tokens([EOT])
    with tempfile.TemporaryDirectory() as tmp:
        save_as_run(model, tok, Path(tmp) / "run", cfg)
        hf = AutoModelForCausalLM.from_pretrained(export(Path(tmp) / "run", Path(tmp) / "hf"), trust_remote_code=True,
                                                  dtype=torch.float32).eval()
    settings = GenerateConfig(max_new_tokens=args.new_tokens, temperature=0.0, top_k=None)
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(1, m.vocab_size, (batch, args.prompt_tokens), generator=g)
        best = {"lokilm": float("inf"), "transformers": float("inf")}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = generate_batch(model, prompts.tolist(), settings, m.vocab_size)  # no stop token: all tokens
            best["lokilm"] = min(best["lokilm"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                theirs = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
            best["transformers"] = min(best["transformers"], time.perf_counter() - t0)
        same = theirs[:, args.prompt_tokens:].tolist() == ours
        tokens = batch * args.new_tokens
        print(json.dumps({"model": f"{m.n_layer}x{m.d_model}, vocab {m.vocab_size}, {m.position}",
                          "params": model.num_params(), "batch": batch, "prompt_tokens": args.prompt_tokens,
                          "new_tokens": args.new_tokens, "threads": args.threads, "hf_class": type(hf).__name__,
                          "lokilm_tok_s": round(tokens / best["lokilm"], 1),
                          "transformers_tok_s": round(tokens / best["transformers"], 1),
                          "speedup": round(best["transformers"] / best["lokilm"], 2), "same_tokens": same}), flush=True)


if __name__ == "__main__":
    main()
