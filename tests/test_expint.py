"""The shared exponential-integrator weights (solvers/expint.py) against exact symbolic integrals (sympy)."""

import random

import pytest
import sympy as sp
import torch

from sde_diffusion.solvers.expint import lagrange_weights, phi, phis
from sde_diffusion.symbolic import lagrange_exp_weights, phi_symbolic

H = sp.symbols("h", positive=True)
STEPS = ("1e-8", "1e-5", "1e-3", "0.05", "0.7", "1.0", "2.5", "6.0")


def _random_nodes(rng: random.Random, m: int, multistep: bool) -> list[sp.Rational]:
    """Node ratios u_j/h as exact rationals: 0 first, then past points (cumulative random step ratios in [0.2, 3],
    negative) or distinct stages in (0, 1]."""
    if multistep:
        gaps = [sp.Rational(rng.randint(20, 300), 100) for _ in range(m - 1)]
        return [sp.Integer(0)] + [-sum(gaps[: j + 1]) for j in range(m - 1)]
    return [sp.Integer(0)] + [sp.Rational(v, 100) for v in sorted(rng.sample(range(1, 101), m - 1))]


NODE_SETS = [
    [0],
    [0, sp.Rational(1, 2)],
    [0, sp.Rational(1, 3), sp.Rational(2, 3)],
    [0, -1, -2],
    [0, -1, -2, -3],
]
_rng = random.Random(20240611)
NODE_SETS += [_random_nodes(_rng, 3, True), _random_nodes(_rng, 3, False), _random_nodes(_rng, 4, True)]


@pytest.mark.parametrize("nodes", NODE_SETS, ids=lambda n: ",".join(str(x) for x in n))
@pytest.mark.parametrize("sign", [1, -1])
def test_lagrange_weights_equal_sympy(nodes, sign):
    """Numeric float64 weights == exact integrals, to 1e-12 relative to the largest weight of the step, for step
    sizes from 1e-8 (series branch of phi) to 6 (recurrence branch), noise (+1) and data (-1) prediction."""
    exact = lagrange_exp_weights(nodes, H, sign)
    r = torch.tensor([float(x) for x in nodes], dtype=torch.float64)
    for hv in STEPS:
        want = torch.tensor([float(sp.N(w.subs(H, sp.Float(hv, 60)), 40)) for w in exact], dtype=torch.float64)
        got = lagrange_weights(r, torch.tensor(float(hv)), sign)
        err = (got - want).abs().max() / want.abs().max()
        assert err <= 1e-12, (nodes, sign, hv, got.tolist(), want.tolist())


def test_lagrange_weights_vectorised_over_steps():
    """A batch of (step, node) sets gives the same weights as one at a time (the grid tables rely on it)."""
    gen = torch.Generator().manual_seed(0)
    r = torch.cat([torch.zeros(5, 1), -torch.cumsum(0.2 + torch.rand(5, 2, generator=gen), -1)], -1)
    h = 0.01 + torch.rand(5, generator=gen)
    batch = lagrange_weights(r, h, -1)
    for i in range(5):
        assert torch.allclose(batch[i], lagrange_weights(r[i], h[i], -1), rtol=0, atol=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_functions_equal_sympy(k):
    """phi_k(z) for tiny, moderate and large |z| of both signs, relative error below 1e-13."""
    z = sp.symbols("z")
    exact = phi_symbolic(k, z)
    for zv in ("-30", "-3", "-1.0", "-0.999", "-1e-6", "1e-9", "0.5", "1.0", "4"):
        want = float(sp.N(exact.subs(z, sp.Float(zv, 60)), 40))
        got = float(phi(k, torch.tensor(float(zv))))
        assert abs(got - want) <= 1e-13 * abs(want), (k, zv, got, want)
    assert float(phis(torch.tensor(0.0), k)[-1]) == pytest.approx(1.0 / sp.factorial(k), rel=1e-15)
