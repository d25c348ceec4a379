"""The model's settings (the `model:` section of a config): everything the Transformer is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lokilm.errors import check as _check


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    n_layer: int = 24
    n_head: int = 32
    n_kv_head: int | None = None  # None: multi-head attention; fewer: grouped-query attention
    d_model: int = 2048
    d_ff: int = 5632  # SwiGLU hidden width
    context_length: int = 2048
    # alibi | rope | learned | sincos (fixed sinusoids added to the input, Vaswani et al.) | none (NoPE: the
    # causal mask alone tells positions apart)
    position: Literal["alibi", "rope", "learned", "sincos", "none"] = "alibi"
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # auto: FlexAttention on CUDA, PyTorch SDPA elsewhere; reference: plain math (slow, for checking)
    attention: Literal["auto", "flex", "sdpa", "reference"] = "auto"
    # Weight sharing (lokilm/model/sharing.py): ffn = one SwiGLU for every layer (MobiLlama), block = one whole
    # block applied n_layer times (ALBERT); share_lora_rank r > 0 gives each layer rank-r LoRA adapters on them.
    share: Literal["none", "ffn", "block"] = "none"
    share_lora_rank: int = 0
    # bytes: the byte-level model (lokilm/model/byte_level.py): each BPE token's bytes are embedded and pooled
    # into one vector, and a small decoder predicts the next token's bytes; the loss is over bytes.
    input: Literal["tokens", "bytes"] = "tokens"
    byte_context: int = 12  # bytes per token chunk (the longest token of the tokenizer must fit)
    byte_d_model: int = 128  # width of the byte embeddings, pooling and decoder transformers
    byte_n_layer: int = 2  # layers of the pooling transformer and of the byte decoder, each
    byte_n_head: int = 4
    # Early exit (LayerSkip): training adds the losses of every intermediate layer through the shared final
    # norm and head, layer l of n_layer weighted early_exit_scale * l / n_layer (the final layer weighs 1).
    early_exit: bool = False
    early_exit_scale: float = 0.5

    def validate(self) -> None:
        """The checks of the options above (Config.validate does the shape checks common to every model)."""
        _check(self.share_lora_rank >= 0, "model.share_lora_rank", f"must be >= 0, got {self.share_lora_rank}")
        _check(self.share != "none" or self.share_lora_rank == 0, "model.share_lora_rank",
               "adapts shared weights: set model.share to ffn or block too")
        _check(self.share_lora_rank < min(self.d_model, self.d_ff), "model.share_lora_rank",
               f"{self.share_lora_rank} is not a low rank for d_model={self.d_model}, d_ff={self.d_ff}")
        if self.input == "bytes":
            for key in ("byte_context", "byte_d_model", "byte_n_layer", "byte_n_head"):
                _check(getattr(self, key) > 0, f"model.{key}", f"must be positive, got {getattr(self, key)}")
            _check(self.byte_d_model % self.byte_n_head == 0, "model.byte_d_model",
                   f"{self.byte_d_model} is not divisible by model.byte_n_head={self.byte_n_head}")
            _check(not self.early_exit, "model.early_exit", "is for token models; the byte-level model has no token head")
        _check(0.0 <= self.early_exit_scale <= 10.0, "model.early_exit_scale",
               f"must be in [0, 10], got {self.early_exit_scale}")
        _check(self.position != "sincos" or self.d_model % 2 == 0, "model.position", "sincos needs an even d_model")
