r"""Pseudo numerical methods: PNDM (S-PNDM, F-PNDM), PLMS and iPNDM.

Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (arXiv:2202.09778) split a
classical solver into a *gradient part* (how the noise predictions of several points are combined into one
``eps'``) and a *transfer part* (how ``x`` is moved with that ``eps'``). The transfer part is the DDIM step

\[ \phi(x_t, \epsilon', t \to s) = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s (e^{h} - 1)\, \epsilon',
   \qquad h = \lambda_s - \lambda_t, \]

i.e. :func:`~sde_diffusion.solvers.first_order.ddim_coefficients` with ``eta = 0``: the exact solution of the
probability-flow ODE when ``eps`` is frozen (exact for point-mass data; the property Liu et al. credit for keeping
samples near the data manifold at large steps -- ``docs/theory/pndm.md`` measures when it helps).
Gradient parts here:

* **pseudo linear multistep** (PLMS): Adams--Bashforth on the noise predictions of the previous grid points,
  ``eps' = sum_j b_j eps_{n-j}`` with the *fixed* (uniform-step) coefficients, e.g. ``(55, -59, 37, -9)/24``;
* **pseudo improved Euler** (S-PNDM's first step, PLMS's first step): ``eps' = (eps(x_t, t) + eps(x_pred, s))/2``
  with ``x_pred = phi(x_t, eps(x_t, t), t -> s)`` -- 2 NFE;
* **pseudo Runge--Kutta 4** (F-PNDM's first three steps): four evaluations, at ``t``, twice at the mid point and at
  ``s``, combined with weights ``(1, 2, 2, 1)/6`` -- 4 NFE.

In the variables ``y = x/alpha``, ``sigma_ve = sigma/alpha`` the transfer part is an Euler step
(``y_s = y_t + (sigma_ve(s) - sigma_ve(t)) eps'``), so the mid point is taken half-way in ``sigma_ve``; then the
pseudo-RK4 step *is* the classical RK4 step of ``dy/dsigma_ve = eps``.

Order (measured, see ``docs/theory/pndm.md`` and ``tests/test_pndm.py``): the Adams--Bashforth coefficients are
those of a uniform grid in ``sigma_ve``; on any other grid (a logSNR-uniform one in particular) they leave a
local defect of ``O(h^3)`` whatever the Adams--Bashforth order, so every PLMS/iPNDM/PNDM variant with
``order >= 2`` converges with global order **2**, not 4 (DEIS, arXiv:2204.13902, makes the same observation and
fixes it with exact variable-step weights).

Registered solvers:

| name | warm-up | NFE for ``N`` steps | memory |
|---|---|---|---|
| ``pndm`` (``variant="s"``) | pseudo improved Euler, then AB2 | ``N + 1`` | 1 |
| ``pndm`` (``variant="f"``) | 3 pseudo-RK4 steps, then AB4 | ``N + 3 min(N, 3)`` (9 extra) | 3 |
| ``plms`` | pseudo improved Euler, AB2, AB3, then AB4 | ``N + 1`` | 3 |
| ``ipndm`` (``order=k``) | AB1 (DDIM), AB2, ..., ABk | ``N`` | ``k - 1`` |

iPNDM is the "improved PNDM" of Zhang & Chen (DEIS, arXiv:2204.13902): PLMS whose first steps use lower-order
Adams--Bashforth formulas instead of extra model evaluations. ``ipndm`` with ``order=1`` is DDIM(eta=0).
"""

from __future__ import annotations

from functools import cache

import torch

from ._expint import lagrange_basis_coefficients
from .base import Solver, host_scalars, lincomb, register
from .first_order import ddim_coefficients

__all__ = ["PNDM", "PLMS", "IPNDM", "adams_bashforth", "RK4_WEIGHTS", "HEUN_WEIGHTS"]

#: per-step modes of the gradient part
MULTISTEP, HEUN, RK4 = 0, 1, 2
RK4_WEIGHTS = (1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0)
HEUN_WEIGHTS = (0.5, 0.5)


@cache
def adams_bashforth(k: int) -> tuple[float, ...]:
    r"""Adams--Bashforth coefficients of order ``k`` on a uniform grid, newest first:
    ``b_j = int_0^1 L_j(theta) d theta`` for the Lagrange basis through the nodes ``theta_j = -j``
    (the ``h -> 0`` limit of :func:`~sde_diffusion.solvers._expint.lagrange_weights` divided by ``h``).
    ``k = 4`` gives ``(55, -59, 37, -9)/24``."""
    if not 1 <= k <= 4:
        raise ValueError(f"Adams-Bashforth order must be 1..4, got {k}")
    a = lagrange_basis_coefficients(-torch.arange(k, dtype=torch.float64))
    moments = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    return tuple((a * moments).sum(-1).tolist())


