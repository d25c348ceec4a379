"""Sampling from the byte-level model: the core model steps one token at a time with its KV cache, and within
each token the byte decoder writes the bytes one at a time, until its end-of-token symbol."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator

import torch

from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.generate import sample_next, seeded_generator
from lokilm.model import Transformer
from lokilm.model.byte_level import chunk_bytes


@torch.no_grad()
def generate_bytes(model: Transformer, prompt_ids: list[int], settings: GenerateConfig,
                   stop_id: int | None = None) -> Iterator[bytes]:
    """Yield the bytes of each new token (a chunk the byte decoder wrote, which need not be a vocabulary token)."""
    ctx = model.cfg.context_length
    if len(prompt_ids) >= ctx:
        raise LokiError(f"the prompt is {len(prompt_ids)} tokens, the model's context is {ctx}: shorten the prompt")
    device = model.norm.weight.device
    generator = seeded_generator(settings.seed, device)
    max_len = min(ctx, len(prompt_ids) + settings.max_new_tokens)
    cache = model.new_cache(batch_size=1, max_len=max_len, device=device)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits, settings.temperature, settings.top_k, settings.top_p, generator)

    h, _ = model.hidden(torch.tensor([prompt_ids], device=device), cache)
    for _ in range(max_len - len(prompt_ids)):
        chunk = model.head.decode(h[:, -1], pick)
        special = model.tok_embeddings.special_token(chunk[0])
        if special is not None and special == stop_id:
            return
        yield chunk_bytes(chunk[0])
        h, _ = model.hidden(chunk.view(1, 1, -1), cache)


def complete_bytes(model: Transformer, tok, prompt: str, settings: GenerateConfig,
                   stream: Callable[[str], None] | None = None) -> str:
    """The completion of `prompt`, decoded as UTF-8 as the bytes arrive (a character split over two tokens is
    shown once whole; invalid bytes become U+FFFD)."""
    from lokilm.tokenizer import encode, eot_id

    eot = eot_id(tok)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts = []
    for data in generate_bytes(model, [eot] + encode(tok, prompt), settings, stop_id=eot):
        text = decoder.decode(data)
        parts.append(text)
        if stream and text:
            stream(text)
    tail = decoder.decode(b"", final=True)
    if stream and tail:
        stream(tail)
    return "".join(parts) + tail
