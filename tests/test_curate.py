"""The curation pipeline (lokilm/curate) on small planted corpora: dedup, decontamination, bad input, determinism."""

import json
import lzma
import random
import re

import pytest

from lokilm.cli import main
from lokilm.config import load_config
from lokilm.curate.facts import prune_facts
from lokilm.curate.normalise import Normalise
from lokilm.curate.pipeline import curate_stage
from lokilm.data.benchmarks import load_arc_challenge, load_mmlu
from lokilm.data.readers import iter_documents
from lokilm.errors import LokiError

NO_EMBEDDINGS = ["curate.classifier.enabled=false", "curate.semdedup.enabled=false", "curate.prototypes.enabled=false"]


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One decontamination index for the session (built from every bundled benchmark once)."""
    return tmp_path_factory.mktemp("curate_cache")


@pytest.fixture(scope="session")
def articles():
    """Distinct real texts: bundled Wikipedia articles of 150 words or more, already normalised (so the output,
    which is normalised, can be compared with them)."""
    docs = [d.text for d in iter_documents(["data/corpus/wikipedia/wiki_00.xz"]) if len(d.text.split()) >= 150]
    return [Normalise().format(t) for t in docs[:12]]


def curate(tmp_path, cache, docs, *overrides, name="run"):
    """Write `docs` as JSONL, curate them; return (report, kept texts, removals by stage)."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cfg = load_config(None, [f"run_dir={tmp_path / name}", f"data.inputs=[{corpus}]",
                             f"curate.decontaminate.cache_dir={cache}", *NO_EMBEDDINGS, *overrides])
    report = curate_stage(cfg)
    root = tmp_path / name / "curate"
    kept = [json.loads(line)["text"] for f in sorted((root / "output").glob("*.jsonl")) for line in f.read_text().splitlines()]
    removals = {}
    for line in (root / "removals.jsonl").read_text().splitlines():
        r = json.loads(line)
        removals.setdefault(r["stage"], []).append(r)
    return report, kept, removals


def test_planted_exact_duplicates_are_removed_and_one_copy_kept(tmp_path, cache, articles):
    docs = articles[:6] + [articles[0]] * 3 + [articles[1]] * 2
    report, kept, removals = curate(tmp_path, cache, docs)
    assert sorted(kept) == sorted(articles[:6])
    assert {r["reason"] for r in removals["exact_dedup"]} == {"exact_duplicate"}
    assert len(removals["exact_dedup"]) == 5
    assert report["accounting"] == {**report["accounting"], "documents_in": 11, "kept": 6, "removed": 5, "balanced": True}


def light_edit(text: str, seed: int = 0, rate: float = 0.03) -> str:
    """Another edition of the same text: a few words respelt, a few dropped, one line added."""
    rng = random.Random(seed)
    words = text.split(" ")
    out = [w.upper() if rng.random() < rate else w for w in words if rng.random() > rate / 2]
    return "Edited and corrected for this edition.\n" + " ".join(out)


def test_minhash_catches_a_lightly_edited_edition_but_not_distinct_texts(tmp_path, cache, sample_text, articles):
    play = Normalise().format(sample_text[:60_000])  # the first acts of Macbeth
    edition = Normalise().format(light_edit(play))
    assert edition != play
    report, kept, removals = curate(tmp_path, cache, [play, edition, *articles[:8]], "curate.heuristics.enabled=false")
    assert [r["reason"] for r in removals["minhash"]] == ["near_duplicate"]
    assert (play in kept) != (edition in kept)
    assert all(a in kept for a in articles[:8])


