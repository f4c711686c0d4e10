r"""Time grids for sampling: decreasing sequences of ``steps + 1`` times from ``t_start`` to ``t_end``.

* ``time_uniform`` -- uniform in ``t``;
* ``time_quadratic`` -- uniform in ``sqrt(t)`` (DPM-Solver's choice for discrete-time models);
* ``logsnr`` -- uniform in the half log-SNR ``lambda`` (the natural variable of exponential integrators);
* ``karras`` -- ``sigma_ve^{1/rho}`` uniform (Karras et al. 2022, arXiv:2206.00364, ``rho = 7``).

All are computed in float64; the end points are exact (set, not computed) and the result is validated: strictly
monotone, inside the schedule's ``[t_min, t_max]``, no duplicates.
"""

from __future__ import annotations

import math

import torch

from .schedules import NoiseSchedule

__all__ = ["GRIDS", "make_grid", "validate_grid", "time_uniform", "time_quadratic", "logsnr", "karras"]


def _ends(schedule: NoiseSchedule, t_start, t_end) -> tuple[float, float]:
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    return t_start, t_end


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def _finish(schedule, ts: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    ts = ts.to(torch.float64).clone()
    ts[0], ts[-1] = t_start, t_end
    return validate_grid(schedule, ts, decreasing=t_start > t_end)


def time_uniform(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """Uniform in ``t``."""
    a, b = _ends(schedule, t_start, t_end)
    return _finish(schedule, torch.linspace(a, b, _check_steps(steps) + 1, dtype=torch.float64), a, b)


def time_quadratic(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """Uniform in ``sqrt(t)`` (needs ``t >= 0``)."""
    a, b = _ends(schedule, t_start, t_end)
    if min(a, b) < 0:
        raise ValueError("time_quadratic needs non-negative times")
    r = torch.linspace(math.sqrt(a), math.sqrt(b), _check_steps(steps) + 1, dtype=torch.float64)
    return _finish(schedule, r * r, a, b)


def logsnr(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    """Uniform in the half log-SNR ``lambda``."""
    a, b = _ends(schedule, t_start, t_end)
    lam = schedule.lambda_(torch.tensor([a, b], dtype=torch.float64))
    grid = torch.linspace(float(lam[0]), float(lam[1]), _check_steps(steps) + 1, dtype=torch.float64)
    return _finish(schedule, schedule.inverse_lambda(grid), a, b)


def karras(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None, rho: float = 7.0) -> torch.Tensor:
    """Uniform in ``sigma_ve^{1/rho}`` (EDM's grid; ``rho = 1`` is uniform in ``sigma_ve``)."""
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive number, got {rho!r}")
    a, b = _ends(schedule, t_start, t_end)
    s = schedule.sigma_ve(torch.tensor([a, b], dtype=torch.float64)) ** (1.0 / rho)
    r = torch.linspace(float(s[0]), float(s[1]), _check_steps(steps) + 1, dtype=torch.float64) ** rho
    return _finish(schedule, schedule.inverse_lambda(-torch.log(r)), a, b)


GRIDS = {"time_uniform": time_uniform, "time_quadratic": time_quadratic, "logsnr": logsnr, "karras": karras}


def validate_grid(schedule: NoiseSchedule, ts, *, decreasing: bool = True) -> torch.Tensor:
    """Check a grid of shape ``(N+1,)`` (or ``(N+1, B)``: one grid per sample) and return it as float64.

    Raises ``ValueError`` unless it has at least two points, is finite, strictly monotone in the required
    direction (which also rules out duplicates) and lies inside ``[t_min, t_max]`` (a relative slack of 1e-12 is
    allowed for round-off at the ends).
    """
    ts = torch.as_tensor(ts).detach().to(device="cpu", dtype=torch.float64)
    if ts.ndim not in (1, 2) or ts.shape[0] < 2:
        raise ValueError(f"grid must have shape (steps+1,) or (steps+1, batch) with steps >= 1, got {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("grid contains non-finite times")
    d = ts[1:] - ts[:-1]
    if bool((d == 0).any()):
        i = int((d == 0).nonzero()[0, 0])
        raise ValueError(f"grid has duplicate times at positions {i} and {i + 1} ({ts[i].tolist()})")
    ok = (d < 0) if decreasing else (d > 0)
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0, 0])
        word = "decreasing" if decreasing else "increasing"
        raise ValueError(f"grid must be strictly {word}; it is not between positions {i} and {i + 1}")
    slack = 1e-12 * max(1.0, abs(schedule.t_max), abs(schedule.t_min))
    lo, hi = float(ts.min()), float(ts.max())
    if lo < schedule.t_min - slack or hi > schedule.t_max + slack:
        raise ValueError(
            f"grid times must lie in [t_min, t_max] = [{schedule.t_min}, {schedule.t_max}] of {schedule!r}; "
            f"got [{lo}, {hi}]"
        )
    return ts


def make_grid(
    schedule: NoiseSchedule,
    grid="logsnr",
    steps: int | None = None,
    t_start=None,
    t_end=None,
    *,
    rho: float = 7.0,
    decreasing: bool = True,
) -> torch.Tensor:
    """A validated float64 grid from a name in :data:`GRIDS` or an explicit tensor of times.

    For an explicit tensor, ``steps``/``t_start``/``t_end`` are taken from it (when also given they must agree).
    ``decreasing=False`` builds the grid from ``t_end`` up to ``t_start`` order as given (used by inversion).
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; known grids: {', '.join(GRIDS)}")
        if steps is None:
            raise ValueError("steps is required with a named grid")
        if grid == "karras":
            return karras(schedule, steps, t_start, t_end, rho=rho)
        return GRIDS[grid](schedule, steps, t_start, t_end)
    if not isinstance(grid, (torch.Tensor, list, tuple)):
        raise TypeError(f"grid must be a name or a tensor of times, got {type(grid).__name__}")
    ts = validate_grid(schedule, grid, decreasing=decreasing)
    if steps is not None and _check_steps(steps) != ts.shape[0] - 1:
        raise ValueError(f"steps={steps} disagrees with the explicit grid of {ts.shape[0] - 1} steps")
    for name, want, got in (("t_start", t_start, ts[0]), ("t_end", t_end, ts[-1])):
        if want is not None and not bool(torch.all(got == float(want))):
            raise ValueError(f"{name}={want} disagrees with the explicit grid")
    return ts
