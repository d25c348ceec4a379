"""Token shards: documents -> memmapped token arrays with a document index, and fixed windows read back.

Layout of a shard folder:
    meta.json                      dtype, vocab size, EOT id, per split: shard files, tokens, documents, bytes
    {split}_{nnnnn}.bin            the token stream (each document followed by EOT)
    {split}_{nnnnn}.idx.npy        int64 start offset of every document in that shard
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lokilm.errors import LokiError
from lokilm.fileio import atomic_write

SPLITS = ("train", "val")


def _position(doc_id: str) -> float:
    """Where a document id falls in [0, 1): a hash, so the split is stable across runs and machines."""
    return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def split_of(doc_id: str, holdout_fraction: float) -> str:
    """Deterministic train/val assignment: held out when the id's hash position is below the cut."""
    return "val" if _position(doc_id) < holdout_fraction else "train"


def holdout_cut(data, documents: Callable[[], Iterable]) -> float:
    """The cut `split_of` takes for a DataConfig: `data.holdout_fraction`, or with `data.holdout_bytes` the cut
    that holds out documents in hash order until their UTF-8 bytes reach holdout_bytes. A fraction of
    documents gives a held-out set whose size depends on how many documents the corpus has (11 in the
    quickstart, too few to tell two models apart); a byte budget fixes its size, hence its standard error.
    `documents()` yields objects with `.id` and `.text`; it is read only when holdout_bytes is set."""
    if not data.holdout_bytes:
        return data.holdout_fraction
    sizes = sorted((_position(d.id), len(d.text.encode("utf-8", "surrogatepass"))) for d in documents())
    total = sum(n for _, n in sizes)
    if data.holdout_bytes * 2 > total:
        raise LokiError(f"data.holdout_bytes={data.holdout_bytes:,} is more than half of the {total:,} bytes of the "
                        "inputs: too little would be left to train on; lower it")
    held = 0
    for k, (position, n) in enumerate(sizes):
        held += n
        if held >= data.holdout_bytes:
            # halfway to the next document's position, so float rounding cannot move a document across the cut
            return (position + sizes[k + 1][0]) / 2
    raise AssertionError("unreachable: holdout_bytes is at most half of the total")


@dataclass
class _SplitWriter:
    folder: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    shards: list[dict] = field(default_factory=list)
    _buf: list[np.ndarray] = field(default_factory=list)
    _starts: list[int] = field(default_factory=list)
    _len: int = 0
    documents: int = 0
    tokens: int = 0
    bytes: int = 0

    def add(self, ids: list[int], n_bytes: int) -> None:
        if self._len and self._len + len(ids) > self.shard_tokens:
            self.flush()
        self._starts.append(self._len)
        arr = np.asarray(ids, dtype=self.dtype)
        self._buf.append(arr)
        self._len += len(arr)
        self.documents += 1
        self.tokens += len(arr)
        self.bytes += n_bytes

    def flush(self) -> None:
        if not self._len:
            return
        name = f"{self.split}_{len(self.shards):05d}"
        atomic_write(self.folder / f"{name}.bin", np.concatenate(self._buf).tobytes())
        index = io.BytesIO()
        np.save(index, np.asarray(self._starts, dtype=np.int64))
        atomic_write(self.folder / f"{name}.idx.npy", index.getvalue())
        self.shards.append({"file": f"{name}.bin", "tokens": self._len, "documents": len(self._starts)})
        self._buf, self._starts, self._len = [], [], 0


