"""lokilm's Transformer and Hugging Face's Llama, side by side: the weight names and the config fields that
mean the same thing, and the Llama features lokilm cannot represent (refused by name)."""

from __future__ import annotations

import re

from lokilm.errors import LokiError
from lokilm.model.config import ModelConfig

# lokilm name (per layer, after "layers.{i}.") -> Llama name (after "model.layers.{i}.")
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight"}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_TO_LAYER = {v: k for k, v in LAYER_NAMES.items()}
_HF_TO_TOP = {v: k for k, v in TOP_NAMES.items()}


def to_llama_name(name: str) -> str:
    """The Llama name of a lokilm weight. lokilm's RoPE rotates the two halves of each head (the layout Hugging
    Face's Llama uses), so q and k need no permutation."""
    m = _LAYER.match(name)
    if m and m.group(2) in LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{LAYER_NAMES[m.group(2)]}"
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    raise LokiError(f"weight {name!r} has no Llama counterpart")


def from_llama_name(name: str) -> str | None:
    """The lokilm name of a Llama weight; None for buffers lokilm recomputes (rotary inverse frequencies)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    m = _HF_LAYER.match(name)
    if m and m.group(2) in _HF_TO_LAYER:
        return f"layers.{m.group(1)}.{_HF_TO_LAYER[m.group(2)]}"
    if name in _HF_TO_TOP:
        return _HF_TO_TOP[name]
    raise LokiError(f"weight {name!r} has no lokilm counterpart (lokilm has no biases, LayerNorm or extra projections)")


def llama_config(m: ModelConfig, bos: int, eos: int) -> dict:
    """config.json of LlamaForCausalLM for a RoPE lokilm model."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "intermediate_size": m.d_ff,
        "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head,
        "num_key_value_heads": m.n_kv_head or m.n_head, "head_dim": m.d_model // m.n_head,
        "max_position_embeddings": m.context_length, "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "rms_norm_eps": m.norm_eps, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": m.tie_embeddings, "initializer_range": m.init_std,
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos, "use_cache": True,
    }


def _rope_theta(c: dict) -> float:
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise LokiError(f"rope scaling {rope_type!r} is not supported (lokilm's RoPE has no scaling)")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def model_config_from_llama(c: dict, source: str) -> ModelConfig:
    """The lokilm model of a Llama-family config.json (as a dict), or a LokiError naming what lokilm lacks."""
    arch = c.get("model_type")
    if arch not in ("llama", "mistral", "qwen2"):  # all three are Llama when their extras are off
        raise LokiError(f"{source}: model_type {arch!r} is not a Llama-family model (lokilm imports llama, "
                        "and mistral / qwen2 without sliding windows or biases)")
    refused = []
    if c.get("attention_bias") or arch == "qwen2":
        refused.append("attention biases")
    if c.get("mlp_bias"):
        refused.append("MLP biases")
    if c.get("hidden_act", "silu") != "silu":
        refused.append(f"activation {c['hidden_act']!r} (lokilm's SwiGLU uses silu)")
    if c.get("sliding_window") not in (None, 0) and c.get("use_sliding_window", True):
        refused.append(f"sliding-window attention ({c['sliding_window']})")
    if c.get("pretraining_tp", 1) != 1:
        refused.append("pretraining_tp")
    try:
        heads, hidden = int(c["num_attention_heads"]), int(c["hidden_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise LokiError(f"{source}: its config has no usable num_attention_heads / hidden_size ({e!r})") from None
    if heads > 0 and c.get("head_dim") not in (None, hidden // heads):
        refused.append(f"head_dim {c['head_dim']} != hidden_size / num_attention_heads")
    try:
        theta = _rope_theta(c)
    except LokiError as e:
        refused.append(str(e))
    if refused:
        raise LokiError(f"{source} uses what lokilm cannot represent: {'; '.join(refused)}")
    kv = c.get("num_key_value_heads") or heads
    return checked_model(source, {
        "vocab_size": c.get("vocab_size"), "n_layer": c.get("num_hidden_layers"), "n_head": heads,
        "n_kv_head": None if kv == heads else kv, "d_model": hidden, "d_ff": c.get("intermediate_size"),
        "context_length": c.get("max_position_embeddings", 2048), "position": "rope", "rope_theta": theta,
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)), "norm_eps": c.get("rms_norm_eps", 1e-6),
        "init_std": c.get("initializer_range", 0.02)})


def checked_model(source: str, fields: dict) -> ModelConfig:
    """The ModelConfig of `fields` as the typed config reads them (types coerced, shapes and ranges checked), or
    a LokiError naming the field: a config.json with a string for a size, a context of 0 or 10**9 layers is refused
    here, before any tensor is made."""
    from lokilm.config import ConfigError, from_dict

    try:
        return from_dict({"model": fields}).model
    except ConfigError as e:
        raise LokiError(f"{source}: its config does not describe a model lokilm can build ({e})") from None


def parameter_count(m: ModelConfig) -> int:
    """The weights a Transformer of `m` holds (norms aside)."""
    head = m.d_model // m.n_head
    attn = 2 * m.d_model * m.d_model + 2 * m.d_model * head * (m.n_kv_head or m.n_head)
    return m.n_layer * (attn + 3 * m.d_model * m.d_ff) + m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)


def check_weights_fit(m: ModelConfig, source: str, weight_bytes: int) -> None:
    """Refuse a config that declares far more weights than its files hold (10**9 layers over a 1 MB file would
    otherwise allocate until the machine runs out of memory). One bit per weight is below any GGUF quantisation."""
    need = parameter_count(m)
    if need / 8 > weight_bytes:
        raise LokiError(f"{source}: its config declares {need:,} weights, but its weight files hold only "
                        f"{weight_bytes:,} bytes; the config does not match the weights")
