"""Classical integrators: Euler and Heun on the probability-flow ODE (orders 1 and 2 against the closed-form Gaussian
flow, in both variables; Euler in sigma = DDIM(0)), Euler--Maruyama on the reverse SDE (strong order 1 against
torchsde on the same Brownian path, weak order 1 from exact moments) and the predictor--corrector sampler."""

from __future__ import annotations

import math

import pytest
import torch
from solver_checks import (
    F64,
    SCHEDULE_IDS,
    all_schedules,
    fitted_slope,
    gaussian_2d,
    mixture_2d,
    prior,
)

from sde_diffusion.analytic import Gaussian
from sde_diffusion.reference import brownian_path, reverse_sde_reference
from sde_diffusion.sample import sample
from sde_diffusion.schedules import VEGeometric, VPLinear
from sde_diffusion.solvers import EulerMaruyama, Heun, PredictorCorrector, get_solver
from sde_diffusion.solvers.base import TensorNoise
from sde_diffusion.testing import measure_order


@pytest.mark.parametrize(
    ("solver", "variable", "order"),
    [("euler", "t", 1.0), ("euler", "sigma", 1.0), ("heun", "t", 2.0), ("heun", "sigma", 2.0)],
)
def test_pf_ode_order_on_the_closed_form_gaussian_flow(solver, variable, order):
    # measure_order: 3-D Gaussian on VPLinear, logSNR grids with NFE 48..240, max error against Gaussian.flow
    m = measure_order(get_solver(solver, variable=variable))
    assert m.kind == "global"
    # measured orders: euler t 1.001, euler sigma 1.000, heun t 2.008, heun sigma 1.999 (plain slopes within 0.04)
    assert abs(m.order - order) <= 0.1, m
    assert abs(m.slope - order) <= 0.15, m


@pytest.mark.parametrize("schedule", all_schedules(), ids=SCHEDULE_IDS)
def test_euler_in_sigma_is_ddim_zero(schedule):
    model = mixture_2d().model(schedule, "x0")
    x_T = prior(schedule, 8)
    for grid, steps in (("logsnr", 1), ("karras", 9), ("time_uniform", 25)):
        a = sample(model, x_T, solver="euler", variable="sigma", steps=steps, grid=grid, return_trajectory=True)
        b = sample(model, x_T, solver="ddim", steps=steps, grid=grid, return_trajectory=True)
        for xa, xb in zip(a.trajectory, b.trajectory):
            torch.testing.assert_close(xa, xb, rtol=1e-12, atol=1e-12)


def test_heun_spends_two_evaluations_per_step_but_one_on_the_last():
    sch = VPLinear()
    model = gaussian_2d().model(sch)
    for steps in (1, 2, 10):
        assert sample(model, prior(sch, 2), solver="heun", steps=steps).nfe == 2 * steps - 1 == Heun().final_nfe(steps)


def test_euler_maruyama_strong_order_one_against_torchsde_on_the_same_path():
    # Additive noise (g depends on t only), so Euler-Maruyama converges strongly with order 1. The reference is
    # torchsde's SRK (strong order 1.5 for additive noise) with dt = 2e-3 on the same Brownian interval; its own
    # error, measured against dt = 2.5e-4, is 1e-4, below 1% of the smallest Euler-Maruyama error here.
    sch = VPLinear()
    model = gaussian_2d().model(sch, "eps")
    x_T = prior(sch, 32)
    bm = brownian_path(x_T, sch.t_min, sch.t_max, seed=0)
    ref = reverse_sde_reference(model, x_T, torch.tensor([sch.t_max, sch.t_min], dtype=F64), bm, dt=2e-3)[-1]
    steps, err = (25, 50, 100, 200), []
    for n in steps:
        out = sample(model, x_T, solver="euler_maruyama", steps=n, grid="time_uniform", noise=bm)
        err.append(float((out.x - ref).pow(2).sum(-1).mean().sqrt()))  # root-mean-square pathwise error
    slope = fitted_slope(steps, err)
    # measured: errors 0.136, 0.075, 0.037, 0.019, slope 0.96 (other seeds: 0.95-1.02)
    assert 0.85 <= slope <= 1.15, (slope, err)
    assert err[-1] < 0.05


def test_euler_maruyama_weak_order_one_exact_moments():
    # exact output moments on Gaussian data (see measure_order); measured: order 0.997, plain slope 1.016
    m = measure_order("euler_maruyama")
    assert m.kind == "weak"
    assert abs(m.order - 1.0) <= 0.1, m
    assert abs(m.slope - 1.0) <= 0.15, m


