r"""DEIS: diffusion exponential integrator samplers (Zhang & Chen 2022, arXiv:2204.13902).

The probability-flow ODE \(\frac{\mathrm{d}x}{\mathrm{d}t} = f x + \frac{g^2}{2\sigma} \epsilon(x, t)\) has the
transition \(\Psi(s, t) = \alpha_s/\alpha_t\) of its linear part, and
\(\frac{g^2}{2\sigma} = \sigma \big(\frac{\mathrm{d}\log\sigma}{\mathrm{d}t} - f\big)
= -\sigma \frac{\mathrm{d}\lambda}{\mathrm{d}t}\), so variation of constants gives, for a step from \(t\) to \(s\) with
\(\rho = \sigma/\alpha = e^{-\lambda}\) (EDM's
\(\sigma\)):

\[x_s = \frac{\alpha_s}{\alpha_t} x_t + \int_t^s \frac{\alpha_s}{\alpha_\tau} \frac{g^2(\tau)}{2\sigma_\tau}
\epsilon(\tau)\, \mathrm{d}\tau
= \frac{\alpha_s}{\alpha_t} x_t + \alpha_s \int_{\rho_t}^{\rho_s} \epsilon\, \mathrm{d}\rho,\]

i.e. \(y = x/\alpha\) obeys \(\mathrm{d}y/\mathrm{d}\rho = \epsilon\). Every DEIS method (option ``method``)
approximates this integral:

* ``method="tab"`` (tAB-DEIS): \(\epsilon\) is replaced by its Lagrange polynomial **in t** through the last \(k\)
  grid times; the weights
  \(C_j = \int_t^s \Psi(s,\tau) \frac{g^2}{2\sigma} L_j(\tau)\, \mathrm{d}\tau =
  -\sigma_s \int_0^h e^{h-u} L_j\big(t(\lambda_t + u)\big)\, \mathrm{d}u\) have no closed form for general schedules and
  are computed by 32-point Gauss--Legendre quadrature in \(\lambda\) (float64, ``expint.exp_weighted_quadrature``; the
  constant part of \(L_0\) is integrated exactly, so tAB-1 *is* DDIM). Checked against the defining integral in sympy
  ([`sde_diffusion.symbolic.deis_tab_weights`][sde_diffusion.symbolic.deis_tab_weights]) to 1e-12.
* ``method="rhoab"`` (rhoAB-DEIS): Lagrange polynomial **in rho**, integrated exactly:
  \(C_j = \alpha_s \int_{\rho_t}^{\rho_s} L_j(\rho)\, \mathrm{d}\rho\) (``expint.lagrange_poly_weights``).
* ``method="logrho"``: Lagrange polynomial **in** \(\log\rho = -\lambda\):
  \(C_j = -\sigma_s \int_0^h e^{h-u} L_j(u)\, \mathrm{d}u\)
  -- the ``"deis"`` algorithm of diffusers' ``DEISMultistepScheduler``, and exactly multistep DPM-Solver with noise
  prediction and exact weights, ``DPMSolver(multistep=True, update="exact", lower_order_final=False)``, which
  computes it (one code path).
* ``method="rhork"`` (rhoRK-DEIS): an explicit Runge--Kutta method in \(\rho\) on
  \(\mathrm{d}y/\mathrm{d}\rho = \epsilon\): a Butcher tableau
  ([`ButcherTableau`][sde_diffusion.solvers.tableaux.ButcherTableau]) run by the one RK step of
  [`tableaux`][sde_diffusion.solvers.tableaux] with ``variable="sigma"`` (\(\rho\) is ``sigma_ve``).

All multistep methods are \(x_s = \frac{\alpha_s}{\alpha_t} x_t + \sum_j C_j \epsilon_{i-j}\) (the update of multistep
DPM-Solver, which runs them); order ``k`` multistep methods warm up with orders ``1, 2, ..`` on the first steps
([`step_orders`][sde_diffusion.solvers.warmup.step_orders]). With one node every method is DDIM(eta=0).
"""

from __future__ import annotations

import torch

