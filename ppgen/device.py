r"""Where a fit or a query runs: one rule for `device=` everywhere (`"auto"`: CUDA where there is a GPU)."""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["resolve_device"]


def resolve_device(model: object, device: str | torch.device | None) -> torch.device | None:
    """Resolves `device` and moves `model` there (where it is a module): `"auto"` is CUDA
    where torch finds a GPU, else the CPU; `None` leaves the model where it is. Under
    `torchrun`, `"cuda"` is the process's own GPU (`LOCAL_RANK`).

    Raises:
        ValueError: For a device of another kind, or CUDA without a GPU.

    Example:
        >>> resolve_device(None, "cpu"), resolve_device(None, None)
        (device(type='cpu'), None)
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not {device!r}.")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} needs a CUDA GPU, and torch finds none here; use "
                "'cpu' or 'auto'."
            )
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process, under torchrun
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    if device is not None and isinstance(model, nn.Module):
        model.to(device)
    return torch.device(device) if device is not None else None