def test_minhash_engines_give_the_same_curation(tmp_path, cache, sample_text, articles):
    play = Normalise().format(sample_text[:60_000])
    docs = [play, Normalise().format(light_edit(play)), Normalise().format(light_edit(play, seed=1, rate=0.2)),
            *articles[:6], articles[2] + " Café naïve, e\u0301 \u0301 résumé."]
    runs = {engine: curate(tmp_path, cache, docs, "curate.heuristics.enabled=false", f"curate.minhash.engine={engine}",
                           name=engine) for engine in ("lokilm", "datatrove")}
    (_, kept_a, removed_a), (_, kept_b, removed_b) = runs["lokilm"], runs["datatrove"]
    assert kept_a == kept_b and removed_a == removed_b and len(removed_a["minhash"]) >= 2
    sigs = [sorted((tmp_path / e / "curate/work/mh_sigs").rglob("*.sig")) for e in ("lokilm", "datatrove")]
    assert sigs[0] and [p.read_bytes() for p in sigs[0]] == [p.read_bytes() for p in sigs[1]]


def test_decontamination_removes_planted_benchmark_items_and_keeps_short_overlaps(tmp_path, cache, articles):
    arc = load_arc_challenge()[0]["question"]
    mmlu = next(q for r in load_mmlu() if len((q := r["question"]).split()) > 20 and "{" not in q)  # C4 drops "{"
    assert len(arc.split()) >= 13 and len(mmlu.split()) >= 13
    planted = [articles[0] + "\n\n" + arc, mmlu + "\n\n" + articles[1]]
    short = articles[2] + " " + " ".join(arc.split()[:8]) + "."  # shares only an 8-word run with a benchmark
    report, kept, removals = curate(tmp_path, cache, planted + [short, articles[3]])
    assert sorted(r["reason"] for r in removals["decontaminate"]) == ["benchmark_13gram_overlap"] * 2
    assert sorted(kept) == sorted([short, articles[3]])


def test_decontamination_cut_mode_keeps_the_rest_of_the_document(tmp_path, cache, articles):
    arc = load_arc_challenge()[3]["question"]
    report, kept, removals = curate(tmp_path, cache, [articles[0] + "\n\n" + arc + "\n\n" + articles[1]],
                                    "curate.decontaminate.mode=cut")
    assert len(kept) == 1 and "decontaminate" not in removals
    assert arc not in kept[0] and articles[0][:200] in kept[0] and articles[1][-200:] in kept[0]
    stage = next(s for s in report["stages"] if s["stage"] == "decontaminate")
    assert stage["edited"]["spans_cut"] == 1 and stage["edited"]["bytes_cut"] >= len(arc.encode()) - 2


def test_rerun_with_the_same_config_gives_the_same_output(tmp_path, cache, articles):
    docs = articles + [articles[0]]
    outputs = []
    for name in ("a", "b"):
        curate(tmp_path, cache, docs, name=name)
        outputs.append([(p.name, p.read_bytes()) for p in sorted((tmp_path / name / "curate" / "output").glob("*"))])
    assert outputs[0] == outputs[1] and outputs[0]
    removals = [(tmp_path / n / "curate" / "removals.jsonl").read_text() for n in ("a", "b")]
    assert removals[0] == removals[1]


def test_an_interrupted_run_goes_on_from_its_unfinished_tasks(tmp_path, cache, articles, monkeypatch):
    from lokilm.curate import pipeline

    def interrupt(*args):
        raise KeyboardInterrupt

    docs = articles + [articles[0]]
    monkeypatch.setattr(pipeline, "write_report", interrupt)
    with pytest.raises(KeyboardInterrupt):
        curate(tmp_path, cache, docs, name="a")
    monkeypatch.undo()
    root = tmp_path / "a" / "curate"
    (root / "work/logs/minhash/completions/00000").unlink()  # stopped in the last phase
    filtered = (root / "work/filter/00000.jsonl").stat().st_mtime_ns
    report, kept, _ = curate(tmp_path, cache, docs, name="a")
    assert (root / "work/filter/00000.jsonl").stat().st_mtime_ns == filtered  # the finished phases were not run again
    assert kept == curate(tmp_path, cache, docs, name="b")[1] and report["accounting"]["balanced"]


