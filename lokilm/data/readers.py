"""Read raw documents from text, JSONL and WikiExtractor files (plain or compressed), counting every problem.

`iter_documents` walks files and folders and yields `Document`s; `ReadStats` says what was read, what was
skipped, repaired or stripped, and why. Bad input never raises: it is counted, with up to three example
locations per reason, so the stage summary shows it. Only a missing path, or a folder with nothing readable
in it, raises `DataError`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from lokilm.errors import LokiError

COMPRESSION_OPENERS = {".xz": lzma.open, ".bz2": bz2.open, ".gz": gzip.open}  # and .zst, via zstandard
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
# Met in a folder walk, these are documentation or metadata rather than corpus text (an explicitly named file
# is always read). Matched on the lower-cased name without its compression suffix: the part before the first
# dot, or the last suffix.
NOT_CORPUS_STEMS = {"license", "licence", "copying", "notice", "readme", "manifest", "metadata", "changelog"}
NOT_CORPUS_SUFFIXES = {".md", ".rst", ".csv", ".tsv", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".lst", ".py", ".sh"}
SNIFF_BYTES = 8192
BINARY_SHARE = 0.10  # of the first SNIFF_BYTES: control bytes or invalid UTF-8; UTF-16 and compressed data exceed it
MAX_EXAMPLES = 3
BOM = b"\xef\xbb\xbf"


class DataError(LokiError, ValueError):
    """Input data cannot be read at all (missing path, nothing readable); the message names the path."""


@dataclass
class Document:
    id: str  # "<path>" for one document a file, "<path>#<doc id or line number>" otherwise; stable across runs
    text: str
    source: str  # the file it came from


@dataclass
class ReadStats:
    files: int = 0  # files looked at, skipped ones included
    documents: int = 0  # documents yielded
    bytes: int = 0  # UTF-8 bytes of the yielded texts
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files or records dropped
    repaired: dict[str, int] = field(default_factory=dict)  # reason -> documents whose bytes were fixed
    stripped: dict[str, int] = field(default_factory=dict)  # reason -> documents with boilerplate removed
    warnings: dict[str, int] = field(default_factory=dict)  # reason -> documents kept as they are, worth a look
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to 3 locations (file or file:line)

    def count(self, kind: str, reason: str, where: str) -> None:
        counts = getattr(self, kind)
        counts[reason] = counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(where)

    def to_dict(self) -> dict:
        return asdict(self)


def iter_documents(inputs: list[str | Path], text_field: str = "text", stats: ReadStats | None = None
                   ) -> Iterator[Document]:
    """Yield the documents in `inputs` (files, or folders walked recursively in sorted order).

    Hidden files and folders are skipped. In a folder walk, documentation and metadata files (LICENSE, README*,
    MANIFEST*, metadata*, *.md, *.csv, *.yaml, ...) are skipped as "not_a_corpus_file"; a file named
    explicitly is always read. After removing a compression suffix (.xz, .bz2, .gz, .zst), the name picks the
    format: *.jsonl / *.ndjson / *.json are JSON lines, one document per line from `text_field` (a .json file
    holding one JSON document rather than lines is "not_a_corpus_file"); wiki_NN files, or files starting
    with `<doc `, are WikiExtractor output, one document per <doc>; anything else is plain text, one document
    per file, with the Project Gutenberg header, producer credits and licence footer stripped; *.parquet
    files give one document per row of the `text_field` column (pyarrow, read in batches). A folder in the
    Hugging Face datasets layout (`data/train-00000-of-00002.parquet`, ...) gives its train split only: the
    shards of its other splits (validation, test) are skipped as "not_the_train_split". Text formats
    get their line endings normalised to "\\n" and outer whitespace removed; JSONL texts are kept as they are.

    Counted in `stats` (reason -> count, with example locations): repaired, the document kept: invalid UTF-8
    (replaced by U+FFFD), NUL characters and lone surrogates (removed / replaced), a <doc> never closed;
    skipped: empty files, binary files (over 10% control bytes or invalid UTF-8 in the first 8 KB), unreadable
    or corrupt compressed files (documents read before the damage are kept), malformed JSON lines, records
    without a string `text_field`, empty documents, text outside <doc>; stripped: Gutenberg header and footer;
    warnings: a Gutenberg book whose header or footer marker was not found (kept whole).
    Arguments are checked at once: a missing path raises DataError now, not at the first `next()`.
    """
    if not inputs:
        raise DataError("no input paths given")
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.exists():
            raise DataError(f"input path does not exist: {path}")
    return _iter_inputs(paths, text_field, stats if stats is not None else ReadStats())


def _iter_inputs(paths: list[Path], text_field: str, stats: ReadStats) -> Iterator[Document]:
    for path in paths:
        if path.is_file():
            yield from _read_file(path, path.name, text_field, stats)
            continue
        before = stats.documents
        parent = os.path.dirname(os.path.abspath(path))  # ids keep the folder's own name: "corpus/wiki/wiki_00.xz"
        files = _walk(path)
        other_splits = _hf_other_splits(path, files)
        for file in files:
            rel = Path(os.path.relpath(os.path.abspath(file), parent)).as_posix()
            if file in other_splits:
                stats.files += 1
                stats.count("skipped", "not_the_train_split", str(file))
            elif not file.is_file():  # a FIFO, socket or device: opening it would block forever (or read garbage)
                stats.files += 1
                stats.count("skipped", "not_a_regular_file", str(file))
            elif _is_corpus_name(file.name):
                yield from _read_file(file, rel, text_field, stats)
            else:
                stats.files += 1
                stats.count("skipped", "not_a_corpus_file", str(file))
        if stats.documents == before:
            raise DataError(f"no readable documents in folder {path} (skipped so far: {stats.skipped or 'nothing'})")


# A Hugging Face datasets folder: data/{split}-00000-of-00002.parquet (or .jsonl, .json, compressed)
_HF_SHARD = re.compile(r"(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}\.")


def _hf_other_splits(root: Path, files: list[Path]) -> set[Path]:
    """In a Hugging Face datasets layout (`root/data/` holding {split}-NNNNN-of-NNNNN.* shards, a train split among
    them), the shards of the other splits: a dataset's validation or test split is not training text."""
    shards = {f: m.group("split") for f in files if f.parent == root / "data" and (m := _HF_SHARD.match(f.name))}
    return {f for f, split in shards.items() if split != "train"} if "train" in shards.values() else set()


