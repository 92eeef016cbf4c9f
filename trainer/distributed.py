"""Data-parallel training under ``torchrun`` (DistributedDataParallel), a no-op otherwise.

Every rank draws the same batch and the same input corruption from identically seeded
generators, then keeps its own slice of the rows; DDP averages the gradients. With equal slices
that is exactly the single-process step on the whole batch, so results do not depend on the
number of processes (tests/unit/trainer/test_distributed.py checks it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.enabled:
            return tensors
        return [t[self.rank :: self.world_size] for t in tensors]

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def init_from_env() -> DistributedContext:
    """Joins the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank)
