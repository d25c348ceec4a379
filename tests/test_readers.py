"""lokilm.data.readers: each format and compression, Gutenberg stripping on real books, bad input counted."""

import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import pytest
import zstandard

from lokilm.data.readers import DataError, ReadStats, iter_documents

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
COMPRESS = {"": bytes, ".xz": lzma.compress, ".bz2": bz2.compress, ".gz": gzip.compress,
            ".zst": zstandard.ZstdCompressor().compress}


def read(*paths, **kwargs):
    stats = ReadStats()
    return list(iter_documents(list(paths), stats=stats, **kwargs)), stats


def write(path: Path, data: bytes | str, compression: str = "") -> Path:
    path = path.with_name(path.name + compression)
    path.write_bytes(COMPRESS[compression](data.encode() if isinstance(data, str) else data))
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- the bundled slice -------------------------------------------------------------------------------------------

def test_gutenberg_header_and_footer_are_stripped_from_every_bundled_book():
    docs, stats = read(CORPUS / "gutenberg")
    assert len(docs) == 15 and stats.skipped == {}
    for doc in docs:
        assert not re.search(r"(START|END) OF TH(E|IS) PROJECT GUTENBERG", doc.text, re.I), doc.id
        for boilerplate in ("SMALL PRINT", "FULL LICENSE", "Project Gutenberg-tm", "Produced by", "should be named"):
            assert boilerplate not in doc.text, (doc.id, boilerplate)
    assert stats.stripped == {"gutenberg_header": 15, "gutenberg_footer": 14}
    # The one book with no footer marker at all: kept whole, and flagged.
    assert stats.warnings == {"gutenberg_footer_not_found": 1}
    assert "Merry_Wives" in stats.examples["gutenberg_footer_not_found"][0]


@pytest.mark.parametrize("name, starts, ends", [
    ("Carroll_Lewis__Through", "THROUGH THE LOOKING-GLASS\n", "THE END"),
    ("Poe_Edgar_Allan__The_Raven", "Transcriber's Notes:", "[Illustration]"),
    ("Irving_Washington", "THE LEGEND OF SLEEPY HOLLOW", "THE END."),  # footer "End of Project Gutenberg’s" (curly)
    ("Trollope_Anthony", "Transcribed from the 1864", "a gratified smile comes across his face."),  # 2-line START
    ("Dumas_Alexandre__Widger", "WIDGER'S QUOTATIONS", "called to account"),  # old etext: no START marker
    ("Lang_Andrew__The_Iliad", "THE ILIAD OF HOMER", "Thus held they funeral for Hector tamer of horses."),
    ("Shakespeare_William__The_Merry", "Project Gutenberg's Etext", "FINIS. THE Merry Wiues of Windsor."),
    ("Homer__The_Story", "THE STORY OF THE ODYSSEY", "Vulcan."),  # small print in the footer, after END OF
])
def test_gutenberg_body_is_kept(name, starts, ends):
    (path,) = CORPUS.glob(f"gutenberg/{name}*")
    (doc,), _ = read(path)
    assert doc.text.startswith(starts) and doc.text.endswith(ends)
    assert doc.id == path.name and doc.source == str(path)


def test_byte_identical_books_read_identically():
    (poe,), _ = read(*CORPUS.glob("gutenberg/Poe_Edgar_Allan__The_Raven__5bd08c34*"))
    (dore,), _ = read(*CORPUS.glob("gutenberg/Dor_Gustave__The_Raven__5bd08c34*"))
    assert poe.text == dore.text and poe.id != dore.id and "Quoth the Raven" in poe.text


def test_wikiextractor_file_gives_one_document_per_doc():
    docs, stats = read(CORPUS / "wikipedia" / "wiki_00.xz")
    assert len(docs) == 1530 == stats.documents
    assert docs[0].id == "wiki_00.xz#56564557" and docs[0].text == "Marcus Claudius Tacitus"  # a stub: title only
    assert docs[1].text.startswith("Jarred Shaw\n\nJarred Shaw (born September 28, 1990)")
    assert not any("<doc" in d.text or "</doc>" in d.text for d in docs)


def test_folder_walk_skips_metadata_and_names_ids_from_the_folder():
    docs, stats = read(CORPUS / "shakespeare")
    assert len(docs) == 8 and stats.files == 9
    assert stats.skipped == {"not_a_corpus_file": 1}
    assert stats.examples["not_a_corpus_file"][0].endswith("metadata.txt.xz")
    assert [d.id for d in docs[:2]] == [f"shakespeare/julius_caesar_{ed}.txt.xz" for ed in ("gut", "gut_f")]


