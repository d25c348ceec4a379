"""LokiLM for Hugging Face transformers (remote code, copied next to an exported model by `loki export`).

A decoder-only Transformer with pre-norm RMSNorm blocks, SwiGLU, no biases and ALiBi, RoPE or learned
positions: the same computation as lokilm/model/transformer.py, written against transformers' base classes so
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it and `generate()` runs it with
its KV cache. This file must not import lokilm: the folder is used where lokilm is not installed.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast


class LokiLMConfig(PretrainedConfig):
    model_type = "lokilm"

    def __init__(self, vocab_size=32000, n_layer=24, n_head=32, n_kv_head=None, d_model=2048, d_ff=5632,
                 context_length=2048, position="alibi", rope_theta=10000.0, norm_eps=1e-5, init_std=0.02,
                 tie_word_embeddings=False, use_cache=True, **kwargs):
        self.use_cache = use_cache
        self.vocab_size, self.n_layer, self.n_head = vocab_size, n_layer, n_head
        self.n_kv_head = n_kv_head or n_head
        self.d_model, self.d_ff, self.context_length = d_model, d_ff, context_length
        self.position, self.rope_theta, self.norm_eps, self.init_std = position, rope_theta, norm_eps, init_std
        # the names generate() and the cache look for
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = d_model, n_layer, n_head
        self.num_key_value_heads, self.max_position_embeddings = self.n_kv_head, context_length
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al.'s slopes 2^(-8/n), 2^(-16/n), ...; for a head count that is not a power of two, those of
    the closest smaller power of two, then every other slope of the next one."""
    def geometric(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(geometric(closest) + geometric(2 * closest)[0::2][: n_head - closest], dtype=torch.float32)


def apply_rope(x, cos, sin):
    # the two halves of each head rotate against each other (the GPT-NeoX / Llama layout)
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LokiLMConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.n_kv_head = layer, cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.q_proj = nn.Linear(cfg.d_model, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.d_model, bias=False)

    def forward(self, x, bias, rope, cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LokiLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LokiLMConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, bias, rope, cache):
        x = x + self.attn(self.attn_norm(x), bias, rope, cache)
        return x + self.mlp(self.mlp_norm(x))


class LokiLMPreTrainedModel(PreTrainedModel):
    config_class = LokiLMConfig
    base_model_prefix = "lokilm"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)


class LokiLMForCausalLM(LokiLMPreTrainedModel, GenerationMixin):
    # the weight names are lokilm's own, so an export is lokilm's state dict as it is
    _tied_weights_keys = {"head.weight": "tok_embeddings.weight"}

    def __init__(self, config: LokiLMConfig):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embeddings = (nn.Embedding(config.context_length, config.d_model)
                               if config.position == "learned" else None)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_embeddings

    def set_input_embeddings(self, value):
        self.tok_embeddings = value

    def get_output_embeddings(self):
        return self.head

    def set_output_embeddings(self, value):
        self.head = value

    def _bias(self, key_mask, past, T, device):
        """Additive attention bias (B, n_head or 1, T, past + T): causal over cache slots, padded keys masked,
        ALiBi's slope * distance. Under left padding distances between slots are distances between tokens."""
        S = past + T
        q_slot = torch.arange(past, S, device=device)[:, None]
        k_slot = torch.arange(S, device=device)[None, :]
        distance = (k_slot - q_slot).float()
        masked = (distance > 0)[None]
        if key_mask is not None:
            # a padded query keeps itself, so no row is all -inf (NaN); nothing reads its output
            masked = masked | ((key_mask[:, None, :S] == 0) & (distance != 0)[None])
        masked = masked[:, None]  # (B or 1, 1, T, S)
        if self.config.position == "alibi":
            # computed here, not kept as a buffer: from_pretrained builds the model on the meta device
            bias = alibi_slopes(self.config.n_head).to(device)[None, :, None, None] * distance[None, None]
        else:
            bias = torch.zeros(1, 1, T, S, device=device)
        return bias.masked_fill(masked, float("-inf"))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        cfg = self.config
        cache = cache if cache is not None else past_key_values
        x = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        if use_cache is None:
            use_cache = cfg.use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=cfg)
        past = cache.get_seq_length() if isinstance(cache, Cache) else 0
        if position_ids is None:
            if attention_mask is not None:  # left padding: a row's first real token is position 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:past + T]
            else:
                position_ids = torch.arange(past, past + T, device=x.device)[None].expand(B, T)
        if cfg.position == "learned":
            if int(position_ids.max()) >= cfg.context_length:
                raise ValueError(f"learned positions stop at context_length={cfg.context_length}")
            x = x + self.pos_embeddings(position_ids)
        rope = None
        if cfg.position == "rope":
            head_dim = cfg.d_model // cfg.n_head
            inv_freq = cfg.rope_theta ** (-torch.arange(0, head_dim, 2, device=x.device, dtype=torch.float32) / head_dim)
            angles = position_ids.float()[:, None, :, None] * inv_freq  # (B, 1, T, head_dim / 2)
            rope = angles.cos(), angles.sin()
        bias = self._bias(attention_mask, past, T, x.device)
        for block in self.layers:
            x = block(x, bias, rope, cache if use_cache else None)
        x = self.norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        # transformers 5 names the returned cache `cache`, 4.x `past_key_values`
        key = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{key: cache if use_cache else None})
