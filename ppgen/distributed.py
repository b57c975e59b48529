r"""Training on several processes with PyTorch's own engine (`torch.distributed`, DDP).

Everything here applies only where a process group is initialised: by the caller, or by
:func:`init_from_env` when the script runs under `torchrun` (backend gloo on CPU, nccl on CUDA).
Without one, the fits run exactly as in a single process. See `docs/scaling.md`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "active",
    "all_reduce",
    "average_gradients",
    "init_from_env",
    "is_writer",
    "shard",
    "wrap",
]


def active() -> tuple[int, int] | None:
    """This process's `(rank, world_size)` in the initialised process group, else `None`.

    Example:
        >>> active() is None  # a plain single process
        True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def is_writer() -> bool:
    """Whether this process writes files, logs and progress bars: rank 0, or a lone process."""
    group = active()
    return group is None or group[0] == 0


def init_from_env(device: torch.device | None) -> None:
    """Initialises the process group from `torchrun`'s environment, where there is one.

    Nothing is done without the variables `WORLD_SIZE` (above 1) and `MASTER_ADDR`, or when a
    group is already initialised. The backend is nccl for CUDA devices, gloo otherwise.
    """
    if not dist.is_available() or dist.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return
    cuda = device is not None and device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")


def all_reduce(tensor: Tensor) -> Tensor:
    """Sums `tensor` over the ranks, in place, where a group is active; returns it."""
    if active() is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(order: Tensor) -> tuple[Tensor, int]:
    """This rank's share of an epoch's permutation of the rows, as `DistributedSampler` cuts it.

    Rank 0's permutation is broadcast (each rank draws its own first, so that the random
    streams stay in step with a single process's), padded to a multiple of the world size by
    repeating its head, and rank `r` takes positions `r, r + W, r + 2W, ...`. Batch `k` of
    `batch_size` rows on every rank together are thus batch `k` of `batch_size × W` rows of a
    single process drawing the same permutation.

    Returns:
        The rows of this rank, and the number of rows over all ranks (padding included).
    """
    group = active()
    if group is None:
        return order, len(order)
    rank, world = group
    dist.broadcast(order, src=0)
    total = -(-len(order) // world) * world
    padded = torch.cat([order, order[: total - len(order)]]) if total > len(order) else order
    return padded[rank::world], total


def wrap(objective: object, parameters: list[nn.Parameter]) -> tuple[object, list[nn.Parameter]]:
    """The objective in `DistributedDataParallel`, where it is a module holding parameters.

    DDP broadcasts rank 0's parameters and averages the gradients of the module's parameters
    over the ranks in `backward`. Trained parameters outside the module (Pyro's parameter
    store) are broadcast here, and returned: their gradients must be averaged with
    :func:`average_gradients` after each `backward`.
    """
    if active() is None:
        return objective, []
    own = set()
    if isinstance(objective, nn.Module):
        own = {id(p) for p in objective.parameters() if p.requires_grad}
    if own & {id(p) for p in parameters}:
        objective = DistributedDataParallel(objective, find_unused_parameters=True)
    rest = [p for p in parameters if id(p) not in own]
    with torch.no_grad():
        for p in rest:
            dist.broadcast(p.data, src=0)
    return objective, rest


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Averages the gradients of `parameters` over the ranks (a missing one counts as zero)."""
    group = active()
    if group is None or not parameters:
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= group[1]
