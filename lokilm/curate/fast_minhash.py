"""datatrove's MinHash signature step, computed fast, writing byte-identical signature files.

`FastMinhashDedupSignature` is a `MinhashDedupSignature` (same constructor, same files, same buckets, clusters
and filter downstream); it overrides only how a document's shingles and signature are computed. On the shared
corpus datatrove's step spends its time in three places, each replaced by an exact equivalent:

- `simplify_text`: a per-character Python generator strips diacritics, and `str.translate` with a dict maps
  punctuation one code point at a time. Punctuation becomes a regex character class (a 256-byte table for
  ASCII). An ASCII text has no diacritics (its NFD is itself, and no ASCII
  character is a combining mark); a non-ASCII text deletes only
  the combining marks it actually contains, in one `str.translate`. Whitespace runs collapse with
  `" ".join(text.split())`, which is datatrove's `re.sub(r"\\s+", " ", text.strip())`: `\\s` in a str pattern
  and `str.split()` use the same whitespace predicate (tests/test_fast_minhash.py checks every code point).
- shingles: n-grams are joined and hashed by `map` over `zip` of the word list (no Python frame per n-gram);
  `RegexWordTokenizer`'s `\\S+` words of a text are exactly `text.split()`.
- the signature: `(shingle * a + b) % p` over a whole book is a (words x hashes) uint64 array of hundreds of
  MB, three times over; blocks of rows that fit in the cache, computed in place, give the same minima with no
  large temporaries. The product and sum wrap around modulo 2**64 as datatrove's do; `% p` for the Mersenne
  prime p = 2**61 - 1 is a shift, a mask and an add (2.5x a uint64 division); 32-bit signatures keep
  datatrove's `%` and its mask before the minimum.

tests/test_fast_minhash.py checks identical simplified text, shingles and signature files against datatrove on
the bundled corpus and on adversarial texts; benchmarks/curate_throughput.py times both side by side.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature, _mersenne_prime
from datatrove.utils.text import (DEF_TEXT_NORM_CONFIG, MONTHS_PATTERN, NUMBERS_PATTERN, PUNCTUATION,
                                  WEEKDAYS_PATTERN, TextNormConfig)

from lokilm.curate.words import RegexWordTokenizer

_ASCII_PUNCTUATION = bytes(ord(" ") if chr(i) in PUNCTUATION else i for i in range(128)) + bytes(range(128, 256))
_PUNCTUATION = re.compile("[" + re.escape(PUNCTUATION) + "]")  # 4x datatrove's dict translate on non-ASCII text
_SHIFT = np.uint64(61)  # datatrove's _mersenne_prime is 2**61 - 1
_BLOCK = 1 << 15  # signature entries per block (256 KiB of uint64): one block stays in the L2 cache


def simplify_text(text: str, config: TextNormConfig = DEF_TEXT_NORM_CONFIG) -> str:
    """Exactly `datatrove.utils.text.simplify_text(text, config)`, the same steps in the same order."""
    return _simplify(text, config)[0]


def _simplify(text: str, config: TextNormConfig) -> tuple[str, list[str] | None]:
    """The simplified text, and its `split()` words when they fell out of the whitespace step unchanged."""
    if config.lowercase:
        text = text.lower()
    if config.norm_numbers:
        text = NUMBERS_PATTERN.sub("0", text)
    if config.norm_weekdays:
        text = WEEKDAYS_PATTERN.sub("WEEKDAY", text)
    if config.norm_monthnames:
        text = MONTHS_PATTERN.sub("MONTH", text)
    ascii_only = text.isascii()
    if config.remove_punctuation:
        if ascii_only:
            text = text.encode("ascii").translate(_ASCII_PUNCTUATION).decode("ascii")
        else:
            text = _PUNCTUATION.sub(" ", text)
    words = None
    if config.norm_whitespace:
        words = text.split()
        text = " ".join(words)
    if config.norm_unicode_diacritics and not (ascii_only or text.isascii()):
        text = unicodedata.normalize("NFD", text)
        for mark in [c for c in set(text) if unicodedata.category(c) == "Mn"]:
            text = text.replace(mark, "")
        words = None  # removing a lone mark can leave two spaces side by side, or one at either end
    return text.strip(), words  # a join of split() words has no space to strip: they are still its words


class FastMinhashDedupSignature(MinhashDedupSignature):
    """datatrove's `MinhashDedupSignature` with the same output, faster (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._split_words = type(self.word_tokenizer) is RegexWordTokenizer  # its words are text.split()
        hc = self.config.hash_config
        if hc.hash_fc == "xxhash":  # datatrove's xxhash32/64 are one-line wrappers: call the function itself
            import xxhash

            self._hash_func = xxhash.xxh32_intdigest if hc.precision == 32 else xxhash.xxh64_intdigest

    def get_shingles(self, text: str) -> np.ndarray:
        simple, words = _simplify(text, self.config.norm_config)
        if not self._split_words:
            words = self.word_tokenizer.word_tokenize(simple)
        elif words is None:
            words = simple.split()
        n = self.config.n_grams
        count = len(words) - n + 1
        if count <= 0:
            return np.empty((0, 1), dtype=np.uint64)
        grams = map(" ".join, zip(*(words[i:] for i in range(n))))
        return np.fromiter(map(self._hash_func, grams), dtype=np.uint64, count=count).reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        a, b = self.parameters
        hc = self.config.hash_config
        rows = max(1, _BLOCK // a.shape[1])
        block = np.empty((min(rows, len(shingles)), a.shape[1]), dtype=np.uint64)
        high = np.empty_like(block)
        best = None
        for start in range(0, len(shingles), rows):
            part = shingles[start:start + rows]
            phv, top = block[:len(part)], high[:len(part)]
            np.multiply(part, a, out=phv)  # wraps modulo 2**64, as datatrove's `shingles * a`
            np.add(phv, b, out=phv)
            if hc.precision == 64:
                # x % p for p = 2**61 - 1 without a division: 2**61 = 1 (mod p), so x = (x >> 61) + (x & p)
                # (mod p), a sum in [0, p + 7]; the rare sums >= p then lose one p
                np.right_shift(phv, _SHIFT, out=top)
                np.bitwise_and(phv, _mersenne_prime, out=phv)
                np.add(phv, top, out=phv)
                if phv.max() >= _mersenne_prime:
                    np.subtract(phv, _mersenne_prime, out=phv, where=phv >= _mersenne_prime)
            else:
                np.remainder(phv, _mersenne_prime, out=phv)
                np.bitwise_and(phv, hc.max, out=phv)  # datatrove masks before the minimum
            low = phv.min(axis=0)
            best = low if best is None else np.minimum(best, low, out=best)
        return best.astype(hc.np_dtype).reshape(self.config.num_buckets, -1).tolist()
