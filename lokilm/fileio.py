"""File writing that survives crashes (write to a temporary name, fsync, rename) and file checksums."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of this process's own: two processes replacing one file never write into each other's temporary
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a Ctrl-C leaves no temporary behind
        raise


_HELD_LOCKS: set[int] = set()  # the descriptors of the locks this process holds (exclusive_lock)


def _drop_held_locks_in_child() -> None:
    # A forked child (datatrove's Manager and pool workers) shares the parent's open lock file, and flock belongs to
    # it, not to a process: a child left behind by a `kill -9` of the command kept the lock for good, naming a dead
    # pid. Children close their copy; the parent alone holds the lock.
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_held_locks_in_child)


@contextlib.contextmanager
def exclusive_lock(path: Path, holder: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an flock on `path` (created if missing) with `holder` written in it, or raise busy(the holder's text)
    at once if another process has it. The OS drops the lock when its process dies, however it dies, so a stale
    lock file never blocks the next holder."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise busy(os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        _HELD_LOCKS.add(fd)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # releases the lock


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2).encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def regular_files(paths: list[str | Path]) -> list[Path]:
    """Every regular file under `paths` (files or folders), sorted; FIFOs, sockets and devices are left out (a
    reader would block on a FIFO forever), hidden files and folders too."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*"))
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            out.append(p)
    return out


def fingerprint(paths: list[str | Path]) -> dict:
    """What a stage's input files are, by content: for each regular file its path relative to the input it was
    found under, its size and its sha256; a stage whose fingerprint is unchanged has nothing new to read. Relative
    names and content hashes (not mtimes) keep it equal for a copied or moved run directory."""
    files = {}
    for root in map(Path, paths):
        for f in regular_files([root]):
            name = f"{root.name}/{f.relative_to(root)}" if root.is_dir() else root.name
            files[name] = [f.stat().st_size, sha256_file(f)]
    return {"files": len(files), "sha256": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}
