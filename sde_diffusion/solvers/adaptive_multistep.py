r"""Adaptive step size for exponential multistep solvers (data prediction, variable nodes in lambda).

The step from ``lambda_n`` to ``lambda_{n+1} = lambda_n + h`` is the DPM-Solver++ multistep update
(Lu et al. 2022, arXiv:2211.01095) with *exact* weights for the actual, non-uniform nodes:

\[ x_{n+1} = \frac{\sigma_{n+1}}{\sigma_n} x_n + \alpha_{n+1} \sum_{j=0}^{q-1} W_j\, D_{n-j},
   \qquad W_j = \int_0^h e^{-(h-u)} L_j(u)\, du, \]

where ``D_m`` is the data prediction at ``lambda_m`` and ``L_j`` the Lagrange basis through the ``q`` newest nodes
``u_j = lambda_{n-j} - lambda_n`` (:func:`~sde_diffusion.solvers._expint.lagrange_weights` with ``sign = -1``).
With ``q`` nodes the local error is ``O(h^{q+1})`` and the global order ``q``; ``q`` ramps up ``1, 2, ..., order``.

**Error estimate, no extra NFE.** The difference of the order-``q`` and order-``(q-1)`` extrapolations through the
same history, ``err = alpha_{n+1} sum_j (W^{(q)}_j - W^{(q-1)}_j) D_{n-j}``, estimates the local error of the
lower-order member (``O(h^q)``); the step advances with the higher-order one (local extrapolation). It is formed
*before* the model is evaluated at the new point, so a rejected step costs no model evaluation and leaves the
history untouched: the retry simply recomputes the weights for the new ``h`` on the same (non-uniform) nodes --
nothing needs to be re-interpolated. The very first step has one node only; there the predictor
``x_1 = (sigma_1/sigma_0) x_0 - alpha_1 expm1(-h) D_0`` is compared with the corrector through ``D_0`` and
``D(x_1)`` (nodes ``u = 0, h``), an ``O(h^2)`` estimate whose model evaluation is reused by the next step when the
step is accepted (and wasted, and counted, when it is rejected).

**Controller** (PI, Gustafsson 1991; Hairer & Wanner, *Solving ODEs II*, IV.2) on the scaled error
``E = max_b rms(err / (atol + rtol max(|x_n|, |x_{n+1}|)))`` (per-sample RMS, worst sample of the batch):
accept when ``E <= 1`` and set

\[ h_{new} = h \cdot \mathrm{clip}\big(s\, E_n^{-b_1/p}\, E_{n-1}^{b_2/p},\ f_{min},\ f_{max}\big), \]

with ``p`` the order of the estimate (``q``; 2 on the first step), safety ``s = 0.9``, ``b_1 = 0.7``,
``b_2 = 0.4``, ``f_min = 0.2``, ``f_max = 2`` (``1`` right after a rejection). A rejected step retries with
``h min(0.9, max(f_min, s E^{-1/p}))`` (at least a 10% cut, so retries cannot stall).
The step ratio is bounded by ``f_max``, which keeps the variable-step multistep formula zero-stable. The last
step is shortened to land exactly on ``t_end`` (and a step that would leave a sliver of less than 10% of ``h`` is
stretched to land there).

Because ``E ~ tol`` controls an ``O(h^q)`` quantity while the accepted solution's local error is ``O(h^{q+1})``, the
global error is proportional to the tolerance ("tolerance proportionality"), and the number of steps grows
like ``tol^{-1/order}`` (both measured in ``tests/test_adaptive_multistep.py``).
"""

from __future__ import annotations

import math

import torch

from ..grids import validate_grid
from ._expint import lagrange_weights
from .base import Solver, lincomb, register

__all__ = ["AdaptiveMultistep", "pi_factor"]


def pi_factor(
    err: float, err_prev: float, p: float, *, safety: float, b1: float, b2: float, fac_min: float, fac_max: float
) -> float:
    """Step-size factor of the PI controller, ``safety E_n^{-b1/p} E_{n-1}^{b2/p}`` clipped to
    ``[fac_min, fac_max]``."""
    err = max(err, 1e-10)
    err_prev = max(err_prev, 1e-10)
    return min(fac_max, max(fac_min, safety * err ** (-b1 / p) * err_prev ** (b2 / p)))


def _weighted_sum(ws: list[float], ds: list[torch.Tensor]) -> torch.Tensor:
    out = torch.mul(ds[0], ws[0])
    for w, d in zip(ws[1:], ds[1:]):
        out.add_(d, alpha=w)
    return out


