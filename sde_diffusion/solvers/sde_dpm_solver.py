r"""SDE-DPM-Solver++ beyond 1/2M: the singlestep "DPM++ SDE" and the third-order multistep "DPM++ 3M SDE"
(Lu et al. 2022, arXiv:2211.01095; the forms users know from k-diffusion's ``sample_dpmpp_sde`` and
``sample_dpmpp_3m_sde``).

**Singlestep (``sde_dpm_solver++_2s``).** A DPM-Solver++(2S) step whose two updates are both *ancestral*
([`ancestral`][sde_diffusion.solvers.ancestral]): with \(h = \lambda_n - \lambda\), the stage at
\(\lambda_s = \lambda + r h\) and VE-scaled \(y = x/\alpha\),

* stage: \(y_s = \frac{\sigma_d'}{\sigma} y + \big(1 - \frac{\sigma_d'}{\sigma}\big) x_0 + \sigma_u' z_1\) with
  \((\sigma_d', \sigma_u')\) the ancestral split of \(\sigma \to \sigma_s\), \(z_1\) the normalised Brownian increment
  over \([t, t_s]\);
* final: \(y_n = \frac{\sigma_d}{\sigma} y + \big(1 - \frac{\sigma_d}{\sigma}\big)
  \big[\big(1 - \frac{1}{2r}\big) x_0 + \frac{1}{2r} x_{0,s}\big] + \sigma_u z\) with the split of
  \(\sigma \to \sigma_n\) and \(z\) the increment over the *whole* step \([t, t_n]\) (the update starts again from
  \(y\)), so the two draws are correlated exactly as two increments of one Brownian path.

With a Brownian path (torchsde ``BrownianInterval``, [`brownian_path`][sde_diffusion.reference.brownian_path]) the
result barely depends on the step count; without one (independent normals) the sub-step increment is drawn from the
Brownian bridge: \(z_1 = \sqrt{f}\, z + \sqrt{1 - f}\, \xi\) (\(f = (t - t_s)/(t - t_n)\), \(\xi\) an extra normal),
which has the same joint law. \(\eta = 0\) is DPM-Solver++(2S) (\(r = 1/2\)).

**3M (``sde_dpm_solver++_3m``).** The multistep data-prediction update for the reverse-SDE family with noise
\(\sqrt{\eta}\, g\) (see [`SDEDPMSolverPP`][sde_diffusion.solvers.dpm_solver.SDEDPMSolverPP]): linear part
\(\frac{\sigma_n}{\sigma} e^{-\eta h}\), weights of the step \((1 + \eta) h\) through the last three data predictions
(\(h \varphi_1 x_0 + h \varphi_2 D_1 + h \varphi_3 D_2\), the published rule ``"ref3"``; the warm-up second step uses
the exact \(\varphi_2\) weight, k-diffusion's choice, i.e. ``update="heun"``), and noise
\(\sigma_n \sqrt{1 - e^{-2 \eta h}}\, z\).

Cost of a Brownian path: each query of a ``BrownianInterval`` walks its binary tree (\(O(\log(1/\mathrm{tol}))\) levels,
each a Brownian-bridge normal draw the first time an interval is split) -- a few tens of microseconds per query on a
CPU, independent of the state size only up to the draws, which are state-sized; the singlestep method queries it twice
per step. See ``docs/theory/stochastic_samplers.md`` for measured per-step overheads.
"""

from __future__ import annotations

import math

import torch

from .._ops import time_like
from .ancestral import ancestral_split, check_eta
from .base import BrownianNoise, Solver, StepNoise, lincomb, register, vector_column
from .dpm_solver import SDEDPMSolverPP, combination
from .options import check_nonnegative, check_positive

__all__ = ["SDEDPMSolverPP2S", "SDEDPMSolverPP3M", "substep_increment"]


def substep_increment(noise: StepNoise, x: torch.Tensor, t_mid, f, z: torch.Tensor, k: int = 0) -> torch.Tensor:
    r"""The normalised increment \((W(s_{\rm mid}) - W(s_a))/\sqrt{t_a - t_{\rm mid}}\) of the step's driving Brownian
    motion over the first part \([t_a, t_{\rm mid}]\) of step ``noise.i`` (\(s = -t\)),
    \(f = (t_a - t_{\rm mid})/(t_a - t_b)\) its fraction
    of the step (a float, or a per-sample coefficient tensor).

    A torchsde path ([`BrownianNoise`][sde_diffusion.solvers.base.BrownianNoise], one grid for the batch) is queried
    directly; any other source gives the Brownian-bridge draw \(\sqrt{f}\, z + \sqrt{1 - f}\, \xi\) from the step's
    increment \(z\) (drawn once by the caller: a generator gives a fresh normal at every ``noise.increment`` call)
    and the independent normal \(\xi\) = ``noise.normal(x, k)``, which has the same joint law with ``z``."""
    src = noise.source
    if isinstance(src, BrownianNoise):
        ta = float(noise.ts[noise.i])
        dw = src.bm(-ta, -float(t_mid))
        return (dw / math.sqrt(ta - float(t_mid))).reshape(x.shape).to(device=x.device, dtype=x.dtype)
    if isinstance(f, torch.Tensor):
        return lincomb(torch.sqrt(f), z, torch.sqrt(1.0 - f), noise.normal(x, k))
    return lincomb(math.sqrt(f), z, math.sqrt(1.0 - f), noise.normal(x, k))


