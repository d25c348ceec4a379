"""What a careless or hostile user does to the newest curation and run features (a data mixture's curation, the
fast MinHash engine, per-source held-out bpb, `loki run` under torchrun): each test failed before its fix. The
standard: a one-line `loki: error: ...` or a counted skip, never a traceback, a silent wrong result or a lost
file. Real stages on small copies of the bundled corpus."""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL

from lokilm.cli import main
from lokilm.config import load_config
from lokilm.curate.decontaminate import NgramIndex
from lokilm.errors import LokiError
from lokilm.rundir import RunDir

PLAYS = "data/corpus/shakespeare"
FAST = ["curate.enabled=true", "curate.classifier.enabled=false", "curate.semdedup.enabled=false",
        "curate.prototypes.enabled=false", "curate.decontaminate.enabled=false", "curate.minhash.enabled=false",
        "curate.executor.tasks=1"]


def mixture(*sources) -> str:
    return "data.mixture=[" + ", ".join(f"{{name: {n}, inputs: [{p}]{more}}}" for n, p, more in sources) + "]"


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _save_many(path: str, index: NgramIndex) -> None:
    for _ in range(40):
        index.save(path)


def test_benchmark_index_built_by_two_tasks_at_once(tmp_path):
    # `loki curate` with curate.executor.tasks=2 on a fresh cache: both tasks built the benchmark index and saved it
    # through one shared "x.npz.tmp.npz"; the second rename found no file, a FileNotFoundError traceback
    index = NgramIndex.from_texts([("arc", "the quick brown fox jumps over the lazy dog " * 40)], 13)
    path = str(tmp_path / "cache" / "benchmarks.npz")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(path, index)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    back = NgramIndex.load(path)
    assert np.array_equal(back.hashes, index.hashes) and back.names == index.names
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["benchmarks.npz"]  # no temporary left behind


def test_reordered_sources_are_curated_again_and_an_emptied_source_is_named(tmp_path, capsys):
    # The sources' order is the reading order, which decides which copy of a duplicate across two sources is kept;
    # the "done" key was a dict by name, equal in any order, so reordering the sources kept the old attribution
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for name in ("macbeth_gut.txt.xz", "sonnets_gut.txt.xz"):
        shutil.copy(f"{PLAYS}/{name}", tmp_path / "a")
    shutil.copy(f"{PLAYS}/macbeth_gut.txt.xz", tmp_path / "b")
    run = tmp_path / "run"
    a, b = ("a", tmp_path / "a", ""), ("b", tmp_path / "b", "")
    code, _, err = cli(capsys, "curate", "configs/tiny.yaml", f"run_dir={run}", mixture(a, b), *FAST)
    summary = json.loads((run / "stages" / "curate.json").read_text())
    assert code == 0 and summary["by_source"]["b"]["kept"] == 0 and summary["by_source"]["a"]["kept"] == 2
    # curation reported "done" with a source emptied by exact dedup: said now, not first by the tokenizer
    assert "loki: warning: curation kept none of data.mixture source 'b' (removed by: exact_dedup 1)" in err

    code, out, err = cli(capsys, "curate", "configs/tiny.yaml", f"run_dir={run}", mixture(b, a), *FAST)
    summary = json.loads((run / "stages" / "curate.json").read_text())
    assert code == 0 and '"status": "done"' in out and "warning" not in err
    assert summary["by_source"]["b"]["kept"] == 1 and summary["by_source"]["a"]["kept"] == 1
    assert sorted(p.name for p in (run / "curate" / "output").iterdir()) == ["a", "b"]

    # weights alone do not change what curation keeps: still skipped
    code, out, _ = cli(capsys, "curate", "configs/tiny.yaml", f"run_dir={run}", mixture(b, ("a", a[1], ", weight: 5")),
                       *FAST)
    assert code == 0 and '"status": "skipped (done)"' in out


def test_curating_a_mixture_with_curation_off_is_an_error(tmp_path, capsys):
    # `loki curate` on a mixture with curate.enabled=false (configs/mixture.yaml as it is) did nothing and said
    # "each has curate: false" of sources that had no such flag, then printed the path of a report never written
    sources = mixture(("plays", PLAYS, ", weight: 0.5"), ("wiki", "data/corpus/wikipedia", ", weight: 0.5"))
    code, out, err = cli(capsys, "curate", "configs/tiny.yaml", f"run_dir={tmp_path / 'off'}", sources)
    assert code == 2 and err.count("\n") == 1 and "curate.enabled=true" in err and "Traceback" not in err
    assert not (tmp_path / "off" / "curate").exists()
    everything_off = mixture(("plays", PLAYS, ", curate: false"), ("wiki", "data/corpus/wikipedia", ", curate: false"))
    code, out, _ = cli(capsys, "curate", "configs/tiny.yaml", f"run_dir={tmp_path / 'none'}", everything_off,
                       "curate.enabled=true")
    assert code == 0 and "curate: false" in out and "report:" not in out  # no report was written


