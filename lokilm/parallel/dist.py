"""The processes of a training job: rank, world size and device from torchrun's environment, and the few
collectives the trainer needs. A plain `loki train` is a world of one and starts no process group unless
FSDP is asked for explicitly."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from lokilm.errors import LokiError

T = TypeVar("T")


def env_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun); readable before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    """Processes of the torchrun job this process belongs to (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    fsdp: bool  # the model is sharded over a process group (of one, or of every rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of n items (micro-batches of a global batch); n must divide evenly."""
        if n % self.world_size:
            raise LokiError(f"{n} micro-batches cannot be split evenly over {self.world_size} processes: make "
                            f"train.batch_size (and train.batch_warmup_start) a multiple of "
                            f"train.micro_batch_size x {self.world_size}")
        per = n // self.world_size
        return range(self.rank * per, (self.rank + 1) * per)

    def sum(self, value: torch.Tensor) -> float:
        """The sum of `value` over all ranks, as a float on every rank."""
        if self.fsdp:
            value = value.clone()
            dist.all_reduce(value)
        return float(value)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `value` over all ranks, on every rank (on the training device: NCCL needs it)."""
        value = value.to(self.device)
        if self.fsdp:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def from_main(self, fn: Callable[[], T]) -> T:
        """fn() computed on rank 0 only and handed to every rank (e.g. which checkpoint is the newest valid one)."""
        if not self.fsdp:
            return fn()
        box = [fn() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.fsdp:
            return [value]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.fsdp:
            dist.barrier()

    def close(self) -> None:
        if self.fsdp and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise LokiError("train.device=cuda but no CUDA GPU is available (use train.device=auto or cpu)")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device_name: str, fsdp: bool | str) -> Distributed:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE and start the process group when there is one to start:
    NCCL for CUDA tensors (gloo beside it for CPU ones), gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and fsdp is False:
        raise LokiError(f"torchrun started {world} processes but train.fsdp=false; multi-process training is FSDP "
                        f"(train.fsdp=auto or true)")
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sharded = world > 1 or fsdp is True
    if sharded and not dist.is_initialized():
        backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
        if "MASTER_ADDR" in os.environ and "RANK" in os.environ:  # torchrun (or a launcher that sets its variables)
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        else:  # `loki train ... train.fsdp=true` in one plain process: a group of one
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Distributed(rank, local_rank, world, device, sharded)


def run_on_main(fn: Callable[[], None], wait_s: float = 7 * 24 * 3600) -> None:
    """fn() on rank 0 while the other ranks of the (started) process group wait for it, e.g. `loki run`'s
    curation and tokenisation before every rank trains. The wait is on a gloo group of its own with a timeout of
    `wait_s` (a week), so hours of curation are not taken for a hang, while the training group keeps its usual
    timeout. If fn() fails on rank 0, the other ranks stop with a LokiError naming the failure instead of
    waiting for training that never starts."""
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_s))
    box: list = [None]
    try:
        if env_rank() == 0:
            try:
                fn()
            except BaseException as e:
                box = [f"{type(e).__name__}: {e}" if not isinstance(e, LokiError) else str(e)]
                raise
            finally:
                dist.broadcast_object_list(box, src=0, group=group)
        else:
            dist.broadcast_object_list(box, src=0, group=group)
            if box[0] is not None:
                raise LokiError(f"rank 0 stopped before training, so this rank stops too: {box[0]}")
    finally:
        dist.destroy_process_group(group)
