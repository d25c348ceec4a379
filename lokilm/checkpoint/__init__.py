"""Checkpoints, in one place: the single-file format (`single`), the sharded DCP format (`sharded`, with
`consolidate`), and the one `load_model(run_dir)` every command that uses a trained model goes through."""

from lokilm.checkpoint.load import load_model
from lokilm.checkpoint.single import Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints

__all__ = ["Checkpoint", "CheckpointError", "latest_checkpoint", "list_checkpoints", "load_model"]