def test_whole_corpus_is_read_in_a_stable_order_with_unique_ids():
    docs, stats = read(CORPUS)
    again, _ = read(CORPUS)
    assert [d.id for d in docs] == [d.id for d in again]
    assert len({d.id for d in docs}) == len(docs) == stats.documents == 15 + 8 + 1530 + 2051
    assert stats.files == sum(1 for p in CORPUS.rglob("*") if p.is_file())
    assert stats.bytes == sum(len(d.text.encode()) for d in docs)
    assert json.loads(json.dumps(stats.to_dict()))["documents"] == stats.documents


# --- formats and compressions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", list(COMPRESS))
def test_each_format_under_each_compression(tmp_path, compression):
    write(tmp_path / "a.jsonl", jsonl({"text": "first"}, {"text": "second", "id": 7}), compression)
    write(tmp_path / "b.txt", "plain\r\ntext\r\n", compression)
    write(tmp_path / "wiki_00", '<doc id="12" url="?curid=12" title="T">\nT\n\nBody.\n</doc>\n', compression)
    docs, stats = read(tmp_path)
    root = tmp_path.name
    assert [(d.id, d.text) for d in docs] == [
        (f"{root}/a.jsonl{compression}#1", "first"), (f"{root}/a.jsonl{compression}#2", "second"),
        (f"{root}/b.txt{compression}", "plain\ntext"), (f"{root}/wiki_00{compression}#12", "T\n\nBody.")]
    assert stats.skipped == stats.repaired == stats.stripped == {}


def test_json_lines_with_another_text_field(tmp_path):
    path = write(tmp_path / "docs.json", jsonl({"content": "a"}, {"content": "b"}))
    docs, _ = read(path, text_field="content")
    assert [d.text for d in docs] == ["a", "b"]


def test_wiki_format_detected_from_content_and_its_defects_counted(tmp_path):
    path = write(tmp_path / "pages.txt", '\ufeff<doc id="1" title="A">\nA\n</doc>\nstray line\n<doc title="B">\n'
                                          'B\n<doc id="3" title="C">\n</doc>\n<doc id="4" title="D">\nD\n')
    docs, stats = read(path)
    assert [(d.id, d.text) for d in docs] == [("pages.txt#1", "A"), ("pages.txt#line5", "B"), ("pages.txt#4", "D")]
    assert stats.skipped == {"text_outside_doc": 1, "empty_document": 1}
    assert stats.repaired == {"unclosed_doc": 2}
    assert stats.examples["text_outside_doc"] == [f"{path}:4"]


def test_plain_text_that_is_not_gutenberg_is_kept_as_is(tmp_path):
    text = "*** START OF nothing in particular ***\nEnd of the story.\n"
    (doc,), stats = read(write(tmp_path / "notes.txt", "\n" + text))
    assert doc.text == text.strip() and stats.stripped == stats.warnings == {}


# --- bad input: counted, never crashed on, never silently dropped -----------------------------------------------

