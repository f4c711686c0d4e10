r"""Classical integrators applied directly to the probability-flow ODE and the reverse SDE.

* ``euler``, ``heun`` -- explicit Runge--Kutta on the PF-ODE, either in \(t\)
  (\(\mathrm{d}x/\mathrm{d}t = f x - \tfrac12 g^2 \nabla_x \log p_t\), ``variable="t"``) or in EDM's variables
  \(y = x/\alpha\), \(\sigma_{\rm ve} = \sigma/\alpha\) (\(\mathrm{d}y/\mathrm{d}\sigma_{\rm ve} = \epsilon\),
  ``variable="sigma"``, arXiv:2206.00364). Euler in \(\sigma_{\rm ve}\) *is* DDIM(eta=0). Both are
  their Butcher tableau run by the one RK step of [`tableaux`][sde_diffusion.solvers.tableaux].
* ``euler_maruyama`` -- on the reverse SDE
  \(\mathrm{d}x = [f x - g^2 \nabla_x \log p_t]\, \mathrm{d}t + g\, \mathrm{d}\bar W\).
* ``pc`` -- predictor-corrector sampling (Song et al. 2021, arXiv:2011.13456): a reverse-diffusion or
  Euler--Maruyama predictor with Langevin corrector steps at signal-to-noise ratio ``snr``.
"""

from __future__ import annotations

import torch

from .base import Solver, host_scalars, lincomb, register
from .options import check_choice, check_int, check_positive
from .tableaux import TABLEAUX, rk_coefficients, rk_layout, rk_step

__all__ = ["Euler", "Heun", "EulerMaruyama", "PredictorCorrector"]


def _ode_coefficients(ts, base):
    """``dt``, ``f`` and ``g2`` at the start of each step (Euler--Maruyama)."""
    return {"dt": ts[1:] - ts[:-1], "f": base.f_grid[:-1], "g2": base.g2_grid[:-1]}


class _PFODE(Solver):
    """An explicit Runge--Kutta method (its tableau is the class's ``tableau``) on the PF-ODE in ``t`` or in
    ``sigma_ve``: [`rk_coefficients`][sde_diffusion.solvers.tableaux.rk_coefficients] and
    [`rk_step`][sde_diffusion.solvers.tableaux.rk_step]."""

    tableau: str = "euler"

    def __init__(self, variable: str = "t"):
        self.variable = check_choice("variable", variable, ("t", "sigma"))
        self.layout = rk_layout(TABLEAUX[self.tableau], self.variable)
        # in sigma_ve the right-hand side epsilon is constant along a point-mass flow, so every RK step is exact
        # (a subclass that declares the flag on its class keeps its declaration)
        self.exact_for_point_mass = self.variable == "sigma" or type(self).exact_for_point_mass

    def options(self):
        return {"variable": self.variable}

    def coefficients(self, schedule, ts, base):
        return rk_coefficients(self.layout, ts, base)

    def step(self, model, x, state, c, noise):
        return rk_step(model, x, c, self.layout), state


@register("euler")
class Euler(_PFODE):
    """Explicit Euler on the probability-flow ODE. Order 1, 1 NFE per step. ``variable="sigma"`` equals DDIM(0)."""

    order = 1.0
    nfe_per_step = 1
    reference = "arXiv:2011.13456"
    tableau = "euler"


@register("heun")
class Heun(_PFODE):
    r"""Heun's method (explicit trapezoidal RK2) on the probability-flow ODE, as in EDM (arXiv:2206.00364):
    2 NFE per step, the last step is an Euler step (\(2N - 1\) NFE in all). Order 2."""

    order = 2.0
    nfe_per_step = 2
    reference = "arXiv:2206.00364"
    tableau = "heun"

    def final_nfe(self, steps):
        return 2 * steps - 1

    def step(self, model, x, state, c, noise):
        # the last step stops at the input of the second stage: the Euler step
        return rk_step(model, x, c, self.layout, upto=1 if c.last else None), state


@register("euler_maruyama")
class EulerMaruyama(Solver):
    r"""Euler--Maruyama on the reverse SDE:
    \(x_{i+1} = x_i + \Delta t\, (f x_i + g^2 \epsilon/\sigma) + \sqrt{g^2 |\Delta t|}\, z\) with
    \(\Delta t = t_{i+1} - t_i < 0\). Weak order 1; strong order 1 here because the noise is additive (\(g\) does not
    depend on \(x\)).
    1 NFE per step. Takes its ``z`` from the noise source (a Brownian path gives strong convergence studies)."""

    order = 1.0
    strong_order = 1.0
    nfe_per_step = 1
    stochastic = True
    reference = "arXiv:2011.13456"

    def coefficients(self, schedule, ts, base):
        return _em_coefficients(ts, base)

    def step(self, model, x, state, c, noise):
        return _euler_maruyama_update(model, x, c, noise.increment(x)), state


