"""lokilm's model class for lm-evaluation-harness: scores and generates text with a lokilm checkpoint.

lm-eval's TemplateLM splits each (context, continuation) pair into tokens (moving the context's trailing
spaces into the continuation, as for every causal model); this class only runs the model: batched
log-likelihoods, rolling log-likelihoods and batched greedy generation through lokilm's KV cache.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tokenizers import Tokenizer

from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.generate import generate_batch, padded_forward
from lokilm.model import Transformer
from lokilm.tokenizer import decode, encode, eot_id


# Positions per scoring forward on CPU: past about this many a batch's activations outgrow the caches and each
# position costs more (the quick preset ran 1.25x faster than at 32 rows of up to 512; docs/LOG.md).
MAX_TOKENS_CPU = 2048


@register_model("lokilm")
class LokiLM(TemplateLM):
    def __init__(self, model: Transformer, tokenizer: Tokenizer, batch_size: int = 32, progress=None,
                 max_tokens: int | None = None):
        super().__init__()
        if model.cfg.input == "bytes":  # its head decodes bytes; lm-eval's requests need token logits
            raise LokiError("the byte-level model has no token logits for lm-eval: compare it by held-out bits "
                            "per byte (lokilm.eval.bpb)")
        self.model, self.tok, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = model.cfg.context_length
        self._device = next(model.parameters()).device
        self.max_tokens = max_tokens or (MAX_TOKENS_CPU if self._device.type == "cpu" else batch_size * self.max_length)
        if self._device.type == "cuda" and model.cfg.attention in ("auto", "flex"):
            # nearly every batch has a new length, and compiled FlexAttention recompiles for each one:
            # score with PyTorch SDPA (the same attention, ALiBi as an additive bias) instead
            model.cfg.attention = "sdpa"
        self.vocab_size = tokenizer.get_vocab_size()
        self.progress = progress or (lambda done, total, what: None)

    @property
    def eot_token_id(self) -> int:
        return eot_id(self.tok)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return encode(self.tok, string)

    def _autocast(self):
        from lokilm.parallel.precision import autocast_for

        return autocast_for(self._device, "auto")()  # the one evaluation policy: bf16 on CUDA, as bits per byte

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) per pair.

        The context is cut from the left to fit the model (a continuation longer than the model's context keeps
        its end). Pairs with the same context (the choices of one item) read it once: one forward over the
        context fills a KV cache, and its last position predicts every choice's first token, so the one-token
        answers " A".." D" of MMLU share one forward pass outright; each longer choice then runs its other
        tokens over a copy of that cache. Contexts run longest first, in batches padded on the right only to
        the batch's longest, and choices likewise: with causal attention the padding never affects the scored
        positions, and similar lengths keep it small. A forward holds at most batch_size rows and about
        max_tokens positions. The head and log_softmax run on the positions that predict a continuation token
        only (and the choices' padding).
        """
        dev = self._device
        groups: dict[tuple[int, ...], list[int]] = {}  # context as the model reads it -> the pairs continuing it
        scored: list[list[int]] = []  # each pair's continuation tokens that fit
        for i, (context, continuation) in enumerate(pairs):
            tokens = (context + continuation)[-(self.max_length + 1):]
            n = min(len(continuation), len(tokens) - 1)
            groups.setdefault(tuple(tokens[:len(tokens) - n]), []).append(i)
            scored.append(tokens[len(tokens) - n:])
        order = sorted(groups, key=len, reverse=True)
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        done = 0
        while done < len(order):
            rows = order[done:done + self._take(len(order[done]), len(order) - done)]
            width = len(rows[0])
            x = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], device=dev)
            last = torch.tensor([b * width + len(r) - 1 for b, r in enumerate(rows)], device=dev)
            cache = self.model.new_cache(len(rows), width, dev)
            with self._autocast():
                h = self.model.hidden(x, cache)[0].flatten(0, 1)[last]
                first = self._logprobs(self.model.head(h))  # every continuation's first token
            pad = torch.tensor([width - len(r) for r in rows], device=dev)
            members = [(i, b) for b, row in enumerate(rows) for i in groups[row]]
            for i, b in members:  # one-token continuations: their context's last position alone
                if len(scored[i]) == 1:
                    self._record(results, i, scored[i], first[b:b + 1])
            longer = sorted((m for m in members if len(scored[m[0]]) > 1), key=lambda m: -len(scored[m[0]]))
            while longer:
                rest = len(scored[longer[0][0]]) - 1
                n = self._take(rest, len(longer))
                chunk, longer = longer[:n], longer[n:]
                owner = torch.tensor([b for _, b in chunk], device=dev)
                # each choice's copy of its context's keys and values, moved to the end, where its own tokens follow:
                # the left-padded layout padded_forward reads (per-row positions, padded slots masked)
                part = self.model.new_cache(len(chunk), width + rest, dev)
                slots = (torch.arange(width, device=dev) - pad[owner, None]) % width
                for mine, theirs in ((part.k, cache.k), (part.v, cache.v)):
                    mine[:, :, :, :width] = theirs[:, owner[:, None], :, slots].permute(2, 0, 3, 1, 4)
                part.length = width
                y = torch.tensor([scored[i][:-1] + [0] * (rest + 1 - len(scored[i])) for i, _ in chunk], device=dev)
                with self._autocast():
                    later = self._logprobs(padded_forward(self.model, y, pad[owner], part))
                for (i, b), lp in zip(chunk, later):
                    self._record(results, i, scored[i], torch.cat([first[b:b + 1], lp[:len(scored[i]) - 1]]))
            done += len(rows)
            self.progress(done, len(order), "scored")
        return results

    def _take(self, longest: int, available: int) -> int:
        """How many rows (longest first) one forward takes: up to batch_size and about max_tokens positions."""
        return max(1, min(self.batch_size, available, self.max_tokens // max(1, longest)))

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.float()[..., :self.vocab_size], dim=-1)

    def _record(self, results: list, i: int, continuation: list[int], lp: torch.Tensor) -> None:
        target = torch.tensor(continuation, device=self._device)
        results[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        # lokilm documents start after an EOT token, as in training; lm-eval already puts one alone in
        # front of a continuation with no context
        eot = self.eot_token_id
        return self.score([(ctx if ctx[:1] == [eot] else [eot] + ctx, cont) for _, ctx, cont in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, in disjoint windows of the model's context (lm-eval's windowing)."""
        windows, owner = [], []
        for n, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for w in get_rolling_token_windows(tokens, self.eot_token_id, self.max_length, 1):
                windows.append(make_disjoint_window(w))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, self.score(windows)):
            totals[n] += ll
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if asked) continuations, cut at the first stop string; requests with the same
        settings are decoded batch_size at a time (left-padded, similar lengths together), each row stopping
        at its first stop string. Greedy rows are exactly what decoding them one by one gives."""
        jobs: dict[tuple, list[int]] = {}  # generation settings -> the requests that use them
        for n, req in enumerate(requests):
            kwargs = req.args[1]
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            max_new = min(int(kwargs.get("max_gen_toks", 256)), self.max_length // 2)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            jobs.setdefault((until, max_new, temperature), []).append(n)
        outputs: list[str | None] = [None] * len(requests)
        done = 0
        for (until, max_new, temperature), members in jobs.items():
            settings = GenerateConfig(max_new_tokens=max_new, top_k=None, top_p=None, seed=0, temperature=temperature)
            # keep the end of the prompt: the question being asked is last
            prompts = {n: ([self.eot_token_id] + self.tok_encode(requests[n].args[0]))[-(self.max_length - max_new):]
                       for n in members}
            members = sorted(members, key=lambda n: len(prompts[n]), reverse=True)
            for start in range(0, len(members), self.batch_size):
                rows = members[start:start + self.batch_size]
                hit = lambda b, new: any(s in decode(self.tok, new) for s in until)  # noqa: E731
                with self._autocast():
                    new = generate_batch(self.model, [prompts[n] for n in rows], settings, self.vocab_size,
                                         stop_id=self.eot_token_id, finished=hit if until else None)
                for n, ids in zip(rows, new):
                    text = decode(self.tok, ids)
                    for s in until:
                        text = text.split(s)[0]
                    outputs[n] = text
                done += len(rows)
                self.progress(done, len(requests), "generated")
        return outputs
