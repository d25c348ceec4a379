"""DCP's `.metadata` file of a sharded checkpoint, read through a restricted unpickler: it is a pickle, and a
planted one must not run anything. Both checkpoint formats' verification use it."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


# What DCP's `.metadata` pickle may name: its own metadata classes and the few torch types they hold. Anything
# else (a planted pickle calling os.system, say) is refused before it runs.
_METADATA_MODULES = {"torch.distributed.checkpoint.metadata"}
_METADATA_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                     ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        import torch.distributed.checkpoint.metadata as metadata

        if module in _METADATA_MODULES and isinstance(getattr(metadata, name, None), type):
            return super().find_class(module, name)
        if (module, name) in _METADATA_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def read_metadata(folder: Path):
    """DCP's metadata of a sharded checkpoint, read without running anything it does not expect."""
    with open(folder / ".metadata", "rb") as f:
        return _MetadataUnpickler(f).load()


def check_metadata(folder: Path) -> str | None:
    """None if `folder`'s DCP metadata is one a sharded checkpoint writes, else what is wrong."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = read_metadata(folder)
    except Exception as e:  # any unpickling failure: a damaged or hostile file
        return f"{folder.name}/.metadata is not a checkpoint's metadata ({type(e).__name__}: {e})"
    if not isinstance(metadata, Metadata):
        return f"{folder.name}/.metadata holds a {type(metadata).__name__}, not DCP metadata"
    return None
