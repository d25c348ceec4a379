"""The teacher cache: each teacher's continuations of training windows, in student tokens, on disk.

One folder per teacher, cache_root(cfg)/<teacher name>/:
    meta.json      what the cache was made from (teacher, student tokenizer sha256, shards fingerprint,
                   context length, prefix length, sampling settings), counts, and a `complete` flag
    tokens.bin     uint32 student-token ids of every continuation, appended one after another
    index.npy      int64 rows (window, offset, length, seed, regenerations, kind), one per window handled,
                   in the order they were generated (the KD order); kind 0 is a continuation, 1 a window
                   dropped as contaminated, 2 one dropped as empty (length 0 for both)

tokens.bin is only appended to; index.npy and meta.json are replaced atomically at each commit, so a
crash loses at most the batch since the last commit, and the writer cuts tokens.bin back to the last
committed row when it resumes. The index is the record: a crash between its commit and meta.json's leaves
meta.json's counts behind, so a resuming writer counts from the index's rows (an index of five columns,
written before the kind column, keeps meta.json's counts).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from lokilm.errors import LokiError
from lokilm.fileio import atomic_write, exclusive_lock, write_json

# The meta.json keys that must match for existing continuations to be reused (the rest is bookkeeping)
IDENTITY_KEYS = ("teacher", "source", "tokenizer_sha256", "shards_fingerprint", "context_length",
                 "prefix_tokens", "sampling")
COUNT_KEYS = ("generated", "regenerated", "dropped_contaminated", "empty")
_ROW = 6  # window, offset, length, seed, regenerations, kind
_KINDS = {None: 0, "contaminated": 1, "empty": 2}


class CacheError(LokiError):
    """A teacher cache that is missing, incomplete, or made for other shards / another tokenizer."""


def shards_fingerprint(shards_dir: str | Path) -> str:
    """sha256 of the shards' meta.json: it lists every shard with its token count, so re-tokenising changes it."""
    path = Path(shards_dir) / "meta.json"
    if not path.is_file():
        raise CacheError(f"no token shards in {shards_dir} (missing meta.json): run `loki tokenize` first")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kd_windows(n_train_windows: int, count: int, seed: int) -> np.ndarray:
    """The training windows a cache covers, in the order KD batches consume them.

    A seeded permutation of all windows, cut to `count` (at most every window once: the cache is keyed
    by window, so a run needing more KD sequences than there are windows cycles through these).
    """
    if n_train_windows <= 0 or count <= 0:
        return np.empty(0, dtype=np.int64)
    # A generator of its own (not the training shuffle's) so KD windows do not depend on the train order
    rng = np.random.default_rng([seed, 0x6B64])  # 0x6B64: "kd"
    return rng.permutation(n_train_windows)[:count].astype(np.int64)


def cache_root(cfg) -> Path:
    from lokilm.rundir import RunDir

    return RunDir(cfg).distill_cache


def prefix_tokens(cfg) -> int:
    return max(1, int(cfg.model.context_length * cfg.distill.prefix_fraction))


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def load_index(path: Path, name: str) -> np.ndarray:
    """A cache's index.npy as (n, 5 or 6) int64 rows (no pickles); a damaged file is a CacheError."""
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CacheError(f"teacher {name!r}: {path} is damaged ({e}); rerun `loki distill generate --restart`")
    if rows.ndim != 2 or rows.shape[1] not in (5, _ROW) or rows.dtype != np.int64:
        raise CacheError(f"teacher {name!r}: {path} is not a teacher-cache index ({rows.dtype} {rows.shape}); "
                         "rerun `loki distill generate --restart`")
    return rows


def load_meta(path: Path, name: str) -> dict:
    """A cache's meta.json; a damaged one is a CacheError (it was a JSONDecodeError traceback)."""
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"teacher {name!r}: {path} is damaged ({e}); rerun `loki distill generate --restart`") from None
    if not isinstance(meta, dict):
        raise CacheError(f"teacher {name!r}: {path} is not a teacher-cache meta.json; "
                         "rerun `loki distill generate --restart`")
    return meta


def row_counts(rows: np.ndarray) -> dict[str, int]:
    """The COUNT_KEYS of an index with the kind column."""
    kind = rows[:, 5]
    return {"generated": int((kind == 0).sum()), "regenerated": int(rows[:, 4].sum()),
            "dropped_contaminated": int((kind == _KINDS["contaminated"]).sum()),
            "empty": int((kind == _KINDS["empty"]).sum())}


