"""Sampling from a trained model with a KV cache: temperature, top-k, top-p, streaming text out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml

from lokilm.config import Config, GenerateConfig, from_dict
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.rundir import RunDir
from lokilm.tokenizer import decode, encode, eot_id, load_tokenizer
from lokilm.checkpoint import load_model


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (B, V); temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token once the tokens ranked above it already cover top_p (the top one always stays)
        drop = probs.cumsum(dim=-1) - probs > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(model: Transformer, prompt_ids: list[int], settings: GenerateConfig, vocab_size: int,
                 stop_id: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time: one forward pass over the prompt, then one token per step."""
    ctx = model.cfg.context_length
    if len(prompt_ids) >= ctx:
        raise LokiError(f"the prompt is {len(prompt_ids)} tokens, the model's context is {ctx}: shorten the prompt")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    max_len = min(ctx, len(prompt_ids) + settings.max_new_tokens)
    cache = model.new_cache(batch_size=1, max_len=max_len, device=device)
    logits = model(torch.tensor([prompt_ids], device=device), cache=cache)[:, -1]
    for _ in range(max_len - len(prompt_ids)):
        logits[:, vocab_size:] = float("-inf")  # padded vocabulary rows the tokenizer never produces
        nxt = sample_next(logits, settings.temperature, settings.top_k, settings.top_p, generator)
        token = int(nxt)
        if token == stop_id:
            return
        yield token
        logits = model(nxt.view(1, 1), cache=cache)[:, -1]


class Sampler:
    """A run's newest checkpoint and its tokenizer, loaded (and checksum-verified) once, completing prompts."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu"):
        self.model, cfg = load_model(run_dir, device)
        self.tok = load_tokenizer(RunDir(cfg).tokenizer)

    def complete(self, prompt: str, settings: GenerateConfig, stream: Callable[[str], None] | None = None) -> str:
        """The completion of `prompt`; `stream` receives text as it is made."""
        tok = self.tok
        eot = eot_id(tok)
        ids = [eot] + encode(tok, prompt)  # EOT marks the start of a document, as in training
        new: list[int] = []
        shown = ""
        for token in generate_ids(self.model, ids, settings, tok.get_vocab_size(), stop_id=eot):
            new.append(token)
            text = decode(tok, new)
            if stream and not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                stream(text[len(shown):])
                shown = text
        text = decode(tok, new)
        if stream and text != shown:
            stream(text[len(shown):])
        return text


def generate_from_run(run_dir: str | Path, prompt: str, settings: GenerateConfig,
                      stream: Callable[[str], None] | None = None) -> str:
    """The completion of `prompt` by the run's latest checkpoint (loads it: for many prompts, use Sampler)."""
    return Sampler(run_dir).complete(prompt, settings, stream)
