r"""Adaptive step size for exponential multistep solvers (data prediction, variable nodes in lambda).

The step from ``lambda_n`` to ``lambda_{n+1} = lambda_n + h`` is the DPM-Solver++ multistep update
(Lu et al. 2022, arXiv:2211.01095) with *exact* weights for the actual, non-uniform nodes:

\[ x_{n+1} = \frac{\sigma_{n+1}}{\sigma_n} x_n + \alpha_{n+1} \sum_{j=0}^{q-1} W_j\, D_{n-j},
   \qquad W_j = \int_0^h e^{-(h-u)} L_j(u)\, du, \]

where ``D_m`` is the data prediction at ``lambda_m`` and ``L_j`` the Lagrange basis through the ``q`` newest nodes
``u_j = lambda_{n-j} - lambda_n`` ([`lagrange_weights`][sde_diffusion.solvers.expint.lagrange_weights] with ``sign =
-1``). With ``q`` nodes the local error is ``O(h^{q+1})`` and the global order ``q``; ``q`` ramps up ``1, 2, ...,
order``.

**Error estimate, no extra NFE.** The difference of the order-``q`` and order-``(q-1)`` extrapolations through the
same history, ``err = alpha_{n+1} sum_j (W^{(q)}_j - W^{(q-1)}_j) D_{n-j}``, estimates the local error of the
lower-order member (``O(h^q)``); the step advances with the higher-order one (local extrapolation). It is formed
*before* the model is evaluated at the new point, so a rejected step costs no model evaluation and leaves the
history untouched: the retry simply recomputes the weights for the new ``h`` on the same (non-uniform) nodes --
nothing needs to be re-interpolated. The very first step has one node only; there the predictor
``x_1 = (sigma_1/sigma_0) x_0 - alpha_1 expm1(-h) D_0`` is compared with the corrector through ``D_0`` and
``D(x_1)`` (nodes ``u = 0, h``), an ``O(h^2)`` estimate whose model evaluation is reused by the next step when the
step is accepted (and wasted, and counted, when it is rejected).

**Controller.** The solver is the step with its embedded estimate; the step size is chosen by the one loop,
[`sample`][sde_diffusion.sample.sample], under its default controller
[`PIController`][sde_diffusion.solvers.controllers.PIController] (PI control on the scaled error
``E = max_b rms(err / (atol + rtol max(|x_n|, |x_{n+1}|)))`` with ``p`` the order of the estimate: ``q``, 2 on the
first step). The step ratio is bounded by ``fac_max``, which keeps the variable-step multistep formula zero-stable.
With ``controller=FixedGrid()`` it runs on any grid as a variable-step multistep method (``steps=``/``grid=``).

Because ``E ~ tol`` controls an ``O(h^q)`` quantity while the accepted solution's local error is ``O(h^{q+1})``, the
global error is proportional to the tolerance ("tolerance proportionality"), and the number of steps grows
like ``tol^{-1/order}`` (both measured in ``tests/test_adaptive_multistep.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import EmbeddedStep, Solver, lincomb, register
from .controllers import PIController, forwards_options_of, pi_factor
from .expint import lagrange_weights

__all__ = ["AdaptiveMultistep", "pi_factor"]


def _weighted_sum(ws: list[float], ds: list[torch.Tensor]) -> torch.Tensor:
    out = torch.mul(ds[0], ws[0])
    for w, d in zip(ws[1:], ds[1:]):
        out.add_(d, alpha=w)
    return out


@register("adaptive_multistep")
class AdaptiveMultistep(Solver):
    r"""Adaptive DPM-Solver++-type multistep solver in lambda with an embedded error estimate (no extra NFE).

    Args:
        order: 2 or 3 -- the number of nodes of the extrapolation (global order).
        **controller_options: the options of its default controller,
            [`PIController`][sde_diffusion.solvers.controllers.PIController] (validated there, keyword-only):
            ``rtol``, ``atol`` (1e-4 each), ``h_init``, ``safety``, ``fac_min``, ``fac_max``, ``b1``, ``b2``,
            ``max_steps``.

    1 NFE per accepted step (plus the initial evaluation and any rejected first-step attempts), memory ``order - 1``.
    State: ``(lams, outputs, current)`` -- the lambdas and data predictions of the newest nodes (newest first) and
    whether the newest is at the current point (otherwise the step evaluates the model there first).
    """

    adaptive = True
    embedded = True
    nfe_per_step = 1
    reference = "arXiv:2211.01095"

    @forwards_options_of(PIController)
    def __init__(self, order: int = 3, **controller_options: Any):
        if order not in (2, 3) or isinstance(order, bool):
            raise ValueError(f"order must be 2 or 3, got {order!r}")
        self.controller = PIController(**controller_options)
        self.k = order
        self.order = float(order)
        self.memory = order - 1

    def options(self):
        return {"order": self.k, **self.controller.options()}

    def default_controller(self) -> PIController:
        return self.controller

    def final_nfe(self, steps: int) -> int:
        """NFE of ``steps`` accepted steps without rejected first-step attempts: one initial evaluation, one per
        accepted step except the last, and one for the first step's corrector when it is also the last."""
        return steps + (1 if steps == 1 else 0)

    def coefficients(self, schedule, ts, table):
        if ts.ndim != 1:
            raise ValueError("adaptive_multistep needs one grid shared by the batch (its weights are host numbers)")
        return {}

    def init_state(self, x):
        return ((), (), False)

    def step(self, model, x, state, c, noise):
        lams, outs, current = state
        k = self.k
        if not current:
            d = model.predict(x, c.t, "x0", c.alpha, c.sigma)
            lams, outs = (c.lam,) + lams[: k - 1], (d,) + outs[: k - 1]
        retry = (lams, outs, True)
        q = min(k, len(outs))
        a_n, h = c.alpha_next, c.h
        if q == 1:
            # predictor x_1 = (sigma_1/sigma_0) x_0 - alpha_1 expm1(-h) D_0, corrector through D_0 and D(x_1)
            w1 = -math.expm1(-h)
            x_new = lincomb(c.sigma_next / c.sigma, x, a_n * w1, outs[0])
            d_new = model.predict(x_new, c.t_next, "x0", c.alpha_next, c.sigma_next)
            w2 = lagrange_weights([0.0, 1.0], h, -1).tolist()  # (float64 from Python floats)
            err = _weighted_sum([a_n * (w2[0] - w1), a_n * w2[1]], [outs[0], d_new])
            accepted = ((c.lam_next,) + lams[: k - 1], (d_new,) + outs[: k - 1], True)
            return EmbeddedStep(x_new, accepted, err, 2.0, retry)
        r = torch.tensor([(lj - c.lam) / h for lj in lams[:q]], dtype=torch.float64)
        hq = torch.tensor(h, dtype=torch.float64)
        wq = lagrange_weights(r, hq, -1).tolist()
        wl = lagrange_weights(r[:-1], hq, -1).tolist() + [0.0]
        nodes = list(outs[:q])
        x_new = lincomb(c.sigma_next / c.sigma, x, *[v for pair in zip([a_n * w for w in wq], nodes) for v in pair])
        err = _weighted_sum([a_n * (u - v) for u, v in zip(wq, wl)], nodes)
        return EmbeddedStep(x_new, (lams, outs, False), err, float(q), retry)
