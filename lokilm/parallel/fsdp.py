"""`parallelize`: what turns a plain Transformer into the one that trains, applied from outside the model, in
torchtitan's order: 8-bit linear layers, activation checkpointing, torch.compile per block, FSDP2 per block.

Single-process runs take the same path with FSDP left out. Parameter names never change (the wrappers strip
their prefixes from state dicts), so checkpoints load into a plain model.
"""

from __future__ import annotations

import functools

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from lokilm.config import TrainConfig
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.parallel.dist import Distributed
from lokilm.parallel.precision import check_precision, convert_8bit, cuda_capability, uses_bf16

_aten = torch.ops.aten
# Selective checkpointing keeps these outputs (the matmuls and attention: expensive to recompute, a small
# share of the activations) and recomputes the rest of a block (norms, SiLU, products, casts) in backward.
SAVED_OPS = {_aten.mm.default, _aten._scaled_mm.default, _aten._scaled_dot_product_flash_attention.default,
             _aten._scaled_dot_product_efficient_attention.default, _aten._scaled_dot_product_cudnn_attention.default,
             _aten._scaled_dot_product_flash_attention_for_cpu.default, torch.ops.higher_order.flex_attention}


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def parallelize(model: Transformer, t: TrainConfig, dist: Distributed) -> list[str]:
    """Apply the train config's precision, checkpointing, compile and sharding to `model` in place; returns
    one line per thing applied, for the run's log."""
    check_precision(t.precision, cuda_capability(dist.device),
                    torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "this GPU")
    if t.compile and model.cfg.attention == "flex" and dist.device.type != "cuda":
        # Inductor's CPU template for FlexAttention fails at the first step (torch 2.13: "not enough values to
        # unpack"); `auto` scores with SDPA on a CPU, the same attention
        raise LokiError("model.attention=flex with train.compile=true does not compile on the CPU: use "
                        "model.attention=auto (SDPA here) or train.compile=false")
    notes = [n for n in [convert_8bit(model, t.precision, dist.fsdp)] if n]
    if t.optimizer_8bit:  # applied by build_optimizer; said here, with the rest of the precision
        notes.append("8-bit AdamW states (torchao.optim.AdamW8bit)")
    blocks = model.layers
    for i, block in enumerate(blocks):
        if t.activation_checkpointing == "full":
            block = checkpoint_wrapper(block)
        elif t.activation_checkpointing == "selective":
            block = checkpoint_wrapper(block, context_fn=functools.partial(create_selective_checkpoint_contexts,
                                                                           _keep_matmuls))
        if t.compile:
            # in place, unlike torch.compile(block): the state-dict names stay those of the plain model. FSDP2's
            # hooks then sit inside the compiled call; they are marked dynamo-disabled, so they run eagerly.
            block.compile()
        blocks[i] = block
    if t.activation_checkpointing != "none":
        notes.append(f"activation checkpointing: {t.activation_checkpointing}, every block")
    if t.compile:
        notes.append("torch.compile per block")
    if dist.fsdp:
        bf16 = uses_bf16(dist.device, t.precision)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                      reduce_dtype=torch.bfloat16 if t.reduce_dtype == "bf16" else torch.float32)
        for i, block in enumerate(blocks):
            # the last block's parameters are needed again at once by backward: keep them gathered
            fully_shard(block, mp_policy=policy, reshard_after_forward=i < len(blocks) - 1)
        # Embedding, final norm and head form the root group: a tied embedding and head are one parameter
        # there, in one shard group.
        fully_shard(model, mp_policy=policy)
        notes.append(f"FSDP2 over {dist.world_size} process(es), one group per block plus the root; "
                     f"params {'bf16' if bf16 else 'fp32'}, gradients reduced in {t.reduce_dtype}")
    return notes


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (over all shards) to max_norm (0: off); returns the norm before clipping, as a
    device tensor: reading it on the host would stall the step (the logging unit reads it at log intervals)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
