r"""Restart sampling (Xu et al. 2023, arXiv:2306.14878): probability-flow ODE steps with forward-noise restarts.

The main run is EDM's Heun on the probability-flow ODE (in \(y = x/\alpha\), \(\sigma_{\rm ve}\); see
[`edm_stochastic`][sde_diffusion.solvers.edm_stochastic]). A restart interval \([\sigma_{\rm lo}, \sigma_{\rm hi}]\)
(VE noise levels) is attached to the main-grid point closest to \(\sigma_{\rm lo}\) (its level is the interval's actual
lower end \(\sigma_{\rm lo}'\)). After the main step that reaches it, \(K\) times:

1. jump forward: \(y \leftarrow y + \sqrt{\sigma_{\rm hi}^2 - \sigma_{\rm lo}'^2}\, z\) -- the exact forward
   transition, i.e. in the state \(x_{\rm hi} = \frac{\alpha_{\rm hi}}{\alpha_{\rm lo}} x_{\rm lo} +
   \alpha_{\rm hi} \sqrt{\sigma_{\rm hi}^2 - \sigma_{\rm lo}'^2}\, z\);
2. run \(n\) Heun steps of the ODE back from \(\sigma_{\rm hi}\) to \(\sigma_{\rm lo}'\) on a Karras grid
   (\(\rho = 7\)).

With an exact ODE the restarts leave the marginal unchanged (the forward jump is exact and the ODE maps
\(p_{\sigma_{\rm hi}}\) to \(p_{\sigma_{\rm lo}'}\)); they contract the error accumulated before \(\sigma_{\rm lo}'\),
at the price of the ODE error of the inner runs. Weak order 2 (Heun) when the inner runs are refined with the main grid
(``n`` a fraction of the step count, the default); with a fixed ``n`` their error is a floor (declared order 0). No
strong order (the restart noise is fresh normals, ``noise.normal(x, k)``). NFE: \(2N - 1\) for the main run plus
\(2 n K\) per interval. With \(K = 0\) (or no intervals) it is [`Heun`][sde_diffusion.solvers.classic.Heun] with
``variable="sigma"``.
"""

from __future__ import annotations

import math

import torch

from ..grids import family_lambdas
from .base import Solver, lincomb, matrix_column, register, vector_column
from .edm_stochastic import heun_sigma_coefficients, heun_sigma_step, model_time

__all__ = ["Restart", "DEFAULT_RESTART", "inner_steps"]

#: one interval ``(sigma_lo, sigma_hi, K, n)``: ``[0.1, 2]`` as in common Restart front ends, two restarts, inner runs
#: of a quarter of the main step count (so that the sampler converges as the grid is refined)
DEFAULT_RESTART = ((0.1, 2.0, 2, 0.25),)


def inner_steps(n: int | float, steps: int) -> int:
    r"""Inner Heun steps of a restart interval: ``n`` itself (an int) or
    \(\max(1, \mathrm{round}(n \cdot \mathrm{steps}))\) (a fraction \(0 < n \le 1\) of the main step count)."""
    return n if isinstance(n, int) else max(1, round(n * steps))


def _check_intervals(intervals) -> tuple[tuple[float, float, int, int | float], ...]:
    out = []
    for item in intervals:
        if len(item) != 4:
            raise ValueError(f"each restart interval is (sigma_lo, sigma_hi, K, n), got {item!r}")
        lo, hi, k, n = item
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"restart interval needs 0 < sigma_lo < sigma_hi < inf, got {item!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"restart K must be an int >= 0, got {k!r}")
        fraction = isinstance(n, float) and 0.0 < n <= 1.0
        if isinstance(n, bool) or not (fraction or (isinstance(n, int) and n >= 1)):
            raise ValueError(f"restart n must be an int >= 1 or a fraction in (0, 1] of the steps, got {n!r}")
        out.append((float(lo), float(hi), k, n))
    return tuple(out)