def _em_coefficients(ts, base):
    """``x_next = em_x x + em_eps eps + c_noise z`` with ``em_x = 1 + dt f``, ``em_eps = dt g^2/sigma``."""
    c = _ode_coefficients(ts, base)
    c["em_x"] = host_scalars(1.0 + c["dt"] * c["f"])
    c["em_eps"] = c["dt"] * c["g2"] / base["sigma"]
    c["c_noise"] = torch.sqrt(c["g2"] * (-c["dt"]))
    return c


def _euler_maruyama_update(model, x, c, z):
    eps = model.predict(x, c.t, "eps", c.alpha, c.sigma)
    return lincomb(c.em_x, x, c.em_eps, eps, c.c_noise, z)


def _per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)
    return n.reshape((-1,) + (1,) * (v.ndim - 1))


@register("pc")
class PredictorCorrector(Solver):
    r"""Predictor--corrector sampler (Song et al. 2021, arXiv:2011.13456, Alg. 1--3).

    At each grid time: ``n_corrector`` Langevin steps
    \(x \leftarrow x + \epsilon_L \nabla \log p_t(x) + \sqrt{2 \epsilon_L}\, z\) with
    \(\epsilon_L = 2 a\, (\mathrm{snr}\, \|z\| / \|\nabla \log p_t\|)^2\) (\(a = \alpha_{t|s}^2\), i.e. \(1 - \beta_i\)
    for VP and 1 for VE), then one predictor step to the next time:

    * ``predictor="reverse_diffusion"``:
      \(x \leftarrow (2 - \alpha_{t|s})\, x + \sigma_{t|s}^2 \nabla \log p_t(x) + \sigma_{t|s} z\);
    * ``predictor="euler_maruyama"``: as [`EulerMaruyama`][sde_diffusion.solvers.classic.EulerMaruyama].

    ``norm="batch"`` (default, as in the authors' code) takes \(\|z\|\) and \(\|\nabla \log p_t\|\) as batch means of
    the per-sample norms, so \(\epsilon_L\) is one number per step; ``norm="sample"`` uses each sample's own norms (the
    paper's corrector algorithm read literally). The per-sample ratio is only safe in high dimension: its randomness
    correlates with \(z\) and \(x\), which biases the Langevin step by \(O(\epsilon_L/d)\) per correction (how much on
    low-dimensional data: docs/theory/reverse_sde.md).

    NFE per step \(1 + n_{\rm corrector}\). The Langevin corrector has a fixed signal-to-noise ratio, so its bias does
    not vanish as the grid is refined; the predictor alone is weak order 1 (declared ``order``).
    The predictor uses the noise source's increment (the Brownian path); the corrector draws independent normals.
    """

    order = 1.0
    # the Langevin corrector does not converge pathwise to the reverse SDE's solution: no strong order
    strong_order = None
    stochastic = True
    reference = "arXiv:2011.13456"

    def __init__(
        self, predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector: int = 1, norm: str = "batch"
    ):
        self.predictor = check_choice("predictor", predictor, ("reverse_diffusion", "euler_maruyama"))
        self.snr = check_positive("snr", snr)
        self.n_corrector = check_int("n_corrector", n_corrector, 0)
        self.norm = check_choice("norm", norm, ("batch", "sample"))
        self.nfe_per_step = 1 + self.n_corrector
        # with batch-mean norms a sample's step size depends on the other samples of the batch
        self.couples_batch = self.norm == "batch" or type(self).couples_batch

    def options(self):
        return {"predictor": self.predictor, "snr": self.snr, "n_corrector": self.n_corrector, "norm": self.norm}

    def coefficients(self, schedule, ts, base):
        c = _em_coefficients(ts, base)  # (for the Euler--Maruyama predictor)
        one_minus = -torch.expm1(-2.0 * base["h"])
        c["a_ts"] = base["alpha"] / base["alpha_next"]  # alpha_{t|s}
        c["G2"] = base["sigma"] ** 2 * one_minus  # sigma_{t|s}^2
        c["G"] = base["sigma"] * torch.sqrt(one_minus)
        return c

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        n = _per_sample_norm(v)
        return n.mean() if self.norm == "batch" else n

    def step(self, model, x, state, c, noise):
        for k in range(self.n_corrector):
            score = model.predict(x, c.t, "score", c.alpha, c.sigma)
            z = noise.normal(x, k)
            step = 2.0 * c.a_ts**2 * (self.snr * self._norm(z) / self._norm(score)) ** 2
            x = x + step * score + torch.sqrt(2.0 * step) * z
        z = noise.increment(x)
        if self.predictor == "reverse_diffusion":
            score = model.predict(x, c.t, "score", c.alpha, c.sigma)
            return (2.0 - c.a_ts) * x + c.G2 * score + c.G * z, state
        return _euler_maruyama_update(model, x, c, z), state
