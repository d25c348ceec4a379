"""Training precision: bf16 or fp32, and the 8-bit options through torchao (FP8 where the GPU has FP8 tensor
cores, int8 mixed precision or 8-bit optimiser states where it has not), refused clearly where they cannot run.

torchao is imported only when an 8-bit option is asked for: it is slow to import and noisy on CPU.
"""

from __future__ import annotations

import contextlib

import torch

from lokilm.errors import LokiError

FP8_CAPABILITY = (8, 9)   # FP8 tensor cores: Ada (L4, L40S, RTX 4090) and Hopper (H100, H200) on
INT8_CAPABILITY = (8, 0)  # int8 tensor-core matmuls (torch._int_mm) as torchao's int8 training uses them: Ampere on
KEEP_HIGH_PRECISION = ["head"]  # the LM head feeds the softmax directly; it stays in bf16, as in torchtitan
FP8_RECIPES = {"fp8_tensorwise": "tensorwise", "fp8_rowwise": "rowwise"}


def uses_bf16(device: torch.device, precision: str) -> bool:
    """bf16 compute: asked for (bf16, or an 8-bit option, whose other layers run in bf16), or auto on CUDA."""
    return precision != "fp32" and (precision != "auto" or device.type == "cuda")


def autocast_for(device: torch.device, precision: str):
    """The one precision policy for a forward pass, in training and in evaluation alike: a context-manager factory,
    bf16 autocast on CUDA (or when asked), plain fp32 otherwise."""
    if uses_bf16(device, precision):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def check_precision(precision: str, capability: tuple[int, int] | None, gpu: str = "this GPU") -> None:
    """Refuse an 8-bit precision the hardware cannot run, saying what would run instead.

    capability: the CUDA compute capability, or None when training on CPU.
    """
    if precision not in FP8_RECIPES and precision != "int8":
        return
    if capability is None:
        raise LokiError(f"train.precision={precision} needs a CUDA GPU ({_need(precision)}); this run is on the CPU: "
                        f"use train.precision=auto, bf16 or fp32")
    cap = f"{gpu} has compute capability {capability[0]}.{capability[1]}"
    if precision in FP8_RECIPES and capability < FP8_CAPABILITY:
        other = (" Without FP8, 8-bit training here is train.precision=int8 (int8 mixed-precision matmuls) or "
                 "train.optimizer_8bit=true (8-bit AdamW states)" if capability >= INT8_CAPABILITY
                 else " It has no int8 tensor-core training either: use train.precision=bf16 (or fp32)")
        raise LokiError(f"train.precision={precision} needs FP8 tensor cores ({_need(precision)}); {cap}.{other}.")
    if precision == "int8" and capability < INT8_CAPABILITY:
        raise LokiError(f"train.precision=int8 needs int8 tensor cores ({_need(precision)}); {cap}: use "
                        f"train.precision=bf16 or fp32")


def _need(precision: str) -> str:
    if precision in FP8_RECIPES:
        return "compute capability 8.9+: H100, H200, L40S, RTX 4090"
    return "compute capability 8.0+: A100, A10, L4, H100"


def fp8_filter(recipe: str):
    """Which Linear layers get FP8 matmuls: torchao's size heuristic for the recipe (dimensions divisible by 16
    and large enough for FP8 to pay off on an H100), never the LM head."""
    from torchao.float8.float8_linear_utils import _auto_filter_for_recipe

    return _auto_filter_for_recipe(recipe, filter_fqns=KEEP_HIGH_PRECISION)


def int8_filter(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear) and fqn not in KEEP_HIGH_PRECISION


def convert_8bit(model: torch.nn.Module, precision: str, fsdp: bool) -> str | None:
    """Swap the model's large Linear layers for torchao's 8-bit training ones; returns what ran, for the log."""
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    if precision in FP8_RECIPES:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        from torchao.float8.float8_linear import Float8Linear

        recipe = FP8_RECIPES[precision]
        config = Float8LinearConfig.from_recipe_name(recipe)
        if recipe == "tensorwise" and fsdp:  # all-gather the weights in FP8: half the FSDP traffic
            config = Float8LinearConfig(enable_fsdp_float8_all_gather=True)
        convert_to_float8_training(model, config=config, module_filter_fn=fp8_filter(recipe))
        n = sum(isinstance(m, Float8Linear) for m in model.modules())
        return f"FP8 training ({recipe} scaling, torchao) in {n} of {n_linear} linear layers; the rest in bf16"
    if precision == "int8":
        from torchao.prototype.quantized_training import Int8MixedPrecisionTrainingConfig
        from torchao.quantization import quantize_

        n = sum(int8_filter(m, fqn) for fqn, m in model.named_modules())
        quantize_(model, Int8MixedPrecisionTrainingConfig(), filter_fn=int8_filter)
        return f"int8 mixed-precision training (torchao) in {n} of {n_linear} linear layers; the rest in bf16"
    return None


def after_optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: str, fsdp: bool) -> None:
    """FP8 all-gather under FSDP: one all-reduce of every weight's scale after each step, not one per weight."""
    if precision == "fp8_tensorwise" and fsdp:
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

        optimizer.register_step_post_hook(lambda *_: precompute_float8_dynamic_scale_for_fsdp(model))


def adamw_8bit(groups: list[dict], **kwargs) -> torch.optim.Optimizer:
    """AdamW with block-wise 8-bit moments (torchao.optim.AdamW8bit); tensors under 4,096 elements keep fp32 ones."""
    from torchao.optim import AdamW8bit

    return AdamW8bit(groups, **kwargs)
