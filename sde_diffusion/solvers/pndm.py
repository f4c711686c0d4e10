r"""Pseudo numerical methods: PNDM (S-PNDM, F-PNDM), PLMS and iPNDM.

Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (arXiv:2202.09778) split a
classical solver into a *gradient part* (how the noise predictions of several points are combined into one
\(\epsilon'\)) and a *transfer part* (how \(x\) is moved with that \(\epsilon'\)). The transfer part is the DDIM step

\[ \phi(x_t, \epsilon', t \to s) = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s (e^{h} - 1)\, \epsilon',
   \qquad h = \lambda_s - \lambda_t, \]

i.e. [`ddim_coefficients`][sde_diffusion.solvers.first_order.ddim_coefficients] with ``eta = 0``: the exact solution of
the
probability-flow ODE when \(\epsilon\) is frozen (exact for point-mass data; the property Liu et al. credit for keeping
samples near the data manifold at large steps -- ``docs/theory/pndm.md`` measures when it helps).
Gradient parts here:

* **pseudo linear multistep** (PLMS): Adams--Bashforth on the noise predictions of the previous grid points,
  \(\epsilon' = \sum_j b_j \epsilon_{n-j}\) with the *fixed* (uniform-step) coefficients, e.g.
  \((55, -59, 37, -9)/24\);
* **pseudo improved Euler** (S-PNDM's first step, PLMS's first step):
  \(\epsilon' = \tfrac12 \big(\epsilon(x_t, t) + \epsilon(x_{\rm pred}, s)\big)\) with
  \(x_{\rm pred} = \phi(x_t, \epsilon(x_t, t), t \to s)\) -- 2 NFE;
* **pseudo Runge--Kutta 4** (F-PNDM's first three steps): four evaluations, at \(t\), twice at the mid point and at
  \(s\), combined with weights \((1, 2, 2, 1)/6\) -- 4 NFE.

In the variables \(y = x/\alpha\), \(\sigma_{\rm ve} = \sigma/\alpha\) the transfer part is an Euler step
(\(y_s = y_t + (\sigma_{\rm ve}(s) - \sigma_{\rm ve}(t))\, \epsilon'\)), so the mid point is taken half-way in
\(\sigma_{\rm ve}\); then the pseudo-RK4 step *is* the classical RK4 step of
\(\mathrm{d}y/\mathrm{d}\sigma_{\rm ve} = \epsilon\) and the pseudo improved Euler step is Heun's:
both are their Butcher tableau run by the one RK step of [`tableaux`][sde_diffusion.solvers.tableaux].

Order (see ``docs/theory/pndm.md`` and ``tests/test_pndm.py``): the Adams--Bashforth coefficients are
those of a uniform grid in \(\sigma_{\rm ve}\); on any other grid (a logSNR-uniform one in particular) they leave a
local defect of \(O(h^3)\) whatever the Adams--Bashforth order, so every PLMS/iPNDM/PNDM variant with
``order >= 2`` converges with global order **2**, not 4 (DEIS, arXiv:2204.13902, makes the same observation and
fixes it with exact variable-step weights).

Registered solvers:

| name | warm-up | NFE for ``N`` steps | memory |
|---|---|---|---|
| ``pndm`` (``warmup="heun"``, S-PNDM) | pseudo improved Euler, then AB2 | ``N + 1`` | 1 |
| ``pndm`` (``warmup="rk4"``, F-PNDM) | 3 pseudo-RK4 steps, then AB4 | ``N + 3 min(N, 3)`` (9 extra) | 3 |
| ``plms`` | pseudo improved Euler, AB2, AB3, then AB4 | ``N + 1`` | 3 |
| ``ipndm`` (``ab_order=k``) | AB1 (DDIM), AB2, ..., ABk | ``N`` | ``k - 1`` |

iPNDM is the "improved PNDM" of Zhang & Chen (DEIS, arXiv:2204.13902): PLMS whose first steps use lower-order
Adams--Bashforth formulas instead of extra model evaluations. ``ipndm`` with ``ab_order=1`` is DDIM(eta=0).
"""

