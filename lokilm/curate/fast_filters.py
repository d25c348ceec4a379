"""datatrove's Gopher quality, Gopher repetition and C4 filters, computed fast, with the same decisions and reasons.

Each class is a datatrove `BaseFilter` taking the constructor arguments of its datatrove counterpart, so it runs
under the local, Slurm and Ray executors. A document gets exactly the keep/drop decision, the removal reason
(and, for C4, the rewritten text) that datatrove's filter gives with lokilm's `RegexWordTokenizer`
(whitespace words, regex sentences): tests/test_fast_filters.py checks it on the bundled corpus and on
adversarial texts. What differs is how the numbers are computed:

- one analysis of a text, shared by the filters (they see the same `doc.text` in turn): its code points as a
  numpy array, whitespace/punctuation/letter flags by table lookup, word boundaries, and a polynomial hash of
  every prefix of the words' characters, from which any word or n-gram hash is two array lookups;
- n-gram counts by sorting 64-bit hashes instead of joining strings into Python sets;
- datatrove's greedy "duplicated n-gram characters" scan visits only the positions whose n-gram occurred
  earlier (usually a few percent of them);
- early exit at the first failed rule, as datatrove.

Hashes only find candidates. Every n-gram the decision rests on (the top n-gram's group, each duplicate the
scan counts) is compared as text with its first occurrence; on a mismatch (a hash collision, never seen in
practice) the rule falls back to datatrove's own function for that document, so the result is always exact.
"""

from __future__ import annotations

import bisect
import re
from functools import lru_cache

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
from datatrove.utils.text import PUNCTUATION_SET

from lokilm.curate.words import _SENTENCE_END

_B = np.uint64(0x9E3779B97F4A7C15)  # odd multipliers (mod 2^64 they are invertible): the prefix hash's base...
_B_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 1 << 64))
_M1, _M2 = np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)  # ...a code point's value: c * M1 + M2
_C = np.uint64(0xD6E8FEB86659FD93)  # combines word hashes into a word-tuple hash


_TEXT, _ALPHA, _SPACE = 1, 2, 4  # a code point's flags: not punctuation (and not space), a letter, whitespace


@lru_cache(1)
def _table() -> np.ndarray:
    """The flags of every code point, from the very predicates datatrove applies (isspace, PUNCTUATION_SET,
    isalpha); built once per process (about a second)."""
    flags = bytearray(0x110000)
    for i in range(0x110000):
        c = chr(i)
        if c.isspace():
            flags[i] = _SPACE
        else:
            flags[i] = (c not in PUNCTUATION_SET) * _TEXT | c.isalpha() * _ALPHA
    return np.frombuffer(bytes(flags), dtype=np.uint8)


_POW: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]  # B^j and B^-j, grown as texts need


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(_POW[0]) < n:
        size = max(n, 2 * len(_POW[0]))
        with np.errstate(over="ignore"):
            for k, base in enumerate((_B, _B_INV)):
                p = np.full(size, base, np.uint64)
                p[0] = 1
                _POW[k] = np.cumprod(p, dtype=np.uint64)
    return _POW[0][:n], _POW[1][:n]


