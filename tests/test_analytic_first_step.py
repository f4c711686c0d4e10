"""``sample(..., analytic_first_step=True)`` (AMED's analytical first step, arXiv:2312.00094): the first evaluation is
the large-noise limit ``x / sqrt(alpha^2 + sigma^2)`` of the noise prediction, checked against exact oracles; it costs
no network call, so every solver spends exactly one evaluation less; everything after it is the network's."""

from __future__ import annotations

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.models import AnalyticFirstStep
from sde_diffusion.solvers import get_solver, registered_solvers


def _boom(x, t):
    raise AssertionError("the network was called")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("schedule", [sd.EDM(), sd.VPLinear()], ids=["edm", "vp-linear"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_first_prediction_is_the_large_noise_limit(schedule, prediction):
    """On N(0, I) data the exact eps is ``sigma x / (alpha^2 + sigma^2)``: the analytic one is off by the factor
    ``sqrt(1 + s^-2)`` (``s = sigma / alpha``); on a point mass at 0 (eps = x / sigma) by ``1 / sqrt(1 + s^-2)``.
    Both vanish as the noise grows, in every parametrisation of the network."""
    gauss, point = sd.Gaussian(torch.zeros(3), torch.ones(3)), sd.PointMass(torch.zeros(3))
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    for frac in (0.25, 0.5, 1.0):
        t = frac * schedule.t_max
        tt = torch.full((16,), t)
        xt = x * float(schedule.sigma(torch.tensor(t)))
        s = math.exp(-float(schedule.lambda_(torch.tensor(t))))
        stand_in = AnalyticFirstStep(sd.Model(_boom, schedule, prediction), xt)
        eps = stand_in.predict(xt, tt, "eps")
        assert _rel(eps, gauss.eps(xt, tt, schedule)) == pytest.approx(math.sqrt(1 + s**-2) - 1, rel=1e-6)
        assert _rel(eps, point.eps(xt, tt, schedule)) == pytest.approx(1 - 1 / math.sqrt(1 + s**-2), rel=1e-6)
        # later calls are the network's
        with pytest.raises(AssertionError, match="network was called"):
            stand_in.predict(xt, tt, "eps")


def _fixed_step_solvers():
    out = []
    for name in sorted(registered_solvers()):
        solver = get_solver(name)
        if solver.adaptive or solver.direction != "backward":
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("name", _fixed_step_solvers())
def test_saves_exactly_one_evaluation(name):
    """Every backward fixed-step solver: ``final_nfe(steps) - 1`` network calls, none at the initial state, and
    the same result as handing the solver a model whose first output is the analytic one."""
    sch = sd.VPLinear()
    mix = sd.GaussianMixture(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.3, 0.3]))
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    solver = get_solver(name)
    steps = 6
    seen = []

    def net(x, t):
        seen.append(x)
        return mix.eps(x, t, sch)

    model = sd.Model(net, sch, "eps")
    kw = {"generator": torch.Generator().manual_seed(1)} if solver.stochastic else {}
    res = sd.sample(model, x_T, solver=solver, steps=steps, analytic_first_step=True, **kw)
    assert res.nfe == model.nfe == solver.final_nfe(steps) - 1
    assert all(x is not x_T for x in seen)
    # the same solve with the first network output replaced by hand
    calls = [0]

    def first_analytic(x, t):
        calls[0] += 1
        if calls[0] == 1:
            a, s = sch.alpha(t[:1]).item(), sch.sigma(t[:1]).item()
            return x / math.sqrt(a * a + s * s)
        return mix.eps(x, t, sch)

    kw = {"generator": torch.Generator().manual_seed(1)} if solver.stochastic else {}
    ref = sd.sample(sd.Model(first_analytic, sch, "eps"), x_T, solver=solver, steps=steps, **kw)
    assert torch.allclose(res.x, ref.x, rtol=1e-12, atol=1e-12)


def test_first_step_error_on_a_point_mass():
    """On a point mass at 0 (EDM, VE) the flow is ``x_t = x_T sigma_t / sigma_T`` and DDIM follows it exactly. The
    analytic first evaluation ``x / sqrt(1 + sigma_0^2)`` instead of ``x / sigma_0`` makes the first step land at
    ``x (1 + (sigma_1 - sigma_0) / sqrt(1 + sigma_0^2))``; the later (exact, linear) steps carry that relative error
    ``(sigma_0 / sigma_1)(1 + (sigma_1 - sigma_0) / sqrt(1 + sigma_0^2)) - 1`` to the end: ``O(sigma_max^-2)``."""
    point = sd.PointMass(torch.zeros(2))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    errs = []
    for smax in (40.0, 80.0, 160.0):
        sch = sd.EDM(sigma_max=smax)
        model = point.model(sch, "eps")
        flow = x * sch.sigma_min  # x_T sigma_min / sigma_max with x_T = sigma_max x
        exact = sd.sample(model, x * smax, solver="ddim", steps=4)
        assert torch.allclose(exact.x, flow, rtol=1e-12, atol=0)  # the oracle
        afs = sd.sample(model, x * smax, solver="ddim", steps=4, analytic_first_step=True)
        s0, s1 = float(exact.ts[0]), float(exact.ts[1])
        want = (s0 / s1) * (1 + (s1 - s0) / math.sqrt(1 + s0 * s0)) - 1
        assert torch.allclose(afs.x / flow - 1, torch.full_like(x, want), rtol=1e-9, atol=1e-15)
        errs.append(want)
    assert 0 < errs[2] < errs[1] < errs[0] < 1e-2


def test_manual_sampler_matches_sample():
    sch = sd.VPLinear()
    model = sd.Gaussian(torch.zeros(3), 0.5 * torch.ones(3)).model(sch, "x0")
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    want = sd.sample(model, x_T, solver="unipc", steps=5, analytic_first_step=True)
    s = sd.Sampler(model, x_T, solver="unipc", steps=5, analytic_first_step=True)
    x, state = s.init(x_T)
    for i in range(s.num_steps):
        x, state = s.step(x, state, i)
    assert torch.equal(x, want.x)


def test_thresholding_applies_to_the_analytic_prediction():
    sch = sd.VPLinear()
    x = 50.0 * torch.ones(2, 4)
    thr = sd.DynamicThresholding(percentile=0.5, max_value=1.0)
    stand_in = AnalyticFirstStep(sd.Model(_boom, sch, "eps", thresholding=thr), x)
    x0 = stand_in.predict(x, torch.full((2,), 1.0), "x0")
    assert float(x0.abs().max()) <= 1.0 + 1e-12


def test_refusals():
    sch = sd.EDM()
    model = sd.Gaussian(torch.zeros(2), torch.ones(2)).model(sch, "eps")
    x = 80.0 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="analytic_first_step must be a bool"):
        sd.sample(model, x, solver="ddim", steps=4, analytic_first_step="yes")
    with pytest.raises(ValueError, match="fixed grid"):
        sd.sample(model, x, solver="adaptive_multistep", analytic_first_step=True)
    with pytest.raises(ValueError, match="runs forward"):
        sd.sample(model, x, solver="ddim_inverse", steps=4, analytic_first_step=True)
    # EDM's churn perturbs the state before its first evaluation: the stand-in refuses to answer there
    with pytest.raises(ValueError, match="not at the initial state"):
        sd.sample(
            model,
            x,
            solver="edm_stochastic",
            s_churn=40.0,
            steps=4,
            analytic_first_step=True,
            generator=torch.Generator().manual_seed(0),
        )