def _scaled_error(err: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    """``max_b rms(err / (atol + rtol max(|x|, |x_new|)))`` as a device scalar."""
    scale = torch.maximum(x.abs(), x_new.abs()).mul_(rtol).add_(atol)
    r = (err / scale).reshape(x.shape[0], -1)
    return r.square().mean(dim=1).sqrt().max()


@register("adaptive_multistep")
class AdaptiveMultistep(Solver):
    r"""Adaptive DPM-Solver++-type multistep solver in lambda with an embedded error estimate (no extra NFE).

    Args:
        order: 2 or 3 -- the number of nodes of the extrapolation (global order).
        rtol: relative tolerance of the scaled local error.
        atol: absolute tolerance of the scaled local error.
        h_init: first step in lambda (default ``min(Lambda/10, sqrt(max(rtol, atol))/2)``, ``Lambda`` the whole
            range in lambda; the first step's own estimate rejects it if it is too long).
        safety: controller safety factor ``s`` (see the module docstring).
        fac_min: smallest step-size factor.
        fac_max: largest step-size factor (also bounds the ratio of consecutive steps).
        b1: PI exponent on the current error (``E_n^{-b1/p}``).
        b2: PI exponent on the previous error (``E_{n-1}^{b2/p}``).
        max_steps: safety net on the number of attempted steps.

    1 NFE per accepted step (plus the initial evaluation and any rejected first-step attempts), memory ``order - 1``.
    ``SampleResult.info`` holds ``accepted``, ``rejected``, ``rejected_nfe``, the accepted ``h`` and the error
    estimates; ``SampleResult.ts`` the accepted times.
    """

    adaptive = True
    nfe_per_step = 1
    reference = "arXiv:2211.01095"

    def __init__(
        self,
        order: int = 3,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        h_init: float | None = None,
        safety: float = 0.9,
        fac_min: float = 0.2,
        fac_max: float = 2.0,
        b1: float = 0.7,
        b2: float = 0.4,
        max_steps: int = 100_000,
    ):
        if order not in (2, 3) or isinstance(order, bool):
            raise ValueError(f"order must be 2 or 3, got {order!r}")
        for name, v in (("rtol", rtol), ("atol", atol)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
        if rtol == 0 and atol == 0:
            raise ValueError("rtol and atol cannot both be zero")
        if h_init is not None and not (math.isfinite(h_init) and h_init > 0):
            raise ValueError(f"h_init must be positive, got {h_init!r}")
        if not (0 < safety <= 1 and 0 < fac_min < 1 < fac_max):
            raise ValueError("need 0 < safety <= 1 and 0 < fac_min < 1 < fac_max")
        self.k = order
        self.order = float(order)
        self.memory = order - 1
        self.rtol, self.atol, self.h_init = float(rtol), float(atol), h_init
        self.safety, self.fac_min, self.fac_max, self.b1, self.b2 = safety, fac_min, fac_max, b1, b2
        self.max_steps = int(max_steps)

    def options(self):
        return {
            "order": self.k,
            "rtol": self.rtol,
            "atol": self.atol,
            "h_init": self.h_init,
            "safety": self.safety,
            "fac_min": self.fac_min,
            "fac_max": self.fac_max,
            "b1": self.b1,
            "b2": self.b2,
        }

    def step(self, model, x, state, c, noise):
        raise TypeError("adaptive_multistep chooses its own steps: call sample(...) (it dispatches to solve)")

    def final_nfe(self, steps: int) -> int:
        """NFE of ``steps`` accepted steps without rejected first-step attempts: one initial evaluation, one per
        accepted step except the last, and one for the first step's corrector when it is also the last."""
        return steps + (1 if steps == 1 else 0)

    def _controller(self, err, err_prev, p, fac_max):
        return pi_factor(
            err, err_prev, p, safety=self.safety, b1=self.b1, b2=self.b2, fac_min=self.fac_min, fac_max=fac_max
        )

    def solve(
        self,
        model,
        x_T,
        *,
        t_start=None,
        t_end=None,
        denoise_to_zero=False,
        callback=None,
        return_trajectory=False,
        check_finite=True,
        generator=None,
        noise=None,
    ):
        """Integrate the probability-flow ODE from ``t_start`` to ``t_end`` with adaptive steps.

        **This loop synchronises with the device once per attempted step** (it reads the scaled error estimate,
        a scalar, to accept or reject the step); it is the only sampling loop that does. Everything else -- node
        times, weights, the controller -- is float64 host arithmetic.
        """
        from ..sample import NonFiniteError, SampleResult

        if noise is not None:
            raise ValueError("adaptive_multistep is deterministic: it takes no noise")
        sch = model.schedule
        t0 = sch.t_max if t_start is None else float(t_start)
        t1 = sch.t_min if t_end is None else float(t_end)
        validate_grid(sch, torch.tensor([t0, t1], dtype=torch.float64))

        def at(t: float):
            tt = torch.tensor(t, dtype=torch.float64)
            la, ls = float(sch._log_alpha(tt)), float(sch._log_sigma(tt))
            return math.exp(la), math.exp(ls), la - ls

        def t_dev(t: float) -> torch.Tensor:
            return torch.full((x_T.shape[0],), t, device=x_T.device, dtype=x_T.dtype)

        nfe0 = model.nfe
        a0, s0, lam0 = at(t0)
        lam_end = at(t1)[2]
        span = lam_end - lam0
        x = x_T
        hist = [(lam0, model.predict(x, t_dev(t0), "x0", a0, s0))]  # newest first: (lambda_j, D_j)
        t, a, s, lam = t0, a0, s0, lam0
        h = self.h_init if self.h_init is not None else min(span / 10, 0.5 * math.sqrt(max(self.rtol, self.atol)))
        err_prev, fac_max = 1.0, self.fac_max
        times, hs, errs = [t0], [], []
        trajectory = [x] if return_trajectory else None
        n_acc = n_rej = rej_nfe = 0
        for _attempt in range(self.max_steps):
            last = lam_end - lam - h < 0.1 * h  # land on t_end; never leave a sliver under 10% of h
            if last:
                t_next = t1
            else:
                t_next = float(sch._inverse_lambda(torch.tensor(lam + h, dtype=torch.float64)))
            a_n, s_n, lam_n = at(t_next)
            h_act = lam_n - lam
            q = min(self.k, len(hist))
            nodes = [d for _, d in hist[:q]]
            if q == 1:
                w1 = -math.expm1(-h_act)
                x_new = lincomb(s_n / s, x, a_n * w1, nodes[0])
                d_new = model.predict(x_new, t_dev(t_next), "x0", a_n, s_n)
                w2 = lagrange_weights([0.0, 1.0], h_act, -1).tolist()  # (float64 from Python floats)
                err = _weighted_sum([a_n * (w2[0] - w1), a_n * w2[1]], [nodes[0], d_new])
                p = 2.0
            else:
                r = torch.tensor([(lj - lam) / h_act for lj, _ in hist[:q]], dtype=torch.float64)
                hq = torch.tensor(h_act, dtype=torch.float64)
                wq = lagrange_weights(r, hq, -1).tolist()
                wl = lagrange_weights(r[:-1], hq, -1).tolist() + [0.0]
                x_new = lincomb(s_n / s, x, *[v for pair in zip([a_n * w for w in wq], nodes) for v in pair])
                err = _weighted_sum([a_n * (u - v) for u, v in zip(wq, wl)], nodes)
                d_new = None
                p = float(q)
            e = float(_scaled_error(err, x, x_new, self.rtol, self.atol))  # the one host sync of the step
            if not math.isfinite(e):
                if check_finite:
                    raise NonFiniteError(n_acc, t, t_next)
                e = 1.0
            if q == 1 and e > 1.0:
                rej_nfe += 1
            if e <= 1.0:
                n_acc += 1
                x, t, a, s, lam = x_new, t_next, a_n, s_n, lam_n
                times.append(t)
                hs.append(h_act)
                errs.append(e)
                if trajectory is not None:
                    trajectory.append(x)
                if callback is not None:
                    callback(n_acc - 1, torch.tensor(t, dtype=torch.float64), x)
                if last:
                    break
                if d_new is None:
                    d_new = model.predict(x, t_dev(t), "x0", a, s)
                hist = [(lam, d_new)] + hist[: self.k - 1]
                factor = self._controller(e, err_prev, p, fac_max)
                err_prev, fac_max = e, self.fac_max
                h = h_act * factor
            else:
                n_rej += 1
                h = h_act * min(0.9, max(self.fac_min, self.safety * e ** (-1.0 / p)))
                fac_max = 1.0
        else:
            raise RuntimeError(f"adaptive_multistep: no convergence within max_steps={self.max_steps} attempts")
        if denoise_to_zero:
            x = model.predict(x, t_dev(t1), "x0", a, s)
        nfe = model.nfe - nfe0
        info = {
            "accepted": n_acc,
            "rejected": n_rej,
            "rejected_nfe": rej_nfe,
            "nfe": nfe,
            "h": hs,
            "error_estimates": errs,
            "order": self.k,
            "rtol": self.rtol,
            "atol": self.atol,
        }
        return SampleResult(x=x, ts=torch.tensor(times, dtype=torch.float64), nfe=nfe, trajectory=trajectory, info=info)
