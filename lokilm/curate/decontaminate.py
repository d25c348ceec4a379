"""Benchmark decontamination: a hashed n-gram index of every benchmark prompt and answer, and the step that uses it.

The index (`NgramIndex`) is a sorted array of 64-bit n-gram hashes, each with a bit mask of the benchmarks it
occurs in, saved as .npz, so it is cheap to keep and to reuse later, e.g. to check teacher outputs for copied
benchmark text (`NgramIndex.load(path).spans(text)`, or `.matches(text)` to know which benchmark). The step
writes what it found per benchmark (documents dropped or cut, bytes, example n-grams) for the curation report.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import xxhash
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.data.benchmarks import decontamination_texts
from lokilm.fileio import atomic_write

_WORD = re.compile(r"[^\W_]+")  # normalised words: letters and digits only, lower-cased
_MULT = np.uint64(0x100000001B3)  # FNV prime: mixes the word hashes of an n-gram into one


def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text.lower()))


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
    """One uint64 per word n-gram (none when fewer than n words)."""
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    h = np.fromiter(map(xxhash.xxh64_intdigest, words), dtype=np.uint64, count=len(words))  # of the UTF-8 bytes
    out = np.zeros(len(words) - n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):  # wrap-around arithmetic is the hash; order matters, so shifted copies are not symmetric
            out = out * _MULT + h[k: len(words) - n + 1 + k]
    return out


class NgramIndex:
    def __init__(self, hashes: np.ndarray, n: int, texts: int, too_short: int, owners: np.ndarray | None = None,
                 names: list[str] | None = None):
        self.hashes, self.n, self.texts, self.too_short = hashes, n, texts, too_short  # hashes: sorted, unique
        # owners[i]: bit b set when benchmark names[b] has n-gram hashes[i] (one "text" benchmark if not known)
        self.owners = owners if owners is not None else np.ones(len(hashes), np.uint64)
        self.names = names or ["text"]
        # a bit per value of a hash's top 27 bits, set for the indexed hashes: almost every n-gram of a document
        # is ruled out by one look-up, and only the rest is searched for in the sorted array
        self.bitmap = np.zeros(1 << 24, np.uint8)
        top = (hashes >> np.uint64(37)).astype(np.int64)
        np.bitwise_or.at(self.bitmap, top >> 3, (1 << (top & 7)).astype(np.uint8))

    @classmethod
    def from_texts(cls, texts, n: int) -> NgramIndex:
        """The index of `texts`: strings, or (benchmark name, text) pairs to know which benchmark an n-gram is from."""
        parts, owners, names, count, too_short = [], [], {}, 0, 0
        for item in texts:
            name, text = item if isinstance(item, tuple) else ("text", item)
            bit = names.setdefault(name, len(names))
            if bit >= 64:
                raise ValueError("an n-gram index knows at most 64 benchmarks")
            count += 1
            words = [m.group() for m in _words(text)]
            too_short += len(words) < n  # short answers ("Paris") cannot be matched by n-grams; counted, not indexed
            parts.append(ngram_hashes(words, n))
            owners.append(np.full(len(parts[-1]), 1 << bit, np.uint64))
        if not parts:
            return cls(np.zeros(0, np.uint64), n, count, too_short, np.zeros(0, np.uint64), list(names))
        hashes, owner = np.concatenate(parts), np.concatenate(owners)
        unique, inverse = np.unique(hashes, return_inverse=True)
        mask = np.zeros(len(unique), np.uint64)
        np.bitwise_or.at(mask, inverse, owner)
        return cls(unique, n, count, too_short, mask, list(names))

    @classmethod
    def for_benchmarks(cls, n: int, root: str | None, cache_dir: str) -> NgramIndex:
        """The index of every bundled benchmark's prompts and answers, cached by n and the benchmark files' sizes."""
        from lokilm.data.benchmarks import DEFAULT_ROOT

        bench = Path(root) if root else DEFAULT_ROOT
        files = sorted((str(p.relative_to(bench)), p.stat().st_size) for p in bench.rglob("*") if p.is_file())
        key = hashlib.sha1(repr((n, files)).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"benchmarks_{n}gram_{key}.v2.npz"  # v2: with the benchmark of each n-gram
        if path.is_file():
            return cls.load(path)
        index = cls.from_texts(((b, t) for b, _, t in decontamination_texts(root)), n)
        index.save(path)
        return index

    def save(self, path: str | Path) -> None:
        # through atomic_write's temporary name of this process's own: the curation's tasks build a missing cache
        # at the same time, and with one shared ".tmp.npz" the second rename found no file (a traceback)
        buf = io.BytesIO()
        np.savez(buf, hashes=self.hashes, meta=np.array([self.n, self.texts, self.too_short]), owners=self.owners,
                 names=np.array(self.names))
        atomic_write(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> NgramIndex:
        with np.load(path) as z:
            n, texts, too_short = (int(v) for v in z["meta"])
            owners = z["owners"] if "owners" in z else None
            names = [str(v) for v in z["names"]] if "names" in z else None
            return cls(z["hashes"], n, texts, too_short, owners, names)

    def matches(self, text: str) -> list[tuple[int, int, list[str]]]:
        """(start, end, benchmarks) for every word n-gram of `text` found in the index, in text order."""
        low = text.lower()
        hashes = ngram_hashes(_WORD.findall(low), self.n)
        if not len(hashes) or not len(self.hashes):
            return []
        top = (hashes >> np.uint64(37)).astype(np.int64)
        maybe = np.flatnonzero((self.bitmap[top >> 3] >> (top & 7).astype(np.uint8)) & 1)
        if not len(maybe):
            return []
        pos = np.searchsorted(self.hashes, hashes[maybe]).clip(max=len(self.hashes) - 1)
        hit = self.hashes[pos] == hashes[maybe]
        if not hit.any():
            return []
        words = list(_WORD.finditer(low))  # positions, only for a document that matched
        return [(words[i].start(), words[i + self.n - 1].end(), self.benchmarks_of(int(self.owners[p])))
                for i, p in zip(maybe[hit].tolist(), pos[hit].tolist())]

    def benchmarks_of(self, mask: int) -> list[str]:
        return [name for b, name in enumerate(self.names) if mask >> b & 1]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of `text` covered by n-grams found in the index, merged where they touch."""
        return merge_spans(self.matches(text))


