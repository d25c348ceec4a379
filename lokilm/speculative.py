"""Faster decoding from an early-exit model (LayerSkip, Elhoushi et al. 2024): exit at the first confident layer
(`--exit-threshold p`), or self-speculative decoding (`--self-speculative E`): the first E layers draft a few
tokens, the whole model checks them in one forward pass, and the longest agreeing prefix is kept. Greedy
self-speculative output is the full model's greedy output, token for token; only the time differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lokilm.byte_generate import complete_bytes
from lokilm.checkpoint import load_model
from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.generate import finite_logits, generate_ids, sample_next, seeded_generator
from lokilm.model import Transformer
from lokilm.model.early_exit import exit_step
from lokilm.rundir import RunDir
from lokilm.tokenizer import decode, encode, eot_id, load_tokenizer


@dataclass
class DecodeStats:
    """What a decoding run did: tokens made, layers run per token (exit), drafts proposed and accepted."""
    tokens: int = 0
    layers: list[int] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    def summary(self) -> dict:
        out = {"tokens": self.tokens}
        if self.layers:
            out["mean_exit_layer"] = sum(self.layers) / len(self.layers)
        if self.rounds:
            out.update(rounds=self.rounds, acceptance=self.accepted / max(1, self.drafted))
        return out


def _start(model: Transformer, prompt_ids: list[int], settings: GenerateConfig, extra: int = 0):
    ctx = model.cfg.context_length
    if len(prompt_ids) >= ctx:
        raise LokiError(f"the prompt is {len(prompt_ids)} tokens, the model's context is {ctx}: shorten the prompt")
    device = model.norm.weight.device
    max_len = min(ctx, len(prompt_ids) + settings.max_new_tokens)
    return device, max_len, model.new_cache(batch_size=1, max_len=max_len + extra, device=device)


@torch.no_grad()
def early_exit_ids(model: Transformer, prompt_ids: list[int], settings: GenerateConfig, vocab_size: int,
                   stop_id: int | None, threshold: float, stats: DecodeStats | None = None) -> Iterator[int]:
    """generate_ids, but each new token leaves the model at the first layer more than `threshold` sure of it."""
    if not 0.0 < threshold <= 1.0:
        raise LokiError(f"--exit-threshold must be in (0, 1], got {threshold}")
    stats = stats if stats is not None else DecodeStats()
    device, max_len, cache = _start(model, prompt_ids, settings)
    generator = seeded_generator(settings.seed, device)
    logits = model(torch.tensor([prompt_ids], device=device), cache=cache)[:, -1]
    for _ in range(max_len - len(prompt_ids)):
        logits[:, vocab_size:] = float("-inf")
        nxt = sample_next(logits, settings.temperature, settings.top_k, settings.top_p, generator)
        if int(nxt) == stop_id:
            return
        stats.tokens += 1
        yield int(nxt)
        logits, layers = exit_step(model, nxt.view(1, 1), cache, threshold, vocab_size)
        stats.layers.append(layers)


@torch.no_grad()
def self_speculative_ids(model: Transformer, prompt_ids: list[int], settings: GenerateConfig, vocab_size: int,
                         stop_id: int | None, draft_layers: int, n_draft: int = 4,
                         stats: DecodeStats | None = None) -> Iterator[int]:
    """Greedy decoding, drafted `n_draft` tokens at a time by the first `draft_layers` layers and verified by the
    whole model. The draft and the verification share one KV cache: the verification pass rewrites the draft's
    positions, and rejected positions are dropped by moving the cache length back."""
    n_layer = model.cfg.n_layer
    if not 0 < draft_layers < n_layer:
        raise LokiError(f"--self-speculative E drafts with the first E layers: E must be in 1..{n_layer - 1}, "
                        f"got {draft_layers}")
    if settings.temperature > 0:
        raise LokiError("--self-speculative decodes greedily (its output is then exactly the full model's): "
                        "pass --temperature 0")
    stats = stats if stats is not None else DecodeStats()
    device, max_len, cache = _start(model, prompt_ids, settings)
    budget = max_len - len(prompt_ids)

    def greedy(logits: torch.Tensor) -> torch.Tensor:
        logits[..., vocab_size:] = float("-inf")
        return finite_logits(logits).argmax(-1)

    # Invariant: the cache holds every output but the last, `token`, which is fed at the next round's start.
    token = greedy(model(torch.tensor([prompt_ids], device=device), cache=cache)[0, -1])
    out = 0
    while True:
        if int(token) == stop_id:
            return
        stats.tokens += 1
        yield int(token)
        out += 1
        if out >= budget:
            return
        k = min(n_draft, budget - out)  # the verification pass must fit in the context
        start = cache.length
        drafts, current = [], token
        for _ in range(k):
            current = greedy(model(current.view(1, 1), cache=cache, exit_layer=draft_layers)[0, -1])
            drafts.append(current)
        cache.length = start
        checked = greedy(model(torch.stack([token, *drafts]).view(1, -1), cache=cache)[0])
        agree = 0
        while agree < k and int(drafts[agree]) == int(checked[agree]):
            agree += 1
        stats.rounds, stats.drafted, stats.accepted = stats.rounds + 1, stats.drafted + k, stats.accepted + agree
        cache.length = start + 1 + agree  # the token and the accepted drafts; the correction is the new `token`
        for d in drafts[:agree]:
            if int(d) == stop_id:
                return
            stats.tokens += 1
            yield int(d)
            out += 1
        token = checked[agree]
        if out >= budget:
            return


class Decoder:
    """A run's model and tokenizer, completing prompts with early exit, self-speculative or byte-level decoding
    (the same interface as lokilm.generate.Sampler)."""

    def __init__(self, run_dir: str | Path, exit_threshold: float | None = None, draft_layers: int | None = None,
                 device: str | torch.device = "cpu"):
        self.model, cfg = load_model(run_dir, device)
        self.tok = load_tokenizer(RunDir(cfg).tokenizer)
        self.exit_threshold, self.draft_layers = exit_threshold, draft_layers
        self.stats = DecodeStats()
        if cfg.model.input == "bytes" and (exit_threshold is not None or draft_layers is not None):
            raise LokiError("--exit-threshold and --self-speculative are for token models; this run is byte-level")

    def ids(self, prompt_ids: list[int], settings: GenerateConfig, stop_id: int | None) -> Iterator[int]:
        vocab = self.tok.get_vocab_size()
        if self.draft_layers is not None:
            return self_speculative_ids(self.model, prompt_ids, settings, vocab, stop_id, self.draft_layers,
                                        stats=self.stats)
        if self.exit_threshold is not None:
            return early_exit_ids(self.model, prompt_ids, settings, vocab, stop_id, self.exit_threshold, self.stats)
        return generate_ids(self.model, prompt_ids, settings, vocab, stop_id=stop_id)

    def complete(self, prompt: str, settings: GenerateConfig, stream: Callable[[str], None] | None = None) -> str:
        if self.model.cfg.input == "bytes":
            return complete_bytes(self.model, self.tok, prompt, settings, stream)
        eot = eot_id(self.tok)
        new: list[int] = []
        shown = ""
        for token in self.ids([eot] + encode(self.tok, prompt), settings, eot):
            new.append(token)
            text = decode(self.tok, new)
            if stream and not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                stream(text[len(shown):])
                shown = text
        text = decode(self.tok, new)
        if stream and text != shown:
            stream(text[len(shown):])
        return text
