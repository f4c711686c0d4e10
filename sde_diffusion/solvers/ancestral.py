r"""Ancestral samplers in the exponential-integrator frame: Euler-ancestral, DPM-Solver-2-ancestral and
DPM-Solver++(2S)-ancestral (k-diffusion's ``euler_ancestral``, ``dpm_2_ancestral``, ``dpmpp_2s_ancestral``).

In the VE-scaled variables \(y = x/\alpha\) and \(\sigma_{\rm ve} = e^{-\lambda}\) an ancestral step from \(\sigma\) to
\(\sigma_n\) (VE scale) splits the DDPM posterior into a deterministic part and fresh noise:

\[\sigma_{\rm up} = \eta\, \sigma_n \sqrt{1 - e^{-2h}}, \qquad \sigma_{\rm down} = \sqrt{\sigma_n^2 - \sigma_{\rm up}^2}
\qquad (h = \lambda_n - \lambda),\]

then \(y_n = \mathrm{ODE}(y; \sigma \to \sigma_{\rm down}) + \sigma_{\rm up} z\). In the half log-SNR the deterministic
part is a step of length
\(h_{\rm down} = \lambda_{\rm down} - \lambda = h - \tfrac12 \log(1 + \eta^2 \operatorname{expm1}(-2h))\) (exactly
\(2h\) for \(\eta = 1\)); any exponential integrator can take it. Back in the state \(x = \alpha y\) the step ends at
the *virtual* point \((\alpha_n, \alpha_n \sigma_{\rm down})\) -- same signal scale as the grid point, less noise -- and
the noise is \(\alpha_n \sigma_{\rm up} z = \sigma_n \eta \sqrt{1 - e^{-2h}}\, z\) (here \(\sigma_n\) the schedule's).
With the Euler (DPM-Solver-1) step this is DDIM with the same \(\eta\) (\(\sigma_{\rm up}^2\) is DDIM's
\(\sigma_\eta^2\) in VE scale); \(\eta = 1\) is DDPM ancestral sampling.

Why the weak order is the ODE order: adding \(\mathcal{N}(0, \sigma_{\rm up}^2)\) to a sample of
\(p_{\sigma_{\rm down}}\) gives exactly a sample of \(p_{\sigma_n}\) (the VE forward process adds Gaussian noise), so
with an exact ODE step the ancestral step is exact in law for any data. The only error in law is the deterministic
step's \(O(h^{k+1})\): weak order \(k\)
(1 for Euler-ancestral, 2 for the two second-order variants). The noise enters additively with the step's
Brownian increment, so pathwise (against the reverse SDE, \(\eta = 1\)) they converge with strong order 1.

\(\eta = 0\) gives the deterministic base method exactly: DDIM / DPM-Solver-1, DPM-Solver-2 (singlestep,
\(r = 1/2\)), DPM-Solver++(2S).
"""

from __future__ import annotations

import torch

from .base import Solver, lincomb, register
from .dpm_solver import final_update, run_singlestep_stages, singlestep_table
from .options import check_nonnegative

__all__ = [
    "AncestralSolver",
    "EulerAncestral",
    "DPMSolver2Ancestral",
    "DPMSolverPP2SAncestral",
    "ancestral_split",
    "singlestep_to",
    "check_eta",
]


def check_eta(eta) -> float:
    r"""``eta`` as a float in \([0, 1]\) (the ancestral split needs \(\sigma_{\rm down} > 0\))."""
    eta = check_nonnegative("eta", eta)
    if eta > 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    return eta