def _walk(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath, name) for name in filenames if not name.startswith(".")]
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def _without_compression(name: str) -> str:
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in COMPRESSION_OPENERS or suffix.lower() == ".zst" else name


def _is_corpus_name(name: str) -> bool:
    name = _without_compression(name).lower()
    return name.split(".")[0] not in NOT_CORPUS_STEMS and os.path.splitext(name)[1] not in NOT_CORPUS_SUFFIXES


def _open(path: Path) -> BinaryIO:
    suffix = path.suffix.lower()
    if suffix in COMPRESSION_OPENERS:
        return COMPRESSION_OPENERS[suffix](path, "rb")
    if suffix == ".zst":
        return io.BufferedReader(_ZstdReader(open(path, "rb")))
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """zstandard's own stream_reader returns a truncated stream silently; this one raises EOFError instead."""

    def __init__(self, raw: BinaryIO):
        try:
            import zstandard
        except ImportError as e:
            raw.close()
            raise DataError(f"reading {raw.name} needs the zstandard package: pip install zstandard") from e
        self._zstd, self._raw, self._buf = zstandard, raw, b""
        self._dobj = zstandard.ZstdDecompressor().decompressobj()

    def readable(self) -> bool:
        return True

    def readinto(self, out) -> int:
        while not self._buf:
            if self._dobj.eof:  # a frame is complete: the file may hold more, concatenated
                chunk = self._dobj.unused_data or self._raw.read(1 << 16)
                if not chunk:
                    return 0
                self._dobj = self._zstd.ZstdDecompressor().decompressobj()
            elif not (chunk := self._raw.read(1 << 16)):
                raise EOFError("zstd stream ended before the end of its frame")
            try:
                self._buf = self._dobj.decompress(chunk)
            except self._zstd.ZstdError as e:
                raise OSError(str(e)) from e
        n = min(len(out), len(self._buf))
        out[:n], self._buf = self._buf[:n], self._buf[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _looks_binary(head: bytes) -> bool:
    text = head.decode("utf-8", errors="replace")
    bad = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in "\t\n\r\f\v") or c == "\x7f")
    return bad > BINARY_SHARE * max(len(text), 1)


