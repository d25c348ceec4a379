"""Benchmark decontamination: a hashed n-gram index of every benchmark prompt and answer, and the step that uses it.

The index (`NgramIndex`) is a sorted array of 64-bit n-gram hashes saved as .npy, so it is cheap to keep and to
reuse later, e.g. to check teacher outputs for copied benchmark text (`NgramIndex.load(path).spans(text)`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.data.benchmarks import decontamination_texts

_WORD = re.compile(r"[^\W_]+")  # normalised words: letters and digits only, lower-cased
_MULT = np.uint64(0x100000001B3)  # FNV prime: mixes the word hashes of an n-gram into one


def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text.lower()))


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """One uint64 per word n-gram (none when fewer than n words)."""
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    out = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):  # wrap-around arithmetic is the hash; order matters, so shifted copies are not symmetric
            out = out * _MULT + h[k: len(words) - n + 1 + k]
    return out


class NgramIndex:
    def __init__(self, hashes: np.ndarray, n: int, texts: int, too_short: int):
        self.hashes, self.n, self.texts, self.too_short = hashes, n, texts, too_short  # hashes: sorted, unique

    @classmethod
    def from_texts(cls, texts, n: int) -> NgramIndex:
        parts, count, too_short = [], 0, 0
        for text in texts:
            count += 1
            words = [m.group() for m in _words(text)]
            too_short += len(words) < n  # short answers ("Paris") cannot be matched by n-grams; counted, not indexed
            parts.append(ngram_hashes(words, n))
        return cls(np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64), n, count, too_short)

    @classmethod
    def for_benchmarks(cls, n: int, root: str | None, cache_dir: str) -> NgramIndex:
        """The index of every bundled benchmark's prompts and answers, cached by n and the benchmark files' sizes."""
        from lokilm.data.benchmarks import DEFAULT_ROOT

        bench = Path(root) if root else DEFAULT_ROOT
        files = sorted((str(p.relative_to(bench)), p.stat().st_size) for p in bench.rglob("*") if p.is_file())
        key = hashlib.sha1(repr((n, files)).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"benchmarks_{n}gram_{key}.npz"
        if path.is_file():
            return cls.load(path)
        index = cls.from_texts((t for _, _, t in decontamination_texts(root)), n)
        index.save(path)
        return index

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, hashes=self.hashes, meta=np.array([self.n, self.texts, self.too_short]))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> NgramIndex:
        with np.load(path) as z:
            n, texts, too_short = (int(v) for v in z["meta"])
            return cls(z["hashes"], n, texts, too_short)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of `text` covered by n-grams found in the index, merged where they touch."""
        words = _words(text)
        hashes = ngram_hashes([m.group() for m in words], self.n)
        if not len(hashes) or not len(self.hashes):
            return []
        pos = np.searchsorted(self.hashes, hashes).clip(max=len(self.hashes) - 1)
        spans: list[tuple[int, int]] = []
        for i in np.flatnonzero(self.hashes[pos] == hashes):
            start, end = words[i].start(), words[i + self.n - 1].end()
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        return spans


class Decontaminate(PipelineStep):
    """Removes a document sharing an n-gram with a benchmark, or (mode "cut") cuts the shared spans out of it."""

    name = "benchmark decontamination"
    type = "🧼 - DECONT"

    def __init__(self, n: int, mode: str, benchmarks: str | None, cache_dir: str, exclusion_writer):
        super().__init__()
        self.n, self.mode, self.benchmarks, self.cache_dir = n, mode, benchmarks, cache_dir
        self.exclusion_writer = exclusion_writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        index = NgramIndex.for_benchmarks(self.n, self.benchmarks, self.cache_dir)
        with self.exclusion_writer as removed:
            for doc in data:
                with self.track_time():
                    spans = index.spans(doc.text)
                    if spans:  # said in the removals file: which text matched
                        first = " ".join(doc.text[spans[0][0]:spans[0][1]].split())
                        doc.metadata["filter_detail"] = f"{len(spans)} span(s); first: {first[:100]}"
                    if spans and self.mode == "cut":
                        self.stat_update("spans_cut", value=len(spans))
                        self.stat_update("bytes_cut", value=sum(len(doc.text[a:b].encode()) for a, b in spans))
                        doc.text = _cut(doc.text, spans)
                    keep = not spans or (self.mode == "cut" and doc.text.strip())
                if keep:
                    yield doc
                else:
                    cut_empty = self.mode == "cut"
                    doc.metadata["filter_reason"] = "empty_after_cut" if cut_empty else f"benchmark_{self.n}gram_overlap"
                    removed.write(doc, rank)


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    pieces, last = [], 0
    for a, b in spans:
        pieces.append(text[last:a])
        last = b
    return " ".join(p.strip() for p in pieces + [text[last:]] if p.strip())
