"""The two label files a quality classifier trains on: human labels (JSONL with text and a 0/1 label) and the
annotator's scores (`loki curate annotate`'s JSONL)."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

from lokilm.errors import LokiError


def read_labels(paths: list[str]) -> list[tuple[str, int]]:
    """(text, label) from JSONL files (optionally .xz) with `text` and a 0/1 `label`; repeated texts once."""
    files = [f for p in paths for f in (sorted(Path(p).glob("*.jsonl*")) if Path(p).is_dir() else [Path(p)])]
    if not files:
        raise LokiError(f"no labelled JSONL files in {paths}")
    seen: dict[str, int] = {}
    for f in files:
        opener = lzma.open if f.suffix == ".xz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    seen.setdefault(r["text"], int(r["label"]))
    return list(seen.items())


def read_annotations(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a run killed mid-write leaves a partial last line: that document is scored again
                break
            raise LokiError(f"{path}:{n} is not a JSON line; delete the file to annotate again") from None
    return rows