class TeacherCacheWriter:
    """Appends one teacher's continuations; resumable: windows in `done` were committed by an earlier run.

    `meta` must hold the IDENTITY_KEYS; a folder written with a different identity is refused (its
    continuations belong to another tokenizer, other shards or other settings) unless `restart` is set.
    """

    def __init__(self, path: str | Path, meta: dict, restart: bool = False):
        self.path = Path(path)
        missing = [k for k in IDENTITY_KEYS if k not in meta]
        if missing:
            raise ValueError(f"teacher cache meta lacks {missing}")
        self.meta = dict(meta)
        self.name = meta["teacher"]
        try:  # a distill.cache_dir (or teacher folder) that is a file was a NotADirectoryError traceback
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"teacher {self.name!r}: cannot create the cache folder {self.path} ({e.strerror}); "
                             "set distill.cache_dir to a folder") from None
        for part in ("meta.json", "index.npy", "tokens.bin"):
            if (self.path / part).exists() and not (self.path / part).is_file():
                raise CacheError(f"teacher {self.name!r}: {self.path / part} is not a file; move it away or "
                                 "rerun with another distill.cache_dir")
        self._lock = self._take_lock()
        try:
            self._open(meta, restart)
        except BaseException:
            self._release_lock()
            raise

    def _take_lock(self) -> contextlib.ExitStack:
        # The run directory's lock does not cover a cache folder shared by several runs (distill.cache_dir):
        # two `loki distill generate` on two run directories appended to one tokens.bin at once, and each
        # index pointed into the other's tokens (most continuations silently wrong). One writer per cache folder.
        def busy(holder: str) -> CacheError:
            return CacheError(f"teacher {self.name!r}: the cache in {self.path} is being written by {holder}; "
                              "wait for it to finish (or stop it)")

        stack = contextlib.ExitStack()
        stack.enter_context(exclusive_lock(self.path / ".lock", f"pid {os.getpid()}", busy))
        return stack

    def _release_lock(self) -> None:
        self._lock.close()

    def _open(self, meta: dict, restart: bool) -> None:
        meta_path = self.path / "meta.json"
        rows = np.empty((0, _ROW), dtype=np.int64)
        self.counts = {k: 0 for k in COUNT_KEYS}
        self.previous: dict = {}  # the meta.json this writer resumes from, if any
        if meta_path.is_file() and not restart:
            old = self.previous = load_meta(meta_path, self.name)
            changed = [k for k in IDENTITY_KEYS if old.get(k) != meta[k]]
            if changed:
                raise CacheError(f"teacher {self.name!r}: the cache in {self.path} was made with other "
                                 f"{', '.join(changed)}; delete it (or pass --restart) to regenerate")
            if (self.path / "index.npy").is_file():
                rows = load_index(self.path / "index.npy", self.name)
            self.counts.update(old.get("counts", {}))
            if rows.shape[1] == _ROW:
                self.counts = row_counts(rows)
            else:  # five columns (no kind): give each row its kind back; the counts stay meta.json's
                kind = np.where(rows[:, 2] > 0, 0, _KINDS["empty"])
                rows = np.column_stack([rows, kind]).astype(np.int64)
        elif restart:
            for name in ("meta.json", "index.npy", "tokens.bin"):
                (self.path / name).unlink(missing_ok=True)
        self._rows = [tuple(int(x) for x in r) for r in rows]
        self.done: set[int] = {r[0] for r in self._rows}
        # Drop tokens appended after the last commit (a crash between append and commit)
        end = int((rows[:, 1] + rows[:, 2]).max()) if len(rows) else 0
        tokens_path = self.path / "tokens.bin"
        size = tokens_path.stat().st_size if tokens_path.is_file() else 0
        if size < end * 4:
            # truncate() below would pad a short file with zeros: committed continuations silently turned into
            # runs of token 0, and the cache marked complete. A file shorter than its index is damage, not a crash
            # (tokens are fsynced before the index that points into them is committed).
            raise CacheError(f"teacher {self.name!r}: {tokens_path} is truncated ({size // 4} tokens, the index "
                             f"needs {end}); rerun `loki distill generate --restart`")
        with open(tokens_path, "ab") as f:
            f.truncate(end * 4)
        self._tokens = open(tokens_path, "ab")  # noqa: SIM115 (held open for appending until finish/close)
        self._end = end

    def add(self, window: int, tokens: np.ndarray, seed: int, regenerations: int,
            dropped: str | None = None) -> None:
        """Record `window`'s continuation; `dropped` ("contaminated" or "empty") records a window without one."""
        window = int(window)
        if window in self.done:
            raise ValueError(f"teacher {self.name!r}: window {window} is already in the cache")
        tokens = np.asarray(tokens, dtype=np.uint32) if dropped is None else np.empty(0, dtype=np.uint32)
        if dropped is None and len(tokens) == 0:
            dropped = "empty"
        self._tokens.write(tokens.tobytes())
        self._rows.append((window, self._end, len(tokens), int(seed), int(regenerations), _KINDS[dropped]))
        self._end += len(tokens)
        self.done.add(window)
        self.counts["regenerated"] += int(regenerations)
        if dropped is None:
            self.counts["generated"] += 1
        else:
            key = {"contaminated": "dropped_contaminated", "empty": "empty"}[dropped]
            self.counts[key] += 1

    def commit(self, complete: bool = False, extra: dict | None = None) -> None:
        """Make everything added so far durable: tokens first, then the index that points into them."""
        self._tokens.flush()
        os.fsync(self._tokens.fileno())
        rows = np.asarray(self._rows, dtype=np.int64).reshape(-1, _ROW)
        atomic_write(self.path / "index.npy", _npy_bytes(rows))
        meta = {**self.meta, **(extra or {}), "counts": dict(self.counts), "windows": len(rows),
                "complete": complete}
        write_json(self.path / "meta.json", meta)
        self.meta = meta

    def finish(self, counts: dict, extra: dict | None = None) -> None:
        """Mark the cache complete; `counts` updates the stored counts, `extra` adds keys to meta.json."""
        self.counts.update(counts)
        self.commit(complete=True, extra=extra)
        self.close()

    def close(self) -> None:
        if not self._tokens.closed:
            self._tokens.close()
        self._release_lock()


