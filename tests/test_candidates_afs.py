"""AMED's analytical first step (``benchmarks/candidates/afs.py``, arXiv:2312.00094), against exact oracles: the
analytic prediction is the large-noise limit of the exact one (on ``N(0, I)`` data its relative error is
``sqrt(1 + sigma_ve^-2) - 1``, on a point mass at 0 the ``x0 = 0`` form is exact), in every parametrisation; the
wrapper never calls the network at the start time and saves exactly one NFE for every kind of solver; every other
evaluation is the network's."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest
import torch

from sde_diffusion import sample
from sde_diffusion.analytic import Gaussian, PointMass
from sde_diffusion.grids import make_grid
from sde_diffusion.models import Model
from sde_diffusion.studies.problems import get_schedule
from sde_diffusion.studies.specs import parse_solver_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def afs():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("benchmarks.candidates.afs")


def _boom(x, t):
    raise AssertionError("the network was called at the start time")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("schedule", ["edm", "vp-linear"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_analytic_prediction_is_the_large_noise_limit(afs, schedule, prediction):
    sch = get_schedule(schedule)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    gauss, point = Gaussian(torch.zeros(3), torch.ones(3)), PointMass(torch.zeros(3))
    errs = []
    for t in torch.linspace(0.5, 1.0, 4) * sch.t_max:
        sv = math.exp(-float(sch.lambda_(t)))  # sigma_ve = sigma / alpha
        tt = torch.full((16,), float(t))
        xt = x * float(sch.sigma(t))  # a state of the right scale (any x works: the maps are linear in x)
        amed = afs.AnalyticFirstStep(Model(_boom, sch, prediction), float(t)).eps(xt, tt)
        zero = afs.AnalyticFirstStep(Model(_boom, sch, prediction), float(t), "zero_x0").eps(xt, tt)
        exact_g, exact_p = gauss.eps(xt, tt, sch), point.eps(xt, tt, sch)
        # eps_amed / eps_exact = sqrt(1 + 1/sv^2) on N(0, I); = 1/sqrt(1 + 1/sv^2) on the point mass at 0
        assert _rel(amed, exact_g) == pytest.approx(math.sqrt(1 + sv**-2) - 1, rel=1e-6)
        assert _rel(amed, exact_p) == pytest.approx(1 - 1 / math.sqrt(1 + sv**-2), rel=1e-6)
        assert _rel(zero, exact_g) == pytest.approx(sv**-2, rel=1e-6)
        assert _rel(zero, exact_p) < 1e-12
        errs.append(_rel(amed, exact_g))
    assert all(b < a for a, b in zip(errs, errs[1:]))  # vanishes as sigma_T grows
    assert errs[-1] < 1e-3


SOLVERS = [
    "ddim",
    "ipndm:ab_order=3",
    "unipc:predictor_order=3,b_h=bh2",
    "dpm_solver++:order=3,multistep=true",
    "dpm_solver++:order=3,multistep=false",
    "deis:order=3",
    "heun",
    "pndm:warmup=rk4",
]


@pytest.mark.parametrize("spec", SOLVERS)
def test_wrapper_saves_exactly_one_nfe(afs, spec):
    sch = get_schedule("edm")
    data = Gaussian(torch.full((2,), 0.3), torch.full((2,), 0.5))
    exact = data.model(sch)
    seen = []

    def net(x, t):
        seen.append(float(t.max()))
        return exact(x, t)

    solver = parse_solver_spec(spec).build()
    steps = solver.steps_for_nfe(8)
    model = afs.AnalyticFirstStep(Model(net, sch, "eps"), sch.t_max)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(1)) * sch.t_max
    res = sample(model, x_T, solver=solver, steps=steps, grid="logsnr")
    assert res.nfe == len(seen) == model.nfe == model.base.nfe == solver.final_nfe(steps) - 1
    assert model.analytic_calls == 1
    assert max(seen) < sch.t_max
    assert bool(torch.isfinite(res.x).all())


def test_later_evaluations_are_the_networks(afs):
    """DDIM with AFS = one DDIM step with the analytic noise prediction, then DDIM with the network from there."""
    sch = get_schedule("vp-linear")
    data = Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([0.2, 1.5]))
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    ts = make_grid(sch, "logsnr", 5)
    res = sample(afs.AnalyticFirstStep(data.model(sch), sch.t_max), x_T, solver="ddim", grid=ts)
    a0, s0, a1, s1 = (float(f(ts[i])) for i in (0, 1) for f in (sch.alpha, sch.sigma))
    h = float(sch.lambda_(ts[1]) - sch.lambda_(ts[0]))
    x1 = (a1 / a0) * x_T - s1 * math.expm1(h) * x_T / math.sqrt(a0 * a0 + s0 * s0)
    rest = sample(data.model(sch), x1, solver="ddim", grid=ts[1:])
    assert res.nfe == rest.nfe == 4
    torch.testing.assert_close(res.x, rest.x, rtol=1e-12, atol=1e-12)


def test_exact_first_prediction_changes_nothing(afs):
    """On a point mass at 0 the ``x0 = 0`` form is the network's own output: AFS then only saves the evaluation."""
    sch = get_schedule("edm")
    model = PointMass(torch.zeros(3)).model(sch, "x0")
    x_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)) * sch.t_max
    for spec in ("ipndm:ab_order=3", "unipc:predictor_order=3,b_h=bh2"):
        plain = sample(model, x_T, solver=parse_solver_spec(spec).build(), steps=6)
        fast = sample(
            afs.AnalyticFirstStep(model, sch.t_max, "zero_x0"), x_T, solver=parse_solver_spec(spec).build(), steps=6
        )
        assert fast.nfe == plain.nfe - 1
        torch.testing.assert_close(fast.x, plain.x, rtol=1e-12, atol=1e-12)