def test_two_tasks_give_the_same_output_as_one(tmp_path, cache, sample_text, articles):
    """Each task reads a contiguous block of the input, so the dedup steps keep the same copies as one task does:
    here the second copy of an article and the edition of the play fall in the second task's block."""
    play = Normalise().format(sample_text[:60_000])
    docs = [*articles[:5], play, Normalise().format(light_edit(play)), articles[4], *articles[6:10]]
    runs = {}
    for tasks in (1, 2):
        report, _, removals = curate(tmp_path, cache, docs, f"curate.executor.tasks={tasks}", name=f"t{tasks}")
        output = [line for f in sorted((tmp_path / f"t{tasks}/curate/output").glob("*.jsonl"))
                  for line in f.read_text().splitlines()]
        runs[tasks] = output, (tmp_path / f"t{tasks}/curate/removals.jsonl").read_text()
    assert runs[1] == runs[2] and report["accounting"]["balanced"]
    assert [r["id"] for r in removals["exact_dedup"]] == ["corpus.jsonl#8"] and len(removals["minhash"]) == 1


def test_ray_executor_gives_the_same_output_as_local(tmp_path, cache, articles):
    pytest.importorskip("ray")  # not a lokilm dependency; a local Ray instance takes about half a minute to start
    docs = [*articles[:4], articles[1]]
    outputs = []
    for kind in ("local", "ray"):
        report, kept, removals = curate(tmp_path, cache, docs, "curate.executor.tasks=2", f"curate.executor.kind={kind}",
                                        name=kind)
        outputs.append((kept, removals["exact_dedup"], report["accounting"]))
    assert outputs[0] == outputs[1] and outputs[1][2]["balanced"]


def test_bad_input_is_counted_under_named_reasons_and_the_accounting_balances(tmp_path, cache, articles, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "invalid_utf8.txt").write_bytes(articles[0].encode() + b" \xff\xfe broken bytes.")
    (bad / "nul.txt").write_bytes(articles[1].encode().replace(b". ", b".\x00 ", 3))
    (bad / "binary.bin").write_bytes(bytes(range(256)) * 40)
    (bad / "empty.txt").write_bytes(b"")
    (bad / "records.jsonl").write_text(json.dumps({"text": articles[2]}) + "\n{not json\n" + json.dumps({"body": "x"}) + "\n")
    (bad / "enormous.txt").write_text("All work and no play makes Jack a dull boy. " * 5000)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  inputs: [{bad}]\ncurate:\n  read: {{max_doc_bytes: 100000}}\n"
                   f"  decontaminate: {{cache_dir: {cache}}}\n")
    assert main(["curate", str(cfg), *NO_EMBEDDINGS]) == 0
    report = json.loads((tmp_path / "run" / "curate" / "report.json").read_text())
    a = report["accounting"]
    assert a["balanced"] and a["documents_in"] == a["kept"] + a["removed"]
    assert a["reader_skipped"] == {"binary_file": 1, "empty_file": 1, "malformed_jsonl": 1, "missing_text_field": 1}
    assert a["reader_repaired"] == {"invalid_utf8": 1, "nul_bytes": 1}
    assert report["stages"][0]["removed"] == {"document_too_large": 1}
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "run" / "curate" / "report.md").read_text().startswith("# Curation report")


def test_missing_input_path_stops_with_a_clear_message(tmp_path, capsys):
    assert main(["curate", "configs/tiny.yaml", f"run_dir={tmp_path}", f"data.inputs=[{tmp_path}/nowhere]"]) == 2
    err = capsys.readouterr().err
    assert "input path does not exist" in err and "Traceback" not in err


