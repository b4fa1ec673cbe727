"""Data-parallel training under ``torchrun``: process group, device per rank, model wrapping, gathers.

Launched by ``torchrun --nproc_per_node N -m asasnn train ...``, each process reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment; without them everything here is a no-op
single process. Backend: NCCL when the rank has a GPU, gloo on CPU.

Per-rank state: the networks keep no state between forward calls (membrane potentials start at rest
in every multi-step forward), so nothing has to be reset between batches; what differs per rank is
the random state (dropout masks, data order shard), which the trainer seeds per rank and checkpoints
per rank.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU."""
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if pref == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return this rank's info and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device_pref)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_pref, info.local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=world)
    return info, device


def cleanup() -> None:
    """Leave the process group together: a rank that tears down gloo while its peer is still
    writing a checkpoint can abort ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum of per-rank floats (double precision on the CPU / the rank's device)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def wrap_model(net: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool, find_unused: bool) -> nn.Module:
    """DistributedDataParallel around ``net`` (optionally with SyncBatchNorm); ``net`` alone otherwise."""
    if not info.enabled:
        return net
    if sync_bn:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        else:
            warnings.warn("sync_bn needs CUDA; keeping per-rank BatchNorm on the CPU", stacklevel=2)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "init_distributed",
    "pick_device",
    "unwrap",
    "wrap_model",
]
