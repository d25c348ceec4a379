"""The model: a decoder-only Transformer, its KV cache, and the attention kernels it can run on."""

from lokilm.model.attention import alibi_slopes, apply_rope, make_attention, rope_cos_sin
from lokilm.model.transformer import Block, KVCache, Transformer

__all__ = ["Block", "KVCache", "Transformer", "alibi_slopes", "apply_rope", "make_attention", "rope_cos_sin"]