def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    plain = write(tmp_path / "latin1.txt", "café au lait".encode("latin-1"))
    lines = write(tmp_path / "x.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    docs, stats = read(plain, lines)
    assert [d.text for d in docs] == ["caf\ufffd au lait", "ok", "caf\ufffd"]
    assert stats.repaired == {"invalid_utf8": 2}
    assert stats.examples["invalid_utf8"] == [str(plain), f"{lines}:2"]


def test_nul_bytes_and_lone_surrogates_are_removed_and_counted(tmp_path):
    plain = write(tmp_path / "nul.txt", b"a text with one\x00 NUL byte")
    lines = write(tmp_path / "x.jsonl", b'{"text": "e\\u0000f"}\n{"text": "g\x00h"}\n{"text": "i\\ud800j"}\n')
    docs, stats = read(plain, lines)
    assert [d.text for d in docs] == ["a text with one NUL byte", "ef", "gh", "i\ufffdj"]
    assert stats.repaired == {"nul_bytes": 3, "lone_surrogates": 1}


def test_binary_empty_and_unreadable_files_are_skipped(tmp_path):
    write(tmp_path / "a.bin", bytes(range(256)) * 40)
    write(tmp_path / "b_utf16.txt", "hello world ".encode("utf-16") * 100)
    write(tmp_path / "c_empty.txt", b"")
    write(tmp_path / "d_empty.jsonl", b"", ".xz")  # a valid xz stream of nothing
    (tmp_path / "e_zero_bytes.txt.bz2").write_bytes(b"")
    write(tmp_path / "f_blank.txt", "  \n\n\t\n")
    write(tmp_path / "g.txt", "the one good document")
    docs, stats = read(tmp_path)
    assert [d.text for d in docs] == ["the one good document"]
    assert stats.skipped == {"binary_file": 2, "empty_file": 3, "empty_document": 1} and stats.files == 7


def test_bad_json_lines_are_counted_with_their_line(tmp_path):
    path = write(tmp_path / "x.jsonl", '{"text": "good"}\n\n{not json\n[1, 2]\n{"title": "no text"}\n'
                                       '{"text": 5}\n{"text": null}\n{"text": ""}\n{"text": "also good"}\n')
    docs, stats = read(path)
    assert [(d.id, d.text) for d in docs] == [("x.jsonl#1", "good"), ("x.jsonl#9", "also good")]
    assert stats.skipped == {"malformed_jsonl": 2, "missing_text_field": 1, "text_not_a_string": 2,
                             "empty_document": 1}
    assert stats.examples["malformed_jsonl"] == [f"{path}:3", f"{path}:4"]
    assert stats.examples["text_not_a_string"] == [f"{path}:6", f"{path}:7"]


def test_concatenated_zstd_frames_are_all_read(tmp_path):
    compress = zstandard.ZstdCompressor().compress
    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(compress(jsonl({"text": "frame one"}).encode()) + compress(jsonl({"text": "frame two"}).encode()))
    docs, _ = read(path)
    assert [d.text for d in docs] == ["frame one", "frame two"]


@pytest.mark.parametrize("compression", [c for c in COMPRESS if c])
def test_truncated_compressed_file_is_counted_not_raised(tmp_path, compression):
    records = [{"text": f"document {i} " + "word " * (i % 50)} for i in range(20000)]
    whole = write(tmp_path / "x.jsonl", jsonl(*records), compression)
    whole.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    docs, stats = read(whole)
    assert len(docs) < len(records)  # what came before the damage is kept, the rest is not invented
    assert stats.skipped == {"corrupt_compressed_file": 1}
    assert stats.examples["corrupt_compressed_file"][0].startswith(str(whole))


@pytest.mark.parametrize("compression", [c for c in COMPRESS if c])
def test_garbage_with_a_compression_suffix_is_counted(tmp_path, compression):
    path = tmp_path / f"x.txt{compression}"
    path.write_bytes(b"this is not compressed at all\n" * 10)
    docs, stats = read(path)
    assert docs == [] and stats.skipped == {"corrupt_compressed_file": 1}


def test_documentation_and_hidden_files_are_not_read_as_corpus(tmp_path):
    for name in ("README.md", "LICENSE", "MANIFEST.json", "metadata.txt.xz", ".hidden.txt"):
        write(tmp_path / name, "[1, 2]")
    (tmp_path / ".git").mkdir()
    write(tmp_path / ".git" / "config.txt", "hidden folder")
    write(tmp_path / "book.txt", "text")
    docs, stats = read(tmp_path)
    assert [d.text for d in docs] == ["text"]
    assert stats.skipped == {"not_a_corpus_file": 4}
    # Named explicitly, a README is read; a .json holding one JSON document is still not corpus text.
    (readme,), _ = read(tmp_path / "README.md")
    assert readme.text == "[1, 2]"
    docs, stats = read(write(tmp_path / "single.json", '{\n  "text": "pretty-printed"\n}\n'))
    assert docs == [] and stats.skipped == {"not_a_corpus_file": 1}


def test_examples_are_capped_at_three(tmp_path):
    _, stats = read(write(tmp_path / "x.jsonl", "oops\n" * 10))
    assert stats.skipped == {"malformed_jsonl": 10} and len(stats.examples["malformed_jsonl"]) == 3


def test_missing_path_or_nothing_readable_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does-not-exist"):
        iter_documents([tmp_path / "does-not-exist"])  # raised at the call, before iteration
    with pytest.raises(DataError, match="no input"):
        iter_documents([])
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "README.md", "docs")
    with pytest.raises(DataError, match=f"no readable documents in folder {tmp_path}"):
        read(tmp_path)


def test_missing_zstandard_is_a_clear_error(tmp_path, monkeypatch):
    path = write(tmp_path / "x.txt", "text", ".zst")
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)
    with pytest.raises(DataError, match="pip install zstandard"):
        read(path)


def test_parquet_rows_are_documents_and_bad_rows_are_counted(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["first document", None, "", "third"], "n": [1, 2, 3, 4]}),
                   tmp_path / "part.parquet")
    pq.write_table(pa.table({"body": ["no text column"]}), tmp_path / "other.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    stats = ReadStats()
    docs = list(iter_documents([tmp_path], stats=stats))
    assert [(d.id.rsplit("/", 1)[-1], d.text) for d in docs] == [("part.parquet#1", "first document"),
                                                                 ("part.parquet#4", "third")]
    assert stats.skipped == {"text_not_a_string": 1, "empty_document": 1, "missing_text_field": 1,
                             "corrupt_parquet_file": 1}
    assert stats.documents == 2 and stats.files == 3