def write_shards(docs: Iterable[tuple[str, str]], tokenizer, folder: str | Path, holdout_fraction: float,
                 shard_tokens: int = 100_000_000, batch_docs: int = 256, progress: bool = True,
                 tokenizer_sha256: str | None = None, require_val: bool = True) -> dict:
    """Tokenize (id, text) documents into train/val shards; returns (and writes) meta.json's content.
    `tokenizer_sha256` (of the tokenizer file) is recorded so training can refuse another tokenizer.
    `require_val` false: an empty val split is allowed (one source of a mixture; the union must have one)."""
    from tqdm import tqdm

    from lokilm.tokenizer import eot_id

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab <= 2**16 else np.uint32)
    eot = eot_id(tokenizer)
    writers = {s: _SplitWriter(folder, s, dtype, shard_tokens) for s in SPLITS}
    bar = tqdm(desc="tokenize", unit=" docs", disable=not progress)

    def encode_batch(batch: list[tuple[str, str]]) -> None:
        encoded = tokenizer.encode_batch([text for _, text in batch], add_special_tokens=False)
        for (doc_id, text), enc in zip(batch, encoded):
            writers[split_of(doc_id, holdout_fraction)].add(enc.ids + [eot], len(text.encode("utf-8", "surrogatepass")))
        bar.update(len(batch))

    batch: list[tuple[str, str]] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_docs:
            encode_batch(batch)
            batch = []
    if batch:
        encode_batch(batch)
    bar.close()
    for w in writers.values():
        w.flush()
    if writers["train"].tokens == 0:
        raise LokiError("no training tokens were written: the inputs hold no documents for the train split")
    if require_val and holdout_fraction > 0 and writers["val"].tokens == 0:
        raise LokiError(f"data.holdout_fraction={holdout_fraction} selected no held-out document out of "
                        f"{writers['train'].documents}; raise it")
    meta = {
        "dtype": dtype.name,
        "vocab_size": vocab,
        "eot_id": eot,
        "holdout_fraction": holdout_fraction,
        **({"tokenizer_sha256": tokenizer_sha256} if tokenizer_sha256 else {}),
        "splits": {s: {"shards": w.shards, "documents": w.documents, "tokens": w.tokens, "bytes": w.bytes}
                   for s, w in writers.items()},
    }
    atomic_write(folder / "meta.json", json.dumps(meta, indent=2).encode())
    return meta


def write_mixture_meta(folder: str | Path, sources: dict[str, dict]) -> dict:
    """The meta.json of a mixture's shard folder, over the sources' own shard folders (`folder/<name>/`, each
    written by write_shards): every split lists all the sources' shards (as "<name>/<file>"), so TokenWindows of
    the folder reads the union (the held-out set is every source's val split together), and "sources" names
    each source's folder and counts for the training sampler."""
    first = next(iter(sources.values()))
    splits = {s: {"shards": [{**shard, "file": f"{name}/{shard['file']}", "source": name}
                             for name, m in sources.items() for shard in m["splits"][s]["shards"]],
                  **{k: sum(m["splits"][s][k] for m in sources.values()) for k in ("documents", "tokens", "bytes")}}
              for s in SPLITS}
    if first["holdout_fraction"] > 0 and splits["val"]["tokens"] == 0:
        raise LokiError(f"the held-out cut {first['holdout_fraction']:.4g} selected no document of any source "
                        f"({splits['train']['documents']} documents); raise data.holdout_fraction")
    meta = {**{k: v for k, v in first.items() if k != "splits"}, "splits": splits,
            "sources": {name: {"folder": name, "splits": {s: {k: m["splits"][s][k] for k in ("documents", "tokens",
                                                                                            "bytes")}
                                                          for s in SPLITS}}
                        for name, m in sources.items()}}
    atomic_write(Path(folder) / "meta.json", json.dumps(meta, indent=2).encode())
    return meta


def _shard_file_ok(name) -> bool:
    """A shard file named in meta.json: a file of the folder, or of one source's folder in a mixture; never a path
    out of it."""
    parts = name.split("/") if isinstance(name, str) else []
    return 1 <= len(parts) <= 2 and all(p and p not in (".", "..") for p in parts)


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise LokiError(f"no token shards in {folder} (missing meta.json): run `loki tokenize` first")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        if meta.get("dtype") not in ("uint16", "uint32"):
            raise ValueError(f"dtype {meta.get('dtype')!r}")
        if not isinstance(meta.get("vocab_size"), int) or meta["vocab_size"] <= 0:
            raise ValueError(f"vocab_size {meta.get('vocab_size')!r}")
        for split in ("train", "val"):
            info = meta["splits"][split]
            if not isinstance(info["tokens"], int) or not all(
                    _shard_file_ok(s["file"]) and isinstance(s["tokens"], int)
                    for s in info["shards"]):
                raise ValueError(f"the {split} split's entries")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise LokiError(f"{path} is damaged ({e}): re-run `loki tokenize` (delete {folder} first)") from None
    return meta