def _half_sigma_ve_midpoint(schedule, base: dict) -> dict[str, torch.Tensor]:
    """Mid point of every step half-way in ``sigma_ve = exp(-lambda)``: its time, ``alpha``, ``sigma`` and the DDIM
    transfer coefficients from the step's start to it."""
    s_mid = 0.5 * (torch.exp(-base["lam"]) + torch.exp(-base["lam_next"]))
    t_mid = schedule._inverse_lambda(-torch.log(s_mid))
    log_a, log_s = schedule._log_alpha(t_mid), schedule._log_sigma(t_mid)
    a_mid, s_mid_ = torch.exp(log_a), torch.exp(log_s)
    half = {
        "h": (log_a - log_s) - base["lam"],
        "alpha": base["alpha"],
        "sigma": base["sigma"],
        "alpha_next": a_mid,
        "sigma_next": s_mid_,
    }
    d = ddim_coefficients(half, 0.0)
    return {"t_mid": t_mid, "alpha_mid": a_mid, "sigma_mid": s_mid_, "ratio_mid": d["ratio"], "c_eps_mid": d["c_eps"]}


def _device_time(v, x: torch.Tensor) -> torch.Tensor:
    """Model time input ``(B,)`` on ``x``'s device from a plan value (a float, or a per-sample ``(B, 1, ..)`` tensor),
    without a host-to-device copy (``new_full`` is a fill kernel)."""
    if isinstance(v, torch.Tensor):
        return v.reshape(-1)
    return x.new_full((x.shape[0],), v)


