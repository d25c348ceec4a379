"""Sampling from a trained model with a KV cache: temperature, top-k, top-p, streaming text out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.model import KVCache, Transformer
from lokilm.model.attention import alibi_slopes, rope_cos_sin, sdpa_attention
from lokilm.rundir import RunDir
from lokilm.tokenizer import decode, encode, eot_id, load_tokenizer
from lokilm.checkpoint import load_model


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (B, V); temperature 0 is greedy."""
    if temperature <= 0:
        return finite_logits(logits).argmax(dim=-1)
    logits = finite_logits(logits).float()
    # shifted so the top logit is 0 and stays 0: a tiny temperature then sends the rest to -inf, never the top one
    # to inf (inf - inf is NaN, which multinomial refuses), nor to 0 / 0 when it rounds to 0 in float32
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    logits = torch.where(shifted == 0, shifted, shifted / temperature)
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


def seeded_generator(seed: int, device) -> torch.Generator:
    """A generator seeded with `seed`, or a LokiError for a seed torch cannot take (it keeps 64 bits)."""
    if not -2**63 <= seed < 2**64:
        raise LokiError(f"generate.seed: {seed} is out of range (an integer in [-2**63, 2**64))")
    return torch.Generator(device=device).manual_seed(seed)


def finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """`logits`, or a LokiError when the model gave NaN (its weights hold NaN or inf: every token would be noise)."""
    if bool(logits.isnan().any()):
        raise LokiError("the model's next-token scores are NaN: its checkpoint holds NaN or inf weights "
                        "(a diverged run, or a damaged file); generate from an earlier checkpoint")
    return logits