class TeacherCache:
    """A complete teacher cache, read-only: `continuation(window)` is the teacher's text in student tokens."""

    def __init__(self, path: Path, meta: dict, rows: np.ndarray, tokens: np.ndarray):
        self.path, self.meta = path, meta
        self.name: str = meta["teacher"]
        self.prefix_tokens: int = int(meta["prefix_tokens"])
        kept = rows[rows[:, 2] > 0]
        self.windows: np.ndarray = kept[:, 0].copy()
        self._span = {int(w): (int(o), int(n)) for w, o, n in kept[:, :3]}
        self._tokens = tokens

    @classmethod
    def open(cls, path: str | Path, *, tokenizer_sha256: str, shards_fingerprint: str,
             context_length: int) -> TeacherCache:
        path = Path(path)
        name = path.name
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise CacheError(f"teacher {name!r}: no teacher cache in {path}: run `loki distill generate` first")
        meta = load_meta(meta_path, name)
        name = meta.get("teacher", name)
        if meta.get("tokenizer_sha256") != tokenizer_sha256:
            raise CacheError(f"teacher {name!r}: the cache in {path} was re-tokenised with another student "
                             "tokenizer; rerun `loki distill generate`")
        if meta.get("shards_fingerprint") != shards_fingerprint:
            raise CacheError(f"teacher {name!r}: the cache in {path} continues other training shards than "
                             "the run's; rerun `loki distill generate`")
        if meta.get("context_length") != context_length:
            raise CacheError(f"teacher {name!r}: the cache in {path} was made for context_length="
                             f"{meta.get('context_length')}, the run uses {context_length}; rerun "
                             "`loki distill generate`")
        if not meta.get("complete"):
            raise CacheError(f"teacher {name!r}: the cache in {path} is incomplete ({meta.get('windows', 0)} "
                             "windows so far); rerun `loki distill generate` to finish it")
        rows = load_index(path / "index.npy", name) if (path / "index.npy").is_file() else np.empty((0, _ROW), np.int64)
        size = (path / "tokens.bin").stat().st_size if (path / "tokens.bin").is_file() else 0
        end = int((rows[:, 1] + rows[:, 2]).max()) if len(rows) else 0
        if size < end * 4:
            raise CacheError(f"teacher {name!r}: {path / 'tokens.bin'} is truncated ({size // 4} tokens, "
                             f"the index needs {end})")
        tokens = (np.memmap(path / "tokens.bin", dtype=np.uint32, mode="r", shape=(end,)) if end
                  else np.empty(0, dtype=np.uint32))
        cache = cls(path, meta, rows, tokens)
        if not len(cache):
            raise CacheError(f"teacher {name!r}: the cache in {path} holds no continuation (all empty or "
                             "contaminated)")
        return cache

    def continuation(self, window: int) -> np.ndarray:
        if int(window) not in self._span:
            raise CacheError(f"teacher {self.name!r}: no continuation of training window {window} in {self.path}")
        off, n = self._span[int(window)]
        return np.asarray(self._tokens[off: off + n], dtype=np.int64)

    def __contains__(self, window: int) -> bool:
        return int(window) in self._span

    def __len__(self) -> int:
        return len(self.windows)