def merge_spans(matches: list[tuple[int, int, list[str]]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for start, end, _ in matches:
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


EXAMPLES = 5  # matched n-grams kept per benchmark


class BenchmarkHits:
    """Per benchmark: documents dropped or cut, their bytes (dropped: the document's; cut: the bytes cut from it),
    and the first matched n-grams with the document they were found in. A document matching two benchmarks
    counts for both."""

    def __init__(self):
        self.by_benchmark: dict[str, dict] = {}

    def add(self, doc_id: str, text: str, matches: list, action: str, nbytes: int) -> None:
        seen: dict[str, str] = {}
        for start, end, names in matches:
            for name in names:
                seen.setdefault(name, " ".join(text[start:end].split()))
        for name, ngram in seen.items():
            b = self.by_benchmark.setdefault(name, {"documents_dropped": 0, "documents_cut": 0, "bytes": 0,
                                                    "examples": []})
            b["documents_dropped" if action == "dropped" else "documents_cut"] += 1
            b["bytes"] += nbytes
            if len(b["examples"]) < EXAMPLES:
                b["examples"].append({"id": doc_id, "ngram": ngram[:200]})

    def merge(self, other: dict) -> None:
        for name, o in other.items():
            b = self.by_benchmark.setdefault(name, {"documents_dropped": 0, "documents_cut": 0, "bytes": 0,
                                                    "examples": []})
            for k in ("documents_dropped", "documents_cut", "bytes"):
                b[k] += o[k]
            b["examples"] = (b["examples"] + o["examples"])[:EXAMPLES]

    def to_dict(self) -> dict:
        return dict(sorted(self.by_benchmark.items()))


def read_hits(folder: str | Path) -> dict:
    """The per-benchmark hits of every rank of the decontamination step, merged."""
    hits = BenchmarkHits()
    for f in sorted(Path(folder).glob("*.json")):
        hits.merge(json.loads(f.read_text()))
    return hits.to_dict()


class Decontaminate(PipelineStep):
    """Removes a document sharing an n-gram with a benchmark, or (mode "cut") cuts the shared spans out of it;
    writes what it found per benchmark to `hits_folder` (one JSON per rank)."""

    name = "benchmark decontamination"
    type = "🧼 - DECONT"

    def __init__(self, n: int, mode: str, benchmarks: str | None, cache_dir: str, exclusion_writer,
                 hits_folder: str | None = None):
        super().__init__()
        self.n, self.mode, self.benchmarks, self.cache_dir = n, mode, benchmarks, cache_dir
        self.exclusion_writer, self.hits_folder = exclusion_writer, hits_folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        index = NgramIndex.for_benchmarks(self.n, self.benchmarks, self.cache_dir)
        hits = BenchmarkHits()
        with self.exclusion_writer as removed:
            for doc in data:
                with self.track_time():
                    matches = index.matches(doc.text)
                    spans = merge_spans(matches)
                    if spans:  # said in the removals file: which text matched, from which benchmarks
                        first = " ".join(doc.text[spans[0][0]:spans[0][1]].split())
                        names = sorted({b for _, _, bs in matches for b in bs})
                        doc.metadata["filter_detail"] = f"{len(spans)} span(s) of {', '.join(names)}; first: {first[:100]}"
                    original = doc.text
                    if spans and self.mode == "cut":
                        cut_bytes = sum(len(doc.text[a:b].encode()) for a, b in spans)
                        self.stat_update("spans_cut", value=len(spans))
                        self.stat_update("bytes_cut", value=cut_bytes)
                        doc.text = _cut(doc.text, spans)
                    keep = not spans or (self.mode == "cut" and doc.text.strip())
                    if spans:  # a document cut down to nothing is dropped, with all its bytes
                        hits.add(doc.id, original, matches, "cut" if keep else "dropped",
                                 cut_bytes if keep else len(original.encode()))
                if keep:
                    yield doc
                else:
                    cut_empty = self.mode == "cut"
                    doc.metadata["filter_reason"] = "empty_after_cut" if cut_empty else f"benchmark_{self.n}gram_overlap"
                    removed.write(doc, rank)
        if self.hits_folder:
            out = Path(self.hits_folder)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{rank:05d}.json").write_text(json.dumps(hits.to_dict()))


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    pieces, last = [], 0
    for a, b in spans:
        pieces.append(text[last:a])
        last = b
    return " ".join(p.strip() for p in pieces + [text[last:]] if p.strip())