def test_eval_names_every_source_of_a_mixture_even_without_held_out_windows(tmp_path, one_thread):
    # by_source listed only the sources with a scored window: a source whose held-out split was empty (or whose
    # windows fell between the sampled ones) vanished from eval.json and eval.md as if it were not in the mixture
    from lokilm import stages
    from lokilm.eval.report import markdown
    from lokilm.eval.run import held_out_bpb
    from lokilm.model import Transformer

    (tmp_path / "books").mkdir(), (tmp_path / "tinysrc").mkdir()
    shutil.copy("data/corpus/gutenberg/Carroll_Lewis__Through_the_Looking_Glass__4b8713e3.txt.xz", tmp_path / "books")
    texts = [" ".join(f"river{i} mill stone bridge water flows under the arch {j}" for j in range(40)) for i in range(3)]
    (tmp_path / "tinysrc" / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    sources = mixture(("plays", PLAYS, ", weight: 0.5"), ("books", tmp_path / "books", ", weight: 0.4"),
                      ("tiny", tmp_path / "tinysrc", ", weight: 0.1"))
    cfg = load_config("configs/tiny.yaml", [*SMALL, f"run_dir={tmp_path / 'run'}", sources, "data.holdout_fraction=0.2",
                                            "tokenizer.train_max_bytes=300000"])
    stages.tokenizer_stage(cfg)
    stages.tokenize_stage(cfg)
    meta = json.loads((tmp_path / "run" / "shards" / "meta.json").read_text())["sources"]
    empty = {n for n, s in meta.items() if not s["splits"]["val"]["tokens"]}
    assert empty == {"books", "tiny"}  # the document-id hash puts these sources' few documents all in train
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    model.init_weights()
    for n_windows, why in ((64, "its held-out split holds no window"), (1, "its held-out split holds no window")):
        bpb = held_out_bpb(model, cfg, n_windows, 8, torch.device("cpu"))
        assert list(bpb["by_source"]) == ["plays"] and bpb["by_source"]["plays"] == pytest.approx(bpb["value"])
        assert bpb["unscored_sources"] == {"books": why, "tiny": why}
    table = markdown({"bpb": bpb, "tasks": {}, "run_dir": "run", "step": 0, "preset": "quick", "lm_eval_version": "-",
                      "device": "cpu", "seconds": 0})
    assert "| books | - (its held-out split holds no window) |" in table


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "children") as f:
            kids += [int(x) for x in f.read().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_loki_curate_leaves_no_process_and_no_lock(tmp_path):
    # datatrove's executor forks a Manager process (even for one worker) and pool workers. A `kill -9` of the
    # command left the Manager waiting forever with the run directory's flock (shared across fork): every later
    # command on the run was refused as "in use by `loki curate` (pid N)" with N long dead
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lokilm.cli", "curate", "configs/tiny.yaml", f"run_dir={run}",
           "data.inputs=[data/corpus/shakespeare]", *FAST[:-1], "curate.executor.tasks=2", "curate.executor.workers=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    kids = []
    try:
        deadline = time.time() + 60
        while not kids and proc.poll() is None and time.time() < deadline:
            kids = _children(proc.pid)
            time.sleep(0.05)
        assert kids, "the curation forked no process"
        time.sleep(0.3)
        kids = sorted(set(kids) | set(_children(proc.pid)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 10
        while any(map(_alive, kids)) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, kids)), "a forked child outlived the command"
        cfg = load_config("configs/tiny.yaml", [f"run_dir={run}"])
        with RunDir(cfg).lock("test"):  # free: the next command may run
            pass
    finally:  # nothing of this test outlives it, even when it fails
        for pid in [*kids, *(_children(proc.pid) if proc.poll() is None else [])]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_curation_killed_between_two_tasks_resumes_and_balances(tmp_path, capsys):
    # The report read datatrove's stats.json of each phase, which the local executor writes for the tasks it ran
    # this time only: killed after task 0 of a phase finished, the resumed run skipped task 0, its counts went
    # missing, and "curation accounting does not balance" stopped this and every later try
    run, clean = tmp_path / "run", tmp_path / "clean"
    args = ["data.inputs=[data/corpus]", *FAST[:-1], "curate.executor.tasks=2", "curate.executor.workers=1"]
    cmd = [sys.executable, "-m", "lokilm.cli", "curate", "configs/tiny.yaml", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = run / "curate" / "work" / "logs" / "filter" / "completions"
    for attempt in range(3):  # kill while task 1 of the first phase runs (task 0 done): seconds apart on a busy CPU
        shutil.rmtree(run, ignore_errors=True)
        proc = subprocess.Popen([*cmd, f"run_dir={run}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        while proc.poll() is None and not (done / "00000").exists():
            time.sleep(0.01)
        proc.kill()
        proc.wait(10)
        time.sleep(0.5)  # its forked children die with it (the fix above)
        if (done / "00000").exists() and not (done / "00001").exists():
            break
    else:
        pytest.fail("could not stop the curation between its two tasks")
    assert cli(capsys, *cmd[3:], f"run_dir={run}")[0] == 0  # resumed: task 0 of the first phase is skipped
    assert cli(capsys, *cmd[3:], f"run_dir={clean}")[0] == 0
    resumed, fresh = (json.loads((d / "curate" / "report.json").read_text()) for d in (run, clean))
    assert resumed["accounting"] == fresh["accounting"] and resumed["accounting"]["balanced"]
    assert [(s["stage"], s["documents_out"], s["removed"]) for s in resumed["stages"]] == \
        [(s["stage"], s["documents_out"], s["removed"]) for s in fresh["stages"]]
    assert (run / "curate" / "output" / "00000.jsonl").read_bytes() == (clean / "curate" / "output" / "00000.jsonl").read_bytes()


def _sleep_after(started) -> None:
    started.set()
    time.sleep(30)


def test_a_forked_child_does_not_hold_the_run_lock(tmp_path):
    # the lock half of the fix alone: a child forked while the lock is held (and still running) does not keep it
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}"])
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    with RunDir(cfg).lock("first"):
        child = ctx.Process(target=_sleep_after, args=(started,))
        child.start()
        assert started.wait(30)  # the child runs (its fork hooks are done)
    try:
        with RunDir(cfg).lock("second"):
            pass
        with RunDir(cfg).lock("third"), pytest.raises(LokiError, match="in use by `loki third`"):
            with RunDir(cfg).lock("fourth"):
                pass
    finally:
        child.kill()
        child.join()