def _is_json_lines(head: bytes) -> bool:
    first = head.removeprefix(BOM).lstrip()
    return first.startswith(b"{") and first.split(b"\n", 1)[0].strip() != b"{"  # not a pretty-printed document


def _read_file(path: Path, rel: str, text_field: str, stats: ReadStats) -> Iterator[Document]:
    stats.files += 1
    where = str(path)
    name = _without_compression(path.name)
    compressed = name != path.name
    if name.lower().endswith(".parquet") and not compressed:  # binary by design: not sniffed as text
        yield from _read_parquet(path, rel, text_field, stats)
        return
    try:
        with _open(path) as f:
            head = f.read(SNIFF_BYTES) if path.stat().st_size else b""
        if not head:
            stats.count("skipped", "empty_file", where)
        elif _looks_binary(head):
            stats.count("skipped", "binary_file", where)
        elif os.path.splitext(name)[1].lower() in JSONL_SUFFIXES:
            if name.lower().endswith(".json") and not _is_json_lines(head):
                stats.count("skipped", "not_a_corpus_file", where)
            else:
                yield from _read_jsonl(path, rel, text_field, stats)
        elif re.fullmatch(r"wiki_\d+", name) or head.removeprefix(BOM).lstrip().startswith(b"<doc "):
            yield from _read_wiki(path, rel, stats)
        else:
            yield from _read_plain(path, rel, stats)
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as e:
        reason = "corrupt_compressed_file" if compressed and not isinstance(e, PermissionError) else "unreadable_file"
        stats.count("skipped", reason, f"{where}: {e}")


