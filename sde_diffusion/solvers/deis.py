r"""DEIS: diffusion exponential integrator samplers (Zhang & Chen 2022, arXiv:2204.13902).

The probability-flow ODE ``dx/dt = f x + g^2/(2 sigma) eps(x, t)`` has the transition ``Psi(s, t) = alpha_s/alpha_t``
of its linear part, and ``g^2/(2 sigma) = sigma (d log sigma/dt - f) = -sigma d lambda/dt``, so variation of
constants gives, for a step from ``t`` to ``s`` with ``rho = sigma/alpha = e^{-lambda}`` (EDM's ``sigma``)::

    x_s = (alpha_s/alpha_t) x_t + int_t^s (alpha_s/alpha_tau) g^2(tau)/(2 sigma_tau) eps(tau) dtau
        = (alpha_s/alpha_t) x_t + alpha_s int_{rho_t}^{rho_s} eps drho,

i.e. ``y = x/alpha`` obeys ``dy/drho = eps``. Every DEIS variant approximates this integral:

* ``variant="tab"`` (tAB-DEIS): ``eps`` is replaced by its Lagrange polynomial **in t** through the last ``k``
  grid times; the weights ``C_j = int_t^s Psi(s,tau) g^2/(2 sigma) L_j(tau) dtau
  = -sigma_s int_0^h e^{h-u} L_j(t(lambda_t + u)) du`` have no closed form for general schedules and are
  computed by 32-point Gauss--Legendre quadrature in ``lambda`` (float64, ``_expint.exp_weighted_quadrature``;
  the constant part of ``L_0`` is integrated exactly, so tAB-1 *is* DDIM). Checked against the defining integral
  in sympy (:func:`sde_diffusion.symbolic.deis_tab_weights`) to 1e-12.
* ``variant="rhoab"`` (rhoAB-DEIS): Lagrange polynomial **in rho**, integrated exactly:
  ``C_j = alpha_s int_{rho_t}^{rho_s} L_j(rho) drho`` (``_expint.lagrange_poly_weights``).
* ``variant="logrho"``: Lagrange polynomial **in log rho = -lambda**: ``C_j = -sigma_s int_0^h e^{h-u} L_j(u) du``
  (``_expint.lagrange_weights``) -- the ``"deis"`` algorithm of diffusers' ``DEISMultistepScheduler``, and the
  Lagrange form of multistep DPM-Solver with noise prediction.
* ``variant="rhork"`` (rhoRK-DEIS): an explicit Runge--Kutta method in ``rho`` on ``dy/drho = eps``; the tableau is
  data (:class:`Tableau`) and one generic step (:func:`explicit_rk_step`) runs any of them.

All multistep variants are ``x_s = (alpha_s/alpha_t) x_t + sum_j C_j eps_{i-j}``; order ``k`` multistep methods
warm up with orders ``1, 2, ..`` on the first steps. With one node every variant is DDIM(eta=0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._expint import exp_weighted_quadrature, lagrange_poly_weights, lagrange_weights
from .base import Solver, lincomb, register

__all__ = ["DEIS", "Tableau", "TABLEAUS", "explicit_rk_step", "deis_multistep_weights", "QUADRATURE_NODES"]

#: Gauss--Legendre nodes used for the tAB weights (per step; float64)
QUADRATURE_NODES = 32


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau of an explicit Runge--Kutta method: stage ``i`` is evaluated at ``c[i]`` with increments
    ``A[i][j]`` (``j < i``); the step uses weights ``b``. ``order`` is the classical order."""

    A: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    @property
    def stages(self) -> int:
        return len(self.b)


TABLEAUS: dict[str, Tableau] = {
    "euler": Tableau(A=((),), b=(1.0,), c=(0.0,), order=1),
    "heun": Tableau(A=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2),
    "kutta3": Tableau(A=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 0.5, 1.0), order=3),
    "rk4": Tableau(
        A=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0), order=4
    ),
}


def explicit_rk_step(rhs, y: torch.Tensor, dt, tableau: Tableau) -> torch.Tensor:
    """One explicit Runge--Kutta step ``y + dt sum_i b_i k_i`` with ``k_i = rhs(i, y + dt sum_j A_ij k_j)``.

    ``rhs(i, y_i)`` evaluates stage ``i`` (it knows the stage's time ``c_i``); zero tableau entries cost nothing.
    """
    ks: list[torch.Tensor] = []
    for i in range(tableau.stages):
        ks.append(rhs(i, _accumulate(y, dt, tableau.A[i], ks)))
    return _accumulate(y, dt, tableau.b, ks)


