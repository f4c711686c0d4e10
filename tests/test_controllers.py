"""The one loop with step-size controllers: FixedGrid (bit-for-bit the fixed path), PI control, the DPM-Solver rule."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion import Gaussian, GaussianMixture, Sampler, VPLinear, sample
from sde_diffusion.solvers import get_solver
from sde_diffusion.solvers.controllers import DPMSolverStepRule, FixedGrid, PIController

SCH = VPLinear()
GM = GaussianMixture(torch.tensor([[1.0, -1.0], [-2.0, 0.5], [0.3, 2.0]]), torch.tensor([0.2, 0.5, 0.1]))


def _x(n=6, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _manual(model, x, solver, steps, **kw):
    """The fixed path written out with the public pieces: Sampler.init / step."""
    s = Sampler(model, x, solver=solver, steps=steps, **kw)
    x, state = s.init(x)
    for i in range(s.num_steps):
        x, state = s.step(x, state, i)
    return x


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("ddim", {}),
        ("dpm_solver++", {"order": 3}),
        ("dpm_solver", {"order": 3}),
        ("heun", {}),
        ("unipc", {}),
        ("pndm", {}),
        ("deis", {"order": 3}),
    ],
)
def test_fixed_grid_is_bit_for_bit_the_fixed_path(name, opts):
    model, x = GM.model(SCH), _x()
    default = sample(model, x, solver=get_solver(name, **opts), steps=9).x
    fixed = sample(model, x, solver=get_solver(name, **opts), steps=9, controller=FixedGrid()).x
    manual = _manual(model, x, get_solver(name, **opts), 9)
    assert torch.equal(default, fixed) and torch.equal(default, manual)


def test_fixed_grid_stochastic_same_noise_same_bits():
    model, x = GM.model(SCH), _x()
    runs = [
        sample(model, x, solver="ddpm", steps=7, generator=torch.Generator().manual_seed(5), controller=c).x
        for c in (None, FixedGrid())
    ]
    assert torch.equal(*runs)


@pytest.mark.parametrize("order", [2, 3])
def test_embedded_dpm_solver_on_a_fixed_grid_is_dpm_solver(order):
    """The adaptive solver is a step plus a controller: on a fixed grid its step is DPM-Solver-``order`` itself."""
    model, x = GM.model(SCH), _x()
    a = sample(model, x, solver="dpm_solver_adaptive", order=order, controller=FixedGrid(), steps=6)
    b = sample(model, x, solver="dpm_solver", order=order, lower_order_final=False, steps=6)
    assert a.nfe == b.nfe == 6 * order
    assert torch.equal(a.x, b.x)


def test_embedded_multistep_on_a_fixed_grid_is_exact_3m():
    """adaptive_multistep on a fixed grid: first step DPM-Solver++-1 (its corrector evaluation is reused as the next
    step's node), then exact Lagrange weights through 2 and 3 nodes = DPM-Solver++ 3M with exact weights."""
    model, x = GM.model(SCH), _x()
    a = sample(model, x, solver="adaptive_multistep", order=3, controller=FixedGrid(), steps=20)
    b = sample(model, x, solver="dpm_solver++", order=3, multistep=True, update="exact", steps=20)
    assert a.nfe == b.nfe == 20
    torch.testing.assert_close(a.x, b.x, rtol=1e-11, atol=1e-11)


def test_pi_controller_counts_and_rejections():
    model, x = GM.model(SCH), _x(8, 2, 0)
    ctrl = PIController(rtol=1e-4, atol=1e-4, h_init=10.0, safety=1.0, fac_max=5.0)
    r = sample(model, x, solver="adaptive_multistep", controller=ctrl)
    info = r.info
    assert info["rejected"] > 0
    assert len(r.ts) == info["accepted"] + 1 == len(info["h"]) + 1 == len(info["error_estimates"]) + 1
    assert all(e <= 1.0 for e in info["error_estimates"])
    # only a rejected *first* step wastes an evaluation (its corrector); later rejections cost none
    solver = get_solver("adaptive_multistep")
    assert 0 < info["rejected_nfe"] <= info["rejected"]
    assert r.nfe == info["nfe"] == solver.final_nfe(info["accepted"]) + info["rejected_nfe"]
    lam = SCH.lambda_(r.ts)
    torch.testing.assert_close(torch.tensor(info["h"], dtype=torch.float64), lam[1:] - lam[:-1], rtol=1e-12, atol=0)


def test_controller_given_explicitly_equals_the_solver_default():
    model, x = GM.model(SCH), _x()
    a = sample(model, x, solver="adaptive_multistep", rtol=1e-5, atol=1e-5)
    b = sample(model, x, solver="adaptive_multistep", controller=PIController(rtol=1e-5, atol=1e-5))
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe and torch.equal(a.ts, b.ts)


def test_pi_tolerance_proportionality_through_an_explicit_controller():
    """err/tol stays in a band over three decades (the accepted solution is one order above the estimate)."""
    g = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 1.0, 0.05]))
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    exact = g.flow(x, SCH.t_max, SCH.t_min, SCH)
    ratios = []
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):
        r = sample(g.model(SCH), x, solver="adaptive_multistep", controller=PIController(rtol=tol, atol=tol))
        ratios.append(float((r.x - exact).pow(2).mean(1).sqrt().max()) / tol)
    assert all(0.25 <= q <= 10.0 for q in ratios), ratios


def test_dpm_rule_counts_and_tolerance():
    model, x = GM.model(SCH, "eps"), _x()
    nfes = []
    for rtol in (0.05, 0.005):
        r = sample(model, x, solver="dpm_solver_adaptive", order=3, controller=DPMSolverStepRule(rtol=rtol))
        info = r.info
        assert info["nfe"] == r.nfe == 3 * info["accepted"] + 2 * info["rejected"]
        assert float(r.ts[-1]) == SCH.t_min and len(r.ts) == info["accepted"] + 1
        nfes.append(r.nfe)
    assert nfes[1] > nfes[0]


def test_controller_misuse_is_refused():
    model, x = GM.model(SCH), _x()
    with pytest.raises(ValueError, match="error estimate"):
        sample(model, x, solver="ddim", controller=PIController())
    with pytest.raises(TypeError, match="controller must be"):
        sample(model, x, solver="ddim", steps=4, controller="pi")
    with pytest.raises(ValueError, match="steps= cannot be honoured"):
        sample(model, x, solver="dpm_solver_adaptive", steps=10)
    with pytest.raises(ValueError, match="grid= cannot be honoured"):
        sample(model, x, solver="dpm_solver_adaptive", grid="logsnr")
    with pytest.raises(ValueError, match="no noise"):
        sample(model, x, solver="dpm_solver_adaptive", noise=torch.zeros(3, *x.shape))
    for bad in (dict(rtol=-1.0), dict(rtol=0.0, atol=0.0), dict(max_steps=0), dict(h_init=math.nan)):
        with pytest.raises(ValueError):
            PIController(**bad)


def test_max_steps_bounds_the_loop():
    model, x = GM.model(SCH), _x()
    with pytest.raises(RuntimeError, match="max_steps=3"):
        sample(model, x, solver="adaptive_multistep", controller=PIController(rtol=1e-9, atol=1e-9, max_steps=3))


def test_flat_namespace():
    assert sd.FixedGrid is FixedGrid and sd.PIController is PIController and sd.DPMSolverStepRule is DPMSolverStepRule
    assert not FixedGrid().adaptive and PIController().adaptive
