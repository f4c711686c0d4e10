"""Measured orders of the stochastic samplers.

* Weak order: exact W2 between the *exact law* of the output on Gaussian data (affine probes, no Monte-Carlo
  floor; :func:`~sde_diffusion.studies.stochastic.gaussian_law`) and the true marginal, fitted against the step
  count on a logSNR grid. Asserted within +-0.2 of the declared ``order``; one-sided (at least ``order - 0.2``)
  where Gaussian data make a method better than its general order (the multistep SDE solvers: their polynomial
  extrapolation of noisy data predictions is exact in the mean for affine predictions).
* Strong order: RMS distance to torchsde's reverse-SDE solution on the same Brownian path. The full check is
  ``slow``; the default run has a reduced version (fewer steps, a coarser reference) with the same bounds.
"""

import pytest
import torch

from sde_diffusion.solvers import get_solver
from sde_diffusion.studies import get_problem
from sde_diffusion.studies.stochastic import fitted_order, gaussian_law, strong_errors, weak_errors

pytest.importorskip("torchsde")

STEPS = (16, 32, 64, 128)

# (name, options, two-sided?, steps)
WEAK = [
    ("euler_ancestral", {}, True, STEPS),
    ("dpm_solver_2_ancestral", {}, True, STEPS),
    ("dpm_solver++_2s_ancestral", {}, True, STEPS),
    ("dpm_solver++_2s_ancestral", {"eta": 0.5}, True, STEPS),
    ("sde_dpm_solver++_2s", {}, True, STEPS),
    ("sde_dpm_solver++_2s", {"r": 0.3}, True, (64, 128, 256, 512)),  # asymptotic later than r = 1/2
    ("edm_stochastic", {"s_churn": 5.0}, True, STEPS),
    ("sde_dpm_solver++_3m", {}, False, STEPS),
    ("sde_dpm_solver++", {"eta": 1.0}, False, STEPS),
    ("ddpm", {}, True, STEPS),
    ("euler_maruyama", {}, True, STEPS),
]


@pytest.fixture(scope="module")
def gauss():
    return get_problem("gauss2d")


@pytest.mark.parametrize("name, opts, two_sided, steps", WEAK, ids=[f"{w[0]}{w[1]}" for w in WEAK])
def test_weak_order(gauss, name, opts, two_sided, steps):
    s = get_solver(name, **opts)
    p = fitted_order(steps, weak_errors(gauss, s, steps))
    assert p >= s.order - 0.2, p
    if two_sided:
        assert p <= s.order + 0.2, p


def test_weak_order_restart(gauss):
    """Restart converges with Heun's order when its inner runs are refined with the main grid (the default); with a
    fixed inner step count the error stalls, as its declared order 0 says."""
    refined, fixed = get_solver("restart"), get_solver("restart", intervals=((0.1, 2.0, 2, 3),))
    assert refined.order == 2.0 and fixed.order == 0.0
    for s in (refined, fixed):
        assert abs(fitted_order(STEPS, weak_errors(gauss, s, STEPS)) - s.order) <= 0.2


def test_exact_law_matches_samples(gauss):
    """The probe law equals the empirical mean/variance of real runs (within Monte-Carlo error)."""
    s = get_solver("sde_dpm_solver++_2s")
    mean, var = gaussian_law(gauss, s, 8)
    g = torch.Generator().manual_seed(0)
    from sde_diffusion import sample

    x = sample(gauss.model(), gauss.start(40_000, g), solver=s, steps=8, generator=g).x.reshape(40_000, -1)
    assert torch.allclose(x.mean(0), mean, atol=4 * (var / 40_000).sqrt().max())
    assert torch.allclose(x.var(0), var, rtol=0.03)


STRONG = [
    "ddpm",
    "sde_dpm_solver++",
    "euler_ancestral",
    "dpm_solver_2_ancestral",
    "dpm_solver++_2s_ancestral",
    "sde_dpm_solver++_2s",
    "sde_dpm_solver++_3m",
]


def test_strong_order_fast(gauss):
    """Reduced strong-order check: two solvers, steps 12..48, a coarser torchsde reference."""
    steps = (12, 24, 48)
    ref = None
    for name in ("euler_ancestral", "sde_dpm_solver++_2s"):
        s = get_solver(name)
        errs, ref = strong_errors(gauss, s, steps, batch=16, reference=ref, segments=8, substeps=24)
        assert abs(fitted_order(steps, errs) - s.strong_order) <= 0.25, (name, errs)


@pytest.mark.slow
def test_strong_orders(gauss):
    steps = (32, 64, 128, 256)
    ref = None
    for name in STRONG:
        s = get_solver(name)
        errs, ref = strong_errors(gauss, s, steps, batch=64, reference=ref)
        assert abs(fitted_order(steps, errs) - s.strong_order) <= 0.2, (name, errs)
