r"""The per-grid float64 table: everything a solver may know about the schedule on one grid.

A solver never calls a schedule. It receives a [`GridTable`][sde_diffusion.solvers.table.GridTable] built once per grid
(in float64, on the host, before the loop): ``lambda``, ``alpha``, ``sigma``, ``log alpha``, ``log sigma`` at every grid
point, the steps ``h = lambda_{i+1} - lambda_i``, the SDE coefficients ``f``/``g^2`` at the grid points (computed on
first use), and [`at_lambda`][sde_diffusion.solvers.table.GridTable.at_lambda], the map ``lambda -> (t, alpha, sigma)``
for stage points (``t`` the exact inverse of the half log-SNR, ``alpha``/``sigma`` evaluated at that ``t``, so that they
agree with what the model sees).

Per-step columns (shape ``(N,)`` for a shared grid, ``(N, B)`` for one grid per sample) are available both as
attributes and by key, so ``table["h"]`` and ``table.h`` are the same tensor:
``t, t_next, alpha, sigma, alpha_next, sigma_next, lam, lam_next, h``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..schedules import NoiseSchedule

__all__ = ["GridTable", "StagePoint", "STEP_COLUMNS"]

#: the per-step columns every table (and every step record) carries
STEP_COLUMNS = ("t", "t_next", "alpha", "sigma", "alpha_next", "sigma_next", "lam", "lam_next", "h")


@dataclass(frozen=True)
class StagePoint:
    """A point of the schedule given by its half log-SNR: its time ``t`` and ``log alpha``/``log sigma`` there
    (float64). Unpacks as ``t, alpha, sigma``; ``lam`` is recomputed from ``t`` (``log alpha - log sigma``), which is
    what a step from or to this point must use."""

    t: torch.Tensor
    log_alpha: torch.Tensor
    log_sigma: torch.Tensor

    @property
    def alpha(self) -> torch.Tensor:
        return torch.exp(self.log_alpha)

    @property
    def sigma(self) -> torch.Tensor:
        return torch.exp(self.log_sigma)

    @property
    def lam(self) -> torch.Tensor:
        return self.log_alpha - self.log_sigma

    def __iter__(self):
        return iter((self.t, self.alpha, self.sigma))


class GridTable:
    """Float64 schedule values on one grid ``ts`` (``(N+1,)`` or ``(N+1, B)``); see the module docstring."""

    def __init__(self, schedule: NoiseSchedule, ts: torch.Tensor):
        ts = torch.as_tensor(ts, dtype=torch.float64)
        self._schedule = schedule
        self.ts = ts
        self.log_alpha = schedule.log_alpha_unchecked(ts)
        self.log_sigma = schedule.log_sigma_unchecked(ts)
        self.lam_grid = self.log_alpha - self.log_sigma
        self.alpha_grid = torch.exp(self.log_alpha)
        self.sigma_grid = torch.exp(self.log_sigma)
        self.t, self.t_next = ts[:-1], ts[1:]
        self.alpha, self.alpha_next = self.alpha_grid[:-1], self.alpha_grid[1:]
        self.sigma, self.sigma_next = self.sigma_grid[:-1], self.sigma_grid[1:]
        self.lam, self.lam_next = self.lam_grid[:-1], self.lam_grid[1:]
        self.h = self.lam_next - self.lam

    @property
    def num_steps(self) -> int:
        return self.ts.shape[0] - 1

    @property
    def per_sample(self) -> bool:
        return self.ts.ndim == 2

    def at_lambda(self, lam: torch.Tensor | float) -> StagePoint:
        """The point with half log-SNR ``lam`` (any shape): ``t = inverse_lambda(lam)`` and the schedule there."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        t = self._schedule.inverse_lambda_unchecked(lam)
        return StagePoint(t, self._schedule.log_alpha_unchecked(t), self._schedule.log_sigma_unchecked(t))

    @cached_property
    def f_grid(self) -> torch.Tensor:
        """``f(t) = d log alpha/dt`` at every grid point."""
        return self._schedule.f_unchecked(self.ts)

    @cached_property
    def g2_grid(self) -> torch.Tensor:
        """``g^2(t)`` at every grid point."""
        return self._schedule.g2_unchecked(self.ts)

    # ---- mapping access to the per-step columns (``table["h"]``) ----------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in STEP_COLUMNS:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in STEP_COLUMNS

    def keys(self):
        return STEP_COLUMNS

    def __iter__(self):
        return iter(STEP_COLUMNS)

    def columns(self) -> dict[str, torch.Tensor]:
        """The per-step columns as a dict."""
        return {k: getattr(self, k) for k in STEP_COLUMNS}