def ancestral_split(lam: torch.Tensor, lam_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The ancestral split of a step \(\lambda \to \lambda_{\rm next}\) (k-diffusion's ``get_ancestral_step``, written
    in the half log-SNR): returns ``(lam_down, up)`` with \(\sigma_{\rm down} = e^{-\lambda_{\rm down}}\) and
    \(\sigma_{\rm up} = e^{-\lambda_{\rm next}}\, \mathrm{up}\), \(\mathrm{up} = \eta \sqrt{1 - e^{-2h}}\);
    \(\lambda_{\rm down} = \lambda_{\rm next} - \tfrac12 \operatorname{log1p}(\eta^2 \operatorname{expm1}(-2h))\) (no
    cancellation for small \(h\)). Needs \(\eta^2 (1 - e^{-2h}) < 1\) (always true for \(\eta \le 1\)): otherwise
    \(\sigma_{\rm down}\) would be zero."""
    h = lam_next - lam
    q = -torch.expm1(-2.0 * h)  # 1 - e^{-2h}
    if bool((eta * eta * q >= 1.0).any()):
        raise ValueError(f"eta={eta} leaves no deterministic part (sigma_down = 0) on this grid; use eta <= 1")
    return lam_next - 0.5 * torch.log1p(-(eta * eta) * q), eta * torch.sqrt(q)


def singlestep_to(grid, sign: int, order: int, la_end, ls_end, update: str = "paper") -> dict:
    r"""Coefficients of one singlestep exponential-integrator step of order ``order`` per grid interval, from the grid
    point (``grid``, a [`GridTable`][sde_diffusion.solvers.table.GridTable]) to an arbitrary end point
    ``(la_end, ls_end)`` (log alpha, log sigma; per step) whose half log-SNR is
    \(\lambda_{\rm end} = \log\alpha_{\rm end} - \log\sigma_{\rm end}\) (a grid point or a virtual point such as an
    ancestral ``sigma_down``).

    The stages sit on the schedule at \(\lambda + r_j (\lambda_{\rm end} - \lambda)\) (\(r = 1/2\); \(1/3, 2/3\)) and
    use the rules of [`update_rule`][sde_diffusion.solvers.dpm_solver.update_rule] (``update``). The keys are those of
    [`singlestep_table`][sde_diffusion.solvers.dpm_solver.singlestep_table] (stage vectors ``t_stage``,
    ``alpha_stage``, ``sigma_stage``, ``ratio_stage``, the matrix ``w_stage``; final ``ratio``, ``w``), as read by
    [`run_singlestep_stages`][sde_diffusion.solvers.dpm_solver.run_singlestep_stages] and
    [`final_update`][sde_diffusion.solvers.dpm_solver.final_update].
    """
    steps = grid.ts.shape[0] - 1
    return singlestep_table(grid, sign, update, (order,) * steps, end=(la_end, ls_end))


class AncestralSolver(Solver):
    r"""An ancestral sampler built on a singlestep exponential integrator (see the module docstring).

    Options: ``eta`` in \([0, 1]\) (``0``: the deterministic base method; ``1``: the reverse SDE), ``s_noise``
    (k-diffusion's multiplier of the added noise; ``1`` keeps the marginals exact).
    NFE per step: the base method's order. The added noise is the step's normalised Brownian increment
    (``noise.increment``), so a Brownian path gives strong convergence to the reverse SDE (\(\eta = 1\)).
    """

    #: +1: the base method integrates the noise prediction (DPM-Solver), -1: the data prediction (DPM-Solver++)
    sign = -1
    kind = "x0"
    base_order = 1
    exact_for_point_mass = True

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta = check_eta(eta)
        self.s_noise = check_nonnegative("s_noise", s_noise)
        self.stochastic = self.eta > 0
        self.order = float(self.base_order)
        self.strong_order = 1.0 if self.stochastic else None
        self.nfe_per_step = self.base_order

    def options(self):
        return {"eta": self.eta, "s_noise": self.s_noise}

    def coefficients(self, schedule, ts, table):
        la, ls = table.log_alpha, table.log_sigma
        lam = la - ls
        lam_down, up = ancestral_split(lam[:-1], lam[1:], self.eta)
        coefs = singlestep_to(table, self.sign, self.base_order, la[1:], la[1:] - lam_down)
        coefs["c_noise"] = self.s_noise * torch.exp(ls[1:]) * up
        return coefs

    def step(self, model, x, state, c, noise):
        outs = run_singlestep_stages(model, x, c, self.kind, self.base_order)
        x_next = final_update(c, x, outs, self.base_order)
        if self.stochastic:
            x_next = lincomb(1.0, x_next, c.c_noise, noise.increment(x))
        return x_next, state


@register("euler_ancestral")
class EulerAncestral(AncestralSolver):
    r"""Euler-ancestral (k-diffusion's ``sample_euler_ancestral``): a DPM-Solver++-1 (= DDIM(0) = Euler in
    \(\sigma_{\rm ve}\)) step to \(\sigma_{\rm down}\) plus \(\sigma_{\rm up}\) noise. Equal to DDIM with the same
    ``eta`` (arXiv:2010.02502) and, for ``eta = 1``, to DDPM ancestral sampling (arXiv:2006.11239). Weak order 1, strong
    order 1 (``eta = 1``), 1 NFE per step."""

    reference = "arXiv:2206.00364"
    base_order = 1


@register("dpm_solver_2_ancestral")
class DPMSolver2Ancestral(AncestralSolver):
    r"""DPM-Solver-2-ancestral (k-diffusion's ``sample_dpm_2_ancestral``): a DPM-Solver-2 step (noise prediction,
    midpoint \(r = 1/2\): \(y_{\rm mid} = y - \sigma_{\rm mid} \operatorname{expm1}(h_{\rm down}/2)\, \epsilon\),
    \(y_{\rm down} = y - \sigma_{\rm down} \operatorname{expm1}(h_{\rm down})\, \epsilon_{\rm mid}\); arXiv:2206.00927
    Alg. 1) to \(\sigma_{\rm down}\) plus \(\sigma_{\rm up}\) noise. Weak order 2 (exact-in-law split),
    strong order 1 (``eta = 1``), 2 NFE per step."""

    reference = "arXiv:2206.00927"
    sign = 1
    kind = "eps"
    base_order = 2


@register("dpm_solver++_2s_ancestral")
class DPMSolverPP2SAncestral(AncestralSolver):
    r"""DPM-Solver++(2S)-ancestral (k-diffusion's ``sample_dpmpp_2s_ancestral``): a DPM-Solver++(2S) step (data
    prediction, \(r = 1/2\): \(y_{\rm mid} = e^{-h_{\rm down}/2} y + (1 - e^{-h_{\rm down}/2})\, x_0\),
    \(y_{\rm down} = e^{-h_{\rm down}} y + (1 - e^{-h_{\rm down}})\, x_{0,\rm mid}\); arXiv:2211.01095 Alg. 1) to
    \(\sigma_{\rm down}\) plus \(\sigma_{\rm up}\) noise. Weak order 2,
    strong order 1 (``eta = 1``), 2 NFE per step."""

    reference = "arXiv:2211.01095"
    base_order = 2