def test_a_folder_with_nothing_readable_stops_with_the_readers_message(tmp_path, cache, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.bin").write_bytes(bytes(range(256)) * 10)
    assert main(["curate", "configs/tiny.yaml", f"run_dir={tmp_path}/run", f"data.inputs=[{tmp_path}/junk]",
                 f"curate.decontaminate.cache_dir={cache}", *NO_EMBEDDINGS]) == 2
    err = capsys.readouterr().err
    assert "no readable documents" in err and "binary_file" in err and "Traceback" not in err


def test_heuristics_remove_stubs_and_keep_articles(tmp_path, cache, articles):
    stub = "Marcus Claudius Tacitus"
    report, kept, removals = curate(tmp_path, cache, [stub, *articles[:4]])
    assert [(r["stage"], r["reason"]) for r in removals["heuristics"]] == [("heuristics", "gopher_short_doc")]
    assert sorted(kept) == sorted(articles[:4])


def test_fact_pruning_drops_precise_facts_and_keeps_concepts():
    text = ("Alan Turing designed the Automatic Computing Engine. Alan Turing was born on 23 June 1912. "
            "The city has a population of 12,000 people. Computation is the manipulation of symbols.")
    kept, cut = prune_facts(text)
    assert kept == "Alan Turing designed the Automatic Computing Engine. Computation is the manipulation of symbols."
    assert cut == ["Alan Turing was born on 23 June 1912.", "The city has a population of 12,000 people."]


def test_fact_pruning_in_the_pipeline_reports_sentences_and_bytes(tmp_path, cache, articles):
    report, kept, _ = curate(tmp_path, cache, articles[:3], "curate.facts.enabled=true")
    facts = next(s for s in report["stages"] if s["stage"] == "facts")
    assert facts["edited"]["sentences_removed"] > 0
    assert facts["bytes_in"] - facts["bytes_out"] >= facts["edited"]["bytes_removed"] > 0
    assert not any(re.search(r"\b(in|on) [12]\d{3}\b", t) for t in kept)


def test_the_curated_output_is_what_loki_tokenize_reads(tmp_path, cache, articles):
    from lokilm import stages

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in articles + [articles[0]]))
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"data.inputs=[{corpus}]", "curate.enabled=true",
                                            f"curate.decontaminate.cache_dir={cache}", "tokenizer.vocab_size=300",
                                            "data.holdout_fraction=0.3",
                                            "train.progress=false", *NO_EMBEDDINGS])
    assert stages.curate_stage(cfg)["status"] == "done"
    stages.tokenizer_stage(cfg)
    summary = stages.tokenize_stage(cfg)
    assert summary["read"]["documents"] == len(articles)  # the duplicate was curated away
    assert stages.curate_stage(cfg)["status"] == "skipped (done)"


def test_bundled_shakespeare_editions_report(tmp_path, cache):
    """The two bundled editions of Julius Caesar (modern vs First Folio spelling) share few word 5-grams;
    MinHash at datatrove's defaults keeps both. Recorded so a change in that behaviour is noticed."""
    texts = [lzma.open(f"data/corpus/shakespeare/julius_caesar_{e}.txt.xz", "rt").read() for e in ("gut", "gut_f")]
    _, kept, removals = curate(tmp_path, cache, texts, "curate.heuristics.enabled=false")
    assert len(kept) == 2 and "minhash" not in removals


# ---------------------------------------------------------------- reliability (issue 12, items 6, 7, 12)

def test_a_run_killed_before_it_is_marked_done_is_not_skipped_on_rerun(tmp_path, cache, articles, monkeypatch):
    """Killed after the report, before the "done" summary: the rerun finishes the run instead of skipping it."""
    from lokilm.rundir import RunDir

    write = RunDir.write_summary

    def killed(self, stage, summary):
        if summary.get("status") == "done":
            raise KeyboardInterrupt
        write(self, stage, summary)

    monkeypatch.setattr(RunDir, "write_summary", killed)
    with pytest.raises(KeyboardInterrupt):
        curate(tmp_path, cache, articles[:4])
    monkeypatch.undo()
    report, kept, _ = curate(tmp_path, cache, articles[:4])
    assert report["status"] == "done" and sorted(kept) == sorted(articles[:4])
    assert curate(tmp_path, cache, articles[:4])[0]["status"] == "skipped (done)"


def test_an_unbalanced_run_writes_no_report_and_is_not_taken_as_done(tmp_path, cache, articles, monkeypatch):
    from lokilm.curate import report as report_module

    lossy = report_module._removals
    monkeypatch.setattr(report_module, "_removals", lambda work: {k: v[1:] for k, v in lossy(work).items()})
    with pytest.raises(LokiError, match="does not balance"):
        curate(tmp_path, cache, articles[:4] + [articles[0]])
    root = tmp_path / "run" / "curate"
    assert not (root / "report.json").exists() and not (root / "removals.jsonl").exists()
    assert (root / "work" / "unbalanced.json").is_file()
    with pytest.raises(LokiError, match="does not balance"):  # still not done: the rerun checks again
        curate(tmp_path, cache, articles[:4] + [articles[0]])
    monkeypatch.undo()
    report, _, _ = curate(tmp_path, cache, articles[:4] + [articles[0]])
    assert report["status"] == "done" and report["accounting"]["balanced"]


