"""DDIM (any eta), DDIM inversion and DDPM ancestral sampling, checked against mathematics: exactness on point-mass
data, first-order convergence to the torchdiffeq probability-flow solution, DDIM(1) = DDPM step by step, exact weak
order on Gaussian data, DDPM's variances on the training grid, and the inversion round trip."""

from __future__ import annotations

import pytest
import torch
from solver_checks import (
    F64,
    SCHEDULE_IDS,
    all_schedules,
    exact_moments,
    fitted_slope,
    gaussian_2d,
    mixture_2d,
    prior,
)

from sde_diffusion.analytic import PointMass
from sde_diffusion.grids import make_grid
from sde_diffusion.models import PREDICTIONS
from sde_diffusion.reference import probability_flow_reference
from sde_diffusion.sample import sample
from sde_diffusion.schedules import VPDiscrete, VPLinear
from sde_diffusion.solvers import DDIM, DDPM, get_solver
from sde_diffusion.solvers.base import prepare_plan
from sde_diffusion.testing import measure_order

M = torch.tensor([0.7, -1.3], dtype=F64)


def _point_mass_path(schedule, eps):
    """The exact probability-flow solution for data at ``M``: ``x_t = alpha_t M + sigma_t eps``, eps fixed."""

    def at(t):
        return schedule.alpha(t) * M + schedule.sigma(t) * eps

    return at


@pytest.mark.parametrize("steps", [1, 7])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", all_schedules(), ids=SCHEDULE_IDS)
def test_ddim_is_exact_on_point_mass_data(schedule, prediction, steps):
    eps = prior(schedule, 8, seed=1) / float(schedule.sigma(schedule.t_max))
    path = _point_mass_path(schedule, eps)
    model = PointMass(M).model(schedule, prediction)
    for grid in ("logsnr", "time_uniform", "karras"):
        out = sample(model, path(schedule.t_max), solver="ddim", steps=steps, grid=grid)
        torch.testing.assert_close(out.x, path(schedule.t_min), rtol=0, atol=1e-12)


@pytest.mark.parametrize("schedule", all_schedules(), ids=SCHEDULE_IDS)
def test_ddim_inverse_is_exact_on_point_mass_data(schedule):
    eps = prior(schedule, 8, seed=2) / float(schedule.sigma(schedule.t_max))
    path = _point_mass_path(schedule, eps)
    model = PointMass(M).model(schedule, "x0")
    for steps in (1, 7):
        out = sample(model, path(schedule.t_min), solver="ddim_inverse", steps=steps)
        assert out.ts[0].item() == schedule.t_min and out.ts[-1].item() == schedule.t_max
        torch.testing.assert_close(out.x, path(schedule.t_max), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("solver", "options"), [("ddpm", {}), ("ddim", {"eta": 1.0}), ("ddim", {"eta": 0.3})])
@pytest.mark.parametrize("schedule", all_schedules(), ids=SCHEDULE_IDS)
def test_ancestral_steps_are_exact_in_distribution_on_point_mass_data(schedule, solver, options):
    # With the exact x0 = M, the DDPM step draws from q(x_s | x_t, x0 = M), the true reverse transition, and a DDIM
    # step of any eta keeps N(alpha M, sigma^2) invariant; so from the exact marginal at t_max the output is exactly
    # N(alpha(t_min) M, sigma(t_min)^2), in one step or many (moments propagated exactly through the solver).
    model = PointMass(M).model(schedule, "eps")
    a_T, s_T = schedule.alpha(schedule.t_max), schedule.sigma(schedule.t_max)
    a_0, s_0 = schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)
    for steps in (1, 7):
        m, v = exact_moments(
            model, solver, make_grid(schedule, "logsnr", steps), a_T * M, s_T**2 * torch.ones(2), **options
        )
        torch.testing.assert_close(m, a_0 * M, rtol=0, atol=1e-12)
        torch.testing.assert_close(v, s_0**2 * torch.ones(2, dtype=F64), rtol=1e-12, atol=1e-15)


def test_ddim_converges_with_order_one_to_the_torchdiffeq_reference():
    sch = VPLinear()
    model = mixture_2d().model(sch, "eps")
    x_T = prior(sch, 16)
    ref = probability_flow_reference(model, x_T, torch.tensor([sch.t_max, sch.t_min], dtype=F64))[-1]
    nfe, err = [], []
    for steps in (48, 80, 120, 160, 240):
        out = sample(model, x_T, solver="ddim", steps=steps, grid="logsnr")
        nfe.append(out.nfe)
        err.append(float((out.x - ref).abs().max()))
    slope = fitted_slope(nfe, err)
    # measured: errors 0.196 ... 0.037, slope 1.03
    assert abs(slope - 1.0) <= 0.15, (slope, err)
    assert err[-1] < 0.1


