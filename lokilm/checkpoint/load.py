"""The one way a command gets a trained model: a run directory's config, its newest valid checkpoint (or the
one given), the weights in eval mode."""

from __future__ import annotations

from pathlib import Path

import torch

from lokilm.checkpoint.single import Checkpoint, latest_checkpoint
from lokilm.config import Config, from_dict
from lokilm.errors import LokiError
from lokilm.model import Transformer
from lokilm.rundir import RunDir


def load_model(run_dir: str | Path, device: str | torch.device = "cpu",
               ckpt: Checkpoint | None = None) -> tuple[Transformer, Config]:
    """The run's model with the weights of `ckpt` (default: its newest valid checkpoint, single-file or sharded),
    in eval mode, and the run's config."""
    run = RunDir.open(run_dir)
    ckpt = ckpt or latest_checkpoint(run.checkpoints)
    if ckpt is None:
        raise LokiError(f"{run_dir} has no valid checkpoint (train one with `loki train`)")
    model = Transformer(from_dict(ckpt.state["config"]).model).to(device)
    if ckpt.sharded:  # an FSDP run's checkpoint: its weights through DCP, in this one process
        from lokilm.checkpoint.sharded import load_weights

        load_weights(ckpt, model)
    else:
        ckpt.load_model(model)
    return model.eval(), run.cfg