@register("restart")
class Restart(Solver):
    r"""Restart sampling (arXiv:2306.14878): see the module docstring.

    Options: ``intervals`` -- a tuple of ``(sigma_lo, sigma_hi, K, n)`` (VE noise levels ``sigma_ve``, restarts
    ``K``, inner Heun steps ``n``: an int, or a fraction of the main step count, see
    [`inner_steps`][sde_diffusion.solvers.restart.inner_steps]); default
    [`DEFAULT_RESTART`][sde_diffusion.solvers.restart.DEFAULT_RESTART]. Declared weak order 2 when every inner run is a
    fraction of the grid (refined with it); 0 when some interval has a fixed ``n`` (its inner ODE error does not shrink
    as the main grid is refined). Weak order 2, no strong order, NFE \(2N - 1 + \sum 2 n K\).
    """

    order = 2.0
    nfe_per_step = 2
    reference = "arXiv:2306.14878"

    def __init__(self, intervals=DEFAULT_RESTART):
        self.intervals = _check_intervals(intervals)
        self.order = 2.0 if all(k == 0 or isinstance(n, float) for _, _, k, n in self.intervals) else 0.0
        self.stochastic = any(k > 0 for _, _, k, _ in self.intervals)
        #: the restart normals of interval ``q`` are ``noise.normal(x, draw_offsets[q] + r)``, ``r < K_q``
        self.draw_offsets = [sum(k for _, _, k, _ in self.intervals[:q]) for q in range(len(self.intervals))]

    def options(self):
        return {"intervals": self.intervals}

    def final_nfe(self, steps):
        return 2 * steps - 1 + sum(2 * inner_steps(n, steps) * k for _, _, k, n in self.intervals)

    def coefficients(self, schedule, ts, table):
        """Main Heun steps (``a_x``, ``a_eps``), and the restart blocks as vectors over the intervals ``q``:
        ``rs_any[q]`` (host bool: some sample restarts after this step), ``rs_jx[q]``/``rs_jn[q]`` (the jump),
        ``rs_inner[q]`` (host int: inner steps ``n_q``) and matrices over ``(q, m)``: per inner point ``m <= n_q``
        ``rs_t[q][m], rs_a[q][m], rs_s[q][m]`` (time, alpha, sigma) and per inner step ``m < n_q`` the Heun
        coefficients ``rs_ax[q][m], rs_ae[q][m]`` (rows padded to the longest interval with finite values, never
        read). A sample whose grid attaches the interval to another step gets the identity there (jump ``1, 0``;
        ``a_x = 1, a_eps = 0``), so per-sample grids give every sample its own restarts. An interval whose
        ``sigma_hi`` is not above the grid level it attaches to is skipped (for that sample)."""
        la, ls = table.log_alpha, table.log_sigma
        lam = la - ls
        out = dict(zip(("a_x", "a_eps"), heun_sigma_coefficients(la[:-1], lam[:-1], la[1:], lam[1:])))
        shared = ts.ndim == 1
        ts2, la2, ls2 = (v[:, None] if shared else v for v in (ts, la, ls))
        lam2 = la2 - ls2
        n_steps, batch = ts2.shape[0] - 1, ts2.shape[1]
        cols = torch.arange(batch)
        inner = tuple(inner_steps(n, n_steps) for _, _, _, n in self.intervals)
        if not inner:
            return out
        n_max = max(inner)
        blocks: dict[str, list] = {key: [] for key in ("any", "jx", "jn", "t", "a", "s", "ax", "ae")}
        for (lo, hi, k, _), n in zip(self.intervals, inner):
            # main step ending nearest sigma_lo, per sample
            j = torch.argmin((-lam2[1:] - math.log(lo)).abs(), dim=0)
            lam_lo, lam_hi = lam2[j + 1, cols], -math.log(hi)
            valid = lam_hi < lam_lo  # else the grid never comes below sigma_hi: no restart for that sample
            starts = torch.where(valid, lam_hi, lam_lo - 1.0)  # (a harmless stand-in where not valid)
            lams = torch.stack([family_lambdas("karras", float(a), float(b), n) for a, b in zip(starts, lam_lo)], -1)
            p = table.at_lambda(lams)
            tt, lai, lsi = p.t.clone(), p.log_alpha.clone(), p.log_sigma.clone()
            # the inner run ends exactly on the main-grid point
            tt[-1], lai[-1], lsi[-1] = ts2[j + 1, cols], la2[j + 1, cols], ls2[j + 1, cols]
            lams = lai - lsi
            ix, ie = heun_sigma_coefficients(lai[:-1], lams[:-1], lai[1:], lams[1:])
            on = (torch.arange(n_steps)[:, None] == j[None, :]) & valid[None, :]  # (N, B)

            def col(v, off, on=on):
                v = torch.where(on, v.expand(on.shape), torch.as_tensor(off, dtype=torch.float64).expand(on.shape))
                return v[:, 0] if shared else v

            blocks["any"].append(on.any(1) & (k > 0))
            blocks["jx"].append(col(torch.exp(lai[0] - la2[j + 1, cols]), 1.0))
            jump = torch.exp(lai[0]) * torch.sqrt(torch.exp(-2.0 * lams[0]) - torch.exp(-2.0 * lam_lo))
            blocks["jn"].append(col(jump, 0.0))
            # off-block samples evaluate at their own next grid point (finite, unused); rows shorter than the
            # longest interval repeat their last point / step (never read)
            last = [min(m, n) for m in range(n_max + 1)]
            blocks["t"].append(torch.stack([col(tt[m], ts2[1:]) for m in last], -1))
            blocks["a"].append(torch.stack([col(torch.exp(lai[m]), torch.exp(la2[1:])) for m in last], -1))
            blocks["s"].append(torch.stack([col(torch.exp(lsi[m]), torch.exp(ls2[1:])) for m in last], -1))
            blocks["ax"].append(torch.stack([col(ix[min(m, n - 1)], 1.0) for m in range(n_max)], -1))
            blocks["ae"].append(torch.stack([col(ie[min(m, n - 1)], 0.0) for m in range(n_max)], -1))
        return out | {
            "rs_any": vector_column(torch.stack(blocks["any"], -1)),
            "rs_inner": vector_column(torch.tensor([inner] * n_steps)),
            "rs_jx": vector_column(torch.stack(blocks["jx"], -1)),
            "rs_jn": vector_column(torch.stack(blocks["jn"], -1)),
            "rs_t": matrix_column(torch.stack(blocks["t"], -2)),
            "rs_a": matrix_column(torch.stack(blocks["a"], -2)),
            "rs_s": matrix_column(torch.stack(blocks["s"], -2)),
            "rs_ax": matrix_column(torch.stack(blocks["ax"], -2)),
            "rs_ae": matrix_column(torch.stack(blocks["ae"], -2)),
        }

    def step(self, model, x, state, c, noise):
        x = heun_sigma_step(
            model, x, c.t, c.alpha, c.sigma, c.t_next, c.alpha_next, c.sigma_next, c.a_x, c.a_eps, c.last
        )
        for q, (_, _, k, _) in enumerate(self.intervals):
            if not c.rs_any[q]:
                continue
            jx, jn, tq, aq, sq, axq, aeq = (
                c.rs_jx[q],
                c.rs_jn[q],
                c.rs_t[q],
                c.rs_a[q],
                c.rs_s[q],
                c.rs_ax[q],
                c.rs_ae[q],
            )
            for r in range(k):
                x = lincomb(jx, x, jn, noise.normal(x, self.draw_offsets[q] + r))
                for m in range(c.rs_inner[q]):
                    x = heun_sigma_step(
                        model,
                        x,
                        model_time(c.t, tq[m]),
                        aq[m],
                        sq[m],
                        model_time(c.t, tq[m + 1]),
                        aq[m + 1],
                        sq[m + 1],
                        axq[m],
                        aeq[m],
                    )
        return x, state