from .base import Solver, host_scalars, register, vector_column
from .dpm_solver import DPMSolver, multistep_update
from .expint import exp_weighted_quadrature, lagrange_poly_weights, long_step_consistent
from .options import check_choice, check_int
from .tableaux import ButcherTableau, get_tableau, rk_coefficients, rk_layout, rk_step, tableau_name
from .warmup import step_orders

__all__ = ["DEIS", "deis_multistep_weights", "QUADRATURE_NODES", "METHODS"]

#: Gauss--Legendre nodes used for the tAB weights (per step; float64)
QUADRATURE_NODES = 32

METHODS = ("tab", "rhoab", "logrho", "rhork")


def _lagrange_eval(nodes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``L_j(x_q)`` for nodes ``(..., m)`` and points ``(..., Q)``: shape ``(..., m, Q)``."""
    m = nodes.shape[-1]
    out = []
    for j in range(m):
        lj = torch.ones_like(x)
        for i in range(m):
            if i != j:
                lj = lj * (x - nodes[..., i : i + 1]) / (nodes[..., j : j + 1] - nodes[..., i : i + 1])
        out.append(lj)
    return torch.stack(out, dim=-2)


def _past(values: torch.Tensor, idx: torch.Tensor, m: int) -> torch.Tensor:
    """``values[idx - j]`` for ``j = 0..m-1`` stacked last: ``(len(idx), [B], m)``."""
    return torch.stack([values[idx - j] for j in range(m)], dim=-1)


def deis_multistep_weights(ts: torch.Tensor, base, method: str, k: int, idx: torch.Tensor) -> torch.Tensor:
    r"""Weights \(C_j\) (\(j = 0..k-1\), node \(j\) = grid point \(i - j\)) of the tAB or rhoAB steps \(i\) in
    ``idx``, each using ``k`` nodes. Shape ``(len(idx), [B], k)``; float64. See the module docstring for the formulas.
    The weights sum to \(-\sigma_s \operatorname{expm1}(h)\), made exact in the step's own floats for long steps
    ([`long_step_consistent`][sde_diffusion.solvers.expint.long_step_consistent])."""
    lam = torch.cat([base["lam"], base["lam_next"][-1:]])
    h, sig_s = base["h"][idx], base["sigma_next"][idx]
    if method == "rhoab":
        rho = torch.exp(-lam)
        drho = rho[idx] * torch.expm1(-h)  # rho_{i+1} - rho_i without cancellation
        r = (_past(rho, idx, k) - rho[idx][..., None]) / drho[..., None]
        # alpha_s (rho_s - rho_t) = -sigma_s expm1(h), written without cancellation
        w = (-sig_s * torch.expm1(h))[..., None] * lagrange_poly_weights(r, torch.ones_like(h))
    elif method == "tab":
        nodes = _past(ts, idx, k)
        lam_t = lam[idx]
        delta0 = torch.zeros(k, dtype=torch.float64)
        delta0[0] = 1.0

        def remainder(u):  # L_j(t(lambda_t + u)) - L_j(t_i); the constant part is integrated exactly below
            tau = base.at_lambda(lam_t[..., None] + u).t
            return _lagrange_eval(nodes, tau) - delta0[:, None]

        rem = exp_weighted_quadrature(remainder, h, 1, QUADRATURE_NODES)
        w = -sig_s[..., None] * (torch.expm1(h)[..., None] * delta0 + rem)
    else:
        raise ValueError(f"no tAB/rhoAB weights for method {method!r}")
    a, s, a_next = base["alpha"][idx], base["sigma"][idx], base["alpha_next"][idx]
    return long_step_consistent(w, h, a_next / a, s, sig_s)


@register("deis")
class DEIS(Solver):
    r"""DEIS (Zhang & Chen 2022, arXiv:2204.13902): exponential integrators for the probability-flow ODE.

    Args:
        order: number of nodes of the multistep methods (1--3, default 3); for ``rhork`` it must be omitted or
            equal the tableau's order.
        method: ``"tab"`` (default; Lagrange in \(t\), weights by quadrature), ``"rhoab"`` (Lagrange in
            \(\rho = \sigma/\alpha\), exact weights), ``"logrho"`` (Lagrange in \(\log\rho\), \(\varphi\)-function
            weights; diffusers' DEIS), or ``"rhork"`` (Runge--Kutta in \(\rho\)).
        tableau: for ``rhork``: ``"euler"``, ``"heun"``, ``"kutta3"`` or ``"rk4"`` (default ``"rk4"``), or a
            [`ButcherTableau`][sde_diffusion.solvers.tableaux.ButcherTableau].

    * Multistep methods (``tab``, ``rhoab``, ``logrho``): global order ``k = order`` (Gaussian data with the
      closed-form flow; ``logrho``-3 on a Gaussian mixture, being super-convergent on Gaussian data:
      tests/test_deis.py), 1 NFE per step, memory \(k - 1\) past noise predictions. Steps ``0, 1, ..`` use
      ``1, 2, ..`` nodes (warm-up); strictly, the order-1 first step makes ``k = 3`` asymptotically second order,
      with a constant \(\sim e^{2 \lambda_{\min}}\) that stays below the bulk error at practical NFE
      (docs/theory/deis.md).
    * ``rhork``: order = the tableau's order, NFE per step = its number of stages (every step, the last included),
      memory 0.

    Equivalences: order 1 of ``tab``/``rhoab``/``logrho`` and ``rhork`` with ``euler`` are DDIM(eta=0)
    (= DPM-Solver-1 = Euler in \((x/\alpha, \sigma/\alpha)\)); ``logrho`` = multistep DPM-Solver with exact weights and
    = diffusers' ``DEISMultistepScheduler`` with ``algorithm_type="deis"`` (without its ``lower_order_final`` for
    fewer than 15 steps).
    """

    reference = "arXiv:2204.13902"
    exact_for_point_mass = True

    def __init__(self, order: int | None = None, method: str = "tab", tableau: str | ButcherTableau | None = None):
        self.method = check_choice("method", method, METHODS)
        self.tableau, self.layout, self._logrho = None, None, None
        if method == "rhork":
            self.tableau = get_tableau("rk4" if tableau is None else tableau)
            if order is not None and check_int("order", order) != self.tableau.order:
                raise ValueError(f"order={order!r} contradicts the tableau's order {self.tableau.order}")
            self.layout = rk_layout(self.tableau, "sigma")
            self.order, self.nfe_per_step, self.memory = float(self.tableau.order), self.tableau.stages, 0
        else:
            if tableau is not None:
                raise ValueError(f"tableau is only used by method 'rhork', not {method!r}")
            k = check_int("order", 3 if order is None else order, 1, 3)
            if method == "logrho":
                self._logrho = DPMSolver(order=k, multistep=True, update="exact", lower_order_final=False)
            self.order, self.nfe_per_step, self.memory = float(k), 1, k - 1

    def options(self):
        opts = {"order": int(self.order), "method": self.method}
        if self.tableau is not None:
            opts["tableau"] = tableau_name(self.tableau)
        return opts

    # ---- coefficients -------------------------------------------------------------------------------------------
    def coefficients(self, schedule, ts, base):
        if self.layout is not None:
            return rk_coefficients(self.layout, ts, base)
        if self._logrho is not None:
            return self._logrho.coefficients(schedule, ts, base)
        order = int(self.order)
        orders = torch.tensor(step_orders(order, ts.shape[0] - 1))
        out = {"order": orders, "ratio": host_scalars(base["alpha_next"] / base["alpha"])}
        ws = torch.zeros(base["h"].shape + (order,), dtype=torch.float64)
        for k in range(1, order + 1):
            idx = (orders == k).nonzero().flatten()
            if idx.numel():
                ws[idx, ..., :k] = deis_multistep_weights(ts, base, self.method, k, idx)
        out["w"] = vector_column(ws)
        return out

    # ---- one step -------------------------------------------------------------------------------------------------
    def step(self, model, x, state, c, noise):
        if self.layout is not None:
            return rk_step(model, x, c, self.layout), state
        return multistep_update(model, x, state, c, "eps", self.memory)