def test_mixed_batch_refused(afs):
    sch = get_schedule("edm")
    model = afs.AnalyticFirstStep(Gaussian(torch.zeros(1), torch.ones(1)).model(sch), sch.t_max)
    with pytest.raises(ValueError, match="both at and below"):
        model(torch.ones(2, 1), torch.tensor([sch.t_max, 1.0]))


def test_budget_buys_one_more_step(afs):
    problems = importlib.import_module("benchmarks.accuracy.problems")  # (the fixture put ROOT on sys.path)
    problem = problems.make_problem("ring", "edm")
    x_T = problems.start_states(problem, 4, 0)
    for budget in (5, 10):
        x, nfe, steps = afs.run(problem, "ipndm:ab_order=3", "karras", budget, x_T, afs=True)
        assert (nfe, steps) == (budget, budget + 1)
        assert afs.run(problem, "ipndm:ab_order=3", "karras", budget, x_T, afs=False)[1:] == (budget, budget)


def test_calibrated_grid_families(afs):
    assert afs.family_of("dp[dpm_solver++, vp_power:p=2.118672]+cd") == ("vp_power:p=2.118672", False)
    assert afs.family_of("dp[ddim, cosine_power:p=2.716547]") == ("cosine_power:p=2.716547", False)
    assert afs.family_of("lambda_power:p=0.69+cd") == ("lambda_power:p=0.69", False)
    assert afs.family_of("karras:rho=6.4") == ("karras:rho=6.4", True)


@pytest.mark.parametrize("spec", ["ddim", "ipndm:ab_order=3", "unipc:predictor_order=3,b_h=bh2", "heun"])
def test_agrees_with_the_librarys_analytic_first_step(afs, spec):
    """The benchmark's wrapper (a model that is analytic at ``t >= t_afs``) and ``sample(analytic_first_step=True)``
    (a one-shot stand-in handed to step 0) are two implementations of the same method: same states, same NFE."""
    sch = get_schedule("vp-linear")
    model = Gaussian(torch.tensor([0.5, -1.0, 0.2]), torch.tensor([0.2, 1.5, 0.7])).model(sch)
    x_T = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    ours = sample(afs.AnalyticFirstStep(model, sch.t_max), x_T, solver=parse_solver_spec(spec).build(), steps=6)
    lib = sample(model, x_T, solver=parse_solver_spec(spec).build(), steps=6, analytic_first_step=True)
    assert ours.nfe == lib.nfe
    torch.testing.assert_close(ours.x, lib.x, rtol=1e-12, atol=1e-12)
