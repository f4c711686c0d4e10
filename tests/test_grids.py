"""Time grids: Hypothesis properties over random schedules (strictly decreasing, exact end points, inside the
domain, ``steps + 1`` distinct points, uniform in the grid's own variable) and the validation of explicit grids."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sde_diffusion import testing
from sde_diffusion.grids import GRIDS, karras, logsnr, make_grid, time_quadratic, time_uniform, validate_grid
from sde_diffusion.schedules import EDM, VEGeometric, VPDiscrete, VPLinear

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
