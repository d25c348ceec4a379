"""The model's settings (the `model:` section of a config): everything the Transformer is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    n_layer: int = 24
    n_head: int = 32
    n_kv_head: int | None = None  # None: multi-head attention; fewer: grouped-query attention
    d_model: int = 2048
    d_ff: int = 5632  # SwiGLU hidden width
    context_length: int = 2048
    position: Literal["alibi", "rope", "learned"] = "alibi"
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # auto: FlexAttention on CUDA, PyTorch SDPA elsewhere; reference: plain math (slow, for checking)
    attention: Literal["auto", "flex", "sdpa", "reference"] = "auto"
