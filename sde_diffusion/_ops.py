"""Small tensor kernels shared by the model conversions and the solvers' hot paths."""

from __future__ import annotations

import torch

__all__ = ["lincomb", "axpy", "time_like"]


def lincomb(a, x: torch.Tensor, *pairs) -> torch.Tensor:
    """``a x + w_0 y_0 + w_1 y_1 + ...`` for ``pairs = (w_0, y_0, w_1, y_1, ...)`` in ``1 + len(pairs)/2`` kernels.

    The hot path of every linear update in the loop: one allocating multiply, then in-place accumulation
    (``add_(y, alpha=w)`` for a Python float ``w`` of a shared grid, ``addcmul_(w, y)`` for a per-sample coefficient
    tensor of shape ``(B, 1, ..., 1)``). ``a`` may be a float or such a tensor; ``a == 1.0`` (VE schedules) skips
    the multiply. Only the fresh result is written in place, so inputs, trajectories and autograd are unaffected.
    """
    tensor = torch.Tensor
    if pairs and not isinstance(a, tensor) and a == 1.0:
        w, y = pairs[0], pairs[1]
        out = torch.addcmul(x, w, y) if isinstance(w, tensor) else torch.add(x, y, alpha=w)
        pairs = pairs[2:]
    else:
        out = torch.mul(x, a)
    for i in range(0, len(pairs), 2):
        w = pairs[i]
        if isinstance(w, tensor):
            out.addcmul_(w, pairs[i + 1])
        else:
            out.add_(pairs[i + 1], alpha=w)
    return out


def axpy(x: torch.Tensor, a, y: torch.Tensor) -> torch.Tensor:
    """``x + a y`` in one fused kernel (``a`` a number, or a tensor broadcasting against ``y``)."""
    if isinstance(a, torch.Tensor):
        return torch.addcmul(x, a, y)
    return torch.add(x, y, alpha=a)


def time_like(t: torch.Tensor, value) -> torch.Tensor:
    """A model-time tensor shaped like ``t`` (``(B,)`` on the device) holding ``value``: a float of a shared grid
    (one fill kernel) or a per-sample coefficient tensor ``(B, 1, ..., 1)`` (a reshape). No host/device transfer."""
    if isinstance(value, torch.Tensor):
        return value.reshape(t.shape)
    return torch.full_like(t, value)