class _PseudoMultistep(Solver):
    """Shared machinery: a per-step plan of modes and Adams--Bashforth orders, DDIM transfer, history of
    ``ab_order - 1`` past noise predictions in the state (newest first)."""

    order = 2.0
    #: every update is a DDIM transfer of a combination of eps values, exact when eps is constant (point mass)
    exact_for_point_mass = True
    nfe_per_step = 1
    reference = "arXiv:2202.09778"
    #: Adams--Bashforth order of the steady state; the state keeps ``memory = ab_order - 1`` past outputs
    ab_order: int = 4
    memory: int = 3

    def _modes(self, n: int) -> list[tuple[int, int]]:
        """``(mode, ab_order)`` of each of ``n`` steps."""
        raise NotImplementedError

    def final_nfe(self, steps: int) -> int:
        extra = {MULTISTEP: 0, HEUN: 1, RK4: 3}
        return steps + sum(extra[m] for m, _ in self._modes(steps))

    def coefficients(self, schedule, ts, base):
        n = base["h"].shape[0]
        modes = self._modes(n)
        ddim = ddim_coefficients(base, 0.0)
        c_eps = ddim["c_eps"]
        width = max(
            4 if any(m == RK4 for m, _ in modes) else 0, 2 if any(m == HEUN for m, _ in modes) else 0, self.ab_order
        )
        table = torch.zeros(n, width, dtype=torch.float64)
        for i, (m, q) in enumerate(modes):
            row = adams_bashforth(q) if m == MULTISTEP else (HEUN_WEIGHTS if m == HEUN else RK4_WEIGHTS)
            table[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        table = table.reshape((n, width) + (1,) * (c_eps.ndim - 1))
        out = {
            "ratio": host_scalars(ddim["ratio"]),
            "c_eps": c_eps,
            "mode": torch.tensor([m for m, _ in modes], dtype=torch.int64),
            "q": torch.tensor([q for _, q in modes], dtype=torch.int64),
        }
        for j in range(width):
            out[f"w{j}"] = c_eps * table[:, j]
        if any(m == RK4 for m, _ in modes):
            out.update(_half_sigma_ve_midpoint(schedule, base))
            out["ratio_mid"] = host_scalars(out["ratio_mid"])
        return out

    def step(self, model, x, state, c, noise):
        e = model.predict(x, c.t, "eps", c.alpha, c.sigma)
        mode = c.mode
        if mode == MULTISTEP:
            q = c.q
            if q == 1:
                x_next = lincomb(c.ratio, x, c.w0, e)
            elif q == 2:
                x_next = lincomb(c.ratio, x, c.w0, e, c.w1, state[0])
            elif q == 3:
                x_next = lincomb(c.ratio, x, c.w0, e, c.w1, state[0], c.w2, state[1])
            else:
                x_next = lincomb(c.ratio, x, c.w0, e, c.w1, state[0], c.w2, state[1], c.w3, state[2])
        elif mode == HEUN:
            x_pred = lincomb(c.ratio, x, c.c_eps, e)
            e2 = model.predict(x_pred, c.t_next_dev, "eps", c.alpha_next, c.sigma_next)
            x_next = lincomb(c.ratio, x, c.w0, e, c.w1, e2)
        else:
            x_next = self._rk4(model, x, e, c)
        return x_next, ((e,) + state)[: self.memory]

    @staticmethod
    def _rk4(model, x, e1, c):
        """Pseudo-RK4: classical RK4 of ``dy/dsigma_ve = eps`` with every partial move a DDIM transfer."""
        t_mid = _device_time(c.t_mid, x)
        x1 = lincomb(c.ratio_mid, x, c.c_eps_mid, e1)
        e2 = model.predict(x1, t_mid, "eps", c.alpha_mid, c.sigma_mid)
        x2 = lincomb(c.ratio_mid, x, c.c_eps_mid, e2)
        e3 = model.predict(x2, t_mid, "eps", c.alpha_mid, c.sigma_mid)
        x3 = lincomb(c.ratio, x, c.c_eps, e3)
        e4 = model.predict(x3, c.t_next_dev, "eps", c.alpha_next, c.sigma_next)
        return lincomb(c.ratio, x, c.w0, e1, c.w1, e2, c.w2, e3, c.w3, e4)


@register("pndm")
class PNDM(_PseudoMultistep):
    r"""PNDM (Liu et al. 2022, arXiv:2202.09778): DDIM transfer part with a pseudo linear multistep gradient part.

    * ``variant="s"`` (S-PNDM): a pseudo improved-Euler first step (2 NFE), then the second-order pseudo linear
      multistep ``eps' = (3 eps_n - eps_{n-1})/2``. NFE ``N + 1``, memory 1.
    * ``variant="f"`` (F-PNDM): three pseudo-RK4 warm-up steps (4 NFE each), then the fourth-order pseudo linear
      multistep ``eps' = (55 eps_n - 59 eps_{n-1} + 37 eps_{n-2} - 9 eps_{n-3})/24``. NFE ``N + 9`` for ``N >= 3``
      (``4 N`` below), memory 3.

    Global order 2 on a logSNR-uniform grid (measured; the fixed Adams--Bashforth coefficients are exact only on a
    grid uniform in ``sigma_ve``).
    """

    def __init__(self, variant: str = "f"):
        if variant not in ("s", "f"):
            raise ValueError(f"variant must be 's' or 'f', got {variant!r}")
        self.variant = variant
        self.ab_order = 2 if variant == "s" else 4
        self.memory = self.ab_order - 1

    def options(self):
        return {"variant": self.variant}

    def _modes(self, n):
        if self.variant == "s":
            return [(HEUN, 1)] + [(MULTISTEP, 2)] * (n - 1)
        return [(RK4, 1)] * min(n, 3) + [(MULTISTEP, 4)] * (n - 3)


@register("plms")
class PLMS(_PseudoMultistep):
    r"""PLMS as in latent diffusion / diffusers (arXiv:2202.09778): a pseudo improved-Euler first step (2 NFE), then
    pseudo linear multistep of order 2, 3 and 4 (``eps' = (55 eps_n - 59 eps_{n-1} + 37 eps_{n-2} - 9 eps_{n-3})/24``
    from the fourth step on). NFE ``N + 1``, memory 3. Global order 2 on a logSNR-uniform grid (measured).
    """

    ab_order = 4
    memory = 3

    def _modes(self, n):
        return [(HEUN, 1)] + [(MULTISTEP, min(i + 1, 4)) for i in range(1, n)]


@register("ipndm")
class IPNDM(_PseudoMultistep):
    r"""iPNDM (Zhang & Chen, DEIS, arXiv:2204.13902): pseudo linear multistep with a lower-order warm start -- step
    ``i`` uses Adams--Bashforth of order ``min(i + 1, order)`` on the noise predictions, so no step spends an extra
    model evaluation. 1 NFE per step, memory ``order - 1``. ``order=1`` is DDIM(eta=0) (global order 1); for
    ``order >= 2`` the global order is 2 on a logSNR-uniform grid (measured).
    """

    reference = "arXiv:2204.13902"

    def __init__(self, order: int = 4):
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
            raise ValueError(f"order must be an int in 1..4, got {order!r}")
        self.ab_order = order
        self.memory = order - 1
        self.order = 1.0 if order == 1 else 2.0

    def options(self):
        return {"order": self.ab_order}

    def _modes(self, n):
        return [(MULTISTEP, min(i + 1, self.ab_order)) for i in range(n)]