def test_a_file_added_to_the_input_folder_reruns_curation(tmp_path, cache, articles):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in articles[:3]))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.inputs=[{folder}]",
                             f"curate.decontaminate.cache_dir={cache}", *NO_EMBEDDINGS])
    assert curate_stage(cfg)["accounting"]["documents_in"] == 3
    assert curate_stage(cfg)["status"] == "skipped (done)"
    (folder / "b.jsonl").write_text(json.dumps({"text": articles[3]}) + "\n")
    again = curate_stage(cfg)
    assert again["status"] == "done" and again["accounting"]["documents_in"] == 4


def test_a_curation_that_keeps_nothing_stops_with_a_clear_error(tmp_path, cache, capsys):
    corpus = tmp_path / "stubs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Stub article {i}."}) + "\n" for i in range(5)))
    args = ["curate", "configs/tiny.yaml", f"run_dir={tmp_path}/run", f"data.inputs=[{corpus}]",
            f"curate.decontaminate.cache_dir={cache}", *NO_EMBEDDINGS]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "loki: error: curation kept none of the 5 documents" in err and "heuristics 5" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run/curate/report.json").exists()  # so `loki tokenize` says: no finished curation
    assert (tmp_path / "run/curate/report.md").is_file()  # ...and the report says why
    assert main(args) == 2  # not done: the rerun says it again


def test_bad_curate_settings_are_refused(tmp_path, capsys):
    assert main(["curate", "configs/tiny.yaml", f"run_dir={tmp_path}", "data.inputs=[data/corpus/shakespeare]",
                 "curate.prototypes.keep_fraction=0"]) == 2
    assert "curate.prototypes.keep_fraction must be in (0, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------- decontamination per benchmark (issue 16)

def test_decontamination_report_by_benchmark(tmp_path, cache, articles):
    arc = load_arc_challenge()[0]["question"]
    mmlu = next(q for r in load_mmlu() if len((q := r["question"]).split()) > 20 and "{" not in q)
    docs = [articles[0] + "\n\n" + arc, mmlu + "\n\n" + articles[1], articles[2] + "\n\n" + arc, articles[3]]
    report, _, _ = curate(tmp_path, cache, docs)
    by = report["decontaminate"]["by_benchmark"]
    assert set(by) == {"arc_challenge", "mmlu"}
    assert by["arc_challenge"]["documents_dropped"] == 2 and by["mmlu"]["documents_dropped"] == 1
    assert by["mmlu"]["bytes"] == len(docs[1].encode())
    assert all(e["ngram"].lower() in " ".join(arc.split()).lower() for e in by["arc_challenge"]["examples"])
    page = (tmp_path / "run/curate/report.md").read_text()
    assert "## Benchmark contamination" in page and "| arc_challenge | 2 | 0 |" in page
    cut, _, _ = curate(tmp_path, cache, docs[:1], "curate.decontaminate.mode=cut", name="cut")
    assert cut["decontaminate"]["by_benchmark"]["arc_challenge"]["documents_cut"] == 1


# ---------------------------------------------------------------- prototype pruning per cluster / source (issue 16)