@register("sde_dpm_solver++_2s")
class SDEDPMSolverPP2S(Solver):
    r"""SDE-DPM-Solver++ singlestep, "DPM++ SDE" (k-diffusion's ``sample_dpmpp_sde``; arXiv:2211.01095): see the
    module docstring.

    Options: ``eta`` in \([0, 1]\) (``1``: the reverse SDE; ``0``: DPM-Solver++(2S)), ``r`` in \((0, 1)\) (the
    stage position, default \(1/2\)), ``s_noise`` (multiplier of the added noise).
    Weak order 2 (both updates are ancestral, exact in law up to the deterministic part's \(O(h^3)\)), strong
    order 1 (``eta = 1``; additive noise), 2 NFE per step.
    """

    order = 2.0
    nfe_per_step = 2
    reference = "arXiv:2211.01095"
    exact_for_point_mass = True

    def __init__(self, eta: float = 1.0, r: float = 0.5, s_noise: float = 1.0):
        self.eta = check_eta(eta)
        self.r = check_positive("r", r)
        if self.r >= 1.0:
            raise ValueError(f"r must be in (0, 1), got {r!r}")
        self.s_noise = check_nonnegative("s_noise", s_noise)
        self.stochastic = self.eta > 0
        self.strong_order = 1.0 if self.stochastic else None

    def options(self):
        return {"eta": self.eta, "r": self.r, "s_noise": self.s_noise}

    def coefficients(self, schedule, ts, table):
        la, ls = table.log_alpha, table.log_sigma
        lam = la - ls
        la0, ls0, lam0 = la[:-1], ls[:-1], lam[:-1]
        stage = table.at_lambda(lam0 + self.r * (lam[1:] - lam0))
        t_s, la_s, ls_s = stage.t, stage.log_alpha, stage.log_sigma
        one = lam0[..., None]
        # stage: ancestral DPM-Solver++-1 to sigma_s
        lam_d1, up1 = ancestral_split(lam0, la_s - ls_s, self.eta)
        ratio_s, c_s = combination(-1, "exact", one, la0, ls0, la_s, la_s - lam_d1)
        # final: ancestral step to sigma_n with the midpoint combination of the two data predictions
        lam_d, up = ancestral_split(lam0, lam[1:], self.eta)
        ratio, c = combination(-1, "exact", one, la0, ls0, la[1:], la[1:] - lam_d)
        fac = 1.0 / (2.0 * self.r)
        return {
            "t_mid": t_s,
            "f_mid": (ts[:-1] - t_s) / (ts[:-1] - ts[1:]),
            "alpha_mid": torch.exp(la_s),
            "sigma_mid": torch.exp(ls_s),
            "ratio_mid": ratio_s,
            "w_mid": c_s[..., 0],
            "c_noise_mid": self.s_noise * torch.exp(ls_s) * up1,
            "ratio": ratio,
            "w": vector_column(torch.stack([(1.0 - fac) * c[..., 0], fac * c[..., 0]], -1)),
            "c_noise": self.s_noise * torch.exp(la[1:] - lam[1:]) * up,
        }

    def step(self, model, x, state, c, noise):
        x0 = model.predict(x, c.t, "x0", c.alpha, c.sigma)
        if self.stochastic:
            z = noise.increment(x)
            u = lincomb(c.ratio_mid, x, c.w_mid, x0, c.c_noise_mid, substep_increment(noise, x, c.t_mid, c.f_mid, z))
        else:
            u = lincomb(c.ratio_mid, x, c.w_mid, x0)
        x0_s = model.predict(u, time_like(c.t, c.t_mid), "x0", c.alpha_mid, c.sigma_mid)
        w = c.w
        if self.stochastic:
            return lincomb(c.ratio, x, w[0], x0, w[1], x0_s, c.c_noise, z), state
        return lincomb(c.ratio, x, w[0], x0, w[1], x0_s), state


@register("sde_dpm_solver++_3m")
class SDEDPMSolverPP3M(SDEDPMSolverPP):
    r"""SDE-DPM-Solver++(3M), "DPM++ 3M SDE" (k-diffusion's ``sample_dpmpp_3m_sde``; arXiv:2211.01095): the
    multistep update of [`SDEDPMSolverPP`][sde_diffusion.solvers.dpm_solver.SDEDPMSolverPP] through the last *three*
    data predictions (module docstring). One NFE per step, memory 2 outputs; warm-up orders 1, 2 and, with
    ``lower_order_final``, orders \(\min(3, \mathrm{steps} - i)\) below 15 steps.

    Options: ``eta >= 0``, ``lower_order_final``, ``update`` (``"heun"``, default: k-diffusion's form;
    ``"paper"``/``"midpoint"``: diffusers' midpoint warm-up step; ``"exact"``: exact quadratic weights).
    Order: weak order 1 for ``eta > 0``, strong order 1 (additive noise); ``eta = 0``: the ODE method (order 2
    with the published ``"ref3"`` rule, 3 with ``"exact"``).
    """

    def __init__(self, eta: float = 1.0, lower_order_final: bool = True, update: str = "heun"):
        super().__init__(2, eta, lower_order_final, update)
        # the parent validates order in (1, 2); the third-order tables come from the same code path
        self.order_option, self.memory = 3, 2
        if self.stochastic:
            self.order, self.strong_order = 1.0, 1.0
        else:
            self.order = 3.0 if update == "exact" else 2.0

    def options(self):
        return {"eta": self.eta, "lower_order_final": self.lower_order_final, "update": self.update}
