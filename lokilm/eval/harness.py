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
from lokilm.generate import generate_batch
from lokilm.model import Transformer
from lokilm.tokenizer import decode, encode, eot_id


@register_model("lokilm")
class LokiLM(TemplateLM):
    def __init__(self, model: Transformer, tokenizer: Tokenizer, batch_size: int = 32, progress=None):
        super().__init__()
        self.model, self.tok, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = model.cfg.context_length
        self._device = next(model.parameters()).device
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

        The context is cut from the left to fit the model. The model reads tokens[:-1] and predicts
        tokens[1:], so the last len(continuation) predictions are exactly the continuation's tokens. Pairs
        with the same input (the one-token answers " A".." D" of MMLU) share one forward pass. Inputs run
        longest first, in batches padded on the right only to the batch's longest row: with causal
        attention the padding never affects the scored positions, and similar lengths keep it small.
        """
        inputs: dict[tuple[int, ...], list[int]] = {}  # model input -> the pairs that read it
        for i, (context, continuation) in enumerate(pairs):
            tokens = (context + continuation)[-(self.max_length + 1):]
            inputs.setdefault(tuple(tokens[:-1]), []).append(i)
        order = sorted(inputs, key=len, reverse=True)
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = len(rows[0])
            x = torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], device=self._device)
            # only the positions that predict a continuation token go through the head: each row's last n
            n = [min(len(row), max(len(pairs[i][1]) for i in inputs[row])) for row in rows]
            at = torch.tensor([b * width + p for b, (row, k) in enumerate(zip(rows, n))
                               for p in range(len(row) - k, len(row))], device=self._device)
            with self._autocast():
                h = self.model.hidden(x)[0].flatten(0, 1)[at]
                logits = self.model.head(h)
            logprobs = F.log_softmax(logits.float()[:, :self.vocab_size], dim=-1).split(n)
            for row, lp_row in zip(rows, logprobs):
                for i in inputs[row]:
                    target = torch.tensor(pairs[i][1][-len(lp_row):], device=self._device)
                    lp = lp_row[len(lp_row) - len(target):]  # the positions predicting this continuation
                    results[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
            self.progress(min(start + self.batch_size, len(order)), len(order), "scored")
        return results

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