@pytest.mark.parametrize("schedule", all_schedules(), ids=SCHEDULE_IDS)
def test_ddim_eta_one_equals_ddpm_ancestral_step(schedule):
    model = mixture_2d().model(schedule, "v")
    steps = 12
    x_T = prior(schedule, 6)
    z = torch.randn((steps, *x_T.shape), generator=torch.Generator().manual_seed(3), dtype=F64)
    a = sample(model, x_T, solver="ddim", eta=1.0, steps=steps, noise=z, return_trajectory=True)
    b = sample(model, x_T, solver="ddpm", variance="beta_tilde", steps=steps, noise=z, return_trajectory=True)
    for xa, xb in zip(a.trajectory, b.trajectory):
        torch.testing.assert_close(xa, xb, rtol=1e-12, atol=1e-12)


def test_ddim_eta_zero_ignores_noise_and_is_deterministic():
    solver = get_solver("ddim")
    assert not solver.stochastic and solver.strong_order is None
    assert get_solver("ddim", eta=0.3).stochastic


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_ddpm_variances_on_the_training_grid(variance):
    # On a VP-discrete schedule stepping t_n -> t_{n-1} (one training step) the two DDPM choices are beta_n and
    # beta_tilde_n = (1 - abar_{n-1}) / (1 - abar_n) beta_n (Ho et al. 2020, eq. 7).
    sch = VPDiscrete.from_config({"num_train_timesteps": 50})
    ts = sch.knots.flip(0)  # t = 1, 49/50, ..., 1/50
    x = torch.zeros(1, 1, dtype=F64)
    plan = prepare_plan(DDPM(variance), sch, ts, x)
    noise_var = torch.tensor([c.c_noise for c in plan.steps], dtype=F64) ** 2
    beta, abar = sch.betas.flip(0)[:-1], sch.alphas_cumprod.flip(0)
    want = beta if variance == "beta" else (1 - abar[1:]) / (1 - abar[:-1]) * beta
    torch.testing.assert_close(noise_var, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("solver", "options"),
    [("ddpm", {}), ("ddpm", {"variance": "beta"}), ("ddim", {"eta": 0.5}), ("ddim", {"eta": 1.0})],
)
def test_weak_order_one_on_gaussian_data_exact_moments(solver, options):
    # measure_order runs the solver on a 3-D Gaussian (VPLinear, logSNR grids, NFE 48..240), started from the exact
    # marginal, and computes the output's mean and variance exactly (the chain is linear-Gaussian: one batched run
    # with probe columns reads every step's affine response), so the weak-order fit is deterministic.
    m = measure_order(get_solver(solver, **options))
    assert m.kind == "weak"
    # measured: order (fit with a 1/N correction) 0.998 / 1.001 / 0.997 / 0.998, plain slopes 0.94 / 0.98 / 0.95 / 0.94
    assert abs(m.order - 1.0) <= 0.1, m
    assert abs(m.slope - 1.0) <= 0.15, m


def test_ddim_inverse_round_trip():
    sch = VPLinear()
    data = mixture_2d()
    model = data.model(sch, "eps")
    g = torch.Generator().manual_seed(4)
    x0 = data.sample(16, g) * sch.alpha(sch.t_min) + sch.sigma(sch.t_min) * torch.randn(16, 2, generator=g)
    ref = probability_flow_reference(model, x0, torch.tensor([sch.t_min, sch.t_max], dtype=F64))[-1]
    steps, trip, enc_err = (50, 200, 1000), [], []
    for n in steps:
        up = make_grid(sch, "logsnr", n).flip(0)
        enc = sample(model, x0, solver="ddim_inverse", grid=up)
        dec = sample(model, enc.x, solver="ddim", grid=up.flip(0))
        enc_err.append(float((enc.x - ref).abs().max()))
        trip.append(float((dec.x - x0).abs().max()))
    # the round trip is as accurate as the first-order methods it is made of (measured: 0.153, 0.039, 0.0078
    # against encoding errors 0.140, 0.036, 0.0072) ...
    for t, e in zip(trip, enc_err):
        assert t <= 4.0 * e
    # ... and converges with order one (measured slope 0.995): high accuracy with many steps
    assert abs(fitted_slope(steps, trip) - 1.0) <= 0.1, trip
    assert trip[-1] < 0.02


def test_ddim_inverse_needs_an_increasing_grid():
    sch = VPLinear()
    model = gaussian_2d().model(sch)
    with pytest.raises(ValueError, match="strictly increasing"):
        sample(model, prior(sch, 2), solver="ddim_inverse", grid=make_grid(sch, "logsnr", 5))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "1"])
def test_bad_eta(bad):
    with pytest.raises(ValueError, match="eta"):
        DDIM(eta=bad)


def test_bad_ddpm_variance():
    with pytest.raises(ValueError, match="beta_tilde"):
        DDPM(variance="fixed_large")


def test_metadata():
    for cls in (DDIM, DDPM):
        assert cls.reference.startswith("arXiv:") and cls.order == 1.0 and cls.nfe_per_step == 1
    assert get_solver("ddim_inverse").direction == "forward"