def _accumulate(y, dt, coeffs, ks):
    """``y + dt sum_j coeffs_j k_j`` (zero coefficients skipped)."""
    pairs = [v for a, k in zip(coeffs, ks) if a != 0.0 for v in (dt * a, k)]
    return lincomb(1.0, y, *pairs) if pairs else y


_VARIANTS = ("tab", "rhoab", "logrho", "rhork")


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


def _step_orders(n: int, order: int) -> torch.Tensor:
    """Multistep warm-up: step ``i`` uses ``min(order, i + 1)`` nodes."""
    return torch.clamp(torch.arange(n) + 1, max=order)


def _past(values: torch.Tensor, idx: torch.Tensor, m: int) -> torch.Tensor:
    """``values[idx - j]`` for ``j = 0..m-1`` stacked last: ``(len(idx), [B], m)``."""
    return torch.stack([values[idx - j] for j in range(m)], dim=-1)


def deis_multistep_weights(
    schedule, ts: torch.Tensor, base: dict, variant: str, k: int, idx: torch.Tensor
) -> torch.Tensor:
    """Weights ``C_j`` (``j = 0..k-1``, node ``j`` = grid point ``i - j``) of the steps ``i`` in ``idx``, each
    using ``k`` nodes. Shape ``(len(idx), [B], k)``; float64. See the module docstring for the formulas."""
    lam = torch.cat([base["lam"], base["lam_next"][-1:]])
    h, sig_s = base["h"][idx], base["sigma_next"][idx]
    if variant == "logrho":
        r = (_past(lam, idx, k) - lam[idx][..., None]) / h[..., None]
        return -sig_s[..., None] * lagrange_weights(r, h, 1)
    if variant == "rhoab":
        rho = torch.exp(-lam)
        drho = rho[idx] * torch.expm1(-h)  # rho_{i+1} - rho_i without cancellation
        r = (_past(rho, idx, k) - rho[idx][..., None]) / drho[..., None]
        # alpha_s (rho_s - rho_t) = -sigma_s expm1(h), written without cancellation
        return (-sig_s * torch.expm1(h))[..., None] * lagrange_poly_weights(r, torch.ones_like(h))
    if variant == "tab":
        nodes = _past(ts, idx, k)
        lam_t = lam[idx]
        delta0 = torch.zeros(k, dtype=torch.float64)
        delta0[0] = 1.0

        def remainder(u):  # L_j(t(lambda_t + u)) - L_j(t_i); the constant part is integrated exactly below
            tau = schedule._inverse_lambda(lam_t[..., None] + u)
            return _lagrange_eval(nodes, tau) - delta0[:, None]

        rem = exp_weighted_quadrature(remainder, h, 1, QUADRATURE_NODES)
        return -sig_s[..., None] * (torch.expm1(h)[..., None] * delta0 + rem)
    raise ValueError(f"no multistep weights for variant {variant!r}")


def _time_arg(v, x: torch.Tensor) -> torch.Tensor:
    """A stage time as the model's ``(B,)`` device tensor: a float (shared grid) or a ``(B, 1, ..)`` tensor."""
    if isinstance(v, torch.Tensor):
        return v.reshape(-1)
    return torch.full((x.shape[0],), v, dtype=x.dtype, device=x.device)