from __future__ import annotations

from functools import cache

import torch

from .base import Solver, host_scalars, register, vector_column
from .dpm_solver import multistep_update
from .expint import lagrange_basis_coefficients
from .first_order import ddim_coefficients
from .options import check_choice, check_int
from .tableaux import TABLEAUX, RKLayout, rk_coefficients, rk_layout, rk_step
from .warmup import step_orders

__all__ = ["PNDM", "PLMS", "IPNDM", "adams_bashforth"]

#: per-step modes: a pseudo linear multistep (Adams--Bashforth) step, or a pseudo Runge--Kutta warm-up step
MULTISTEP, RK = 0, 1


@cache
def adams_bashforth(k: int) -> tuple[float, ...]:
    r"""Adams--Bashforth coefficients of order ``k`` on a uniform grid, newest first:
    \(b_j = \int_0^1 L_j(\theta)\, \mathrm{d}\theta\) for the Lagrange basis through the nodes \(\theta_j = -j\)
    (the \(h \to 0\) limit of [`lagrange_weights`][sde_diffusion.solvers.expint.lagrange_weights] divided by \(h\)).
    \(k = 4\) gives \((55, -59, 37, -9)/24\)."""
    if not 1 <= k <= 4:
        raise ValueError(f"Adams-Bashforth order must be 1..4, got {k}")
    a = lagrange_basis_coefficients(-torch.arange(k, dtype=torch.float64))
    moments = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    return tuple((a * moments).sum(-1).tolist())


class _PseudoMultistep(Solver):
    """Shared machinery: a per-step plan of modes and Adams--Bashforth orders, DDIM transfer, history of
    ``ab_order - 1`` past noise predictions in the state (newest first). Pseudo-RK warm-up steps are the
    ``warmup`` tableau run in ``sigma_ve`` by [`rk_step`][sde_diffusion.solvers.tableaux.rk_step]."""

    order = 2.0
    #: every update is a DDIM transfer of a combination of eps values, exact when eps is constant (point mass)
    exact_for_point_mass = True
    nfe_per_step = 1
    reference = "arXiv:2202.09778"
    #: Adams--Bashforth order of the steady state; the state keeps ``memory = ab_order - 1`` past outputs
    ab_order: int = 4
    memory: int = 3
    #: the pseudo-RK warm-up tableau (None: no RK steps) and its step (set with it, never built inside ``step``)
    warmup: str | None = None
    _layout: RKLayout | None = None

    def _modes(self, n: int) -> list[tuple[int, int]]:
        """``(mode, ab_order)`` of each of ``n`` steps."""
        raise NotImplementedError

    def final_nfe(self, steps: int) -> int:
        extra = TABLEAUX[self.warmup].stages - 1 if self.warmup else 0
        return steps + sum(extra for m, _ in self._modes(steps) if m == RK)

    def coefficients(self, schedule, ts, base):
        n = base["h"].shape[0]
        modes = self._modes(n)
        ddim = ddim_coefficients(base, 0.0)
        c_eps = ddim["c_eps"]
        table = torch.zeros(n, self.ab_order, dtype=torch.float64)
        for i, (m, q) in enumerate(modes):
            if m == MULTISTEP:
                table[i, :q] = torch.tensor(adams_bashforth(q), dtype=torch.float64)
        table = table.reshape((n,) + (1,) * (c_eps.ndim - 1) + (self.ab_order,))
        out = {
            "ratio": host_scalars(ddim["ratio"]),
            "mode": torch.tensor([m for m, _ in modes], dtype=torch.int64),
            "order": torch.tensor([q for _, q in modes], dtype=torch.int64),
            "w": vector_column(c_eps[..., None] * table),
        }
        if any(m == RK for m, _ in modes):
            out.update(rk_coefficients(self._layout, ts, base))
        return out

    def step(self, model, x, state, c, noise):
        if c.mode == MULTISTEP:
            return multistep_update(model, x, state, c, "eps", self.memory)
        e = model.predict(x, c.t, "eps", c.alpha, c.sigma)
        return rk_step(model, x, c, self._layout, first=e), ((e,) + state)[: self.memory]


