r"""Training on several processes with PyTorch's own engine (`torch.distributed`, DDP).

Everything here applies only where a process group is initialised: by the caller, or by
:func:`init_from_env` when the script runs under `torchrun` (backend gloo on CPU, nccl on CUDA).
Without one, the fits run exactly as in a single process. See `docs/scaling.md`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "Lockstep",
    "active",
    "all_reduce",
    "batch_rows",
    "init_from_env",
    "is_writer",
    "shard",
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
    if cuda and device.index is not None:  # nccl runs on the current device: this rank's GPU
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")


def all_reduce(tensor: Tensor) -> Tensor:
    """Sums `tensor` over the ranks, in place, where a group is active; returns it."""
    if active() is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(order: Tensor) -> tuple[Tensor, int]:
    """This rank's share of an epoch's permutation of the rows: `DistributedSampler`'s cut,
    without its padding.

    Rank 0's permutation is broadcast (each rank draws its own first, so that the random
    streams stay in step with a single process's), and rank `r` takes positions
    `r, r + W, r + 2W, ...`. Batch `k` of `batch_size` rows on every rank together are thus
    batch `k` of `batch_size × W` rows of a single process drawing the same permutation.
    Where `W` does not divide the rows, the last shares are one row short: `DistributedSampler`
    would repeat rows there, counting them twice; here every rank still takes the same number
    of steps (that of the longest share, see :func:`batch_rows`), and each row counts once.

    Returns:
        The rows of this rank, and the length of the longest share.
    """
    group = active()
    if group is None:
        return order, len(order)
    rank, world = group
    if len(order) < world:
        raise ValueError(f"{len(order)} rows cannot be shared by {world} processes.")
    if dist.get_backend() == "nccl" and order.device.type != "cuda":  # rows in host memory
        sent = order.to(torch.cuda.current_device())  # nccl sends CUDA tensors alone
        dist.broadcast(sent, src=0)
        order = sent.to(order.device)
    else:
        dist.broadcast(order, src=0)
    return order[rank::world], -(-len(order) // world)


def batch_rows(rows: int, start: int, batch_size: int) -> float:
    r"""The rows of the batch at positions `start : start + batch_size` of every rank's share of
    `rows` rows (:func:`shard`), over all ranks together, divided by the world size.

    A rank's loss is its batch's sum divided by this, so that DDP's average of the gradients
    over the ranks is the gradient of the mean over the global batch, also where a share is
    short or empty. In one process, it is the length of the batch.

    Example:
        >>> batch_rows(10, 8, 4)  # one process: the last batch has rows 8 and 9
        2
    """
    group = active()
    world = 1 if group is None else group[1]
    total = sum(max(0, min(batch_size, len(range(r, rows, world)) - start)) for r in range(world))
    return total if world == 1 else total / world


class _Alarmed(nn.Module):
    """The module DDP wraps: `loss`'s value with a zero parameter `alarm` added, or, where `loss`
    raised, `alarm` alone, so that the gradient of `alarm` is 1 on the failing rank."""

    def __init__(self, module: object, loss: Callable[..., tuple[Tensor, object]]) -> None:
        super().__init__()
        self.module = module if isinstance(module, nn.Module) else None
        self.loss, self.error = loss, None
        like = next(self.module.parameters(), None) if self.module is not None else None
        self.alarm = nn.Parameter(torch.zeros((), device=None if like is None else like.device))

    def forward(self, *inputs: object) -> tuple[Tensor, object]:
        try:
            loss, extra = self.loss(*inputs)
        except Exception as error:  # noqa: BLE001 -- raised on every rank by Lockstep.backward
            self.error = error
            return self.alarm * 1.0, None
        return loss + (self.alarm * 0.0).to(loss.dtype), extra


class Lockstep:
    r"""The loss of one training step, computed by `loss(*inputs) -> (loss, extra)` from the
    parameters of `module`, in `DistributedDataParallel` where a process group is active.

    In one process, calling it calls `loss`, and :meth:`backward` is `loss.backward()`.
    Under a process group, DDP (on the module with its parameters, after broadcasting rank 0's)
    averages the gradients over the ranks in `backward`; trained `parameters` outside the module
    (Pyro's parameter store) are broadcast here and their gradients averaged by :meth:`backward`.
    Where `loss` raises on one rank (a non-finite loss), the others would wait for it in DDP's
    all-reduce; instead that rank's output is a zero parameter `alarm` alone, whose gradient,
    1 there and 0 elsewhere, reaches every rank in DDP's own all-reduce. :meth:`backward` then
    raises on every rank the error of the first failing rank. A step that succeeds costs no
    extra collective: only failure gathers the error's message (`all_gather_object`).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> step = Lockstep(lambda x: (net(x).pow(2).mean(), None), net)
        >>> loss, _ = step(torch.ones(4, 2))
        >>> step.backward(loss)
        >>> net.weight.grad.shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        loss: Callable[..., tuple[Tensor, object]],
        module: object,
        parameters: Iterable[nn.Parameter] = (),
    ) -> None:
        self.loss, self.group = loss, active()
        own = {id(p) for p in module.parameters()} if isinstance(module, nn.Module) else set()
        self.outside = [p for p in parameters if id(p) not in own]
        if self.group is None:
            return
        self.alarmed = _Alarmed(module, loss)
        self.ddp = DistributedDataParallel(self.alarmed, find_unused_parameters=True)
        with torch.no_grad():
            for p in self.outside:
                dist.broadcast(p.data, src=0)

    def __call__(self, *inputs: object) -> tuple[Tensor, object]:
        return self.loss(*inputs) if self.group is None else self.ddp(*inputs)

    def backward(self, loss: Tensor) -> None:
        """Back-propagates `loss`, averaging the gradients over the ranks; raises on every rank
        together where the step failed on one."""
        loss.backward()
        if self.group is None:
            return
        alarm = self.alarmed.alarm
        if alarm.grad is not None and alarm.grad.item() != 0:
            self._raise()
        for p in self.outside:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.group[1]

    def _raise(self) -> None:
        error, self.alarmed.error = self.alarmed.error, None
        errors: list[tuple[bool, str] | None] = [None] * self.group[1]
        mine = None if error is None else (isinstance(error, ValueError), str(error))
        dist.all_gather_object(errors, mine)
        value, message = next(e for e in errors if e is not None)
        raise (ValueError if value else RuntimeError)(message) from error