def _decode(raw: bytes, repairs: set[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        repairs.add("invalid_utf8")
        return raw.decode("utf-8", errors="replace")


def _document(doc_id: str, text: str, source: str, where: str, repairs: set[str], stats: ReadStats
              ) -> Document | None:
    if "\x00" in text:
        text = text.replace("\x00", "")
        repairs.add("nul_bytes")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates, from \ud800-style escapes in JSON
        text = re.sub("[\ud800-\udfff]", "\ufffd", text)
        size = len(text.encode("utf-8"))
        repairs.add("lone_surrogates")
    if not text.strip():
        stats.count("skipped", "empty_document", where)
        return None
    for reason in sorted(repairs):
        stats.count("repaired", reason, where)
    stats.documents += 1
    stats.bytes += size
    return Document(doc_id, text, source)


def _read_jsonl(path: Path, rel: str, text_field: str, stats: ReadStats) -> Iterator[Document]:
    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if lineno == 1:
                raw = raw.removeprefix(BOM)
            if not raw.strip():
                continue
            repairs: set[str] = set()
            try:
                record = json.loads(_decode(raw, repairs), strict=False)  # strict=False: raw control chars in strings
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                stats.count("skipped", "malformed_jsonl", where)
            elif text_field not in record:
                stats.count("skipped", "missing_text_field", where)
            elif not isinstance(record[text_field], str):
                stats.count("skipped", "text_not_a_string", where)
            elif doc := _document(f"{rel}#{lineno}", record[text_field], str(path), where, repairs, stats):
                yield doc


def _read_parquet(path: Path, rel: str, text_field: str, stats: ReadStats) -> Iterator[Document]:
    """One document per row of the `text_field` column, read in record batches (never the whole file)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        parquet = pq.ParquetFile(path)
        if text_field not in parquet.schema_arrow.names:
            stats.count("skipped", "missing_text_field", f"{path}: no column {text_field!r}")
            return
        row = 0
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                where = f"{path}:row {row}"
                if not isinstance(value, str):
                    stats.count("skipped", "text_not_a_string", where)
                elif doc := _document(f"{rel}#{row}", value, str(path), where, set(), stats):
                    yield doc
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError: not a Parquet file, or damaged
        stats.count("skipped", "corrupt_parquet_file", f"{path}: {e}")


_DOC_OPEN = re.compile(r"<doc\b[^>]*>\s*$")
_DOC_ID = re.compile(r'\bid="([^"]*)"')


def _read_wiki(path: Path, rel: str, stats: ReadStats) -> Iterator[Document]:
    """One document per <doc id=.. url=.. title=..> ... </doc>; the title line WikiExtractor repeats stays."""
    doc_id, start, lines, repairs = None, 0, [], set()

    def finish() -> Document | None:
        return _document(f"{rel}#{doc_id}", "\n".join(lines).strip(), str(path), f"{path}:{start}", repairs, stats)

    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw.removeprefix(BOM) if lineno == 1 else raw, repairs).rstrip("\r\n")
            if _DOC_OPEN.match(line):
                if doc_id is not None:
                    repairs.add("unclosed_doc")
                    if doc := finish():
                        yield doc
                m = _DOC_ID.search(line)
                doc_id, start, lines, repairs = (m.group(1) if m else f"line{lineno}"), lineno, [], set()
            elif doc_id is None:
                if line.strip():
                    stats.count("skipped", "text_outside_doc", f"{path}:{lineno}")
            elif line.strip() == "</doc>":
                if doc := finish():
                    yield doc
                doc_id, repairs = None, set()
            else:
                lines.append(line)
    if doc_id is not None:
        repairs.add("unclosed_doc")
        if doc := finish():
            yield doc


def _read_plain(path: Path, rel: str, stats: ReadStats) -> Iterator[Document]:
    with _open(path) as f:
        raw = f.read().removeprefix(BOM)
    repairs: set[str] = set()
    text = _decode(raw, repairs).replace("\r\n", "\n").replace("\r", "\n")
    text = strip_gutenberg(text, str(path), stats)
    if doc := _document(rel, text.strip(), str(path), str(path), repairs, stats):
        yield doc


# Project Gutenberg boilerplate, in the variants found in the bundled corpus: modern books put the header before
# "*** START OF THE/THIS PROJECT GUTENBERG EBOOK <title> ***" (the title may wrap onto a second line); old
# etexts (1990s-2002) instead end it with "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*...*END*". The
# footer starts at "*** END OF THE PROJECT GUTENBERG EBOOK", "End of the Project Gutenberg EBook of",
# "End of Project Gutenberg's ..." (straight or curly apostrophe) or "End of this Project Gutenberg Etext";
# some old files have none at all.
_PG = re.compile(r"project gutenberg", re.I)
_PG_START = re.compile(r"^[ \t]*\*{3}[ \t]*START OF (THE|THIS) PROJECT GUTENBERG[^\n]*", re.I | re.M)
_PG_SMALL_PRINT_END = re.compile(r"^\W*END\W*THE SMALL PRINT[^\n]*", re.I | re.M)
_PG_END = re.compile(r"^[ \t]*(\*{3}[ \t]*END OF (THE |THIS )?PROJECT GUTENBERG|End of (the |this )?Project Gutenberg)",
                     re.I | re.M)
# Paragraphs right after the header that are still boilerplate: producer credits, old trademark notices.
_PG_CREDITS = re.compile(r"\s*(Produced by|Scanned by|(This )?e-?(text|book) (was )?(prepared|produced|created) by|"
                         r"\[Portions of this header|\[Project Gutenberg is a TradeMark).*?(\n[ \t]*\n|$)", re.I | re.S)


def strip_gutenberg(text: str, where: str = "", stats: ReadStats | None = None) -> str:
    """Cut a Project Gutenberg header, producer credits and licence footer; other text comes back unchanged."""
    stats = stats if stats is not None else ReadStats()
    header_end, footer = 0, _PG_END.search(text)
    if start := _PG_START.search(text):
        header_end = start.end()
        if "***" not in start.group(0)[start.start(1) - start.start():]:  # the title wrapped onto the next line
            next_line = text[header_end + 1:].split("\n", 1)[0]
            header_end += 1 + len(next_line) if "***" in next_line else 0
    elif (old := _PG_SMALL_PRINT_END.search(text)) and (not footer or old.start() < footer.start()):
        header_end = old.end()
    elif not _PG.search(text[:5000]):
        return text  # not a Gutenberg book
    if header_end:
        stats.count("stripped", "gutenberg_header", where)
        while credits := _PG_CREDITS.match(text, header_end):
            header_end = credits.end()
    else:
        stats.count("warnings", "gutenberg_header_not_found", where)
    footer = _PG_END.search(text, header_end)
    if footer:
        stats.count("stripped", "gutenberg_footer", where)
    else:
        stats.count("warnings", "gutenberg_footer_not_found", where)
    return text[header_end: footer.start() if footer else len(text)]
