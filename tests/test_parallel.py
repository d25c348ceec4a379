"""lokilm/parallel on CPU (gloo): two FSDP2 processes train like one, sharded checkpoints resume across process
counts and consolidate to a single file, and the 8-bit options are refused where the hardware cannot run them."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from lokilm.cli import main as loki
from lokilm.distill.settings import TeacherSettings
from lokilm.config import ModelConfig, TrainConfig, to_dict
from lokilm.errors import LokiError
from lokilm.checkpoint import load_model
from lokilm.model import Transformer
from lokilm.parallel.dist import Distributed
from lokilm.parallel.fsdp import parallelize
from lokilm.parallel.precision import check_precision
from lokilm.checkpoint.single import latest_checkpoint
from lokilm.train.metrics import read_metrics
from lokilm.train.trainer import train

# 4 micro-batches per step: two per process when there are two.
STEPS = ["train.micro_batch_size=4", "train.batch_size=16", "train.max_steps=8", "train.checkpoint_every=4",
         "train.eval_every=0"]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def torchrun(cfg, nproc: int = 2) -> None:
    """`torchrun --standalone --nproc_per_node=N -m lokilm.cli train CONFIG`, with exactly this config."""
    path = cfg.run_dir + ".yaml"
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lokilm.cli", "train", path]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def reference(make_cfg, tmp_path_factory, one_thread):
    """One process, no FSDP, single-file checkpoints at steps 0, 4 and 8: what every other run must reproduce."""
    run = tmp_path_factory.mktemp("parallel") / "reference"
    train(make_cfg(run, *STEPS))
    return run


def test_two_processes_match_one_and_a_sharded_checkpoint_resumes_in_one(make_cfg, reference, tmp_path, one_thread):
    run = tmp_path / "two"
    torchrun(make_cfg(run, *STEPS, "train.halt_at_step=4"))
    ref, got = losses(reference), losses(run)
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in range(1, 5)] == pytest.approx([ref[s] for s in range(1, 5)], rel=1e-5)
    records = [r for r in read_metrics(run) if "loss" in r]
    assert all(r["tokens_per_s_per_gpu"] == pytest.approx(r["tokens_per_s"] / 2) for r in records)
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt.step == 4 and ckpt.sharded and ckpt.state["world_size"] == 2
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert "FSDP2 over 2 process(es)" in events[0]["applied"]

    train(make_cfg(run, *STEPS))  # the same run, resumed by one plain process: DCP reshards 2 -> 1
    got = losses(run)
    assert [got[s] for s in range(5, 9)] == pytest.approx([ref[s] for s in range(5, 9)], rel=1e-5)

    # the sharded step-4 checkpoint, consolidated, is the one-process step-4 checkpoint
    out = tmp_path / "consolidated"
    assert loki(["checkpoint", "consolidate", str(run), "--step", "4", "--out", str(out)]) == 0
    model, _ = load_model(out)
    expected, _ = load_model(reference, ckpt=_checkpoint(reference, 4))
    x = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(x), rtol=1e-4, atol=1e-5)


def _checkpoint(run, step):
    from lokilm.checkpoint.single import Checkpoint

    path = run / "checkpoints" / f"step_{step:08d}"
    return Checkpoint(path=path, step=step, state=json.loads((path / "state.json").read_text()))


def test_one_process_checkpoints_resume_in_two(make_cfg, reference, tmp_path, one_thread):
    # sharded, written by one plain process
    run = tmp_path / "one"
    train(make_cfg(run, *STEPS, "train.checkpoint_format=sharded", "train.halt_at_step=4"))
    assert latest_checkpoint(run / "checkpoints").sharded
    torchrun(make_cfg(run, *STEPS))
    ref, got = losses(reference), losses(run)
    assert [got[s] for s in range(5, 9)] == pytest.approx([ref[s] for s in range(5, 9)], rel=1e-5)
    # the final held-out bpb, its windows shared by the two ranks, is the one-process figure
    val = [{r["step"]: r["val_bpb"] for r in read_metrics(d) if "val_bpb" in r} for d in (reference, run)]
    assert val[1][8] == pytest.approx(val[0][8], rel=1e-5)
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "resume" and events[-1]["step"] == 4

    # single-file, as a plain one-GPU run writes by default: rank 0 reads it and FSDP shards it
    single = tmp_path / "single"
    shutil.copytree(reference, single)
    shutil.rmtree(single / "checkpoints" / "step_00000008")
    for line in ("metrics.jsonl", "events.jsonl"):
        (single / line).unlink(missing_ok=True)
    torchrun(make_cfg(single, *STEPS))
    got = losses(single)
    assert [got[s] for s in range(5, 9)] == pytest.approx([ref[s] for s in range(5, 9)], rel=1e-5)


def test_fsdp_in_one_process_and_consolidation_in_place(make_cfg, reference, tmp_path, one_thread):
    run = tmp_path / "fsdp1"
    train(make_cfg(run, *STEPS, "train.fsdp=true", "train.halt_at_step=4"))  # a process group of one
    ref, got = losses(reference), losses(run)
    assert [got[s] for s in range(1, 5)] == pytest.approx([ref[s] for s in range(1, 5)], rel=1e-5)
    assert latest_checkpoint(run / "checkpoints").sharded
    direct, _ = load_model(run)  # generate, eval and export read a sharded checkpoint as it is
    assert loki(["checkpoint", "consolidate", str(run)]) == 0
    assert not latest_checkpoint(run / "checkpoints").sharded
    model, _ = load_model(run)
    expected, _ = load_model(reference, ckpt=_checkpoint(reference, 4))
    x = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(direct(x), expected(x), rtol=1e-4, atol=1e-5)


# A sharded save in two gloo processes where rank 1 cannot write its RNG file (a full disk, say)
_FAILING_RANK = """
import sys
import torch
from lokilm.checkpoint import sharded as dcp
from lokilm.parallel.dist import init_distributed
from lokilm.checkpoint.single import CheckpointError