@register("pndm")
class PNDM(_PseudoMultistep):
    r"""PNDM (Liu et al. 2022, arXiv:2202.09778): DDIM transfer part with a pseudo linear multistep gradient part,
    after pseudo Runge--Kutta warm-up steps that fill its history.

    * ``warmup="rk4"`` (default; F-PNDM): three pseudo-RK4 warm-up steps (4 NFE each), then the fourth-order pseudo
      linear multistep \(\epsilon' = (55 \epsilon_n - 59 \epsilon_{n-1} + 37 \epsilon_{n-2} - 9 \epsilon_{n-3})/24\).
      NFE \(N + 9\) for \(N \ge 3\) (\(4 N\) below), memory 3.
    * ``warmup="heun"`` (S-PNDM): one pseudo improved-Euler (Heun) step (2 NFE), then the second-order pseudo linear
      multistep \(\epsilon' = (3 \epsilon_n - \epsilon_{n-1})/2\). NFE \(N + 1\), memory 1.

    Global order 2 on a logSNR-uniform grid (the fixed Adams--Bashforth coefficients are exact only on a grid
    uniform in \(\sigma_{\rm ve}\); measured slopes in docs/theory/pndm.md).
    """

    def __init__(self, warmup: str = "rk4"):
        self.warmup = check_choice("warmup", warmup, ("rk4", "heun"))
        self._layout = rk_layout(TABLEAUX[warmup], "sigma")
        self.ab_order = TABLEAUX[warmup].order
        self.memory = self.ab_order - 1

    def options(self):
        return {"warmup": self.warmup}

    def _modes(self, n):
        k = self.ab_order
        return [(RK, 1)] * min(n, k - 1) + [(MULTISTEP, k)] * (n - k + 1)


@register("plms")
class PLMS(_PseudoMultistep):
    r"""PLMS as in latent diffusion / diffusers (arXiv:2202.09778): a pseudo improved-Euler (Heun) first step
    (2 NFE), then pseudo linear multistep of order 2, 3 and 4
    (\(\epsilon' = (55 \epsilon_n - 59 \epsilon_{n-1} + 37 \epsilon_{n-2} - 9 \epsilon_{n-3})/24\) from the fourth step
    on). NFE \(N + 1\), memory 3. Global order 2 on a logSNR-uniform grid
    (docs/theory/pndm.md).
    """

    ab_order = 4
    memory = 3
    warmup = "heun"
    _layout = rk_layout(TABLEAUX["heun"], "sigma")

    def _modes(self, n):
        return [(RK, 1)] + [(MULTISTEP, q) for q in step_orders(4, n)[1:]]


@register("ipndm")
class IPNDM(_PseudoMultistep):
    r"""iPNDM (Zhang & Chen, DEIS, arXiv:2204.13902): pseudo linear multistep with a lower-order warm start -- step
    \(i\) uses Adams--Bashforth of order \(\min(i + 1, \mathtt{ab\_order})\) on the noise predictions
    ([`step_orders`][sde_diffusion.solvers.warmup.step_orders]), so no step spends an extra model evaluation.
    1 NFE per step, memory ``ab_order - 1``. ``ab_order=1`` is DDIM(eta=0) (global order 1); for ``ab_order >= 2``
    the global ``order`` is 2 on a logSNR-uniform grid (docs/theory/pndm.md).
    """

    reference = "arXiv:2204.13902"

    def __init__(self, ab_order: int = 4):
        self.ab_order = check_int("ab_order", ab_order, 1, 4)
        self.memory = self.ab_order - 1
        self.order = 1.0 if self.ab_order == 1 else 2.0

    def options(self):
        return {"ab_order": self.ab_order}

    def _modes(self, n):
        return [(MULTISTEP, q) for q in step_orders(self.ab_order, n)]
