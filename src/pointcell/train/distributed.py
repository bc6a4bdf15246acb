"""Several processes training one model through torchrun (DistributedDataParallel)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pointcell.device import select_device


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """Read the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` is true in any process, so that all of them stop at one step."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())


@contextlib.contextmanager
def distributed_context(dist: Distributed, device_name: str) -> Iterator[str]:
    """Join the torchrun process group for the duration of a run; yield the device this
    process trains on (its own GPU when there are GPUs)."""
    if not dist.enabled:
        yield device_name
        return
    device = select_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        device_name = f"cuda:{dist.local_rank}"
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=dist.rank, world_size=dist.world_size)
    try:
        yield device_name if device.type == "cuda" else device.type
    finally:
        torch.distributed.destroy_process_group()