d = init_distributed("cpu", True)
model = torch.nn.Linear(4, 4)
if d.rank == 1:
    def full(*args, **kwargs):
        raise OSError("No space left on device")
    dcp.save_file = full
try:
    dcp.save(sys.argv[1], 4, model, torch.optim.AdamW(model.parameters()), {"step": 4}, keep=3, dist=d, sharded=True)
    outcome = "sealed"
except CheckpointError as e:
    outcome = f"refused: {e}"
# one file per rank: two processes printing to one pipe can interleave their lines (unbuffered output)
with open(f"{sys.argv[2]}/rank{d.rank}.txt", "w") as f:
    f.write(outcome)
d.close()
"""


def test_a_sharded_checkpoint_is_not_sealed_when_another_rank_failed(tmp_path):
    script, folder = tmp_path / "save.py", tmp_path / "checkpoints"
    script.write_text(_FAILING_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(folder),
           str(tmp_path)]
    done = subprocess.run(cmd, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):  # both ranks stop with the error, naming the rank that failed
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith("refused: rank 1: could not write checkpoint") and "No space left" in outcome, outcome
    assert list(folder.iterdir()) == []  # neither a sealed step_N nor the temporary folder


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("precision", ["fp8_tensorwise", "fp8_rowwise", "int8"])
def test_8bit_precision_is_refused_on_cpu(make_cfg, tmp_path, precision):
    with pytest.raises(LokiError, match=f"train.precision={precision} needs a CUDA GPU"):
        train(make_cfg(tmp_path / "cpu", f"train.precision={precision}", "train.max_steps=1"))


def test_capability_check():
    for ok in [("fp8_rowwise", (9, 0)), ("fp8_tensorwise", (8, 9)), ("int8", (8, 0)), ("int8", (9, 0)),
               ("bf16", None), ("auto", (7, 0))]:
        check_precision(*ok)
    with pytest.raises(LokiError, match=r"needs FP8 tensor cores.*8\.0.*train.precision=int8.*optimizer_8bit"):
        check_precision("fp8_rowwise", (8, 0), "NVIDIA A100-SXM4-80GB")  # A100: the int8 options are offered
    with pytest.raises(LokiError, match=r"needs FP8 tensor cores.*7\.0.*no int8 tensor-core training either"):
        check_precision("fp8_tensorwise", (7, 0), "Tesla V100")
    with pytest.raises(LokiError, match=r"int8 needs int8 tensor cores.*7\.5"):
        check_precision("int8", (7, 5), "Tesla T4")


def _linears_converted(precision: str, d_model: int, d_ff: int) -> set[str]:
    from torchao.float8.float8_linear import Float8Linear

    with torch.device("meta"):
        model = Transformer(ModelConfig(vocab_size=32000, n_layer=1, n_head=16, d_model=d_model, d_ff=d_ff))
    from lokilm.parallel.precision import convert_8bit

    note = convert_8bit(model, precision, fsdp=False)
    converted = {name for name, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert note.startswith(f"FP8 training ({precision.split('_')[1]} scaling") and f" {len(converted)} of 8 " in note
    return converted


def test_fp8_swaps_the_large_linear_layers_and_never_the_head():
    block = "layers.0."
    # LokiLM-1.4B's shapes: tensorwise pays off for every projection; rowwise only for the wide SwiGLU inputs
    assert _linears_converted("fp8_tensorwise", 2048, 5888) == {
        block + n for n in ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                            "mlp.down_proj"]}
    assert _linears_converted("fp8_rowwise", 2048, 5888) == {block + "mlp.gate_proj", block + "mlp.up_proj"}
    assert _linears_converted("fp8_tensorwise", 512, 1024) == set()  # too small for FP8 to win


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_nothing_but_memory(mode):
    cfg = ModelConfig(vocab_size=128, n_layer=2, n_head=2, d_model=32, d_ff=64, context_length=16)
    torch.manual_seed(0)
    plain = Transformer(cfg)
    plain.init_weights()
    wrapped = Transformer(cfg)
    wrapped.load_state_dict(plain.state_dict())
    notes = parallelize(wrapped, TrainConfig(activation_checkpointing=mode),
                        Distributed(0, 0, 1, torch.device("cpu"), fsdp=False))
    assert notes == [f"activation checkpointing: {mode}, every block"]
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # checkpoints stay loadable by a plain model
    x = torch.randint(0, 128, (2, 17))
    for model in (plain, wrapped):
        model(x[:, :-1], x[:, 1:]).backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_held_out_windows_are_shared_by_the_ranks_with_equal_forward_counts(make_cfg, tmp_path):
    """Each rank scores every world_size-th batch and runs as many forwards as the others (a sharded forward is
    collective); summing the ranks' per-window figures gives the one-process value. The second rank is played in
    this process (a stand-in for another process: its all-reduce adds the other rank's arrays)."""
    from lokilm.eval.bpb import bits_per_byte_by_group
    from lokilm.model import Transformer

    cfg = make_cfg(tmp_path / "r", *STEPS)
    model = Transformer(cfg.model)
    model.init_weights()
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg.model.vocab_size, size=(11, 33))
    lengths = rng.integers(0, 4, size=cfg.model.vocab_size)

    class Windows:
        def __init__(self):
            self.asked = []

        def __len__(self):
            return len(data)

        def batch(self, idx):
            self.asked.append(list(idx))
            return data[list(idx)]

    groups = ["a"] * 6 + ["b"] * 5
    cpu = torch.device("cpu")
    expected = bits_per_byte_by_group(model, Windows(), lengths, 11, 2, cpu, groups=groups)
    seen, partial = [], []

    class Rank:  # what Distributed offers: world size, rank, fsdp, and an all-reduce (here: keep and sum later)
        def __init__(self, rank):
            self.world_size, self.rank, self.fsdp = 2, rank, True

        def all_sum(self, value):
            partial.append(value.clone())
            return value

    for r in (0, 1):
        w = Windows()
        bits_per_byte_by_group(model, w, lengths, 11, 2, cpu, groups=groups, dist=Rank(r))
        seen.append(w.asked)
    # 6 batches of 2 (the last of 1): rank 0 scores batches 0, 2, 4; rank 1 batches 1, 3, 5
    assert [len(a) for a in seen] == [3, 3] and seen[0][0] == [0, 1] and seen[1][0] == [2, 3]
    both = (partial[0] + partial[1]).numpy()
    total = float(both[0].sum()) / (np.log(2) * int(both[1].sum()))
    assert total == pytest.approx(expected[0], rel=1e-9)

    # 5 batches over 2 ranks: rank 1 has 2 of its own and repeats its first once more, unscored
    seen.clear(), partial.clear()
    for r in (0, 1):
        w = Windows()
        bits_per_byte_by_group(model, w, lengths, 10, 2, cpu, dist=Rank(r))
        seen.append(w.asked)
    assert [len(a) for a in seen] == [3, 3] and seen[1][2] == seen[1][0]
    both = (partial[0] + partial[1]).numpy()
    assert float(both[0].sum()) / (np.log(2) * int(both[1].sum())) == pytest.approx(
        bits_per_byte_by_group(model, Windows(), lengths, 10, 2, cpu)[0], rel=1e-9)


