"""The STLM model options side by side (issue 14): parameters and training tokens/s of each option at one
preset's shape, the self-speculative decoding speedup of a trained early-exit run, and Muon's time to AdamW's
final bits per byte from two ablation runs.

    python benchmarks/stlm_options.py params --config configs/tiny.yaml          # parameters and tokens/s
    python benchmarks/stlm_options.py speculative runs/ablate-stlm/early-exit-s1  # E = n_layer / 2
    python benchmarks/stlm_options.py time-to runs/ablate-stlm/baseline-s1 runs/ablate-stlm/muon-s1

Tokens/s: full optimiser steps (forward, backward, AdamW) on random tokens at the config's micro-batch and
context, fp32, after 2 warmup steps. Prints one JSON line per row; record the figures in docs/LOG.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lokilm.config import GenerateConfig, load_config
from lokilm.model import Transformer
from lokilm.train.optimizer import build_optimizer

OPTIONS = {
    "baseline": [],
    "share=ffn": ["model.share=ffn"],
    "share=ffn+lora8": ["model.share=ffn", "model.share_lora_rank=8"],
    "share=block": ["model.share=block"],
    "share=block+lora8": ["model.share=block", "model.share_lora_rank=8"],
    "bytes": ["model.input=bytes", "model.byte_context=33", "model.byte_d_model=32", "model.byte_n_head=2",
              "model.byte_n_layer=1"],
    "early_exit": ["model.early_exit=true"],
    "position=sincos": ["model.position=sincos"],
    "position=none": ["model.position=none"],
    "muon": ["train.optimizer=muon"],
}


def params_and_speed(config: str, overrides: list[str], steps: int) -> None:
    for name, extra in OPTIONS.items():
        cfg = load_config(config, [*overrides, *extra])
        torch.manual_seed(0)
        model = Transformer(cfg.model)
        model.init_weights()
        if cfg.model.input == "bytes":  # random chunks: the cost depends on byte_context, not on the bytes
            table = torch.randint(0, 256, model.tok_embeddings.table.shape)
            ends = torch.randint(1, cfg.model.byte_context, (cfg.model.vocab_size,))
            table[torch.arange(cfg.model.vocab_size), ends] = 257
            table[torch.arange(cfg.model.byte_context)[None] > ends[:, None]] = 256
            model.tok_embeddings.table.copy_(table)
        opt = build_optimizer(model, cfg.train)
        B, T = cfg.train.micro_batch_size, cfg.model.context_length
        x = torch.randint(0, cfg.model.vocab_size, (B, T + 1))
        times = []
        for i in range(steps + 2):
            start = time.perf_counter()
            model(x[:, :-1], x[:, 1:]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        print(json.dumps({"option": name, "config": config, "parameters": model.num_params(),
                          "non_embedding": model.num_params(exclude_embeddings=True),
                          "tokens_per_s": round(B * T / median), "step_s": round(median, 4)}), flush=True)


def speculative(run_dir: str, n_tokens: int, n_draft: int, draft_layers: int | None) -> None:
    from lokilm.checkpoint import load_model
    from lokilm.generate import generate_ids
    from lokilm.rundir import RunDir
    from lokilm.speculative import DecodeStats, self_speculative_ids
    from lokilm.tokenizer import encode, eot_id, load_tokenizer

    model, cfg = load_model(run_dir)
    tok = load_tokenizer(RunDir(cfg).tokenizer)
    E = draft_layers or cfg.model.n_layer // 2
    greedy = GenerateConfig(max_new_tokens=n_tokens, temperature=0.0)
    vocab = tok.get_vocab_size()
    for prompt in ["Once upon a time", "The king said", "In the year 1850, the city of", "To be, or not to be"]:
        ids = [eot_id(tok)] + encode(tok, prompt)
        start = time.perf_counter()
        plain = list(generate_ids(model, ids, greedy, vocab))
        t_plain = time.perf_counter() - start
        stats = DecodeStats()
        start = time.perf_counter()
        spec = list(self_speculative_ids(model, ids, greedy, vocab, None, E, n_draft, stats))
        t_spec = time.perf_counter() - start
        print(json.dumps({"run": run_dir, "prompt": prompt, "draft_layers": E, "n_layer": cfg.model.n_layer,
                          "n_draft": n_draft, "tokens": len(plain), "identical": plain == spec,
                          "plain_tokens_per_s": round(len(plain) / t_plain, 1),
                          "speculative_tokens_per_s": round(len(spec) / t_spec, 1),
                          "speedup": round(t_plain / t_spec, 3), **stats.summary()}), flush=True)


def time_to(reference: str, candidate: str) -> None:
    """When the candidate's running held-out bits per byte first reached the reference's final one."""
    from lokilm.train.metrics import read_metrics

    def curve(run):
        return [(r["step"], r.get("elapsed_s", 0.0), r["val_bpb"]) for r in read_metrics(run) if "val_bpb" in r]

    ref, cand = curve(reference), curve(candidate)
    target = ref[-1][2]
    hit = next(((s, t) for s, t, b in cand if b <= target), None)
    print(json.dumps({"reference": reference, "candidate": candidate, "target_bpb": round(target, 4),
                      "reference_steps": ref[-1][0], "reference_s": round(ref[-1][1], 1),
                      "candidate_final_bpb": round(cand[-1][2], 4),
                      "candidate_steps": hit and hit[0], "candidate_s": hit and round(hit[1], 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("params")
    a.add_argument("--config", default="configs/tiny.yaml")
    a.add_argument("--steps", type=int, default=5)
    a.add_argument("overrides", nargs="*")
    b = sub.add_parser("speculative")
    b.add_argument("run_dir")
    b.add_argument("--tokens", type=int, default=128)
    b.add_argument("--draft", type=int, default=4, help="tokens drafted per round")
    b.add_argument("--layers", type=int, help="draft layers E (default n_layer / 2)")
    c = sub.add_parser("time-to")
    c.add_argument("reference")
    c.add_argument("candidate")
    args = p.parse_args()
    if args.what == "params":
        params_and_speed(args.config, args.overrides, args.steps)
    elif args.what == "speculative":
        speculative(args.run_dir, args.tokens, args.draft, args.layers)
    else:
        time_to(args.reference, args.candidate)


if __name__ == "__main__":
    main()
