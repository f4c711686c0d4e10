"""The torchdiffeq / torchsde references: the probability-flow reference against the closed-form Gaussian flow (both
directions, every requested time hit exactly), the reverse-SDE reference against the exact Gaussian marginal and
against itself at a finer step, and the Brownian path it shares with our stochastic solvers."""

from __future__ import annotations

import math

import pytest
import torch
from solver_checks import F64, SCHEDULE_IDS, all_schedules, gaussian_2d, prior

from sde_diffusion.analytic import Gaussian
from sde_diffusion.reference import brownian_path, probability_flow_reference, reverse_sde_reference
from sde_diffusion.schedules import VEGeometric, VPLinear


@pytest.mark.parametrize("schedule", all_schedules(), ids=SCHEDULE_IDS)
def test_probability_flow_reference_matches_the_closed_form_flow(schedule):
    data = gaussian_2d()
    model = data.model(schedule, "x0")
    x_T = prior(schedule, 4)
    lo, hi = schedule.t_min, schedule.t_max
    ts = torch.tensor([hi, lo + 0.5 * (hi - lo), lo + 0.01 * (hi - lo), lo], dtype=F64)
    out = probability_flow_reference(model, x_T, ts)
    assert out.shape == (4, *x_T.shape) and torch.equal(out[0], x_T)
    for k in range(1, 4):  # every requested time is stepped onto, not interpolated
        torch.testing.assert_close(out[k], data.flow(x_T, ts[0], ts[k], schedule), rtol=1e-8, atol=1e-8)
    # and backwards (encoding): from the data end to the noise end
    back = probability_flow_reference(model, out[-1], ts.flip(0))
    torch.testing.assert_close(back[-1], x_T, rtol=1e-7, atol=1e-7)


def test_probability_flow_reference_works_in_float64_and_casts_back():
    sch = VPLinear()
    data = gaussian_2d()
    x_T = prior(sch, 3)
    ts = torch.tensor([sch.t_max, sch.t_min], dtype=F64)
    out32 = probability_flow_reference(data.model(sch), x_T.float(), ts)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(
        out32[-1].double(), data.flow(x_T.float().double(), sch.t_max, sch.t_min, sch), rtol=1e-6, atol=1e-6
    )


def test_probability_flow_reference_with_a_fixed_step_method():
    sch = VPLinear()
    data = gaussian_2d()
    x_T = prior(sch, 3)
    ts = torch.tensor([sch.t_max, sch.t_min], dtype=F64)
    out = probability_flow_reference(data.model(sch), x_T, ts, method="rk4", options={"step_size": 0.01})
    torch.testing.assert_close(out[-1], data.flow(x_T, sch.t_max, sch.t_min, sch), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("schedule", [VPLinear(), VEGeometric()], ids=["vp_linear", "ve_geometric"])
def test_reverse_sde_reference_reaches_the_exact_marginal(schedule):
    # With the exact score the reverse SDE carries the marginal at t_max to the marginal at t_min. 2000 samples of
    # 1-D Gaussian data; tolerance 5 standard errors plus 1% (the dt = 5e-3 discretisation).
    data = Gaussian(torch.tensor([0.8], dtype=F64), torch.tensor([0.6], dtype=F64))
    model = data.model(schedule, "eps")
    n = 2000

    def marginal(t):
        a, s = schedule.alpha(t), schedule.sigma(t)
        return float(a * data.mean), float(a * a * data.std**2 + s * s)

    m_T, v_T = marginal(schedule.t_max)
    x_T = m_T + math.sqrt(v_T) * torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    bm = brownian_path(x_T, schedule.t_min, schedule.t_max, seed=1)
    ts = torch.tensor([schedule.t_max, schedule.t_min], dtype=F64)
    x0 = reverse_sde_reference(model, x_T, ts, bm, dt=5e-3)[-1]
    m_0, v_0 = marginal(schedule.t_min)
    assert abs(float(x0.mean()) - m_0) <= 5 * math.sqrt(v_0 / n) + 0.01
    assert abs(float(x0.var()) - v_0) <= v_0 * (5 * math.sqrt(2.0 / n) + 0.01)


def test_reverse_sde_reference_converges_on_a_fixed_path():
    sch = VPLinear()
    model = gaussian_2d().model(sch)
    x_T = prior(sch, 4)
    bm = brownian_path(x_T, sch.t_min, sch.t_max, seed=3)
    ts = torch.tensor([sch.t_max, 0.5, sch.t_min], dtype=F64)
    fine = reverse_sde_reference(model, x_T, ts, bm, dt=2e-3)
    coarse = reverse_sde_reference(model, x_T, ts, bm, dt=8e-3)
    assert fine.shape == (3, *x_T.shape) and torch.equal(fine[0], x_T)
    # SRK has strong order 1.5 for additive noise: the gap between dt = 8e-3 and 2e-3 is small (measured 1.6e-3),
    # at the intermediate time too (an interpolated output there would be off by ~0.3); Euler-Maruyama at
    # dt = 8e-3 on the same path is much further off (measured 0.043)
    gap = float((fine - coarse).abs().max())
    em = reverse_sde_reference(model, x_T, ts, bm, dt=8e-3, method="euler")
    assert gap < 5e-3
    assert float((fine - em).abs().max()) > 10 * gap


def test_brownian_path_is_reproducible_and_has_the_right_variance():
    x = torch.zeros(500, 2, 2, dtype=F64)
    a = brownian_path(x, 0.001, 1.0, seed=7)
    b = brownian_path(x, 0.001, 1.0, seed=7)
    c = brownian_path(x, 0.001, 1.0, seed=8)
    w = a(-1.0, -0.5)
    assert w.shape == (500, 4)  # flattened event
    assert torch.equal(w, b(-1.0, -0.5)) and not torch.equal(w, c(-1.0, -0.5))
    # increments over s = -t: variance |dt| (2000 draws: 5 standard errors of the sample variance is 0.016)
    assert abs(float(w.var()) - 0.5) < 0.5 * 5 * math.sqrt(2 / w.numel())
    # additivity: W(-1, -0.2) = W(-1, -0.5) + W(-0.5, -0.2)
    torch.testing.assert_close(a(-1.0, -0.2), w + a(-0.5, -0.2), rtol=1e-10, atol=1e-10)


def test_reference_input_errors():
    sch = VPLinear()
    model = gaussian_2d().model(sch)
    x = prior(sch, 2)
    bm = brownian_path(x, sch.t_min, sch.t_max)
    with pytest.raises(ValueError, match="at least"):
        probability_flow_reference(model, x, [1.0])
    with pytest.raises(ValueError, match="strictly monotone"):
        probability_flow_reference(model, x, [1.0, 0.2, 0.5])
    with pytest.raises(ValueError, match="outside the domain"):
        probability_flow_reference(model, x, [1.0, -0.5])
    with pytest.raises(ValueError, match="decreasing"):
        reverse_sde_reference(model, x, [0.1, 1.0], bm)