def _torchrun_cli(*args, nproc: int = 2, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lokilm.cli", *args]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)


def test_loki_run_under_torchrun_prepares_on_rank_0_and_trains_on_every_rank(tmp_path):
    run = tmp_path / "run"
    done = _torchrun_cli("run", "configs/quickstart.yaml", f"run_dir={run}", "curate.enabled=false", *STEPS,
                         "train.progress=false", "generate.max_new_tokens=4", "eval.tasks=[winogrande]",
                         "eval.winobias=false", "eval.qualitative=false", "eval.bpb_windows=4")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    for stage in ["tokenizer", "tokenize", "train", "eval", "generate"]:
        assert json.loads((run / "stages" / f"{stage}.json").read_text())["status"] in ("done", "finished"), stage
    assert (run / "report.html").is_file()  # eval, generate and report read the sharded checkpoint directly
    # one rank ran each stage before and after training; training itself ran on both
    assert out.count("== tokenize\n") == 1 and out.count("== eval\n") == 1
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert "FSDP2 over 2 process(es)" in events[0]["applied"]
    assert json.loads((run / "stages" / "train.json").read_text())["world_size"] == 2


def test_loki_run_under_torchrun_stops_every_rank_when_preparation_fails(tmp_path):
    done = _torchrun_cli("run", "configs/quickstart.yaml", f"run_dir={tmp_path / 'run'}", "curate.enabled=false",
                         f"data.inputs=[{tmp_path / 'missing'}]", *STEPS, timeout=200)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert out.count("loki: error:") == 2 and "rank 0 stopped before training" in out and "missing" in out


def test_distillation_under_fsdp_gives_the_losses_of_one_process(make_cfg, reference, tmp_path, one_thread):
    """Logit-mode KD with a live lokilm teacher (each rank runs it on its own micro-batches) on 2 processes."""
    kd = ["distill.enabled=true", "distill.mode=logit", "distill.every=2"]
    runs = {}
    for name in ("one", "two"):
        cfg = make_cfg(tmp_path / name, *STEPS, *kd)
        cfg.distill.teachers = [TeacherSettings(name="t", kind="lokilm", path=str(reference))]
        train(cfg) if name == "one" else torchrun(cfg)
        runs[name] = {r["step"]: (r["loss"], r.get("kd")) for r in read_metrics(tmp_path / name) if "loss" in r}
    assert [kd for _, kd in runs["one"].values()].count(True) == 4
    assert [k for _, k in runs["two"].values()] == [k for _, k in runs["one"].values()]
    assert [v for v, _ in runs["two"].values()] == pytest.approx([v for v, _ in runs["one"].values()], rel=1e-5)