class TokenWindows:
    """A split's token stream as non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets).

    Windows never cross a shard boundary; the tail of each shard shorter than a window is not used.
    """

    def __init__(self, folder: str | Path, split: str, seq_len: int):
        meta = read_meta(folder)
        if split not in meta["splits"]:
            raise LokiError(f"shard folder {folder} has no {split!r} split")
        self.seq_len, self.meta, self.folder, self.split = seq_len, meta, Path(folder), split
        self.arrays = []
        for shard in meta["splits"][split]["shards"]:
            path = Path(folder) / shard["file"]
            if not path.is_file():
                raise LokiError(f"shard {path} listed in meta.json is missing")
            try:
                arr = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
            except ValueError as e:  # e.g. an odd number of bytes for uint16 tokens
                raise LokiError(f"shard {path} is damaged ({e}): re-run `loki tokenize`") from None
            if len(arr) != shard["tokens"]:
                raise LokiError(f"shard {path} holds {len(arr)} tokens, meta.json says {shard['tokens']}: truncated?")
            self.arrays.append(arr)
        counts = [max(0, (len(a) - 1) // seq_len) for a in self.arrays]
        self._starts = np.cumsum([0] + counts)
        if self._starts[-1] == 0:
            tokens = meta["splits"][split]["tokens"]
            raise LokiError(f"the {split} split holds {tokens} tokens, fewer than one window of "
                            f"{seq_len + 1}: add data or shorten model.context_length")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def sources(self) -> list[str] | None:
        """The mixture source of each window (from its shard), or None for the shards of one corpus."""
        if "sources" not in self.meta:
            return None
        shards = self.meta["splits"][self.split]["shards"]
        return [shard["source"] for shard, n in zip(shards, np.diff(self._starts)) for _ in range(int(n))]

    def __getitem__(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        off = (i - self._starts[shard]) * self.seq_len
        return np.asarray(self.arrays[shard][off: off + self.seq_len + 1], dtype=np.int64)

    def batch(self, indices: Iterable[int]) -> np.ndarray:
        out = np.stack([self[i] for i in indices])
        # checked per batch (cheap) rather than by scanning every shard up front (terabytes at scale): an id past
        # the vocabulary would index past the embedding table, a crash deep in the model or silent garbage
        if out.size and int(out.max()) >= self.meta["vocab_size"]:
            raise LokiError(f"shard data in {self.folder} holds token id {int(out.max())} >= the vocabulary size "
                            f"{self.meta['vocab_size']} in meta.json: the shards are damaged; re-run `loki tokenize`")
        return out

    def documents(self, n: int | None = None) -> np.ndarray:
        """For each of the first n windows, a number for the document its first target token belongs to
        (documents numbered across shards): the clusters of a per-window test, since the windows of one long
        book are not independent draws."""
        n = len(self) if n is None else min(n, len(self))
        out, first_doc = np.empty(n, dtype=np.int64), 0
        for k, shard in enumerate(self.meta["splits"][self.split]["shards"]):
            lo, hi = int(self._starts[k]), min(n, int(self._starts[k + 1]))
            starts = np.load(self.folder / shard["file"].replace(".bin", ".idx.npy"))
            if hi > lo:
                offsets = (np.arange(lo, hi) - lo) * self.seq_len + 1
                out[lo:hi] = first_doc + np.searchsorted(starts, offsets, side="right") - 1
            first_doc += len(starts)
        return out


class ShuffledOrder:
    """The order windows are visited in: a fresh permutation per epoch, fixed by (seed, epoch).

    Position k of the whole run is a pure function of (seed, k), so resuming needs only the sample count.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def __getitem__(self, k: int) -> int:
        epoch, pos = divmod(k, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[pos])

    def take(self, start: int, count: int) -> Iterator[int]:
        return (self[k] for k in range(start, start + count))
