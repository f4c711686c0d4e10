r"""Adaptive step-size DPM-Solver-12 and DPM-Solver-23 (Lu et al. 2022, arXiv:2206.00927, sec. 3.3 / Algorithm 4).

Each attempted step from ``s`` (half log-SNR ``lambda_s``) to ``t = t_lambda(lambda_s + h)`` computes a lower-order
solution ``x_low`` and a higher-order one ``x_high`` that share their model evaluations:

* order 2: ``x_low`` = DPM-Solver-1, ``x_high`` = DPM-Solver-2 (stage at ``r = 1/2``) -- 2 evaluations;
* order 3: ``x_low`` = DPM-Solver-2 with ``r_1 = 1/3``, ``x_high`` = DPM-Solver-3 (``r = 1/3, 2/3``) -- 3.

The error estimate is ``E = max_batch RMS((x_high - x_low)/delta)`` with
``delta = max(atol, rtol max(|x_low|, |x_prev|))`` (elementwise; ``x_prev`` the lower-order solution of the last
accepted step, initially ``x_T``). The step is accepted when ``E <= 1`` (then ``x <- x_high``: local
extrapolation), and in any case ``h <- min(theta h E^{-1/order}, lambda_end - lambda_s)``. Sampling stops when
``|s - t_end| <= t_err``. The coefficients of each attempt come from the same float64 tables as the fixed-step
singlestep solver (:func:`~sde_diffusion.solvers.dpm_solver._singlestep_table` with the embedded lower-order
update). After a rejection the model output at the unchanged ``(x, s)`` is reused, so a rejected attempt costs one
evaluation less than an accepted one (the reference code re-evaluates it).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from .base import Solver, register
from .dpm_solver import (
    STAGE_NODES,
    VARIANTS,
    _check_choice,
    _logs,
    _singlestep_table,
    final_update,
    run_singlestep_stages,
)

__all__ = ["DPMSolverAdaptive"]

#: stage nodes of the embedded pairs: order 2 uses DPM-Solver-2's ``r = 1/2``, order 3 uses ``1/3, 2/3``
_NODES = {2: {1: STAGE_NODES[1], 2: STAGE_NODES[2]}, 3: {1: STAGE_NODES[1], 2: (0.0, 1.0 / 3.0), 3: STAGE_NODES[3]}}


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    return float(v)


def _rms_ratio(diff: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    v = (diff / delta).reshape(diff.shape[0], -1)
    return torch.sqrt(torch.mean(v.double() ** 2, dim=-1)).max()


@register("dpm_solver_adaptive")
class DPMSolverAdaptive(Solver):
    r"""Adaptive DPM-Solver-12 (``order=2``) / DPM-Solver-23 (``order=3``), Algorithm 4 of arXiv:2206.00927.

    Options: ``order`` (2 | 3), ``rtol`` (0.05), ``atol`` (0.0078, the paper's value for data in ``[-1, 1]``),
    ``theta`` (safety factor 0.9), ``t_err`` (stop within this time of ``t_end``; 1e-5), ``h_init`` (first trial
    step in lambda; 0.05), ``variant`` (the update rules, as :class:`~sde_diffusion.solvers.dpm_solver.DPMSolver`),
    ``max_steps`` (attempts before giving up).

    Order: the step control makes the error scale like the tolerance; against NFE the accepted higher-order
    solution converges with order ``order``. NFE: ``order`` per accepted attempt (``order - 1`` per rejected one:
    the first evaluation is reused); ``SampleResult.info`` holds ``nfe``, ``accepted``, ``rejected``. Memory: none.

    :meth:`solve` is its own loop (``sample(model, x, solver="dpm_solver_adaptive", rtol=...)`` dispatches to it). It
    is the only loop allowed to synchronise: once per attempted step it reads the error estimate ``E`` on the host.
    """

    adaptive = True
    exact_for_point_mass = True
    reference = "arXiv:2206.00927"
    kind = "eps"
    sign = 1

    def __init__(
        self,
        order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        theta: float = 0.9,
        t_err: float = 1e-5,
        h_init: float = 0.05,
        variant: str = "paper",
        max_steps: int = 10_000,
    ):
        if isinstance(order, bool) or order not in (2, 3):
            raise ValueError(f"order must be 2 or 3, got {order!r}")
        self.order = float(order)
        self.nfe_per_step = order
        self.rtol, self.atol = _positive("rtol", rtol), _positive("atol", atol)
        self.theta, self.t_err, self.h_init = (
            _positive("theta", theta),
            _positive("t_err", t_err),
            _positive("h_init", h_init),
        )
        self.variant = _check_choice("variant", variant, VARIANTS)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        self.max_steps = max_steps

    def options(self):
        return {
            "order": int(self.order),
            "rtol": self.rtol,
            "atol": self.atol,
            "theta": self.theta,
            "t_err": self.t_err,
            "h_init": self.h_init,
            "variant": self.variant,
            "max_steps": self.max_steps,
        }

    def attempt_coefficients(self, schedule, s: float, t: float, x: torch.Tensor) -> SimpleNamespace:
        """Float64 coefficients of one attempt ``s -> t`` (stages, ``x_high`` and the embedded ``x_low``)."""
        ts = torch.tensor([s, t], dtype=torch.float64)
        la, ls = _logs(schedule, ts)
        k = int(self.order)
        table = _singlestep_table(
            schedule, self.sign, self.variant, (k,), ts, la - ls, la, ls, nodes_of=_NODES[k], lower_order=True
        )
        c = {key: (int(v[0]) if key == "order" else float(v[0])) for key, v in table.items()}
        c.update(
            alpha=float(torch.exp(la[0])),
            sigma=float(torch.exp(ls[0])),
            t=torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device),
        )
        return SimpleNamespace(**c)

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
        """Run Algorithm 4 from ``t_start`` (default ``t_max``) to ``t_end`` (default ``t_min``).

        Synchronises once per attempted step (reading ``E``); everything else stays on the device. Raises
        :class:`~sde_diffusion.sample.NonFiniteError` if an estimate is not finite (when ``check_finite``) and
        ``RuntimeError`` after ``max_steps`` attempts.
        """
        from ..sample import NonFiniteError, SampleResult

        sch = model.schedule
        s = sch.t_max if t_start is None else float(t_start)
        t_end = sch.t_min if t_end is None else float(t_end)
        sch._check_t(torch.tensor([s, t_end], dtype=torch.float64))
        if not s > t_end:
            raise ValueError(f"t_start={s} must be larger than t_end={t_end}")

        def lam_of(t: float) -> float:
            return float(sch._lambda(torch.tensor(t, dtype=torch.float64)))

        lam_s, lam_end = lam_of(s), lam_of(t_end)
        k = int(self.order)
        nfe0 = model.nfe
        x, x_prev, first = x_T, x_T, None
        h = self.h_init
        times, trajectory = [s], ([x_T] if return_trajectory else None)
        accepted = rejected = 0
        while abs(s - t_end) > self.t_err:
            if accepted + rejected >= self.max_steps:
                raise RuntimeError(
                    f"dpm_solver_adaptive: no convergence after {self.max_steps} attempts (t = {s:.6g}, h = {h:.3g})"
                )
            lam_t = torch.tensor(lam_s + h, dtype=torch.float64)
            t = t_end if lam_s + h >= lam_end else float(sch._inverse_lambda(lam_t))
            c = self.attempt_coefficients(sch, s, t, x)
            outs = run_singlestep_stages(model, x, c, self.kind, k, first)
            x_high = final_update(c, x, outs, k)
            x_low = final_update(c, x, outs, k - 1, "_low")
            delta = torch.clamp(self.rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=self.atol)
            err = float(_rms_ratio(x_high - x_low, delta))  # the one synchronisation of this step
            if not math.isfinite(err):
                if check_finite:
                    raise NonFiniteError(accepted, s, t)
                err = math.inf
            if err <= 1.0:
                x, x_prev, s, lam_s, first = x_high, x_low, t, lam_of(t), None
                accepted += 1
                times.append(s)
                if trajectory is not None:
                    trajectory.append(x)
                if callback is not None:
                    callback(accepted - 1, torch.tensor(s, dtype=torch.float64), x)
            else:
                first = outs[0]
                rejected += 1
            h = min(self.theta * h * max(err, 1e-12) ** (-1.0 / k), lam_end - lam_s)
        if denoise_to_zero:
            la, ls = _logs(sch, torch.tensor(s, dtype=torch.float64))
            x = model.predict(
                x,
                torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device),
                "x0",
                math.exp(float(la)),
                math.exp(float(ls)),
            )
        nfe = model.nfe - nfe0
        return SampleResult(
            x=x,
            ts=torch.tensor(times, dtype=torch.float64),
            nfe=nfe,
            trajectory=trajectory,
            info={"nfe": nfe, "accepted": accepted, "rejected": rejected, "order": k},
        )