@register("deis")
class DEIS(Solver):
    r"""DEIS (Zhang & Chen 2022, arXiv:2204.13902): exponential integrators for the probability-flow ODE.

    Args:
        order: number of nodes of the multistep variants (1--3, default 3); for ``rhork`` it must be omitted or
            equal the tableau's order.
        variant: ``"tab"`` (Lagrange in ``t``, weights by quadrature), ``"rhoab"`` (Lagrange in ``rho = sigma/alpha``,
            exact weights), ``"logrho"`` (Lagrange in ``log rho``, phi-function weights; diffusers' DEIS), or
            ``"rhork"`` (Runge--Kutta in ``rho``).
        tableau: for ``rhork``: ``"euler"``, ``"heun"``, ``"kutta3"`` or ``"rk4"`` (default ``"rk4"``), or a
            :class:`Tableau`.

    * Multistep variants (``tab``, ``rhoab``, ``logrho``): global order ``k = order`` (measured: Gaussian data with
      the closed-form flow; ``logrho``-3 on a Gaussian mixture, being super-convergent on Gaussian data), 1 NFE per
      step, memory ``k - 1`` past noise predictions. Steps ``0, 1, ..`` use ``1, 2, ..`` nodes (warm-up); strictly,
      the order-1 first step makes ``k = 3`` asymptotically second order, with a constant ~``e^{2 lambda_min}``
      that stays below the bulk error at practical NFE (docs/theory/deis.md).
    * ``rhork``: order = the tableau's order, NFE per step = its number of stages (every step, the last included),
      memory 0.

    Equivalences: order 1 of ``tab``/``rhoab``/``logrho`` and ``rhork`` with ``euler`` are DDIM(eta=0)
    (= DPM-Solver-1 = Euler in ``(x/alpha, sigma/alpha)``); ``logrho`` = diffusers' ``DEISMultistepScheduler`` with
    ``algorithm_type="deis"`` (without its ``lower_order_final`` for fewer than 15 steps).
    """

    reference = "arXiv:2204.13902"
    exact_for_point_mass = True

    def __init__(self, order: int | None = None, variant: str = "tab", tableau: str | Tableau | None = None):
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        self.variant = variant
        if variant == "rhork":
            tab = TABLEAUS["rk4"] if tableau is None else tableau
            if isinstance(tab, str):
                if tab not in TABLEAUS:
                    raise ValueError(f"tableau must be one of {tuple(TABLEAUS)} or a Tableau, got {tab!r}")
                tab = TABLEAUS[tab]
            if not isinstance(tab, Tableau):
                raise TypeError(f"tableau must be a name or a Tableau, got {type(tab).__name__}")
            if order is not None and order != tab.order:
                raise ValueError(f"order={order!r} contradicts the tableau's order {tab.order}")
            self.tableau = tab
            self.order, self.nfe_per_step, self.memory = float(tab.order), tab.stages, 0
        else:
            if tableau is not None:
                raise ValueError(f"tableau is only used by variant 'rhork', not {variant!r}")
            order = 3 if order is None else order
            if isinstance(order, bool) or order not in (1, 2, 3):
                raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
            self.tableau = None
            self.order, self.nfe_per_step, self.memory = float(order), 1, order - 1

    def options(self):
        opts = {"order": int(self.order), "variant": self.variant}
        if self.tableau is not None:
            opts["tableau"] = next((n for n, t in TABLEAUS.items() if t == self.tableau), self.tableau)
        return opts

    # ---- coefficients -------------------------------------------------------------------------------------------
    def coefficients(self, schedule, ts, base):
        if self.variant == "rhork":
            return self._rk_coefficients(schedule, ts, base)
        n = ts.shape[0] - 1
        order = int(self.order)
        ks = _step_orders(n, order)
        out = {"ratio": base["alpha_next"] / base["alpha"], "k": ks}
        ws = torch.zeros(base["h"].shape + (order,), dtype=torch.float64)
        for k in range(1, order + 1):
            idx = (ks == k).nonzero().flatten()
            if idx.numel():
                ws[idx, ..., :k] = deis_multistep_weights(schedule, ts, base, self.variant, k, idx)
        out.update({f"w{j}": ws[..., j] for j in range(order)})
        return out

    def _rk_coefficients(self, schedule, ts, base):
        lam = base["lam"]
        drho = torch.exp(-lam) * torch.expm1(-base["h"])  # rho_next - rho, without cancellation
        out = {"drho": drho}
        for i, ci in enumerate(self.tableau.c):
            if ci in (0.0, 1.0):
                continue  # the grid points themselves: c.t / c.t_next_dev, c.alpha / c.alpha_next
            lam_i = -torch.log(torch.exp(-lam) + ci * drho)
            t_i = schedule._inverse_lambda(lam_i)
            out[f"t{i}"] = t_i
            out[f"a{i}"] = torch.exp(schedule._log_alpha(t_i))
            out[f"s{i}"] = torch.exp(schedule._log_sigma(t_i))
        return out

    # ---- one step -------------------------------------------------------------------------------------------------
    def step(self, model, x, state, c, noise):
        if self.variant == "rhork":
            return self._rk_step(model, x, c), state
        eps = model.predict(x, c.t, "eps", c.alpha, c.sigma)
        pairs = [v for j in range(1, c.k) for v in (getattr(c, f"w{j}"), state[j - 1])]
        return lincomb(c.ratio, x, c.w0, eps, *pairs), ((eps,) + state)[: self.memory]

    def _rk_step(self, model, x, c):
        cs = self.tableau.c

        def rhs(i, y_i):
            if cs[i] == 0.0:
                t_i, a_i, s_i = c.t, c.alpha, c.sigma
            elif cs[i] == 1.0:
                t_i, a_i, s_i = c.t_next_dev, c.alpha_next, c.sigma_next
            else:
                t_i, a_i, s_i = _time_arg(getattr(c, f"t{i}"), x), getattr(c, f"a{i}"), getattr(c, f"s{i}")
            return model.predict(a_i * y_i, t_i, "eps", a_i, s_i)

        return c.alpha_next * explicit_rk_step(rhs, x / c.alpha, c.drho, self.tableau)