class TextAnalysis:
    """What the rules need from one text, each part computed on first use."""

    def __init__(self, text: str):
        self.text = text
        self._words = self._bounds = self._prefix = self._word_hashes = self._lists = None

    @property
    def words(self) -> list[str]:  # = RegexWordTokenizer.word_tokenize (r"\S+" and str.isspace agree everywhere)
        if self._words is None:
            self._words = self.text.split()
        return self._words

    @property
    def bounds(self):
        """(codes, non-space mask, word starts, word ends) in code-point positions; sets .flags."""
        if self._bounds is None:
            codes = np.frombuffer(self.text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
            flags = _table()[codes]
            ns = (flags & _SPACE) == 0
            padded = np.zeros(len(ns) + 2, np.int8)
            padded[1:-1] = ns
            edge = padded[1:] - padded[:-1]  # +1 where a word starts, -1 just after it ends
            self._bounds = codes, ns, np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
            self.flags = flags
        return self._bounds

    @property
    def prefix(self):
        """(P, off): P[k] = sum over the first k word characters of value * B^j; word j's characters are the
        concatenation's [off[j], off[j+1]). The hash of any run of characters is (P[b] - P[a]) * B^-a."""
        if self._prefix is None:
            codes, ns, starts, ends = self.bounds
            self.stream = codes[ns]  # the words' characters, concatenated: "".join(words) as code points
            values = self.stream.astype(np.uint64)
            pw, _ = _powers(len(values))
            p = np.zeros(len(values) + 1, np.uint64)
            np.cumsum((values * _M1 + _M2) * pw, dtype=np.uint64, out=p[1:])
            self._prefix = p, np.concatenate(([0], np.cumsum(ends - starts)))
        return self._prefix

    def stream_lists(self) -> tuple[bytes, list[int]]:
        """("".join(words) as UTF-32 bytes, 4 a character; word offsets into it as a list), for Python loops."""
        if self._lists is None:
            self._lists = self.stream.tobytes(), self.prefix[1].tolist()
        return self._lists

    def span_hash(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Hashes of the word-character runs [a, b) (a function of those characters only)."""
        p, _ = self.prefix
        _, inv = _powers(len(p))
        return (p[b] - p[a]) * inv[a]  # uint64 arrays wrap silently: the arithmetic is mod 2^64


_cache: list[TextAnalysis] = []


def analyse(text: str) -> TextAnalysis:
    """The analysis of `text`, shared by the filters that see the same string one after the other."""
    if _cache and _cache[0].text is text:
        return _cache[0]
    a = TextAnalysis(text)
    _cache[:] = [a]
    return a


class FastGopherQuality(BaseFilter):
    """datatrove's GopherQualityFilter (same arguments, rules, order and reasons)."""

    name = "🥇 Gopher Quality (fast)"

    def __init__(self, min_doc_words: int | None = 50, max_doc_words: int | None = 100000,
                 min_avg_word_length: int | None = 3, max_avg_word_length: int | None = 10,
                 max_symbol_word_ratio: float | None = 0.1, max_bullet_lines_ratio: float | None = 0.9,
                 max_ellipsis_lines_ratio: float | None = 0.3, max_non_alpha_words_ratio: float | None = 0.8,
                 min_stop_words: int | None = 2, stop_words: list[str] | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = min_avg_word_length, max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio, self.max_ellipsis_lines_ratio = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.max_non_alpha_words_ratio, self.min_stop_words = max_non_alpha_words_ratio, min_stop_words
        self.stop_words = set(STOP_WORDS if stop_words is None else stop_words)
        self._stop_re = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        a = analyse(text)
        if self.min_doc_words and len(text) < 20 * self.min_doc_words and len(text.split()) < self.min_doc_words:
            return False, "gopher_short_doc"  # a stub: fewer words, so fewer non-symbol words, found cheaply
        codes, ns, starts, ends = a.bounds
        n_words = len(starts)
        # per word, the union of its characters' flags (a word's span runs on over the spaces after it, whose
        # flags are 0): a "non-symbol word" has a character that is not punctuation
        word_flags = np.bitwise_or.reduceat(a.flags & (_TEXT | _ALPHA), starts) if n_words else np.zeros(0, np.uint8)
        has_text = (word_flags & _TEXT).astype(bool)
        n_text_words = int(np.count_nonzero(has_text))
        if self.min_doc_words and n_text_words < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_text_words > self.max_doc_words:
            return False, "gopher_long_doc"
        if n_text_words:  # np.mean of an empty list is nan, which passes both comparisons
            lengths = ends - starts
            avg = int(lengths[has_text].sum()) / n_text_words  # = np.mean of the ints, exactly
            if self.min_avg_word_length and avg < self.min_avg_word_length:
                return False, "gopher_below_avg_threshold"
            if self.max_avg_word_length and avg > self.max_avg_word_length:
                return False, "gopher_above_avg_threshold"
        if not n_words:
            raise ZeroDivisionError("division by zero")  # what datatrove's filter does here (min_doc_words=0)
        ellipses = text.count("...") + text.count("…")
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if self.max_symbol_word_ratio and ellipses / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        # each bullet line holds a "•" or "-" and each ellipsis line a "..." or "…": when there are too few of
        # those characters for the ratio to be exceeded, the line loop can be skipped
        if self.max_bullet_lines_ratio and (text.count("•") + text.count("-")) / len(lines) > self.max_bullet_lines_ratio:
            if sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > self.max_bullet_lines_ratio:
                return False, "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio and ellipses / len(lines) > self.max_ellipsis_lines_ratio:
            if sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
                return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio:
            if int(np.count_nonzero(word_flags & _ALPHA)) / n_words < self.max_non_alpha_words_ratio:
                return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and not self._has_stop_words(text):
            return False, "gopher_enough_stop_words"
        return True

    def _has_stop_words(self, text: str) -> bool:
        """len(stop_words & set(words)) >= min_stop_words, by searching the text for whole words that are stop
        words, which usually ends within the first lines."""
        if self._stop_re is None:
            # a stop word that is empty or holds whitespace is never a word, as in datatrove's set intersection
            usable = sorted(w for w in self.stop_words if w and not any(c.isspace() for c in w))
            self._stop_re = re.compile(r"(?<!\S)(?:" + "|".join(map(re.escape, usable)) + r")(?!\S)") if usable else False
        if not self._stop_re:
            return False
        found = set()
        for m in self._stop_re.finditer(text):
            found.add(m.group())
            if len(found) >= self.min_stop_words:
                return True
        return False


def _lines_of(text: str) -> list[str]:
    """re.split("\\n+", text), by str.split: the empty pieces between newlines go, the first and last stay."""
    parts = text.split("\n")
    if len(parts) < 3:
        return parts
    return [parts[0], *filter(None, parts[1:-1]), parts[-1]]


def _dup_count(x: list) -> tuple[int, int]:
    """datatrove's find_duplicates: (elements equal to an earlier one, their characters)."""
    unique = set(x)
    return len(x) - len(unique), sum(map(len, x)) - sum(map(len, unique))


class FastGopherRepetition(BaseFilter):
    """datatrove's GopherRepetitionFilter (same arguments, rules, order and reasons)."""

    name = "👯 Gopher Repetition (fast)"

    def __init__(self, dup_line_frac: float | None = 0.3, dup_para_frac: float | None = 0.3,
                 dup_line_char_frac: float | None = 0.2, dup_para_char_frac: float | None = 0.2,
                 top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
                 dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams, self.dup_n_grams = top_n_grams, dup_n_grams
        self.paragraph_exp = re.compile(r"\n{2,}")

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        dups, chars = _dup_count(paragraphs)
        if self.dup_para_frac and dups / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = _lines_of(text)
        dups, chars = _dup_count(lines)
        if self.dup_line_frac and dups / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        a = analyse(text)
        n_words = len(a.bounds[2])
        for n, n_frac in self.top_n_grams:
            if n_words < n:
                continue
            if _top_ngram_chars(a, n) / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            if _duplicated_ngram_chars(a, n, n_frac * len(text)) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True


def _word_hashes(a: TextAnalysis) -> np.ndarray:
    if a._word_hashes is None:
        _, off = a.prefix
        a._word_hashes = a.span_hash(off[:-1], off[1:])
    return a._word_hashes


def _top_ngram_chars(a: TextAnalysis, n: int) -> int:
    """find_top_duplicate(get_n_grams(words, n)): characters of the most frequent " "-joined n-gram (the first
    to appear among equally frequent ones, as Counter.most_common) times its count."""
    wh = _word_hashes(a)
    m = len(wh) - n + 1
    key = wh[:m].copy()
    for k in range(1, n):
        key = key * _C + wh[k:k + m]
    s = np.sort(key)
    change = np.empty(m + 1, bool)
    change[0] = change[m] = True
    np.not_equal(s[1:], s[:-1], out=change[1:m])
    bounds = np.flatnonzero(change)
    run_starts, counts = bounds[:-1], np.diff(bounds)
    top = int(counts.max())
    if top == 1:
        first = 0
    else:
        tied = s[run_starts[counts == top]]  # sorted
        if len(tied) == 1:
            first = int(np.argmax(key == tied[0]))
        else:  # the first position whose key is one of the tied
            at = np.searchsorted(tied, key).clip(max=len(tied) - 1)
            first = int(np.argmax(tied[at] == key))
        if not _same_ngrams(a, np.flatnonzero(key == key[first]), first, n):
            return find_top_duplicate(get_n_grams(a.words, n))  # a hash collision: datatrove's own count
    _, off = a.prefix
    return (int(off[first + n] - off[first]) + n - 1) * top


def _same_ngrams(a: TextAnalysis, members: np.ndarray, first: int, n: int) -> bool:
    """Whether the n-grams at `members` are all the word tuple at `first`: the same word lengths, the same characters."""
    _, off = a.prefix
    lengths = np.diff(off)
    for k in range(n):
        if not (lengths[members + k] == lengths[first + k]).all():
            return False
    size = int(off[first + n] - off[first])
    step = max(1, 1_000_000 // max(size, 1))  # members compared at once: bounded memory
    for k in range(0, len(members), step):
        at = off[members[k:k + step]][:, None] + np.arange(size)
        if not (a.stream[at] == a.stream[off[first]:off[first] + size]).all():
            return False
    return True


def _duplicated_ngram_chars(a: TextAnalysis, n: int, limit: float) -> int:
    """find_all_duplicate(words, n): datatrove's greedy scan (a "".join-ed n-gram seen before adds its characters
    and skips n positions, else it is remembered and the scan moves one), visiting only the repeated n-grams.
    Stops early once the count exceeds `limit` (the rule has failed then whatever follows)."""
    _, off = a.prefix
    m = len(off) - n  # positions 0..m-1 (off has one entry per word, plus the end)
    if m <= 0:
        return 0
    h = a.span_hash(off[:m], off[n:n + m])
    # one sort of (hash, position) packed in 64 bits: the high bits group equal n-grams, the low bits keep each
    # group in position order (fewer hash bits only mean more collisions for the text check below to catch)
    bits = m.bit_length()
    s = np.sort((h >> np.uint64(bits) << np.uint64(bits)) | np.arange(m, dtype=np.uint64))
    hi = s >> np.uint64(bits)
    same = hi[1:] == hi[:-1]
    if not same.any():
        return 0
    member = np.zeros(m, bool)
    member[1:] |= same
    member[:-1] |= same
    hs, pos = hi[member], (s[member] & np.uint64((1 << bits) - 1)).astype(np.int64)
    group_start = np.concatenate(([True], hs[1:] != hs[:-1]))
    first_of = pos[np.flatnonzero(group_start)[np.cumsum(group_start) - 1]]
    later = ~group_start
    cand, cand_first, cand_group = pos[later], first_of[later], hs[later]
    by_pos = np.argsort(cand, kind="stable")
    cand, cand_first, cand_group = cand[by_pos].tolist(), cand_first[by_pos].tolist(), cand_group[by_pos].tolist()
    chars, offl = a.stream_lists()
    pos, repeated_chars, dups, added = 0, 0, [], set()
    for c, f, g in zip(cand, cand_first, cand_group):
        if c < pos:
            continue  # skipped over by the n positions after a duplicate
        if chars[4 * offl[c]:4 * offl[c + n]] != chars[4 * offl[f]:4 * offl[f + n]]:
            return find_all_duplicate(a.words, n)  # a hash collision: datatrove's own count
        i = bisect.bisect_left(dups, f) - 1  # was the first occurrence visited (not inside a skip)?
        first_visited = i < 0 or f - dups[i] >= n
        if first_visited or g in added:
            repeated_chars += offl[c + n] - offl[c]
            if repeated_chars > limit:
                return repeated_chars
            dups.append(c)
            pos = c + n
        else:
            added.add(g)
            pos = c + 1
    return repeated_chars


class FastC4Quality(BaseFilter):
    """datatrove's C4QualityFilter (same arguments, rules, order, reasons, line statistics and rewritten text)."""

    name = "⛰ C4 Quality (fast)"

    def __init__(self, exclusion_writer=None, split_paragraph: bool = True, remove_citations: bool = True,
                 filter_no_terminal_punct: bool = True, min_num_sentences: int = 5, min_words_per_line: int = 3,
                 max_word_length: int = 1000, filter_lorem_ipsum: bool = True, filter_javascript: bool = True,
                 filter_curly_bracket: bool = True, filter_policy: bool = True):
        super().__init__(exclusion_writer)
        self.split_paragraph, self.remove_citations = split_paragraph, remove_citations
        self.filter_no_terminal_punct, self.min_num_sentences = filter_no_terminal_punct, min_num_sentences
        self.min_words_per_line, self.max_word_length = min_words_per_line, max_word_length
        self.filter_lorem_ipsum, self.filter_javascript = filter_lorem_ipsum, filter_javascript
        self.filter_curly_bracket, self.filter_policy = filter_curly_bracket, filter_policy

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = doc.text
        if self.split_paragraph:
            lines = text.splitlines()
        else:
            lines = _sentences(text)
        kept, total = self._lines(text, lines)
        if kept is False:
            return False, total  # a rule that drops the whole document, and its reason
        self.stat_update("line-total", value=total)
        self.stat_update("line-kept", value=len(kept))
        num = 0
        if self.min_num_sentences != -1:
            for line in kept:  # only "at least min_num_sentences" matters: stop counting there
                num += _sentence_count(line) if self.split_paragraph else 1
                if num >= self.min_num_sentences:
                    break
        if num < self.min_num_sentences:
            return False, "too_few_sentences"
        doc.text = ("\n" if self.split_paragraph else " ").join(kept).strip()
        return True

    def _lines(self, text: str, lines: list[str]):
        """(kept lines, lines seen), or (False, reason) when a rule drops the whole document."""
        low = text.lower()
        # A phrase rule can only fire on a line whose text holds the phrase, so on a line whose lower-case
        # form holds it, unless removing a citation joined it: when the whole text holds none of the phrases,
        # only lines that lost a citation need the phrase checks.
        wanted = ((["lorem ipsum"] if self.filter_lorem_ipsum else []) + (["javascript"] if self.filter_javascript else [])
                  + (["{"] if self.filter_curly_bracket else []) + (POLICY_SUBSTRINGS if self.filter_policy else []))
        present = [p for p in wanted if p in low]
        phrases = re.compile("|".join(map(re.escape, present))) if present else None
        cites = self.remove_citations and CITATION_REGEX.search(text) is not None
        long_words = self.max_word_length != -1 and _longest_word(text) > self.max_word_length
        if not (phrases or cites or long_words or self.filter_no_terminal_punct or self.min_words_per_line > 0):
            return [line.strip() for line in lines], len(lines)  # every line is kept, stripped
        kept, stats, max_len = [], dict.fromkeys(_LINE_STATS, 0), self.max_word_length
        # a line's lower-case form is the same line of the lower-cased text (lower-casing keeps line breaks)
        low_lines = low.splitlines() if self.split_paragraph else [line.lower() for line in lines]
        for line, line_l in zip(lines, low_lines):
            line = line.strip()
            if long_words and len(line) > max_len and any(len(word) > max_len for word in line.split()):
                stats["line-filter-too_long_word"] += 1
                continue
            n_words = len(line.split()) if self.min_words_per_line > 0 else 0  # words before citations go
            cited = False
            if cites and "[" in line:
                cut = CITATION_REGEX.sub("", line)
                cited, line = cut != line, cut
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                stats["line-filter-no_terminal_punc"] += 1
                continue
            if n_words < self.min_words_per_line:
                stats["line-filter-too_few_words"] += 1
                continue
            if cited or (phrases and phrases.search(line_l)):
                line_l = line.lower()
                if self.filter_lorem_ipsum and "lorem ipsum" in line_l:
                    return False, "lorem_ipsum"
                if self.filter_javascript and "javascript" in line_l:
                    stats["line-filter-javascript"] += 1
                    continue
                if self.filter_curly_bracket and "{" in line:
                    return False, "curly_bracket"
                if self.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
                    stats["line-filter-policy"] += 1
                    continue
            kept.append(line)
        for key, value in stats.items():
            if value:
                self.stat_update(key, value=value)
        return kept, len(lines)


_LINE_STATS = ("line-filter-too_long_word", "line-filter-no_terminal_punc", "line-filter-too_few_words",
               "line-filter-javascript", "line-filter-policy")


def _longest_word(text: str) -> int:
    a = analyse(text)
    _, _, starts, ends = a.bounds
    return int((ends - starts).max()) if len(starts) else 0


def _sentence_count(line: str) -> int:
    """len(split_into_sentences(line)) with RegexWordTokenizer: its spans, or 1 when it has none."""
    count, end = 0, 0
    for m in _SENTENCE_END.finditer(line):
        count, end = count + 1, m.end()
    return max(1, count + (end < len(line)))


def _sentences(text: str) -> list[str]:
    from datatrove.utils.text import split_into_sentences

    from lokilm.curate.words import RegexWordTokenizer

    return split_into_sentences(text, RegexWordTokenizer())
