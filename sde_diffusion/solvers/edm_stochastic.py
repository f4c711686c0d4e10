r"""EDM's stochastic sampler (Karras et al. 2022, arXiv:2206.00364, Algorithm 2): Heun steps with "churn".

In EDM's variables \(y = x/\alpha\) and \(\sigma_{\rm ve} = e^{-\lambda}\) (the probability-flow ODE is
\(\mathrm{d}y/\mathrm{d}\sigma = \epsilon\)), step \(i\) from \(\sigma_i\) to \(\sigma_{i+1}\):

1. churn: \(\gamma_i = \min(S_{\rm churn}/N, \sqrt2 - 1)\) if \(S_{\rm tmin} \le \sigma_i \le S_{\rm tmax}\) else \(0\);
   \(\hat\sigma = (1 + \gamma_i) \sigma_i\) and \(\hat y = y + S_{\rm noise} \sqrt{\hat\sigma^2 - \sigma_i^2}\, z\) --
   the exact forward transition from \(\sigma_i\) to \(\hat\sigma\) (for \(S_{\rm noise} = 1\));
2. a Heun step of the ODE from \(\hat\sigma\) to \(\sigma_{i+1}\):
   \(y' = \hat y + (\sigma_{i+1} - \hat\sigma)\, \hat\epsilon\),
   \(y_{i+1} = \hat y + (\sigma_{i+1} - \hat\sigma)\, (\hat\epsilon + \epsilon')/2\) (an Euler step on the last
   interval, as [`Heun`][sde_diffusion.solvers.classic.Heun]).

For a schedule with \(\alpha \ne 1\) the state is \(x = \alpha y\): the churned point \((\hat t, \hat\alpha)\) is the
time whose VE noise level is \(\hat\sigma\); it may lie beyond \(t_{\max}\) when the churn acts at the first step
(\(S_{\rm tmax}\) keeps it off there, as in EDM's settings).

Order: with \(S_{\rm noise} = 1\) the churn is exact in law for any data, so the only error in law is the ODE step's:
weak order 2 (Heun). The churn noise is a fresh normal per step (the step's ``noise.increment``), not a
discretisation of a Brownian integral, so no strong order is declared. 2 NFE per step (\(2N - 1\) in all).
\(S_{\rm churn} = 0\) is [`Heun`][sde_diffusion.solvers.classic.Heun] with ``variable="sigma"``.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, lincomb, register
from .options import check_nonnegative

__all__ = ["EDMStochastic", "heun_sigma_coefficients", "heun_sigma_step", "model_time"]


def heun_sigma_coefficients(la_a, lam_a, la_b, lam_b) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(a_x, a_eps)`` of an Euler step in EDM's variables from \(a\) to \(b\) written on \(x = \alpha y\):
    \(x_b = a_x x_a + a_\epsilon \epsilon\) with \(a_x = \alpha_b/\alpha_a\) and
    \(a_\epsilon = \alpha_b (\sigma_{{\rm ve},b} - \sigma_{{\rm ve},a})\) (log alpha ``la``, half log-SNR ``lam`` at
    both ends). Heun's corrector is \(a_x x_a + a_\epsilon (\epsilon + \epsilon')/2\)."""
    return torch.exp(la_b - la_a), torch.exp(la_b) * (torch.exp(-lam_b) - torch.exp(-lam_a))


def model_time(t_like: torch.Tensor, value) -> torch.Tensor:
    """A model-time tensor shaped like ``t_like`` holding ``value`` (host float or per-sample tensor)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(t_like.shape)
    return torch.full_like(t_like, value)


def heun_sigma_step(model, x, t, alpha, sigma, t_next, alpha_next, sigma_next, a_x, a_eps, euler: bool = False):
    r"""One Heun (or Euler) step of the probability-flow ODE in EDM's variables, on \(x = \alpha y\)."""
    eps = model.predict(x, t, "eps", alpha, sigma)
    x_pred = lincomb(a_x, x, a_eps, eps)
    if euler:
        return x_pred
    eps2 = model.predict(x_pred, t_next, "eps", alpha_next, sigma_next)
    half = 0.5 * a_eps
    return lincomb(a_x, x, half, eps, half, eps2)


@register("edm_stochastic")
class EDMStochastic(Solver):
    r"""EDM's stochastic Heun sampler with churn (arXiv:2206.00364, Alg. 2; k-diffusion's ``sample_heun`` with
    ``s_churn``): see the module docstring.

    Options: ``s_churn >= 0`` (total churn; \(\gamma_i = \min(S_{\rm churn}/N, \sqrt2 - 1)\)), ``s_tmin``, ``s_tmax``
    (the \(\sigma_{\rm ve}\) range where churn acts), ``s_noise`` (EDM's noise inflation, ``1`` keeps the marginals
    exact). Weak order 2, no strong order (fresh normals, not Brownian increments), 2 NFE per step, \(2N - 1\) in all.
    """

    order = 2.0
    nfe_per_step = 2
    reference = "arXiv:2206.00364"

    def __init__(self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
        self.s_churn = check_nonnegative("s_churn", s_churn)
        self.s_tmin = check_nonnegative("s_tmin", s_tmin)
        self.s_tmax = math.inf if s_tmax == math.inf else check_nonnegative("s_tmax", s_tmax)
        if self.s_tmin > self.s_tmax:
            raise ValueError(f"s_tmin={s_tmin} exceeds s_tmax={s_tmax}")
        self.s_noise = check_nonnegative("s_noise", s_noise)
        self.stochastic = self.s_churn > 0

    def options(self):
        return {"s_churn": self.s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax, "s_noise": self.s_noise}

    def final_nfe(self, steps):
        return 2 * steps - 1

    def coefficients(self, schedule, ts, table):
        la, ls = table.log_alpha, table.log_sigma
        lam = la - ls
        n = ts.shape[0] - 1
        sig = torch.exp(-lam[:-1])
        inside = (sig >= self.s_tmin) & (sig <= self.s_tmax)
        gamma = torch.where(inside, min(self.s_churn / n, math.sqrt(2.0) - 1.0), 0.0).to(torch.float64)
        lam_hat = lam[:-1] - torch.log1p(gamma)
        p = table.at_lambda(lam_hat)
        t_c, la_c, ls_c = p.t, p.log_alpha, p.log_sigma
        churned = gamma > 0
        t_hat = torch.where(churned, t_c, ts[:-1])
        la_hat, ls_hat = torch.where(churned, la_c, la[:-1]), torch.where(churned, ls_c, ls[:-1])
        a_x, a_eps = heun_sigma_coefficients(la_hat, lam_hat, la[1:], lam[1:])
        return {
            "t_hat": t_hat,
            "alpha_hat": torch.exp(la_hat),
            "sigma_hat": torch.exp(ls_hat),
            "churn_x": torch.exp(la_hat - la[:-1]),
            "churn_noise": self.s_noise * torch.exp(la_hat) * sig * torch.sqrt(gamma * (2.0 + gamma)),
            "a_x": a_x,
            "a_eps": a_eps,
        }

    def step(self, model, x, state, c, noise):
        if self.stochastic:
            x = lincomb(c.churn_x, x, c.churn_noise, noise.increment(x))
        t_hat = model_time(c.t, c.t_hat) if self.stochastic else c.t
        x_next = heun_sigma_step(
            model, x, t_hat, c.alpha_hat, c.sigma_hat, c.t_next, c.alpha_next, c.sigma_next, c.a_x, c.a_eps, c.last
        )
        return x_next, state
