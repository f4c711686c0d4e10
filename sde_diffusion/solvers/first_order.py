r"""First-order samplers: DDIM (any eta), its inversion, and DDPM ancestral sampling.

Notation for a step from \(t\) to \(s\) (\(s < t\) when sampling): \(h = \lambda_s - \lambda_t\),
\(\alpha_{t|s} = \alpha_t/\alpha_s\) and the transition variance
\(\sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2 \sigma_s^2 = \sigma_t^2 (1 - e^{-2h})\). The posterior
\(q(x_s \mid x_t, x_0)\) is Gaussian with

* mean \(\frac{\sigma_s}{\sigma_t} e^{-h} x_t + \alpha_s (1 - e^{-2h})\, x_0\),
* variance \(\tilde\beta = \sigma_s^2 (1 - e^{-2h})\) (``beta_tilde``).
"""

from __future__ import annotations

import torch

from .base import Solver, host_scalars, lincomb, register
from .expint import long_step_consistent
from .options import check_choice, check_nonnegative

__all__ = ["DDIM", "DDIMInverse", "DDPM", "ddim_coefficients"]


def ddim_coefficients(c: dict, eta: float) -> dict[str, torch.Tensor]:
    r"""DDIM in noise-prediction form: \(x_s = \frac{\alpha_s}{\alpha_t} x_t + c_\epsilon\, \epsilon + c_z\, z\).

    With \(\sigma_\eta^2 = \eta^2 \tilde\beta\),
    \(x_s = \alpha_s x_0 + \sqrt{\sigma_s^2 - \sigma_\eta^2}\, \epsilon + \sigma_\eta z\); with
    \(\rho = \sigma_\eta^2/\sigma_s^2 = -\eta^2 \operatorname{expm1}(-2h)\):

    \[c_\epsilon = \sigma_s \big(\sqrt{1 - \rho} - e^h\big)
    = -\sigma_s \Big(\frac{\rho}{1 + \sqrt{1 - \rho}} + \operatorname{expm1}(h)\Big) \quad\text{(no cancellation)}.\]

    ``eta = 0`` gives \(c_\epsilon = -\sigma_s \operatorname{expm1}(h)\): DPM-Solver-1 / DEIS-1 (made consistent for
    long steps by [`long_step_consistent`][sde_diffusion.solvers.expint.long_step_consistent]).
    """
    h, sig_s = c["h"], c["sigma_next"]
    ratio = c["alpha_next"] / c["alpha"]
    rho = -(eta**2) * torch.expm1(-2.0 * h)
    ode = long_step_consistent((-sig_s * torch.expm1(h))[..., None], h, ratio, c["sigma"], sig_s)[..., 0]
    return {
        "ratio": ratio,
        "c_eps": ode - sig_s * rho / (1.0 + torch.sqrt(1.0 - rho)),
        "c_noise": sig_s * torch.sqrt(rho),
    }


@register("ddim")
class DDIM(Solver):
    r"""DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502) with stochasticity ``eta``.

    ``eta = 0``: the exact solution of the probability-flow ODE with the noise prediction frozen over the step --
    first order; identical to DPM-Solver-1, DPM-Solver++-1, DEIS-1 and Euler in \((x/\alpha, \sigma/\alpha)\).
    ``eta = 1``: the DDPM ancestral step with posterior variance \(\tilde\beta\) (same noise, same result) --
    a first-order weak discretisation of the reverse SDE.
    1 NFE per step, memory 0.
    """

    order = 1.0
    nfe_per_step = 1
    reference = "arXiv:2010.02502"
    #: eta = 0 integrates eps exactly when it is constant along the flow (point-mass data)
    exact_for_point_mass = True

    def __init__(self, eta: float = 0.0):
        self.eta = check_nonnegative("eta", eta)
        self.stochastic = self.eta > 0
        # eta = 1 discretises the reverse SDE, whose noise is additive: strong order 1 (measured against torchsde);
        # 0 < eta < 1 follows another member of the SDE family, so no strong order against the reverse SDE
        self.strong_order = 1.0 if self.eta == 1.0 else None

    def options(self):
        return {"eta": self.eta}

    def coefficients(self, schedule, ts, base):
        c = ddim_coefficients(base, self.eta)
        c["ratio"] = host_scalars(c["ratio"])
        return c

    def step(self, model, x, state, c, noise):
        eps = model.predict(x, c.t, "eps", c.alpha, c.sigma)
        if self.stochastic:
            return lincomb(c.ratio, x, c.c_eps, eps, c.c_noise, noise.increment(x)), state
        return lincomb(c.ratio, x, c.c_eps, eps), state


@register("ddim_inverse")
class DDIMInverse(DDIM):
    r"""DDIM inversion (encoding data to noise): the DDIM(eta=0) step run on an *increasing* grid,
    ``t_min -> t_max`` by default. Same formula, \(h < 0\); first order, 1 NFE per step (arXiv:2010.02502, sec. 4.3).
    """

    direction = "forward"

    def __init__(self):
        super().__init__(eta=0.0)

    def options(self):
        return {}


@register("ddpm")
class DDPM(Solver):
    r"""Ancestral sampling of the discrete reverse Markov chain (Ho, Jain & Abbeel 2020, arXiv:2006.11239) on any
    grid: \(x_s = \mu(x_t, \hat x_0) + \mathrm{std}\cdot z\) with the posterior mean \(\mu\), and
    \(\mathrm{std}^2 = \tilde\beta = \sigma_s^2 (1 - e^{-2h})\) (``variance="beta_tilde"``, the posterior variance) or
    \(\sigma_{t|s}^2 = \sigma_t^2 (1 - e^{-2h})\) (``variance="beta"``; equals DDPM's \(\beta_t\) for VP schedules).
    Weak order 1 on the reverse SDE; 1 NFE per step. With ``beta_tilde`` it equals DDIM(eta=1) given the same noise.
    """

    order = 1.0
    strong_order = 1.0  # additive noise: an Euler-Maruyama-type scheme converges with strong order 1
    nfe_per_step = 1
    stochastic = True
    reference = "arXiv:2006.11239"

    def __init__(self, variance: str = "beta_tilde"):
        self.variance = check_choice("variance", variance, ("beta_tilde", "beta"))

    def options(self):
        return {"variance": self.variance}

    def coefficients(self, schedule, ts, base):
        c = base
        one_minus = -torch.expm1(-2.0 * c["h"])
        std_scale = c["sigma_next"] if self.variance == "beta_tilde" else c["sigma"]
        return {
            "c_x": host_scalars(c["sigma_next"] / c["sigma"] * torch.exp(-c["h"])),
            "c_x0": c["alpha_next"] * one_minus,
            "c_noise": std_scale * torch.sqrt(one_minus),
        }

    def step(self, model, x, state, c, noise):
        x0 = model.predict(x, c.t, "x0", c.alpha, c.sigma)
        return lincomb(c.c_x, x, c.c_x0, x0, c.c_noise, noise.increment(x)), state