def _positions_and_bias(model: Transformer, pad: torch.Tensor, past: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row positions (B, T) of cache slots past..past+T-1 under left padding, and the additive attention bias
    (B, n_head or 1, T, past+T): causal, padded keys masked, ALiBi's slope x distance. Distances between slots
    are distances between tokens (a row's padding is all in front), so only masking and positions need the pad."""
    S = past + T
    q_slot = torch.arange(past, S, device=device)
    k_slot = torch.arange(S, device=device)
    # clamped: a row that has stopped is still fed (its output unused) and may run past the context
    positions = (q_slot[None, :] - pad[:, None]).clamp(0, model.cfg.context_length - 1)
    distance = (k_slot[None, :] - q_slot[:, None]).float()
    # a padded query attends to itself, so no row of scores is all -inf (NaN that would spread through v)
    masked = (distance > 0)[None] | ((k_slot[None, None, :] < pad[:, None, None]) & (distance != 0)[None])
    if model.cfg.position == "alibi":
        bias = alibi_slopes(model.cfg.n_head).to(device)[None, :, None, None] * distance[None, None]
    else:
        bias = torch.zeros(1, 1, T, S, device=device)
    return positions, bias.masked_fill(masked[:, None], float("-inf"))


def _unmasked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # one query per row after every key, none of them padding: nothing to mask (and no copies of k, v for GQA)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])


def padded_forward(model: Transformer, idx: torch.Tensor, pad: torch.Tensor, cache: KVCache,
                   last_only: bool = False) -> torch.Tensor:
    """Logits (B, T, V) of left-padded rows idx continuing what `cache` holds; row b has pad[b] padding slots
    in front. The model's own pieces (embeddings, layers, norm and head) with per-row positions and masks.
    last_only: the logits of the last position only (B, 1, V), sparing the head on the rest of a prompt."""
    cfg = model.cfg
    B, T = idx.shape
    positions, bias = _positions_and_bias(model, pad, cache.length, T, idx.device)
    x = model.tok_embeddings(idx)
    if model.pos_embeddings is not None:
        x = x + model.pos_embeddings(positions)
    elif cfg.position == "sincos":
        from lokilm.model.attention import sincos_embedding

        x = x + cfg.init_std * sincos_embedding(positions.flatten(), cfg.d_model).view(B, T, -1).to(x.dtype)
    rope = None
    if cfg.position == "rope":
        cos, sin = rope_cos_sin(positions.flatten(), cfg.d_model // cfg.n_head, cfg.rope_theta)
        rope = cos.view(B, 1, T, -1), sin.view(B, 1, T, -1)
    plain = T == 1 and cfg.position != "alibi" and not bool(pad.any())
    attend = _unmasked if plain else functools.partial(sdpa_attention, bias=bias)
    for i in range(cfg.n_layer):
        x = model.layers[i](x, attend, rope, cache, i)
    cache.length += T
    return model.logits_at(x[:, -1:] if last_only else x)


@torch.no_grad()
def decode_steps(model: Transformer, prompts: list[list[int]], settings: GenerateConfig, vocab_size: int,
                 stop_id: int | None = None, seeds: list[int] | None = None,
                 finished: Callable[[int, list[int]], bool] | None = None) -> Iterator[list[int | None]]:
    """Decode prompts of any lengths together, left-padded in one KV cache: yield, per step, each row's new
    token (None for a row that has stopped). A row stops at stop_id (not yielded), after max_new_tokens, or at
    the end of the model's context, or once finished(b, its new tokens) says so (a stop string); greedy rows
    give exactly what decoding them alone gives. Each row samples from its own generator (seed: seeds[b],
    default settings.seed), so sampled rows do not depend on the batch either."""
    ctx = model.cfg.context_length
    for ids in prompts:
        if len(ids) >= ctx:
            raise LokiError(f"the prompt is {len(ids)} tokens, the model's context is {ctx}: shorten the prompt")
        if not ids:
            raise LokiError("an empty prompt: give at least one token")
    if model.cfg.input != "tokens":
        raise LokiError(f"model.input={model.cfg.input!r}: generation reads token logits; this model has none")
    device = next(model.parameters()).device
    seeds = seeds or [settings.seed] * len(prompts)
    generators = [seeded_generator(s, device) for s in seeds]
    budget = [min(settings.max_new_tokens, ctx - len(ids)) for ids in prompts]
    width = max(len(ids) for ids in prompts)
    pad = torch.tensor([width - len(ids) for ids in prompts], device=device)
    cache = model.new_cache(batch_size=len(prompts), max_len=width + max(budget), device=device)
    x = torch.tensor([[0] * (width - len(ids)) + ids for ids in prompts], device=device)
    logits = padded_forward(model, x, pad, cache, last_only=True)[:, -1]
    active = [b > 0 for b in budget]
    made: list[list[int]] = [[] for _ in prompts]
    while any(active):
        logits[:, vocab_size:] = float("-inf")  # padded vocabulary rows the tokenizer never produces
        if settings.temperature <= 0:
            nxt = finite_logits(logits).argmax(dim=-1)
        else:
            nxt = torch.stack([sample_next(logits[b:b + 1], settings.temperature, settings.top_k, settings.top_p,
                                           generators[b])[0] if active[b] else logits.new_zeros((), dtype=torch.long)
                               for b in range(len(prompts))])
        out: list[int | None] = []
        for b, token in enumerate(nxt.tolist()):
            if active[b] and token == stop_id:
                active[b] = False
            out.append(token if active[b] else None)
            if active[b]:
                made[b].append(token)
                active[b] = len(made[b]) < budget[b] and not (finished and finished(b, made[b]))
        if all(t is None for t in out):
            return
        yield out
        if not any(active):
            return
        logits = padded_forward(model, nxt.view(-1, 1), pad, cache)[:, -1]


def generate_batch(model: Transformer, prompts: list[list[int]], settings: GenerateConfig, vocab_size: int,
                   stop_id: int | None = None, seeds: list[int] | None = None,
                   finished: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
    """Each prompt's new token ids, decoded together (see decode_steps)."""
    new: list[list[int]] = [[] for _ in prompts]
    for step in decode_steps(model, prompts, settings, vocab_size, stop_id, seeds, finished):
        for row, token in zip(new, step):
            if token is not None:
                row.append(token)
    return new


def generate_ids(model: Transformer, prompt_ids: list[int], settings: GenerateConfig, vocab_size: int,
                 stop_id: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time: one forward pass over the prompt, then one token per step."""
    for (token,) in decode_steps(model, [prompt_ids], settings, vocab_size, stop_id):
        if token is not None:
            yield token


def stream_text(tok, tokens: Iterator[int], stream: Callable[[str], None] | None = None) -> Iterator[str]:
    """The text of a stream of new tokens, grown token by token (yielded after each); `stream` receives each
    new piece, held back while it ends inside a multi-byte character."""
    new: list[int] = []
    shown = ""
    text = ""
    for token in tokens:
        new.append(token)
        text = decode(tok, new)
        if stream and not text.endswith("\ufffd"):
            stream(text[len(shown):])
            shown = text
        yield text
    if stream and text != shown:
        stream(text[len(shown):])


class Sampler:
    """A run's newest checkpoint and its tokenizer, loaded (and checksum-verified) once, completing prompts."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu"):
        self.model, cfg = load_model(run_dir, device)
        self.tok = load_tokenizer(RunDir(cfg).tokenizer)

    def _ids(self, prompt: str) -> list[int]:
        return [eot_id(self.tok)] + encode(self.tok, prompt)  # EOT marks the start of a document, as in training

    def complete(self, prompt: str, settings: GenerateConfig, stream: Callable[[str], None] | None = None) -> str:
        """The completion of `prompt`; `stream` receives text as it is made."""
        tokens = generate_ids(self.model, self._ids(prompt), settings, self.tok.get_vocab_size(), stop_id=eot_id(self.tok))
        text = ""
        for text in stream_text(self.tok, tokens, stream):
            pass
        return text

    def complete_batch(self, prompts: list[str], settings: GenerateConfig) -> list[str]:
        """The completions of several prompts, decoded together; each is the text `complete` gives it (every
        row samples with settings.seed)."""
        new = generate_batch(self.model, [self._ids(p) for p in prompts], settings, self.tok.get_vocab_size(),
                             stop_id=eot_id(self.tok))
        return [decode(self.tok, ids) for ids in new]


def generate_from_run(run_dir: str | Path, prompt: str, settings: GenerateConfig,
                      stream: Callable[[str], None] | None = None) -> str:
    """The completion of `prompt` by the run's latest checkpoint (loads it: for many prompts, use Sampler)."""
    return Sampler(run_dir).complete(prompt, settings, stream)