def test_euler_maruyama_increment_scaling():
    # With the Brownian increment fixed to z, one step adds exactly sqrt(g^2 |dt|) z to the deterministic update.
    sch = VPLinear()
    model = gaussian_2d().model(sch)
    x = prior(sch, 4)
    ts = torch.tensor([0.8, 0.6], dtype=F64)
    z = torch.randn((1, *x.shape), generator=torch.Generator().manual_seed(1), dtype=F64)
    with_z = sample(model, x, solver="euler_maruyama", grid=ts, noise=z).x
    without = sample(model, x, solver="euler_maruyama", grid=ts, noise=torch.zeros_like(z)).x
    g2 = float(sch.g2(0.8))
    torch.testing.assert_close(with_z - without, math.sqrt(g2 * 0.2) * z[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n_corrector", [0, 1, 2])
def test_pc_runs_with_the_right_number_of_evaluations(n_corrector):
    sch = VEGeometric()
    model = gaussian_2d().model(sch, "score")
    out = sample(
        model, prior(sch, 8), solver="pc", n_corrector=n_corrector, steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert out.nfe == 10 * (1 + n_corrector) == PredictorCorrector(n_corrector=n_corrector).final_nfe(10)
    assert bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize(
    ("schedule", "predictor"),
    [(VPLinear(), "euler_maruyama"), (VEGeometric(), "reverse_diffusion")],
    ids=["vp-em", "ve-reverse_diffusion"],
)
def test_pc_output_matches_the_exact_marginal(schedule, predictor):
    # 1-D Gaussian data, 20000 samples started from the exact marginal at t_max; 200 steps with one Langevin
    # correction each. Tolerances: 5 standard errors (mean: sqrt(v/n); variance: v sqrt(2/n)) plus the
    # discretisation bias (measured: mean errors 0.006 / 0.002, relative variance errors 2.1% / 1.8%). The same run
    # with per-sample Langevin norms (norm="sample") is off by a factor 1e5 in variance: in 1-D the ratio
    # ||z|| / ||score|| is unbounded.
    data = Gaussian(torch.tensor([0.8], dtype=F64), torch.tensor([0.6], dtype=F64))
    model = data.model(schedule, "eps")
    n = 20000
    g = torch.Generator().manual_seed(5)

    def marginal(t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        return a * data.mean, a * a * data.std**2 + s * s

    m_T, v_T = marginal(schedule.t_max)
    x_T = m_T + v_T.sqrt() * torch.randn(n, 1, generator=g, dtype=F64)
    out = sample(
        model, x_T, solver="pc", predictor=predictor, n_corrector=1, steps=200, grid="time_uniform", generator=g
    )
    m_0, v_0 = marginal(schedule.t_min)
    se_mean, se_var = math.sqrt(float(v_0) / n), float(v_0) * math.sqrt(2.0 / n)
    assert abs(float(out.x.mean()) - float(m_0)) <= 5 * se_mean + 0.01
    assert abs(float(out.x.var()) - float(v_0)) <= 5 * se_var + 0.03 * float(v_0)


def test_pc_needs_extra_normals():
    sch = VPLinear()
    model = gaussian_2d().model(sch)
    x = prior(sch, 2)
    z = torch.zeros((3, *x.shape), dtype=F64)
    with pytest.raises(ValueError, match="independent normals besides `noise`"):
        sample(model, x, solver="pc", steps=3, noise=z)
    # a generator supplies the corrector's normals next to a noise tensor
    g1 = sample(model, x, solver="pc", steps=3, noise=z, generator=torch.Generator().manual_seed(3)).x
    g2 = sample(model, x, solver="pc", steps=3, noise=z, generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(g1, g2)
    # pre-drawn extra normals make it fully reproducible
    extra = torch.randn((3, 1, *x.shape), generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sample(model, x, solver="pc", steps=3, noise=TensorNoise(z, extra)).x
    b = sample(model, x, solver="pc", steps=3, noise=TensorNoise(z, extra)).x
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (PredictorCorrector, {"predictor": "ald"}, "predictor"),
        (PredictorCorrector, {"n_corrector": -1}, "n_corrector"),
        (PredictorCorrector, {"n_corrector": 1.0}, "n_corrector"),
        (PredictorCorrector, {"snr": 0.0}, "snr"),
        (PredictorCorrector, {"norm": "l1"}, "norm"),
        (Heun, {"variable": "lambda"}, "variable"),
    ],
)
def test_bad_options(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_metadata():
    em = get_solver("euler_maruyama")
    assert isinstance(em, EulerMaruyama) and em.stochastic and em.order == 1.0 and em.strong_order == 1.0
    assert get_solver("heun").order == 2.0 and not get_solver("euler").stochastic
