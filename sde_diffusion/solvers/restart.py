r"""Restart sampling (Xu et al. 2023, arXiv:2306.14878): probability-flow ODE steps with forward-noise restarts.

The main run is EDM's Heun on the probability-flow ODE (in ``y = x/alpha``, ``sigma_ve``; see
:mod:`~sde_diffusion.solvers.edm_stochastic`). A restart interval ``[sigma_lo, sigma_hi]`` (VE noise levels) is
attached to the main-grid point closest to ``sigma_lo`` (its level is the interval's actual lower end
``sigma_lo'``). After the main step that reaches it, ``K`` times:

1. jump forward: ``y <- y + sqrt(sigma_hi^2 - sigma_lo'^2) z`` -- the exact forward transition, i.e. in the state
   ``x_hi = (alpha_hi/alpha_lo) x_lo + alpha_hi sqrt(sigma_hi^2 - sigma_lo'^2) z``;
2. run ``n`` Heun steps of the ODE back from ``sigma_hi`` to ``sigma_lo'`` on a Karras grid (``rho = 7``).

With an exact ODE the restarts leave the marginal unchanged (the forward jump is exact and the ODE maps
``p_{sigma_hi}`` to ``p_{sigma_lo'}``); they contract the error accumulated before ``sigma_lo'``, at the price of the
ODE error of the inner runs. Weak order 2 (Heun) when all grids are refined together; no strong order (the restart
noise is fresh normals, ``noise.normal(x, k)``). NFE: ``2N - 1`` for the main run plus ``2 n K`` per interval.
With ``K = 0`` (or no intervals) it is :class:`~sde_diffusion.solvers.classic.Heun` with ``variable="sigma"``.
"""

from __future__ import annotations

import math

import torch

from ..grids import family_lambdas
from .base import Solver, lincomb, register
from .edm_stochastic import heun_sigma_coefficients, heun_sigma_step, model_time

__all__ = ["Restart", "DEFAULT_RESTART"]

#: one interval ``(sigma_lo, sigma_hi, K, n)``: the automatic setting of common Restart front ends for short runs
DEFAULT_RESTART = ((0.1, 2.0, 2, 3),)


def _check_intervals(intervals) -> tuple[tuple[float, float, int, int], ...]:
    out = []
    for item in intervals:
        if len(item) != 4:
            raise ValueError(f"each restart interval is (sigma_lo, sigma_hi, K, n), got {item!r}")
        lo, hi, k, n = item
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"restart interval needs 0 < sigma_lo < sigma_hi < inf, got {item!r}")
        for name, v, least in (("K", k, 0), ("n", n, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"restart {name} must be an int >= {least}, got {v!r}")
        out.append((float(lo), float(hi), k, n))
    return tuple(out)


@register("restart")
class Restart(Solver):
    r"""Restart sampling (arXiv:2306.14878): see the module docstring.

    Options: ``intervals`` -- a tuple of ``(sigma_lo, sigma_hi, K, n)`` (VE noise levels ``sigma_ve``, restarts
    ``K``, inner Heun steps ``n``); default :data:`DEFAULT_RESTART`. Shared grids only (one grid for the batch).
    Weak order 2, no strong order, NFE ``2N - 1 + sum 2 n K``.
    """

    order = 2.0
    nfe_per_step = 2
    reference = "arXiv:2306.14878"

    def __init__(self, intervals=DEFAULT_RESTART):
        self.intervals = _check_intervals(intervals)
        self.stochastic = any(k > 0 for _, _, k, _ in self.intervals)

    def options(self):
        return {"intervals": self.intervals}

    def final_nfe(self, steps):
        return 2 * steps - 1 + sum(2 * n * k for _, _, k, n in self.intervals)

    def coefficients(self, schedule, ts, table):
        if ts.ndim != 1:
            raise ValueError("restart needs one grid shared by the batch")
        la, ls = table.log_alpha, table.log_sigma
        lam = la - ls
        a_x, a_eps = heun_sigma_coefficients(la[:-1], lam[:-1], la[1:], lam[1:])
        n_steps = ts.shape[0] - 1
        restarts: list = [() for _ in range(n_steps)]
        sig_grid = torch.exp(-lam)
        for lo, hi, k, n in self.intervals:
            if k == 0:
                continue
            j = int(torch.argmin((sig_grid[1:].log() - math.log(lo)).abs()))  # main step ending nearest sigma_lo
            lam_lo, lam_hi = float(lam[j + 1]), -math.log(hi)
            if lam_hi >= lam_lo:
                raise ValueError(f"restart sigma_hi={hi} is not above the grid level {math.exp(-lam_lo):.4g}")
            lams = family_lambdas("karras", lam_hi, lam_lo, n)
            p = table.at_lambda(lams)
            tt, lai, lsi = p.t.clone(), p.log_alpha.clone(), p.log_sigma.clone()
            # the inner run ends exactly on the main-grid point
            tt[-1], lai[-1], lsi[-1] = ts[j + 1], la[j + 1], ls[j + 1]
            lams = lai - lsi
            ix, ie = heun_sigma_coefficients(lai[:-1], lams[:-1], lai[1:], lams[1:])
            jump_x = float(torch.exp(lai[0] - la[j + 1]))
            jump_noise = float(torch.exp(lai[0]) * torch.sqrt(torch.exp(-2.0 * lams[0]) - torch.exp(-2.0 * lam[j + 1])))
            inner = [
                (float(tt[m]), float(torch.exp(lai[m])), float(torch.exp(lsi[m])), float(ix[m]), float(ie[m]))
                for m in range(n)
            ] + [(float(tt[n]), float(torch.exp(lai[n])), float(torch.exp(lsi[n])), 0.0, 0.0)]
            restarts[j] = restarts[j] + ((k, jump_x, jump_noise, tuple(inner)),)
        return {"a_x": a_x, "a_eps": a_eps, "restarts": restarts}

    def step(self, model, x, state, c, noise):
        x = heun_sigma_step(
            model, x, c.t, c.alpha, c.sigma, c.t_next, c.alpha_next, c.sigma_next, c.a_x, c.a_eps, c.last
        )
        draw = 0
        for k, jump_x, jump_noise, inner in c.restarts:
            for _ in range(k):
                x = lincomb(jump_x, x, jump_noise, noise.normal(x, draw))
                draw += 1
                for (ta, aa, sa, ax, ae), (tb, ab, sb, _, _) in zip(inner[:-1], inner[1:]):
                    x = heun_sigma_step(model, x, model_time(c.t, ta), aa, sa, model_time(c.t, tb), ab, sb, ax, ae)
        return x, state
