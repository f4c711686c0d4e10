"""The numeric schedules against sympy derivations evaluated with mpmath at 30 digits.

``symbolic.schedule_formulas`` derives ``log alpha``, ``log sigma``, ``f``, ``g^2``, ``lambda`` and ``inverse_lambda``
from the definitions of ``alpha(t)`` and ``sigma(t)`` alone. At random points the float64 values must agree to
``1e-12`` relative to ``max(1, |value|)``. Run with ``pytest -s`` to see the measured errors.
"""

from __future__ import annotations

import random

import mpmath
import pytest
import torch

from sde_diffusion import symbolic
from sde_diffusion.schedules import EDM, SubVPLinear, VEGeometric, VPCosine, VPLinear

TOL = 1e-12
N_POINTS = 25
QUANTITIES = ("log_alpha", "log_sigma", "f", "g2", "lambda_")

_rng = random.Random(20240611)


def _random_params():
    # round decimals, so that sympy's nsimplify turns them into the exact rationals the floats stand for
    b0 = round(_rng.uniform(0.01, 1.0), 3)
    b1 = round(b0 + _rng.uniform(1.0, 30.0), 2)
    smin = round(_rng.uniform(0.002, 0.5), 4)
    smax = round(_rng.uniform(5.0, 500.0), 2)
    return {
        "vp_linear": ({"beta_min": b0, "beta_max": b1}, VPLinear),
        "subvp_linear": ({"beta_min": b0, "beta_max": b1}, SubVPLinear),
        "vp_cosine": ({"s": round(_rng.uniform(0.001, 0.05), 4)}, VPCosine),
        "ve_geometric": ({"sigma_min": smin, "sigma_max": smax}, VEGeometric),
    }


CASES = [
    ("vp_linear", {}, VPLinear()),
    ("subvp_linear", {}, SubVPLinear()),
    ("vp_cosine", {}, VPCosine()),
    ("ve_geometric", {}, VEGeometric()),
    ("edm", {}, EDM()),
    ("edm", {}, EDM(sigma_min=1e-4, sigma_max=500.0)),
] + [(name, params, cls(**params)) for name, (params, cls) in _random_params().items()]


def _points(lo: float, hi: float, n: int) -> list[float]:
    return [lo, hi] + [_rng.uniform(lo, hi) for _ in range(n)]


def _rel_err(numeric: float, exact) -> float:
    return float(abs(mpmath.mpf(numeric) - exact) / max(1, abs(exact)))


@pytest.mark.parametrize(
    ("name", "params", "schedule"),
    CASES,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}" for n, p, _ in CASES],
)
def test_schedule_matches_symbolic_derivation(name, params, schedule):
    formulas = symbolic.schedule_formulas(name, **params)
    exact = formulas.numeric()
    errors = {}
    with mpmath.workdps(30):
        ts = _points(schedule.t_min, schedule.t_max, N_POINTS)
        for q in QUANTITIES:
            num = getattr(schedule, q)(torch.tensor(ts, dtype=torch.float64)).tolist()
            errors[q] = max(_rel_err(v, exact[q](mpmath.mpf(ti))) for v, ti in zip(num, ts))
        lams = _points(schedule.lambda_min, schedule.lambda_max, N_POINTS)
        num = schedule.inverse_lambda(torch.tensor(lams, dtype=torch.float64)).tolist()
        errors["inverse_lambda"] = max(_rel_err(v, exact["inverse_lambda"](mpmath.mpf(li))) for v, li in zip(num, lams))
    print(
        f"\n[symbolic] {schedule!r}: max error rel. to max(1,|value|): "
        + ", ".join(f"{q}={e:.2e}" for q, e in errors.items())
    )
    bad = {q: e for q, e in errors.items() if not e <= TOL}
    assert not bad, f"{schedule!r}: {bad}"


def test_symbolic_formulas_are_derived_not_copied():
    # f and g2 really are derivatives: d/dt of the symbolic log alpha / sigma^2 at a point, by mpmath's own diff
    formulas = symbolic.schedule_formulas("vp_cosine", s=0.008)
    exact = formulas.numeric()
    with mpmath.workdps(30):
        t0 = mpmath.mpf("0.37")
        f = mpmath.diff(exact["log_alpha"], t0)
        sigma2 = lambda u: mpmath.exp(2 * exact["log_sigma"](u))  # noqa: E731
        g2 = mpmath.diff(sigma2, t0) - 2 * f * sigma2(t0)
        assert abs(f - exact["f"](t0)) < mpmath.mpf("1e-25")
        assert abs(g2 - exact["g2"](t0)) < mpmath.mpf("1e-25")


def test_unknown_symbolic_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        symbolic.schedule_formulas("vp_quadratic")
