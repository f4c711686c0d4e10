"""Helpers shared by the solver tests (not a test module): slope fits, the standard schedules and oracles, and the
exact moment propagation of a linear-Gaussian chain through a solver's own ``step``."""

from __future__ import annotations

import torch

from sde_diffusion.analytic import Gaussian, GaussianMixture
from sde_diffusion.sample import Sampler
from sde_diffusion.schedules import EDM, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear
from sde_diffusion.solvers.base import NoiseSource
from sde_diffusion.studies.fitting import fit_line

F64 = torch.float64


def all_schedules(discrete_config: dict | None = None):
    """One instance of every built-in schedule (default parameters; the discrete one from the diffusers-style
    ``discrete_config``, by default DDPM's 1000 linear betas)."""
    return [
        VPLinear(),
        VPCosine(),
        VPDiscrete.from_config(discrete_config or {"num_train_timesteps": 1000}),
        SubVPLinear(),
        VEGeometric(),
        EDM(),
    ]


SCHEDULE_IDS = ["vp_linear", "vp_cosine", "vp_discrete", "subvp_linear", "ve_geometric", "edm"]


def gaussian_2d() -> Gaussian:
    return Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.5, 1.2], dtype=F64))


def mixture_2d() -> GaussianMixture:
    means = torch.tensor([[-1.0, 0.5], [1.5, -0.5], [0.3, 1.8]], dtype=F64)
    return GaussianMixture(means, torch.tensor([0.3, 0.5, 0.4], dtype=F64), torch.tensor([0.3, 0.5, 0.2], dtype=F64))


def prior(schedule, n: int, d: int = 2, seed: int = 0) -> torch.Tensor:
    """``n`` draws of ``N(0, sigma(t_max)^2 I)``."""
    g = torch.Generator().manual_seed(seed)
    return float(schedule.sigma(schedule.t_max)) * torch.randn(n, d, generator=g, dtype=F64)


def fitted_slope(nfe, errors) -> float:
    """Least-squares slope of ``log(error)`` against ``log(NFE)``, sign flipped (a method of order p gives ~p)."""
    return fit_line(nfe, errors).order


class _UnitNoise(NoiseSource):
    """For the 3-row probe batch ``[0, 1, 0]``: the increment is 0 for rows 0-1 and 1 for row 2."""

    def increment(self, i, ts, x):
        z = torch.zeros_like(x)
        z[2] = 1.0
        return z

    def normal(self, i, k, x):
        raise AssertionError("the moment probe supports solvers that only use the Brownian increment")


def exact_moments(model, solver, grid, mean: torch.Tensor, var: torch.Tensor, **solver_options):
    """Mean and variance after running ``solver`` on ``grid`` from ``N(mean, diag(var))``, computed exactly.

    For Gaussian data the model's prediction is affine in ``x`` per coordinate, so each step of a first-order
    stochastic solver is ``x' = A x + b + C z`` (``z`` standard normal). The solver's own ``step`` is run on the
    probe batch ``x = [0, 1, 0]`` with increments ``[0, 0, 1]`` to read ``b``, ``A + b`` and ``b + C``; the moments
    then follow exactly: ``m' = A m + b``, ``v' = A^2 v + C^2``. No sampling, so weak-order fits are deterministic.
    """
    zeros, ones = torch.zeros_like(mean), torch.ones_like(mean)
    probe = torch.stack([zeros, ones, zeros])
    s = Sampler(model, probe, solver=solver, grid=grid, noise=_UnitNoise(), **solver_options)
    _, state = s.init(probe)
    for i in range(s.num_steps):
        out, _ = s.step(probe, state, i)
        b, a, c = out[0], out[1] - out[0], out[2] - out[0]
        mean, var = a * mean + b, a * a * var + c * c
    return mean, var


def half_precision_errors(solver: str, opts: dict, half: torch.dtype, steps: int):
    """Run ``solver`` with fp16/bf16 network outputs (exact mixture model cast down) on a float32 state, and the same
    in float64: returns ``(low, ref)``, low already checked to be float32 and finite."""
    from sde_diffusion.models import Model
    from sde_diffusion.sample import sample

    sch = VPLinear()
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.2, 0.5]))
    exact = gm.model(sch)
    model = Model(lambda x, t: exact.fn(x, t).to(half), sch, "eps")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    low = sample(model, x.float(), solver=solver, steps=steps, **opts).x
    ref = sample(exact, x, solver=solver, steps=steps, **opts).x
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    return low, ref


def point_mass_flow(m: torch.Tensor, x: torch.Tensor, t_from: float, t_to: float, schedule) -> torch.Tensor:
    """The exact probability-flow map of point-mass data at ``m``: it keeps ``(x - alpha m)/sigma`` fixed."""
    a0, s0 = schedule.alpha(torch.tensor(t_from)), schedule.sigma(torch.tensor(t_from))
    a1, s1 = schedule.alpha(torch.tensor(t_to)), schedule.sigma(torch.tensor(t_to))
    return a1 * m + s1 * (x - a0 * m) / s0


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|`` in float64."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def gmm_problem():
    """A 2-D Gaussian mixture on VP linear, 8 starting points and the float64 torchdiffeq solution of its PF-ODE
    from ``t_max`` to ``t_min`` (rtol = atol = 1e-12): ``(model, x, ref)``."""
    from sde_diffusion.reference import probability_flow_reference

    sch = VPLinear()
    gm = GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]]), torch.tensor([0.3, 0.5, 0.4]))
    model = gm.model(sch)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    ref = probability_flow_reference(model, x, torch.tensor([sch.t_max, sch.t_min]), rtol=1e-12, atol=1e-12)[-1]
    return model, x, ref


#: the DDPM configuration of the diffusers agreement tests
DDPM_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def discrete_problem():
    """A DDPM schedule, a Gaussian-mixture network taking integer labels (as diffusers' schedulers call it), and its
    ``Model`` wrapper: ``(schedule, net, model)``."""
    from sde_diffusion.models import Model

    sch = VPDiscrete.from_config(DDPM_CONFIG)
    n = sch.num_steps
    gm = GaussianMixture(
        torch.tensor([[-1.0, 0.5, 0.2], [1.0, -0.5, 0.0], [0.3, 1.2, -0.8]]), torch.tensor([0.3, 0.5, 0.4])
    )

    def net(x, label):
        return gm.eps(x.double(), (torch.round(label.double()) + 1) / n, sch).to(x.dtype)

    return sch, net, Model(net, sch, "eps", time_input="label")


def diffusers_run(scheduler, steps: int, net, x: torch.Tensor, exact_schedule=None):
    """Run a diffusers multistep scheduler; returns ``(x, ts)`` with ``ts`` its grid in our time (ending at
    ``t = 1/N``). With ``exact_schedule`` its float32 noise levels are replaced by the exact float64 ones
    (``sigma_ve`` of the same times), so that the algorithms can be compared exactly."""
    scheduler.set_timesteps(steps)
    ts = torch.cat([(scheduler.timesteps.double() + 1) / 1000, torch.tensor([1e-3], dtype=torch.float64)])
    old = torch.get_default_dtype()
    if exact_schedule is not None:
        scheduler.sigmas = exact_schedule.sigma_ve(ts)
    else:
        torch.set_default_dtype(torch.float32)  # diffusers builds some tensors with the default dtype
    try:
        for k in scheduler.timesteps:
            x = scheduler.step(net(x, torch.full((x.shape[0],), float(k))), k, x).prev_sample
    finally:
        torch.set_default_dtype(old)
    return x, ts
