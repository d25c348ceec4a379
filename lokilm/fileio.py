"""File writing that survives crashes (write to a temporary name, fsync, rename) and file checksums."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
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
