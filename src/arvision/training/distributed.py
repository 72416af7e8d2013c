"""Data-parallel training under torchrun: NCCL on GPUs, gloo on CPUs.

Every rank draws the same global batch (same seeded permutation) and takes its slice, and the gradients are
averaged, so N processes with global batch B follow the same trajectory as one process with batch B.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from arvision.errors import ArvisionError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or (device is None and torch.cuda.is_available())
    if world <= 1:
        return DistInfo(device=torch.device("cuda" if want_cuda else (device or "cpu")))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        # a process that exits with the group alive can abort in gloo's teardown ("terminate called without an
        # active exception", seen in CI): leave it explicitly
        atexit.register(_leave_group)
    return DistInfo(rank, world, local, dev)


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(batch_indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous slice of the global batch."""
    n = batch_indices.shape[0]
    if n % info.world:
        raise ArvisionError(f"global batch {n} must be divisible by the number of processes {info.world}")
    per = n // info.world
    return batch_indices[info.rank * per:(info.rank + 1) * per]


def epoch_order(n: int, epoch: int, seed: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batch(n: int, step: int, batch: int, seed: int) -> torch.Tensor:
    """Indices of the global batch of ``step``; epochs are consecutive permutations (the tail is dropped)."""
    per_epoch = n // batch
    if per_epoch == 0:
        raise ArvisionError(f"the dataset has {n} items, fewer than one batch of {batch}")
    epoch, k = divmod(step, per_epoch)
    return epoch_order(n, epoch, seed)[k * batch:(k + 1) * batch]


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= info.world
    return value
