r"""Adaptive step-size DPM-Solver-12 and DPM-Solver-23 (Lu et al. 2022, arXiv:2206.00927, sec. 3.3 / Algorithm 4).

Each attempted step from ``s`` (half log-SNR ``lambda_s``) to ``t = t_lambda(lambda_s + h)`` computes a lower-order
solution ``x_low`` and a higher-order one ``x_high`` that share their model evaluations:

* order 2: ``x_low`` = DPM-Solver-1, ``x_high`` = DPM-Solver-2 (stage at ``r = 1/2``) -- 2 evaluations;
* order 3: ``x_low`` = DPM-Solver-2 with ``r_1 = 1/3``, ``x_high`` = DPM-Solver-3 (``r = 1/3, 2/3``) -- 3.

The step returns ``x_high`` (local extrapolation) with the error estimate ``x_high - x_low``; the step size is chosen
by the one loop, [`sample`][sde_diffusion.sample.sample], under the default controller
[`DPMSolverStepRule`][sde_diffusion.solvers.controllers.DPMSolverStepRule] (the paper's rule: ``E = max_batch
RMS((x_high - x_low)/delta)``, ``delta = max(atol, rtol max(|x_low|, |x_prev|))``, ``h <- min(theta h E^{-1/order},
lambda_end - lambda_s)``). The coefficients of each attempt come from the same float64 tables as the fixed-step
singlestep solver ([`singlestep_table`][sde_diffusion.solvers.dpm_solver.singlestep_table] with the embedded lower-order
update). After a rejection the model output at the unchanged ``(x, s)`` is reused (the retry state), so a rejected
attempt costs one evaluation less than an accepted one (the reference code re-evaluates it).
"""

from __future__ import annotations

from typing import Any

from .base import EmbeddedStep, Solver, register
from .controllers import DPMSolverStepRule, forwards_options_of
from .dpm_solver import STAGE_NODES, UPDATES, final_update, run_singlestep_stages, singlestep_table
from .options import check_choice

__all__ = ["DPMSolverAdaptive"]

#: stage nodes of the embedded pairs: order 2 uses DPM-Solver-2's ``r = 1/2``, order 3 uses ``1/3, 2/3``
_NODES = {2: {1: STAGE_NODES[1], 2: STAGE_NODES[2]}, 3: {1: STAGE_NODES[1], 2: (0.0, 1.0 / 3.0), 3: STAGE_NODES[3]}}


@register("dpm_solver_adaptive")
class DPMSolverAdaptive(Solver):
    r"""Adaptive DPM-Solver-12 (``order=2``) / DPM-Solver-23 (``order=3``), Algorithm 4 of arXiv:2206.00927.

    Options: ``order`` (2 | 3), ``update`` (the update rules, as
    [`DPMSolver`][sde_diffusion.solvers.dpm_solver.DPMSolver]) and, keyword-only, the options of its default controller
    [`DPMSolverStepRule`][sde_diffusion.solvers.controllers.DPMSolverStepRule] (validated there): ``rtol`` (0.05),
    ``atol`` (0.0078, the paper's value for data in ``[-1, 1]``), ``theta`` (safety factor 0.9), ``t_err`` (stop
    within this time of ``t_end``; 1e-5), ``h_init`` (first trial step in lambda; 0.05), ``max_steps`` (attempts
    before giving up).

    Order: the step control makes the error scale like the tolerance; against NFE the accepted higher-order
    solution converges with order ``order``. NFE: ``order`` per accepted attempt (``order - 1`` per rejected one:
    the first evaluation is reused); ``SampleResult.info`` holds ``nfe``, ``accepted``, ``rejected``. Memory: none.
    With ``controller=FixedGrid()`` it is DPM-Solver-``order`` on any grid.
    """

    adaptive = True
    embedded = True
    exact_for_point_mass = True
    reference = "arXiv:2206.00927"
    kind = "eps"
    sign = 1

    @forwards_options_of(DPMSolverStepRule)
    def __init__(self, order: int = 3, update: str = "paper", **controller_options: Any):
        if isinstance(order, bool) or order not in (2, 3):
            raise ValueError(f"order must be 2 or 3, got {order!r}")
        self.order = float(order)
        self.nfe_per_step = order
        self.controller = DPMSolverStepRule(**controller_options)
        self.update = check_choice("update", update, UPDATES)

    def options(self):
        return {"order": int(self.order), "update": self.update, **self.controller.options()}

    def default_controller(self) -> DPMSolverStepRule:
        return self.controller

    def coefficients(self, schedule, ts, base):
        k = int(self.order)
        return singlestep_table(base, self.sign, self.update, (k,) * (ts.shape[0] - 1), _NODES[k], lower_order=True)

    def init_state(self, x):
        return (None,)

    def step(self, model, x, state, c, noise):
        k = int(self.order)
        outs = run_singlestep_stages(model, x, c, self.kind, k, state[0])
        x_high = final_update(c, x, outs, k)
        x_low = final_update(c, x, outs, k - 1, low=True)
        return EmbeddedStep(x_high, (None,), x_high - x_low, float(k), (outs[0],))
