"""Identities of the stochastic samplers: ``eta = 0`` (no churn, no restarts) is the ODE counterpart to 1e-12,
Euler-ancestral is DDIM with the same ``eta``, NFE counts, option validation, the Brownian-bridge sub-step draw."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.solvers import get_solver
from sde_diffusion.solvers.base import GeneratorNoise, StepNoise
from sde_diffusion.solvers.sde_dpm_solver import substep_increment


def _setup(schedule=None):
    sch = schedule or sd.schedules.VPLinear()
    data = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.2, -0.8]]), torch.tensor([0.2, 0.3, 0.1]))
    x = float(sch.sigma(sch.t_max)) * torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    return data.model(sch), x


ODE_PAIRS = [
    (("euler_ancestral", {"eta": 0.0}), ("ddim", {})),
    (("dpm_solver_2_ancestral", {"eta": 0.0}), ("dpm_solver", {"order": 2, "lower_order_final": False})),
    (
        ("dpm_solver++_2s_ancestral", {"eta": 0.0}),
        ("dpm_solver++", {"order": 2, "multistep": False, "lower_order_final": False}),
    ),
    (
        ("sde_dpm_solver++_2s", {"eta": 0.0}),
        ("dpm_solver++", {"order": 2, "multistep": False, "lower_order_final": False}),
    ),
    (("sde_dpm_solver++_3m", {"eta": 0.0}), ("dpm_solver++", {"order": 3, "multistep": True, "update": "heun"})),
    (("edm_stochastic", {"s_churn": 0.0}), ("heun", {"variable": "sigma"})),
    (("restart", {"intervals": ((0.1, 2.0, 0, 3),)}), ("heun", {"variable": "sigma"})),
]


@pytest.mark.parametrize("schedule", [sd.schedules.VPLinear(), sd.schedules.EDM()], ids=["vp", "edm"])
@pytest.mark.parametrize("ours, ode", ODE_PAIRS, ids=[p[0][0] for p in ODE_PAIRS])
def test_zero_noise_is_the_ode_counterpart(ours, ode, schedule):
    model, x = _setup(schedule)
    s = get_solver(ours[0], **ours[1])
    assert not s.stochastic and s.strong_order is None
    got = sd.sample(model, x, solver=s, steps=12, grid="karras")
    want = sd.sample(model, x, solver=ode[0], steps=12, grid="karras", **ode[1])
    scale = float(x.abs().max())
    assert torch.allclose(got.x, want.x, rtol=0, atol=1e-12 * scale)
    assert got.nfe == want.nfe == s.final_nfe(12)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_euler_ancestral_is_ddim_with_the_same_eta(eta):
    model, x = _setup()
    noise = torch.randn((10, *x.shape), generator=torch.Generator().manual_seed(1))
    a = sd.sample(model, x, solver="euler_ancestral", steps=10, eta=eta, noise=noise).x
    b = sd.sample(model, x, solver="ddim", steps=10, eta=eta, noise=noise).x
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("euler_ancestral", {}),
        ("dpm_solver_2_ancestral", {}),
        ("dpm_solver++_2s_ancestral", {}),
        ("sde_dpm_solver++_2s", {"r": 0.4}),
        ("sde_dpm_solver++_3m", {}),
        ("edm_stochastic", {"s_churn": 10.0}),
        ("restart", {}),
    ],
)
def test_nfe_and_metadata(name, opts):
    model, x = _setup()
    s = get_solver(name, **opts)
    assert s.stochastic and s.reference.startswith("arXiv:")
    assert s.order >= 1 and (s.strong_order is None or s.strong_order > 0)
    r = sd.sample(model, x, solver=s, steps=9, generator=torch.Generator().manual_seed(0))
    assert r.nfe == s.final_nfe(9)
    assert torch.isfinite(r.x).all()
    assert get_solver(name, **s.options()).key() == s.key()


@pytest.mark.parametrize(
    "name, opts",
    [
        ("euler_ancestral", {"eta": 1.5}),
        ("euler_ancestral", {"eta": -0.1}),
        ("dpm_solver++_2s_ancestral", {"s_noise": -1.0}),
        ("sde_dpm_solver++_2s", {"r": 1.0}),
        ("sde_dpm_solver++_2s", {"r": 0.0}),
        ("edm_stochastic", {"s_churn": -1.0}),
        ("edm_stochastic", {"s_tmin": 2.0, "s_tmax": 1.0}),
        ("restart", {"intervals": ((2.0, 1.0, 1, 2),)}),
        ("restart", {"intervals": ((0.1, 1.0, 1, 0),)}),
        ("restart", {"intervals": ((0.1, 1.0, 1),)}),
    ],
)
def test_bad_options_raise(name, opts):
    with pytest.raises(ValueError):
        get_solver(name, **opts)


def test_bridge_substep_has_the_brownian_correlation():
    """Without a path, the sub-step increment over the first fraction ``f`` of a step is ``sqrt(f) z + sqrt(1-f) xi``:
    unit variance and correlation ``sqrt(f)`` with the step's increment ``z``, as for Brownian motion."""
    x = torch.zeros(200_000)
    ts = torch.tensor([1.0, 0.5], dtype=torch.float64)
    src = GeneratorNoise(torch.Generator().manual_seed(0))
    step = StepNoise(src, 0, ts)
    z = step.increment(x)
    f = 0.2 / 0.5
    z1 = substep_increment(step, x, 0.8, f, z)
    assert abs(float(z1.var()) - 1.0) < 0.02
    assert abs(float((z1 * z).mean()) - math.sqrt(f)) < 0.01
