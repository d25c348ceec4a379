"""Weight sharing across layers: one FFN for all layers (MobiLlama) or one whole block (ALBERT), with optional
per-layer LoRA adapters so the layers that share weights can still differ.

The shared module is owned by the model root (`Transformer.shared`): its parameters are counted, saved,
initialised and FSDP-sharded once, in the root's shard group. A layer only *borrows* it: `borrow` keeps a
plain reference that nn.Module does not register, so `model.layers[i]` holds just that layer's own weights
and adapters, and `fully_shard(layer)` never sees the shared ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def borrow(owner: nn.Module, name: str, module: nn.Module) -> None:
    """Make `owner.<name>` refer to `module` without making it a submodule (see the module docstring)."""
    owner.__dict__[name] = module


class LoRA(nn.Module):
    """A rank-r update B A x added to a shared linear layer's output (Hu et al. 2021); B starts at zero, so a
    fresh adapter leaves the shared layer as it is."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, d_in))
        self.B = nn.Parameter(torch.empty(d_out, rank))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.A, std=1.0 / math.sqrt(self.A.shape[1]))
        nn.init.zeros_(self.B)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.A), self.B)


def adapters(linears: dict[str, nn.Linear], rank: int) -> nn.ModuleDict | None:
    """One LoRA per named linear layer (None when rank is 0)."""
    if rank == 0:
        return None
    return nn.ModuleDict({name: LoRA(lin.in_features, lin.out_features, rank) for name, lin in linears.items()})


def project(linear: nn.Linear, x: Tensor, lora: nn.ModuleDict | None, name: str) -> Tensor:
    """linear(x), plus this layer's adapter of it when it has one."""
    y = linear(x)
    return y if lora is None or name not in lora else y + lora[name](x)


def is_lora(name: str) -> bool:
    return ".lora." in name
