"""Time grids: Hypothesis properties over random schedules (strictly decreasing, exact end points, inside the
domain, ``steps + 1`` distinct points, uniform in the grid's own variable) and the validation of explicit grids."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sde_diffusion import testing
from sde_diffusion.grids import (
    GRID_FAMILIES,
    GRIDS,
    family_lambdas,
    format_grid,
    grid_from_lambdas,
    karras,
    logsnr,
    make_grid,
    parse_grid,
    time_quadratic,
    time_uniform,
    validate_grid,
)
from sde_diffusion.schedules import EDM, VEGeometric, VPCosine, VPDiscrete, VPLinear

F64 = torch.float64


def _spacing_is_uniform(u: torch.Tensor, rtol: float) -> None:
    """``u`` is an arithmetic progression: every difference equals the mean one, relative to the span."""
    d = u[1:] - u[:-1]
    span = float((u[-1] - u[0]).abs())
    assert float((d - d.mean()).abs().max()) <= rtol * max(span, 1.0), (d.min().item(), d.max().item())


@st.composite
def schedule_and_window(draw):
    """A random schedule, a step count and a sub-window ``t_end < t_start`` of its domain (or the default ends)."""
    sch = draw(testing.schedules(), label="schedule")
    steps = draw(st.integers(1, 200), label="steps")
    if draw(st.booleans(), label="default ends"):
        return sch, steps, None, None
    lo, hi = sch.t_min, sch.t_max
    a = draw(st.floats(0.0, 1.0), label="a")
    b = draw(st.floats(0.0, 1.0), label="b")
    # (clamped: lo + 1.0 * (hi - lo) can round past hi)
    t_end, t_start = sorted(min(hi, max(lo, lo + u * (hi - lo))) for u in (a, b))
    # keep the window wide enough (in lambda) to hold `steps` distinct float64 times
    if not t_start - t_end > 1e-6 * (hi - lo) * steps:
        return sch, steps, None, None
    return sch, steps, t_start, t_end


@pytest.mark.parametrize("name", sorted(GRIDS))
@settings(max_examples=60, deadline=None)
@given(case=schedule_and_window())
def test_named_grid_properties(name, case):
    sch, steps, t_start, t_end = case
    ts = make_grid(sch, name, steps, t_start, t_end)
    want_start = sch.t_max if t_start is None else t_start
    want_end = sch.t_min if t_end is None else t_end
    assert ts.dtype == F64 and ts.shape == (steps + 1,)
    assert ts[0].item() == want_start and ts[-1].item() == want_end  # exact, not approximately
    assert bool((ts[1:] < ts[:-1]).all())  # strictly decreasing, hence no duplicates
    assert len(set(ts.tolist())) == steps + 1
    assert sch.t_min <= ts.min().item() and ts.max().item() <= sch.t_max


@settings(max_examples=80, deadline=None)
@given(case=schedule_and_window())
def test_logsnr_grid_is_uniform_in_lambda(case):
    sch, steps, t_start, t_end = case
    ts = logsnr(sch, steps, t_start, t_end)
    lam = sch.lambda_(ts)
    _spacing_is_uniform(lam, rtol=1e-10)


@settings(max_examples=80, deadline=None)
@given(case=schedule_and_window(), rho=st.sampled_from([1.0, 3.0, 7.0]))
def test_karras_grid_is_uniform_in_sigma_power(case, rho):
    sch, steps, t_start, t_end = case
    ts = karras(sch, steps, t_start, t_end, rho=rho)
    _spacing_is_uniform(sch.sigma_ve(ts) ** (1.0 / rho), rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(case=schedule_and_window())
def test_time_grids_are_uniform_in_t_and_sqrt_t(case):
    sch, steps, t_start, t_end = case
    _spacing_is_uniform(time_uniform(sch, steps, t_start, t_end), rtol=1e-12)
    if sch.t_min >= 0:
        _spacing_is_uniform(time_quadratic(sch, steps, t_start, t_end).sqrt(), rtol=1e-12)


def test_karras_matches_the_edm_formula():
    # EDM (arXiv:2206.00364, eq. 5): sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho
    sch, n, rho = EDM(), 18, 7.0
    ts = karras(sch, n - 1, rho=rho)
    i = torch.arange(n, dtype=F64)
    a, b = sch.sigma_max ** (1 / rho), sch.sigma_min ** (1 / rho)
    torch.testing.assert_close(ts, (a + i / (n - 1) * (b - a)) ** rho, rtol=1e-14, atol=0)


def test_time_quadratic_rejects_negative_times():
    sch = VEGeometric(t_min=-0.5, t_max=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        time_quadratic(sch, 10)


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_below_one_is_an_error(steps):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        make_grid(VPLinear(), "logsnr", steps)


@pytest.mark.parametrize("steps", [2.0, True, "10"])
def test_steps_must_be_an_int(steps):
    with pytest.raises(TypeError, match="steps must be an int"):
        make_grid(VPLinear(), "time_uniform", steps)


def test_unknown_grid_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown grid 'cosine'.*time_uniform.*logsnr.*karras"):
        make_grid(VPLinear(), "cosine", 10)


def test_named_grid_needs_steps():
    with pytest.raises(ValueError, match="steps is required"):
        make_grid(VPLinear(), "logsnr")


@pytest.mark.parametrize("rho", [0.0, -1.0, math.inf, math.nan])
def test_karras_rho_must_be_positive(rho):
    with pytest.raises(ValueError, match="rho"):
        make_grid(EDM(), "karras", 10, rho=rho)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([1.0, 0.5, 0.7, 0.001], "strictly decreasing"),
        ([0.001, 0.5, 1.0], "strictly decreasing"),
        ([1.0, 0.5, 0.5, 0.001], "duplicate"),
        ([1.5, 0.5, 0.001], r"\[t_min, t_max\]"),
        ([1.0, 0.5, 1e-4], r"\[t_min, t_max\]"),
        ([1.0, math.nan, 0.001], "non-finite"),
        ([1.0], "steps >= 1"),
        ([[[1.0]], [[0.5]]], "shape"),
    ],
)
def test_explicit_grid_validation(grid, message):
    with pytest.raises(ValueError, match=message):
        make_grid(VPLinear(), torch.tensor(grid, dtype=F64))


def test_explicit_grid_must_agree_with_steps_and_ends():
    sch = VPLinear()
    ts = torch.tensor([1.0, 0.5, 0.1, 0.001], dtype=F64)
    assert torch.equal(make_grid(sch, ts, 3, 1.0, 0.001), ts)
    with pytest.raises(ValueError, match="disagrees"):
        make_grid(sch, ts, 4)
    with pytest.raises(ValueError, match="t_end"):
        make_grid(sch, ts, t_end=0.01)


def test_per_sample_grid_is_validated_column_by_column():
    sch = VPLinear()
    ok = torch.tensor([[1.0, 0.9], [0.5, 0.3], [0.001, 0.002]], dtype=F64)
    assert validate_grid(sch, ok).shape == (3, 2)
    bad = ok.clone()
    bad[1, 1] = 0.95
    with pytest.raises(ValueError, match="strictly decreasing"):
        validate_grid(sch, bad)


def test_increasing_grid_for_inversion():
    sch = VPLinear()
    ts = torch.tensor([0.001, 0.5, 1.0], dtype=F64)
    assert torch.equal(make_grid(sch, ts, decreasing=False), ts)
    with pytest.raises(ValueError, match="strictly increasing"):
        make_grid(sch, ts.flip(0), decreasing=False)


def test_discrete_schedule_grid_stays_on_its_domain():
    sch = VPDiscrete.from_config({"num_train_timesteps": 1000})
    for name in GRIDS:
        ts = make_grid(sch, name, 999)
        assert ts[0].item() == 1.0 and ts[-1].item() == 1e-3
        assert bool((ts[1:] < ts[:-1]).all())


# ---------------------------------------------------------------------------------------------------------------------
# schedule-independent families (lambda distributions)
# ---------------------------------------------------------------------------------------------------------------------


def _edm_with_lambda_range(sch) -> EDM:
    """The EDM schedule (``lambda = -log t``) with the same lambda range as ``sch``."""
    return EDM(sigma_min=math.exp(-sch.lambda_max), sigma_max=math.exp(-sch.lambda_min))


@pytest.mark.parametrize(("family", "reference"), [("vp_quadratic", VPLinear()), ("cosine_quadratic", VPCosine())])
@pytest.mark.parametrize("steps", [1, 5, 10, 50])
def test_reference_time_families_match_the_reference_schedule(family, reference, steps):
    # `vp_quadratic` on an EDM model = `time_quadratic` on the VP-linear model of the same lambda range (issue 14)
    edm = _edm_with_lambda_range(reference)
    lam_edm = edm.lambda_(make_grid(edm, family, steps))
    lam_ref = reference.lambda_(make_grid(reference, "time_quadratic", steps))
    torch.testing.assert_close(lam_edm, lam_ref, rtol=0, atol=1e-12)
    uniform = family.replace("quadratic", "uniform")
    torch.testing.assert_close(
        edm.lambda_(make_grid(edm, uniform, steps)),
        reference.lambda_(make_grid(reference, "time_uniform", steps)),
        rtol=0,
        atol=1e-12,
    )


FAMILY_NAMES = sorted(GRID_FAMILIES)


@settings(max_examples=40, deadline=None)
@given(
    a=testing.schedules(),
    b=testing.schedules(),
    family=st.sampled_from(FAMILY_NAMES),
    steps=st.integers(1, 40),
    u=st.floats(0.05, 0.45),
    v=st.floats(0.55, 0.95),
)
def test_families_place_the_same_lambda_knots_on_every_schedule(a, b, family, steps, u, v):
    """A family is a lambda distribution: on two different schedules over a common lambda window the knots agree."""
    lo, hi = max(a.lambda_min, b.lambda_min), min(a.lambda_max, b.lambda_max)
    if not hi - lo > 1e-3 * steps:
        return
    lam_lo, lam_hi = lo + u * (hi - lo), lo + v * (hi - lo)
    knots = []
    for sch in (a, b):
        ends = sch.inverse_lambda(torch.tensor([lam_lo, lam_hi], dtype=F64))
        ts = make_grid(sch, family, steps, float(ends[0]), float(ends[1]))
        knots.append(sch.lambda_(ts))
    scale = max(1.0, abs(lam_lo), abs(lam_hi))
    torch.testing.assert_close(knots[0], knots[1], rtol=0, atol=1e-9 * scale)


@settings(max_examples=40, deadline=None)
@given(case=schedule_and_window(), p=st.floats(0.3, 5.0))
def test_power_families_are_uniform_in_their_variable(case, p):
    sch, steps, t_start, t_end = case
    ts = make_grid(sch, f"lambda_power:p={p!r}", steps, t_start, t_end)
    lam = sch.lambda_(ts)
    span = lam[-1] - lam[0]
    _spacing_is_uniform(((lam - lam[0]) / span).clamp(0, 1) ** (1 / p), rtol=1e-7)
    vp = VPLinear()
    tv = vp.inverse_lambda(sch.lambda_(make_grid(sch, format_grid("vp_power", p=p), steps, t_start, t_end)))
    _spacing_is_uniform(tv ** (1 / p), rtol=1e-7)


@pytest.mark.parametrize("steps", [1, 7, 30])
def test_continuous_parameters_reduce_to_the_named_members(steps):
    sch = EDM()
    for family, same in (
        ("vp_power:p=1", "vp_uniform"),
        ("vp_power:p=2", "vp_quadratic"),
        ("cosine_power:p=2", "cosine_quadratic"),
        ("lambda_power:p=1", "logsnr"),
        ("karras:rho=7", "karras"),
    ):
        torch.testing.assert_close(make_grid(sch, family, steps), make_grid(sch, same, steps), rtol=1e-13, atol=0)


def test_family_lambdas_direction_and_ends():
    up = family_lambdas("lambda_power", -3.0, 5.0, 8, p=2.0)
    down = family_lambdas("lambda_power", 5.0, -3.0, 8, p=2.0)
    assert up[0].item() == -3.0 and up[-1].item() == 5.0 and torch.equal(down, up.flip(0))
    assert bool((up[1:] > up[:-1]).all())
    # p > 1 puts more knots at the noisy end (small lambda)
    assert (up[1] - up[0]) < (up[-1] - up[-2])


def test_grid_from_lambdas_round_trip():
    sch = VPLinear()
    ts = make_grid(sch, "karras:rho=3", 12)
    torch.testing.assert_close(grid_from_lambdas(sch, sch.lambda_(ts), 1.0, 1e-3), ts, rtol=1e-12, atol=0)


def test_grid_names_parse_and_format():
    assert parse_grid("vp_power:p=1.5") == ("vp_power", {"p": 1.5})
    assert parse_grid(format_grid("karras", rho=3.141592653589793)) == ("karras", {"rho": 3.141592653589793})
    assert parse_grid("logsnr") == ("logsnr", {})
    with pytest.raises(ValueError, match="no parameter 'q'.*p"):
        parse_grid("vp_power:q=2")
    with pytest.raises(ValueError, match="has no parameters"):
        parse_grid("time_uniform:p=2")
    with pytest.raises(ValueError, match="name=number"):
        parse_grid("vp_power:p=abc")
    with pytest.raises(ValueError, match="positive"):
        make_grid(EDM(), "vp_power:p=-1", 4)
    with pytest.raises(ValueError, match="unknown grid family"):
        family_lambdas("time_uniform", 0.0, 1.0, 4)
