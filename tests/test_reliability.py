"""What a careless or hostile user does to a run (issue 12, part 2): each test failed before its fix."""

import json
import os
from pathlib import Path
import pickle
import shutil
import subprocess
import sys
import warnings

import pytest
from faults import InterruptAt, SpikeInjector, StepCounter

from lokilm.checkpoint.single import latest_checkpoint, list_checkpoints
from lokilm.cli import main
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.train.metrics import read_metrics
from lokilm.train.trainer import Trainer, train


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def events(run_dir):
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def reseal(ckpt_dir):
    """What an attacker (or a careless edit) does after changing a file: recompute the manifest's checksums."""
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    for name in manifest["files"]:
        p = ckpt_dir / name
        manifest["files"][name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    (ckpt_dir / "manifest.json").write_text(json.dumps(manifest))


class Planted:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- 1. a checkpoint must never run code

def test_a_pickle_planted_as_sharded_metadata_is_never_executed(make_cfg, tmp_path, capsys):
    run = tmp_path / "pickle"
    cfg = make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2", "train.checkpoint_format=sharded")
    train(cfg)
    newest = list_checkpoints(run / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    (newest / "dcp" / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    reseal(newest)
    with pytest.warns(UserWarning, match="not a checkpoint's metadata"):
        assert latest_checkpoint(run / "checkpoints").step == 2  # refused, and the previous one is used
    code, err = cli(capsys, "checkpoint", "consolidate", run, "--step", 4)
    assert code == 2 and "not a checkpoint's metadata" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train(make_cfg(run, "train.max_steps=6", "train.checkpoint_every=2",
                              "train.checkpoint_format=sharded"))["step"] == 6
    assert not marker.exists()


def test_a_pickle_in_place_of_the_weights_is_a_clear_error_and_a_fallback(make_cfg, tmp_path, capsys):
    run = tmp_path / "weights"
    train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2"))
    newest = list_checkpoints(run / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    (newest / "model.safetensors").write_bytes(pickle.dumps(Planted(marker)))
    reseal(newest)
    with pytest.warns(UserWarning, match="model.safetensors is not a safetensors file .*trying the previous"):
        assert latest_checkpoint(run / "checkpoints").step == 2
    code, err = cli(capsys, "generate", run, "--max-new-tokens", 3, "--prompt", "Hi")
    assert code == 0 and not marker.exists()


def test_an_edited_state_with_a_resealed_manifest_is_refused(make_cfg, tmp_path):
    run = tmp_path / "state"
    train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2"))
    newest = list_checkpoints(run / "checkpoints")[-1]
    state = json.loads((newest / "state.json").read_text())
    state["step"] = "four"
    (newest / "state.json").write_text(json.dumps(state))
    reseal(newest)
    with pytest.warns(UserWarning, match="unreadable state.json"):
        assert latest_checkpoint(run / "checkpoints").step == 2


# ---------------------------------------------------------------- 2. rollback past a poisoned checkpoint

def test_rollback_steps_back_past_a_checkpoint_that_holds_the_bad_update(make_cfg, tmp_path):
    run = tmp_path / "poisoned"
    # step 20's update is 1000x too large and step 20 is also a checkpoint: it holds the bad weights
    cfg = make_cfg(run, "train.max_steps=30", "train.checkpoint_every=10", "train.spike.min_history=10")
    summary = train(cfg, [lambda trainer: SpikeInjector(20)])
    assert summary["status"] == "finished" and summary["step"] == 30
    rollbacks = [e for e in events(run) if e["event"] == "rollback"]
    assert [(e["step"], e["to_step"]) for e in rollbacks] == [(21, 20), (21, 10)]
    assert sorted(losses(run)) == list(range(1, 31))
    assert max(loss for step, loss in losses(run).items() if step > 5) < 6.5


# ---------------------------------------------------------------- 3. all checkpoints corrupt

def test_all_corrupt_checkpoints_stop_with_a_clear_error_and_restart_keeps_them(make_cfg, tmp_path, capsys):
    run = tmp_path / "allbad"
    args = ["configs/tiny.yaml", *make_cfg.overrides(run), "train.max_steps=4", "train.checkpoint_every=2"]
    assert main(["train", *args]) == 0
    before = losses(run)
    for ckpt in list_checkpoints(run / "checkpoints"):
        (ckpt / "model.safetensors").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, err = cli(capsys, "train", *args)
    assert code == 2 and "all 3 checkpoints" in err and "--restart" in err
    assert losses(run) == before and len(list_checkpoints(run / "checkpoints")) == 3  # nothing overwritten
    assert main(["train", *args, "--restart"]) == 0
    discarded = [p for p in run.iterdir() if p.name.startswith("discarded-")]
    assert len(discarded) == 1 and len(list_checkpoints(discarded[0] / "checkpoints")) == 3
    assert latest_checkpoint(run / "checkpoints").step == 4


def test_an_older_valid_checkpoint_resumes_and_the_corrupt_newer_one_is_set_aside(make_cfg, tmp_path):
    run = tmp_path / "aside"
    train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2"))
    (run / "checkpoints" / "step_00000004" / "model.safetensors").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(make_cfg(run, "train.max_steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=2"))
    # retention kept the new checkpoints: the corrupt step 4 no longer sorts after them
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000004", "step_00000006"]
    assert latest_checkpoint(run / "checkpoints").step == 6
    assert [p.name.split("-")[1] for p in (run / "checkpoints").iterdir() if p.name.startswith("corrupt-")] == ["step_00000004"]


# ---------------------------------------------------------------- 4. Ctrl-C at any point of a step

@pytest.fixture(scope="module")
def unbroken(make_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("unbroken") / "run"
    train(make_cfg(run, *INTERRUPT_RUN))
    return run


INTERRUPT_RUN = ["train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=5", "model.dropout=0.1"]


@pytest.mark.parametrize("phase", InterruptAt.PHASES)
def test_ctrl_c_in_any_phase_resumes_exactly(make_cfg, tmp_path, unbroken, phase):
    run = tmp_path / phase
    at = 4 if phase == "checkpoint" else 5  # step 4 is the one that writes a checkpoint (checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(run, *INTERRUPT_RUN), [lambda trainer: InterruptAt(trainer, phase, at=at)])
    saved = latest_checkpoint(run / "checkpoints")
    assert saved.step == at  # the step that was running finished, then it saved: the label matches the weights
    assert events(run)[-1]["event"] == "interrupted"
    train(make_cfg(run, *INTERRUPT_RUN))
    assert losses(run) == losses(unbroken)  # every step once, bit for bit
    val = {r["step"]: r["val_bpb"] for r in read_metrics(run) if "val_bpb" in r}
    assert val == {r["step"]: r["val_bpb"] for r in read_metrics(unbroken) if "val_bpb" in r}
    a = latest_checkpoint(run / "checkpoints").path / "model.safetensors"
    b = latest_checkpoint(unbroken / "checkpoints").path / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- 5. one writer per run directory

def test_a_second_command_on_a_held_run_directory_is_refused(make_cfg, tmp_path, capsys):
    run = tmp_path / "locked"
    args = ["train", "configs/tiny.yaml", *make_cfg.overrides(run), "train.max_steps=2"]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lokilm.config import Config; from lokilm.rundir import RunDir\n"
        f"cfg = Config(); cfg.run_dir = {str(run)!r}\n"
        "with RunDir(cfg).lock('train'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = cli(capsys, *args)
        assert code == 2 and "is in use by `loki train` (pid" in err
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock file is left behind, and it blocks nothing
    assert (run / ".lock").exists()
    assert main(args) == 0


# ---------------------------------------------------------------- 6. inputs by content

def test_a_file_added_to_the_inputs_is_tokenized_and_a_copied_run_is_not_redone(tmp_path, capsys):
    from lokilm import stages
    from lokilm.config import load_config

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("macbeth_gut", "sonnets_gut", "julius_caesar_gut", "phoenix_and_the_turtle_gut"):
        shutil.copy(f"data/corpus/shakespeare/{name}.txt.xz", inputs)
    common = ["model.vocab_size=512", "tokenizer.train_max_bytes=200000", "train.progress=false",
              f"data.inputs=[{inputs}]", "data.holdout_fraction=0.5"]
    cfg = load_config("configs/tiny.yaml", [*common, f"run_dir={tmp_path / 'run'}"])
    stages.tokenizer_stage(cfg)
    first = stages.tokenize_stage(cfg)
    assert stages.tokenize_stage(cfg)["status"] == "skipped (done)"
    shutil.copy("data/corpus/shakespeare/romeo_and_juliet_gut_f.txt.xz", inputs)
    assert stages.tokenizer_stage(cfg)["status"] == "done"  # the tokenizer learns from the new file too
    again = stages.tokenize_stage(cfg)
    assert again["status"] == "done" and again["splits"]["train"]["tokens"] > first["splits"]["train"]["tokens"]
    shutil.copytree(tmp_path / "run", tmp_path / "copy")  # new mtimes, another path: the same content
    copy = load_config("configs/tiny.yaml", [*common, f"run_dir={tmp_path / 'copy'}"])
    assert stages.tokenizer_stage(copy)["status"] == "skipped (done)"
    assert stages.tokenize_stage(copy)["status"] == "skipped (done)"


def test_a_copied_run_is_not_evaluated_again(make_cfg, tmp_path):
    from lokilm import stages

    settings = ["train.max_steps=2", "train.eval_every=0", "eval.tasks=[winogrande]", "eval.winobias=false",
                "eval.qualitative=false", "eval.bootstrap_iters=20", "eval.bpb_windows=0"]
    cfg = make_cfg(tmp_path / "run", *settings)
    train(cfg)
    assert stages.STAGES["eval"](cfg)["status"] == "done"
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    assert stages.STAGES["eval"](make_cfg(tmp_path / "copy", *settings))["status"] == "skipped (done)"


# ---------------------------------------------------------------- 8. stale temporary folders

def test_stale_temporary_checkpoint_folders_are_cleaned_on_start(make_cfg, tmp_path):
    run = tmp_path / "stale"
    train(make_cfg(run, "train.max_steps=2", "train.checkpoint_every=2"))
    for name in (".tmp-step_00000004-999", ".tmp-step_00000004-sharded", ".old-step_00000002-999"):
        (run / "checkpoints" / name).mkdir()
        (run / "checkpoints" / name / "model.safetensors").write_bytes(b"half")
    train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=2"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000000", "step_00000002",
                                                                        "step_00000004"]


# ---------------------------------------------------------------- 9, 10. values that must be refused clearly

@pytest.mark.parametrize("override, named", [
    ("train.grad_clip=-1", "train.grad_clip"), ("train.max_steps=[1", "train.max_steps=[1"),
    ("model.n_head=0", "model.n_head"), ("train.lr=-1", "train.lr"), ("train.lr=.nan", "train.lr"),
    ("train.checkpoint_every=0", "train.checkpoint_every"), ("train.log_every=0", "train.log_every"),
    ("train.micro_batch_size=-8", "train.micro_batch_size"), ("model.d_model=-64", "model.d_model"),
    ("data.shard_tokens=-1", "data.shard_tokens"), ("train.eval_every=-5", "train.eval_every"),
])
def test_absurd_values_are_refused_naming_them(capsys, tmp_path, override, named):
    code, err = cli(capsys, "train", "configs/tiny.yaml", f"run_dir={tmp_path}", override)
    assert code == 2 and err.startswith("loki: error: ") and named in err and "Traceback" not in err


def test_compiled_flex_attention_on_the_cpu_is_refused_before_it_fails(make_cfg, tmp_path):
    # Inductor's CPU FlexAttention template raised a LoweringException traceback at the first step
    with pytest.raises(LokiError, match="model.attention=flex with train.compile=true does not compile on the CPU"):
        train(make_cfg(tmp_path / "flex", "model.attention=flex", "train.compile=true", "train.max_steps=1"))


def test_bad_config_files_are_refused_clearly(capsys, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    (tmp_path / "listbase.yaml").write_text("base: [configs/tiny.yaml]\n")
    for name, expected in (("latin1.yaml", "not UTF-8"), ("listbase.yaml", "base: must be the path")):
        code, err = cli(capsys, "train", tmp_path / name)
        assert code == 2 and expected in err


def test_damaged_shards_are_refused_clearly(make_cfg, prepared, tmp_path, capsys):
    import numpy as np

    def damaged(how):
        shards = tmp_path / how / "shards"
        shutil.copytree(prepared / "shards", shards)
        meta = json.loads((shards / "meta.json").read_text())
        first = shards / meta["splits"]["train"]["shards"][0]["file"]
        if how == "garbage":
            (shards / "meta.json").write_bytes(b"\x00\xffnot json")
        elif how == "empty":
            (shards / "meta.json").write_text("{}")
        elif how == "odd":
            first.write_bytes(first.read_bytes() + b"\x01")
        elif how == "ids":
            data = np.fromfile(first, dtype=meta["dtype"])
            data[::97] = 60000  # throughout, so the first batches meet one
            data.tofile(first)
        return shards

    for how, expected in (("garbage", "meta.json is damaged"), ("empty", "meta.json is damaged"),
                          ("odd", "is damaged"), ("ids", ">= the vocabulary size")):
        shards = damaged(how)
        with pytest.raises(LokiError, match=expected):
            train(make_cfg(tmp_path / how / "run", "train.max_steps=40", f"data.shards={shards}",
                           "train.micro_batch_size=16", "train.batch_size=16"))


@pytest.fixture(scope="module")
def trained(make_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    train(make_cfg(run, "train.max_steps=2", "train.checkpoint_every=2"))
    return run


@pytest.mark.parametrize("argv, named", [
    (["generate", "{run}", "--max-new-tokens", "-5"], "generate.max_new_tokens"),
    (["generate", "{run}", "--top-p", "-1"], "generate.top_p"),
    (["generate", "{run}", "--top-p", "5"], "generate.top_p"),
    (["generate", "{run}", "--top-k", "-3"], "generate.top_k"),
    (["generate", "{run}", "--temperature", "nan"], "generate.temperature"),
    (["generate", "{run}", "--prompt", "caf\udce9"], "not valid UTF-8"),
    (["eval", "{run}", "--limit", "0"], "--limit"),
    (["eval", "{run}", "--limit", "-1"], "--limit"),
    (["eval", "{run}", "--batch-size", "-4"], "--batch-size"),
    (["compare", "{run}", "{run}", "--bootstrap", "0"], "--bootstrap"),
    (["eval", "{run}", "eval.no_such_key=1"], "no_such_key"),
])
def test_bad_flags_are_one_line_errors(trained, capsys, argv, named):
    code, err = cli(capsys, *[a.format(run=trained) for a in argv])
    assert code == 2 and err.startswith("loki: error: ") and named in err and len(err.strip().splitlines()) == 1


def test_overrides_may_follow_options(trained, capsys):
    code, err = cli(capsys, "eval", trained, "--limit", "2", "--tasks", "winogrande", "eval.winobias=false",
                    "eval.qualitative=false", "eval.bpb_windows=0")
    assert code == 0, err
    result = json.loads((trained / "eval" / "quick-limit2" / "eval.json").read_text())
    assert "winobias" not in result and result["limit"] == 2


def test_a_missing_tokenizer_is_a_clear_error(capsys, tmp_path, prepared):
    code, err = cli(capsys, "tokenize", "configs/tiny.yaml", f"run_dir={tmp_path}", "data.inputs=[data/corpus/shakespeare]")
    assert code == 2 and "tokenizer file" in err and "does not exist" in err


# ---------------------------------------------------------------- 11, 12. inputs

def test_a_fifo_in_the_input_folder_is_skipped_not_waited_on(tmp_path):
    from lokilm.data.readers import ReadStats, iter_documents

    (tmp_path / "a.txt").write_text("A document with enough words in it to be one.")
    os.mkfifo(tmp_path / "pipe.txt")
    stats = ReadStats()
    docs = list(iter_documents([tmp_path], stats=stats))
    assert len(docs) == 1 and stats.skipped == {"not_a_regular_file": 1}


def test_the_literal_end_of_text_marker_in_a_document_is_text(prepared):
    from lokilm.tokenizer import decode, encode, eot_id, load_tokenizer

    tok = load_tokenizer(prepared / "tokenizer.json")
    ids = encode(tok, "before <|endoftext|> after")
    assert eot_id(tok) not in ids and decode(tok, ids) == "before <|endoftext|> after"


# ---------------------------------------------------------------- 13, 14. 8-bit AdamW, the KD cache size

def test_8bit_adamw_trains_saves_and_resumes(make_cfg, tmp_path):
    pytest.importorskip("torchao")
    common = ["train.optimizer_8bit=true", "train.max_steps=4", "train.checkpoint_every=2",
              "model.d_model=128", "model.d_ff=256"]  # matrices of >= 4,096 elements get 8-bit moments
    full = train(make_cfg(tmp_path / "full", *common))
    train(make_cfg(tmp_path / "split", *common, "train.halt_at_step=2"))
    train(make_cfg(tmp_path / "split", *common))
    assert full["step"] == 4 and losses(tmp_path / "split") == losses(tmp_path / "full")
    state = json.loads((latest_checkpoint(tmp_path / "full" / "checkpoints").path / "state.json").read_text())
    assert isinstance(state["optimizer_param_groups"][0]["lr"], float)
    # the moments were saved quantised (uint8 codes), not widened to float32
    assert state["optimizer_quantized"] and {v["class"] for v in state["optimizer_quantized"].values()} == {"OptimState8bit"}


def test_the_kd_cache_is_sized_with_the_training_world_size(make_cfg, tmp_path):
    from lokilm.distill.generate import kd_sequences
    from lokilm.train.schedule import batch_sizes

    cfg = make_cfg(tmp_path / "kd", "train.max_steps=40", "train.batch_size=64", "train.micro_batch_size=8",
                   "train.batch_warmup_tokens=60000", "train.batch_warmup_start=8", "distill.every=4")
    seq = cfg.model.context_length
    for world in (1, 8):
        sizes = batch_sizes(cfg.train, seq, world)
        assert kd_sequences(cfg, world_size=world) == sum(sizes[s] for s in range(3, 40, 4))
    assert kd_sequences(cfg, world_size=8) < kd_sequences(cfg, world_size=1)  # 8 ranks round warmup coarser


# ---------------------------------------------------------------- structure: units and imports

def test_a_registered_unit_counts_steps_and_resumes_its_state(make_cfg, tmp_path):
    counters = []

    def counter(trainer):
        counters.append(StepCounter())
        return counters[-1]

    train(make_cfg(tmp_path / "u", "train.max_steps=6", "train.checkpoint_every=2", "train.halt_at_step=4"), [counter])
    assert counters[0].count == 4
    train(make_cfg(tmp_path / "u", "train.max_steps=6", "train.checkpoint_every=2"), [counter])
    assert counters[1].loaded == 4 and counters[1].count == 6
    state = json.loads((latest_checkpoint(tmp_path / "u" / "checkpoints").path / "state.json").read_text())
    assert state["units"]["counter"] == {"count": 6} and {"data", "spike", "checkpoint"} <= set(state["units"])
    assert [r["counted"] for r in read_metrics(tmp_path / "u") if "counted" in r] == [1, 2, 3, 4, 5, 6]


def test_two_units_with_one_name_are_refused(make_cfg, tmp_path):
    with pytest.raises(LokiError, match="share a name"):
        Trainer(make_cfg(tmp_path / "dup", "train.max_steps=2"), extra_units=[lambda t: StepCounter()] * 2)


def test_the_package_has_no_import_cycle():
    """Walk every module's lokilm imports (top level and inside functions) and fail on any cycle."""
    import ast
    from pathlib import Path

    root = Path("lokilm")
    graph = {}
    for path in root.rglob("*.py"):
        parts = path.with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lokilm") and not node.level:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("lokilm"))
        graph[name] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    # a package's __init__ re-exporting its own modules is not a cycle between jobs
    graph = {m: {d for d in deps if not (d.startswith(m + ".") or m.startswith(d + ".") and d in graph
                                          and Path(*d.split(".")).is_dir())} for m, deps in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_builds_run_directory_paths_from_strings():
    """Every path inside a run directory comes from RunDir (lokilm/rundir.py)."""
    import re
    from pathlib import Path

    pattern = re.compile(r"""(run_dir|\.root)\)?\s*/\s*["'](checkpoints|tokenizer\.json|shards|curate|eval|stages|"""
                         r"""metrics\.jsonl|events\.jsonl|config\.yaml|distill|tensorboard)["']""")
    offenders = [f"{p}:{n}" for p in Path("lokilm").rglob("*.py") if p.name != "rundir.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_the_model_package_stands_alone():
    import ast
    from pathlib import Path

    for path in Path("lokilm/model").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lokilm."):
                assert node.module.startswith(("lokilm.model", "lokilm.errors")), f"{path} imports {node.module}"


def test_import_force_never_replaces_a_run_directory_in_use(make_cfg, tmp_path, capsys):
    run = tmp_path / "busy"
    train(make_cfg(run, "train.max_steps=2"))
    before = sorted(p.name for p in run.iterdir())
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from lokilm.rundir import RunDir\n"
        f"with RunDir.at({str(run)!r}).lock('train'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = cli(capsys, "import", "/nonexistent.gguf", str(run), "--force")
        assert code == 2 and "is in use by `loki train` (pid" in err
        assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == before  # nothing deleted
    finally:
        holder.kill()
        holder.wait()
    # a failed import into a new directory leaves nothing behind; a file where a run directory should be is refused
    code, err = cli(capsys, "import", "/nonexistent.gguf", str(tmp_path / "new"))
    assert code == 2 and "does not exist" in err and not (tmp_path / "new").exists()
    (tmp_path / "a-file").write_text("x")
    code, err = cli(capsys, "import", "/nonexistent.gguf", str(tmp_path / "a-file"))
    assert code == 2 and "is a file, not a directory" in err


# ---------------------------------------------------------------- the hostile-use review's write-ups (this session)

def test_a_prompt_refused_for_its_length_is_not_echoed(make_cfg, tmp_path, capsys):
    run = tmp_path / "gen"
    train(make_cfg(run, "train.max_steps=1", "train.checkpoint_every=1"))
    code = main(["generate", str(run), "--prompt", "word " * 2000, "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and "the prompt is" in err and "word word" not in out
    code, _ = cli(capsys, "generate", run, "--prompt", "The king", "--max-new-tokens", "3", "--temperature", "0")
    assert code == 0


@pytest.mark.parametrize("override", ["generate.seed=99999999999999999999999", "train.seed=-99999999999999999999"])
def test_seeds_beyond_64_bits_are_refused_in_the_config(capsys, tmp_path, override):
    code, err = cli(capsys, "train", "configs/tiny.yaml", f"run_dir={tmp_path}", override)
    assert code == 2 and override.split("=")[0] in err and "64 bits" in err


def test_a_metrics_file_with_non_utf8_bytes_is_handled_on_resume(make_cfg, tmp_path):
    run = tmp_path / "bytes"
    train(make_cfg(run, "train.max_steps=2", "train.checkpoint_every=2"))
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "loss": \xff\xfe')  # a cut-off last line of garbage bytes: dropped on resume
    train(make_cfg(run, "train.max_steps=3", "train.checkpoint_every=1"))
    assert [r["step"] for r in read_metrics(run) if "loss" in r][-1] == 3
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines[:1] + [b"\xff\xfe"] + lines[1:]) + b"\n")
    with pytest.raises(LokiError, match="line 2 is not valid JSON"):
        train(make_cfg(run, "train.max_steps=4", "train.checkpoint_every=1"))


def test_atomic_writes_use_a_temporary_of_their_own_and_leave_none(tmp_path, monkeypatch):
    from lokilm import fileio

    target = tmp_path / "f.json"
    fileio.atomic_write(target, b"one")
    seen = []
    real = fileio.os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", spy)
    with pytest.raises(OSError):
        fileio.atomic_write(target, b"two")
    monkeypatch.setattr(fileio.os, "replace", real)
    assert seen[0].startswith(f"f.json.tmp-{os.getpid()}-") and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    assert target.read_bytes() == b"one"
