import importlib.util
import json
from pathlib import Path

import torch

from lokilm.config import load_config
from lokilm.parallel.dist import Distributed

ROOT = Path(__file__).resolve().parents[1]


def _sweep_module():
    spec = importlib.util.spec_from_file_location("scale_sweep", ROOT / "benchmarks" / "scale_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_measures_refuses_and_marks_the_best_micro_batch(tmp_path, one_thread):
    sweep = _sweep_module()
    cfg = load_config("configs/tiny.yaml", ["model.vocab_size=256", "model.n_layer=1", "model.d_model=64",
                                              "model.context_length=32", "train.device=cpu"])
    out = str(tmp_path / "sweep.json")
    rows = sweep.sweep(cfg, Distributed(0, 0, 1, torch.device("cpu"), fsdp=False), ["fp32", "fp8_rowwise"],
                       ["none", "full"], [2, 1], steps=2, warmup=1, run_tokens=1e9, out=out)
    assert [(r["precision"], r["activation_checkpointing"], r["micro_batch"]) for r in rows] == [
        ("fp32", "none", 1), ("fp32", "none", 2), ("fp32", "full", 1), ("fp32", "full", 2), ("fp8_rowwise", "none", 1)]
    assert rows[-1]["status"].startswith("refused: train.precision=fp8_rowwise needs a CUDA GPU")
    for r in rows[:4]:
        assert r["status"] == "ok" and r["tokens_per_s"] == r["tokens_per_s_per_gpu"] > 0 and r["mfu"] is None
        assert r["gpu_hours_full_run"] == round(1e9 / r["tokens_per_s_per_gpu"] / 3600, 1)
    assert [r.get("best", False) for r in rows[:2]].count(True) == 1
    assert [r.get("best", False) for r in rows[2:4]].count(True) == 1
    assert "activation checkpointing: full, every block" in rows[2]["applied"]
    assert "**" in sweep.table(rows) and "refused" in sweep.table(rows)
    assert [json.loads(line) for line in Path(out + "l").read_text().splitlines()] == [
        {k: v for k, v in r.items() if k != "best"} for r in rows]


def test_a_wrapped_out_of_memory_or_a_failed_compile_is_a_row_and_the_sweep_goes_on(monkeypatch):
    sweep = _sweep_module()
    cfg = load_config("configs/tiny.yaml", ["model.vocab_size=256", "model.n_layer=1", "model.d_model=64",
                                              "model.context_length=32", "train.device=cpu"])

    def measure(setting, dist, steps, warmup):
        t = setting.train
        if t.micro_batch_size == 2:  # torch.compile raises an OOM inside its own exception
            raise RuntimeError("BackendCompilerFailed: backend='inductor' raised: CUDA out of memory. Tried 4 GiB")
        if t.precision == "fp8_rowwise":
            raise AssertionError("a compiled kernel failed")
        return {"tokens_per_s_per_gpu": 10.0 * t.micro_batch_size, "tokens_per_s": 10.0 * t.micro_batch_size}

    monkeypatch.setattr(sweep, "measure", measure)
    rows = sweep.sweep(cfg, Distributed(0, 0, 1, torch.device("cpu"), fsdp=False), ["bf16", "fp8_rowwise"],
                       ["none"], [1, 2, 4], steps=1, warmup=0, run_tokens=1e9)
    assert [(r["precision"], r["micro_batch"], r["status"]) for r in rows] == [
        ("bf16", 1, "ok"), ("bf16", 2, "out of memory"), ("fp8_rowwise", 1, "error: AssertionError: a compiled kernel failed")]
    assert rows[0]["best"]


def test_build_model_materialises_on_the_device_from_the_meta_device_with_the_head_tied():
    sweep = _sweep_module()
    m = load_config("configs/tiny.yaml", []).model
    assert m.tie_embeddings
    model = sweep.build_model(m, torch.device("cpu"))
    assert not any(p.is_meta for p in model.parameters())
    assert model.head.weight is model.tok_embeddings.weight
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert abs(model.tok_embeddings.weight.std().item() - m.init_std) < 0.1 * m.init_std
    byte = sweep.build_model(load_config("configs/stlm-byte.yaml", []).model, torch.device("cpu"))  # has buffers
    assert not any(b.is_meta for b in byte.buffers()) and not any(p.is_meta for p in byte.parameters())
