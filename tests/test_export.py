"""loki export: the Hugging Face folder computes what lokilm computes (fp32 CPU logits, greedy text)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lokilm.cli import main
from lokilm.config import GenerateConfig
from lokilm.errors import LokiError
from lokilm.generate import Sampler
from lokilm.interop.export import export
from lokilm.interop.hf_import import save_as_run
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig
from lokilm.tokenizer import decode


def tiny_run(path, tok, **model):
    torch.manual_seed(0)
    cfg = dict(vocab_size=520, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, context_length=64)
    m = Transformer(ModelConfig(**{**cfg, **model}))
    m.init_weights()
    save_as_run(m, tok, path)
    return m.eval()


def load_hf(folder):
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


@pytest.mark.parametrize("position,tie,kv", [("rope", True, 2), ("rope", False, None), ("alibi", True, 2),
                                             ("alibi", False, None), ("learned", True, None), ("learned", False, 2)])
def test_exported_logits_equal_lokilm(tmp_path, small_tokenizer, one_thread, position, tie, kv):
    model = tiny_run(tmp_path / "run", small_tokenizer, position=position, tie_embeddings=tie, n_kv_head=kv)
    out = export(tmp_path / "run", tmp_path / "hf")
    hf = load_hf(out)
    assert type(hf).__name__ == ("LlamaForCausalLM" if position == "rope" else "LokiLMForCausalLM")
    assert (hf.get_output_embeddings().weight is hf.get_input_embeddings().weight) == tie
    x = torch.randint(0, 520, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert ("auto_map" in config) == (position != "rope")
    # the tokenizer loads as Hugging Face's and puts EOT in front, as lokilm does with every document
    hf_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert hf_tok("Fair is foul").input_ids == [0] + small_tokenizer.encode("Fair is foul").ids
    assert hf_tok.eos_token == hf_tok.bos_token == "<|endoftext|>"


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_greedy_text_equals_transformers_generate(tmp_path, small_tokenizer, one_thread, position):
    """`loki generate --temperature 0` and transformers' generate (its KV cache, a left-padded batch) agree."""
    tiny_run(tmp_path / "run", small_tokenizer, position=position)
    hf = load_hf(export(tmp_path / "run", tmp_path / "hf"))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    hf_tok.padding_side = "left"
    prompts = ["Fair is foul, and foul is fair", "Double"]
    settings = GenerateConfig(max_new_tokens=12, temperature=0.0, top_k=None)
    ours = Sampler(tmp_path / "run").complete_batch(prompts, settings)
    batch = hf_tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = hf.generate(**batch, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    # decoded by one tokenizer: a random model's text is mostly broken UTF-8, which decoders spell differently
    theirs = [decode(small_tokenizer, row.tolist()) for row in ids[:, batch.input_ids.shape[1]:]]
    assert [t.split("<|endoftext|>")[0] for t in theirs] == ours
    assert all(len(t) > 0 for t in ours)


def test_export_options_and_refusals(tmp_path, small_tokenizer, capsys):
    tiny_run(tmp_path / "run", small_tokenizer, position="rope")
    out = export(tmp_path / "run", tmp_path / "hf", dtype="bfloat16", step=0)
    assert load_file(out / "model.safetensors")["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(LokiError, match="already exists; pass --force"):
        export(tmp_path / "run", tmp_path / "hf")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--force"]) == 0
    assert "lm_eval --model hf" in capsys.readouterr().out
    with pytest.raises(LokiError, match="no checkpoint at step 7"):
        export(tmp_path / "run", tmp_path / "x", step=7)
    with pytest.raises(LokiError, match="--dtype 'float16'"):
        export(tmp_path / "run", tmp_path / "x", dtype="float16")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "x")]) == 2
    assert "has no valid checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_weight_shared_models_are_refused_by_name(tmp_path, small_tokenizer):
    if "share" not in ModelConfig.__dataclass_fields__:
        pytest.skip("this model has no weight sharing")
    tiny_run(tmp_path / "run", small_tokenizer, position="rope", share="ffn")
    with pytest.raises(LokiError, match="model.share='ffn'"):
        export(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    if "sincos" in str(ModelConfig.__annotations__["position"]):
        tiny_run(tmp_path / "run2", small_tokenizer, position="sincos")
        with pytest.raises(LokiError, match="model.position='sincos'"):
            export(tmp_path / "run2", tmp_path / "hf")


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_lm_eval_hf_backend_on_the_export_scores_like_loki_eval(tmp_path, small_tokenizer, one_thread, position):
    """lm-eval's own `hf` model on the exported folder and lokilm's adapter, on the same task YAMLs: the same
    per-item log-likelihoods and the same accuracies (ARC-C; Winogrande scores one continuation after two
    different contexts)."""
    from lm_eval.models.huggingface import HFLM

    from lokilm.eval.harness import LokiLM
    from lokilm.eval.suite import run_preset

    model = tiny_run(tmp_path / "run", small_tokenizer, position=position, vocab_size=512)
    out = export(tmp_path / "run", tmp_path / "hf")
    ours = run_preset(LokiLM(model, small_tokenizer, batch_size=8), "quick", ["arc_challenge", "winogrande"], limit=4)[1]
    hf = HFLM(pretrained=str(out), device="cpu", dtype="float32", trust_remote_code=True, batch_size=8)
    theirs = run_preset(hf, "quick", ["arc_challenge", "winogrande"], limit=4)[1]
    assert [(i["task"], i["doc_id"]) for i in ours] == [(i["task"], i["doc_id"]) for i in theirs] and len(ours) == 8
    for a, b in zip(ours, theirs):
        assert a["metrics"] == b["metrics"]
        assert max(abs(x - y) for x, y in zip(a["loglikelihoods"], b["loglikelihoods"])) <= 1e-3
