"""The training units the model's options need: the byte-level model's token-to-bytes table, the dropout
schedule (lokilm/train/dropout.py) and the early-exit loss curriculum (LayerSkip)."""

from __future__ import annotations

from pathlib import Path

import torch

from lokilm.train.dropout import DropoutSchedule
from lokilm.train.units import Step, Unit


def model_units(model, cfg, tokenizer: Path, device: torch.device) -> list[Unit]:
    """The units for `cfg`'s model options, in the order they run (none for a plain model)."""
    m, t = cfg.model, cfg.train
    units: list[Unit] = []
    if m.input == "bytes":
        units.append(ByteTable(model, tokenizer))
    if t.dropout_schedule != "constant":
        units.append(DropoutSchedule(model, t.dropout_schedule, m.dropout, t.dropout_schedule_until, t.max_steps, device))
    if m.early_exit and t.early_exit_curriculum != "all":
        units.append(ExitCurriculum(model, t.early_exit_curriculum, t.early_exit_rotation, t.max_steps))
    return units


class ByteTable(Unit):
    """Gives a byte-level model its tokenizer's token-to-bytes table before training starts (the table is a buffer
    saved with the weights, so generation and evaluation later read it from the checkpoint)."""
    name = "byte_table"

    def __init__(self, model, tokenizer: Path):
        self.model, self.tokenizer = model, tokenizer

    def start(self, resumed: bool) -> None:
        from lokilm.tokenizer.byte_table import byte_table
        from lokilm.tokenizer import load_tokenizer

        cfg = self.model.cfg
        table, specials = byte_table(load_tokenizer(self.tokenizer), cfg.vocab_size, cfg.byte_context)
        self.model.tok_embeddings.set_table(table, specials)


def active_exits(curriculum: str, n_layer: int, step: int, max_steps: int, rotation: int) -> set[int]:
    """The intermediate layers (1-based) whose early-exit loss is on at `step` (1-based): all = every one;
    rotational = every `rotation`-th layer, a different set each step (LayerSkip's rotational curriculum);
    gradual = the deepest first, one more layer switched on every max_steps / (n_layer - 1) steps."""
    layers = range(1, n_layer)
    if curriculum == "all":
        return set(layers)
    if curriculum == "rotational":
        return {layer for layer in layers if (layer + step) % rotation == 0}
    if curriculum == "gradual":
        on = min(n_layer - 1, 1 + (step - 1) * (n_layer - 1) // max_steps)
        return set(range(n_layer - on, n_layer))
    raise ValueError(f"unknown early-exit curriculum {curriculum!r}")


class ExitCurriculum(Unit):
    """Chooses the model's early-exit losses for each step. Stateless: a function of the step."""
    name = "early_exit_curriculum"

    def __init__(self, model, curriculum: str, rotation: int, max_steps: int):
        self.model, self.curriculum, self.rotation, self.max_steps = model, curriculum, rotation, max_steps

    def before_step(self, step: Step) -> None:
        self.model.exit_layers = active_exits(self.curriculum, self.model.cfg.n_layer, step.number, self.max_steps,
                                              self.rotation)
        step.record["exit_layers"] = len(self.model.exit_layers)
