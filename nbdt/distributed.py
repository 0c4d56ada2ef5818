"""Where a process runs: device choice, the torchrun process group, autocast, sharding.

Every command that runs a model (training, evaluation, node examples, fixes, compression) gets its
device here, without importing the trainer. Under ``torchrun`` the process joins the group (NCCL on
CUDA, gloo elsewhere); each rank then reads its own share of a dataset (:func:`shard`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class Process:
    """Where this process runs: device, rank and world size; ``distributed`` under torchrun."""

    device: torch.device
    rank: int = 0
    world: int = 1
    distributed: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum over processes (in place); a no-op outside torchrun."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor


def start_process(device_name: str | None) -> Process:
    """Pick the device and, under torchrun, join the process group (NCCL on CUDA, else gloo)."""
    if device_name is None:
        if torch.cuda.is_available():
            device_name = "cuda"
        elif torch.backends.mps.is_available():
            device_name = "mps"
        else:
            device_name = "cpu"
    try:
        device = torch.device(device_name)
    except RuntimeError:
        raise ValueError(
            f"unknown device {device_name!r} (--device: cuda, cuda:N, mps, cpu)"
        ) from None
    if "LOCAL_RANK" not in os.environ:  # not started by torchrun
        _check_device(device)
        return Process(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    _check_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(device, dist.get_rank(), dist.get_world_size(), distributed=True)


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available")


def loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader worker and pinning settings for ``workers`` processes feeding ``device``."""
    return {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing); none elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to :func:`amp_dtype` of the device (bf16 on CUDA) when ``enabled``; nothing
    where that has none: how training and evaluation both run a model."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def shard(
    dataset: torch.utils.data.Dataset, process: Process | tuple[int, int], *, equal: bool = False
) -> torch.utils.data.Subset:
    """This process's share of a dataset: every world-th item from its rank on, none twice, so
    that counts summed over the processes are exact. ``process`` is a :class:`Process` or
    ``(rank, world)``; ``equal`` cuts every share to one length, so that all processes take the
    same number of steps (the last ``len % world`` items are then left out)."""
    rank, world = (process.rank, process.world) if isinstance(process, Process) else process
    stop = len(dataset) // world * world if equal else len(dataset)
    return torch.utils.data.Subset(dataset, range(rank, stop, world))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