def test_prototype_pruning_per_source_keeps_each_sources_share():
    """Books in a tight cluster, articles spread out: one global cutoff drops mostly books; per source (and per
    cluster) each keeps its share."""
    import numpy as np
    from datatrove.data import Document

    from lokilm.curate.prototypes import PrototypePrune, source_of

    rng = np.random.default_rng(0)

    def unit(v):
        return v / np.linalg.norm(v)

    centre = unit(rng.normal(size=16))
    docs = [Document(text="b", id=f"b{i}", metadata={"source": f"corpus/books/{i}.txt",
                                                       "embedding": unit(centre + 0.05 * rng.normal(size=16))})
            for i in range(20)]
    docs += [Document(text="a", id=f"a{i}", metadata={"source": f"corpus/wiki/w{i // 10}.jsonl",
                                                        "embedding": unit(rng.normal(size=16))}) for i in range(20)]
    assert source_of("corpus/books/3.txt", ["corpus"]) == "corpus/books"
    assert source_of("corpus/books/3.txt", ["corpus/books"]) == "corpus/books"

    def kept(per, clusters=1):
        keep = PrototypePrune(0.5, clusters, 0, None, per, ["corpus"]).decide(docs)[0]
        return sum(keep[:20]), sum(keep[20:])

    books, articles = kept("global")
    assert books < 3 and articles > 17  # the tight books are the "easy" examples a global cutoff drops
    assert kept("source") == (10, 10)
    books, articles = kept("cluster", clusters=2)
    assert books + articles == 20 and books >= 5


def test_a_mixture_is_curated_together_and_written_per_source(tmp_path, cache, articles):
    """Curation reads every curated source in one pipeline (so a document in two sources is kept once), writes
    curate/output/<source>/, and a `curate: false` source goes to the tokenizer as it is."""
    from conftest import SMALL

    from lokilm import stages

    stub = "Too short to keep."
    wiki, books, raw = tmp_path / "wiki.jsonl", tmp_path / "books.jsonl", tmp_path / "raw.jsonl"
    wiki.write_text("".join(json.dumps({"text": t}) + "\n" for t in articles[:5]))
    books.write_text("".join(json.dumps({"body": t}) + "\n" for t in [articles[0], articles[5], articles[6], stub]))
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in [stub + " (generated)", articles[7]]))
    mixture = (f"data.mixture=[{{name: wiki, inputs: [{wiki}], weight: 0.5}}, "
               f"{{name: books, inputs: [{books}], weight: 0.3, text_field: body}}, "
               f"{{name: raw, inputs: [{raw}], weight: 0.2, curate: false}}]")
    cfg = load_config("configs/tiny.yaml", [*SMALL, f"run_dir={tmp_path / 'run'}", mixture, "curate.enabled=true",
                                            f"curate.decontaminate.cache_dir={cache}", *NO_EMBEDDINGS,
                                            "data.holdout_fraction=0.5", "model.context_length=32"])
    report = curate_stage(cfg)
    out = tmp_path / "run" / "curate" / "output"
    kept = {name: [json.loads(line)["text"] for f in sorted((out / name).glob("*.jsonl"))
                   for line in f.read_text().splitlines()] for name in ("wiki", "books")}
    assert sorted(kept["wiki"]) == sorted(articles[:5]) and sorted(kept["books"]) == sorted(articles[5:7])
    assert not (out / "raw").exists() and report["accounting"]["documents_in"] == 9
    removed = {r["stage"] for r in map(json.loads, (tmp_path / "run" / "curate" / "removals.jsonl").read_text()
                                       .splitlines())}
    assert {"exact_dedup", "heuristics"} <= removed  # books' copy of articles[0], and its stub
    by = report["by_source"]
    assert by["wiki"]["kept"] == 5 and by["books"]["kept"] == 2 and "raw" not in by
    assert by["books"]["removed"] == {"heuristics": 1, "exact_dedup": 1} and by["wiki"]["removed"] == {}
    assert "| books | 2 |" in (tmp_path / "run" / "curate" / "report.md").read_text()

    stages.tokenizer_stage(cfg)
    summary = stages.tokenize_stage(cfg)
    meta = json.loads((tmp_path / "run" / "shards" / "meta.json").read_text())
    assert list(meta["sources"]) == ["wiki", "books", "raw"]
    assert all(s["splits"]["train"]["tokens"] + s["splits"]["val"]["tokens"] > 0 for s in meta["sources"].values())
    assert summary["status"] == "done"
    assert curate_stage(cfg)["status"] == "skipped (done)"
