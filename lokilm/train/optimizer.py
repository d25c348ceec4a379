"""The optimiser a run trains with, built the same way by the trainer, checkpoint loading and the benchmarks."""

from __future__ import annotations

import torch

from lokilm.errors import LokiError
from lokilm.parallel.precision import adamw_8bit


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW (weight decay on matrices only, not norms, as in GPT-style recipes), or with cfg.optimizer=muon,
    torch.optim.Muon on the hidden matrices and that AdamW on the rest (`MuonAdamW`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "muon":
        return muon_adamw(model, params, cfg)
    return _adamw(params, cfg)


def _adamw(params: list[torch.nn.Parameter], cfg) -> torch.optim.Optimizer:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer_8bit:
        return adamw_8bit(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    fused = params[0].device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def muon_adamw(model: torch.nn.Module, params: list[torch.nn.Parameter], cfg) -> MuonAdamW:
    """Muon on every matrix of the layers (and of a shared layer), AdamW on the embeddings, the head and the
    norms, as nanochat and modded-nanogpt split them: Muon's orthogonalised update suits hidden linear maps,
    not lookup tables or the output projection.

    Muon's lr is adjusted to match AdamW's update size ("match_rms_adamw", Liu et al. 2025), so one learning
    rate and weight decay, and the trainer's one schedule, serve both halves."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params):
        raise LokiError("train.optimizer=muon does not run under FSDP yet (torch.optim.Muon orthogonalises whole "
                        "matrices, and FSDP gives each rank a shard of each): use train.optimizer=adamw with FSDP, "
                        "or train in one process with train.fsdp=false")
    if not hasattr(model, "io_parameters"):
        raise LokiError(f"train.optimizer=muon needs a lokilm Transformer, got {type(model).__name__}")
    io = {id(p) for p in model.io_parameters()}
    hidden = [p for p in params if p.dim() == 2 and id(p) not in io]
    rest = [p for p in params if p.dim() != 2 or id(p) in io]
    muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            nesterov=True, adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(muon, _adamw(rest, cfg))


class MuonAdamW(torch.optim.Optimizer):
    """Two optimisers stepping as one: their param groups are this one's (so setting each group's lr sets both),
    and they share this one's state, so `state_dict`/`load_state_dict` save and restore both like any optimiser's."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.parts = (muon, adamw)
        super().__init__([g for part in self.parts for g in part.param_groups], defaults={})
        self._link()

    def _link(self) -> None:
        # load_state_dict replaces the group dicts and the state: hand the new ones back to the parts
        groups = iter(self.param_groups)
        for part in self.parts:
            part.param_groups = [next(groups) for _ in part.param_groups]
            part.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate. Some optimisers keep it as a tensor (torchao's 8-bit AdamW, so that a
    compiled step does not recompile for each new value): update that tensor in place; replacing it with a float
    fails under FSDP."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
