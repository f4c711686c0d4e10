"""Forward / reverse SDE and probability-flow ODE: closed forms, and Euler-Maruyama simulations whose moments must match
the exact marginals."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from solver_checks import all_schedules

from sde_diffusion import testing
from sde_diffusion.analytic import Gaussian
from sde_diffusion.models import Model, broadcast_coeff
from sde_diffusion.schedules import EDM, VEGeometric, VPCosine, VPLinear
from sde_diffusion.sdes import ForwardSDE, ProbabilityFlowODE, ReverseSDE

# a fixed example budget per property keeps the suite fast (the profile may lower it further)
LIMIT = settings(max_examples=min(50, settings.default.max_examples))

SCHEDULES = all_schedules(
    {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
)


# ---------------------------------------------------------------------------------------------------------------------
# Euler-Maruyama simulations
# ---------------------------------------------------------------------------------------------------------------------
#
# The SDEs here are linear with deterministic coefficients, dx = (A(t) x + b(t)) dt + g(t) dW, so the mean and variance
# of the Euler-Maruyama chain obey an exact recursion
#     m_{k+1} = m_k + (A_k m_k + b_k) h,     v_{k+1} = (1 + A_k h)^2 v_k + g_k^2 |h|.
# Its difference from the exact marginal is the discretisation bias, which we compute, require to be small (that part
# checks f and g^2 against alpha and sigma), and add to the tolerance:
#     |sample moment - exact moment| <= 5 standard errors + |EM moment - exact moment|.
# Standard errors: std/sqrt(n) for the mean, std/sqrt(2n) for the standard deviation (Gaussian samples). With
# n = 40000 this resolves errors of about 2% in the standard deviation; the exact identities (g = sqrt(g2), f and g2
# against alpha and sigma) are tested to rounding elsewhere -- this is the end-to-end check of the conventions.

N_PATHS = 20000
DIM = 2  # independent coordinates: 40000 scalar samples per moment
N_STEPS = 1000
N_REVERSE = 400


def _lambda_uniform(schedule, n):
    """Times from t_max down to t_min, uniform in lambda, with exact end points."""
    lam = torch.linspace(schedule.lambda_min, schedule.lambda_max, n + 1, dtype=torch.float64)
    ts = torch.clamp(schedule.inverse_lambda(lam), schedule.t_min, schedule.t_max)
    ts[0], ts[-1] = schedule.t_max, schedule.t_min
    return ts


def _check_moments(x, em_mean, em_std, exact_mean, exact_std, what):
    n = x.numel()
    mean, std = float(x.mean()), float(x.std())
    tol_mean = 5 * exact_std / math.sqrt(n) + abs(em_mean - exact_mean)
    tol_std = 5 * exact_std / math.sqrt(2 * n) + abs(em_std - exact_std)
    assert abs(mean - exact_mean) <= tol_mean, f"{what}: mean {mean} vs {exact_mean} (tol {tol_mean})"
    assert abs(std - exact_std) <= tol_std, f"{what}: std {std} vs {exact_std} (tol {tol_std})"


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_forward_sde_euler_maruyama_matches_marginals(schedule):
    sde = ForwardSDE(schedule)
    g = torch.Generator().manual_seed(1234)
    m0 = 2.0  # point-mass data: x_t ~ N(alpha(t) m0, sigma(t)^2)
    ts = _lambda_uniform(schedule, N_STEPS).flip(0)  # increasing, uniform in lambda (f of VPCosine blows up at t=1)
    x0 = torch.full((N_PATHS, DIM), m0)
    x = sde.sample_marginal(x0, ts[0], generator=g)  # start exactly on the marginal at t_min
    em_mean, em_var = float(schedule.alpha(ts[0])) * m0, float(schedule.sigma(ts[0])) ** 2
    f_all, g2_all = schedule.f(ts[:-1]).tolist(), schedule.g2(ts[:-1]).tolist()
    checkpoints = {N_STEPS // 4, N_STEPS // 2, N_STEPS}
    for k in range(N_STEPS):
        h = float(ts[k + 1] - ts[k])
        x = x + sde.drift(x, ts[k]) * h + sde.diffusion(ts[k]) * math.sqrt(h) * torch.randn(x.shape, generator=g)
        em_mean, em_var = (1 + f_all[k] * h) * em_mean, (1 + f_all[k] * h) ** 2 * em_var + g2_all[k] * h
        if k + 1 in checkpoints:
            t = ts[k + 1]
            exact_mean, exact_std = float(schedule.alpha(t)) * m0, float(schedule.sigma(t))
            # discretisation bias: first order in h, under 2% of the marginal std on these grids
            assert abs(em_mean - exact_mean) <= 0.02 * exact_std
            assert abs(math.sqrt(em_var) - exact_std) <= 0.02 * exact_std
            _check_moments(x, em_mean, math.sqrt(em_var), exact_mean, exact_std, f"t={float(t):.4g}")


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), VEGeometric(), EDM()], ids=repr)
def test_reverse_sde_euler_maruyama_recovers_gaussian_data(schedule):
    # Gaussian data, started exactly on p_{t_max} and run backwards with the exact score: the chain must end on
    # p_{t_min} = N(alpha m, alpha^2 s^2 + sigma^2). With v = alpha^2 s^2 + sigma^2 the drift is linear:
    # f x - g^2 score = (f + g^2/v) x - g^2 alpha m / v.
    data = Gaussian(torch.tensor([1.5, -0.5]), torch.tensor([0.5, 1.0]))
    rev = ReverseSDE(schedule, data.model(schedule, "x0"))
    g = torch.Generator().manual_seed(99)
    ts = _lambda_uniform(schedule, N_REVERSE)  # decreasing; the reverse drift is stiff where sigma is small
    a, sig = schedule.alpha(ts), schedule.sigma(ts)
    m, sd = data.mean, data.std
    v = a[:, None] ** 2 * sd**2 + sig[:, None] ** 2  # (steps+1, DIM)
    f, g2 = schedule.f(ts)[:, None], schedule.g2(ts)[:, None]
    x = a[0] * m + torch.sqrt(v[0]) * torch.randn(N_PATHS, DIM, generator=g)
    em_mean, em_var = a[0] * m, v[0].clone()
    for k in range(N_REVERSE):
        h = float(ts[k] - ts[k + 1])  # > 0: time runs down
        x = x - rev.drift(x, ts[k]) * h + rev.diffusion(x, ts[k]) * math.sqrt(h) * torch.randn(x.shape, generator=g)
        A, b = f[k] + g2[k] / v[k], -g2[k] * a[k] * m / v[k]
        em_mean = em_mean - (A * em_mean + b) * h
        em_var = (1 - A * h) ** 2 * em_var + g2[k] * h
    exact_mean, exact_std = a[-1] * m, torch.sqrt(v[-1])
    for j in range(DIM):
        assert abs(float(em_mean[j] - exact_mean[j])) <= 0.05 * float(exact_std[j])
        assert abs(float(em_var[j].sqrt() - exact_std[j])) <= 0.05 * float(exact_std[j])
        _check_moments(
            x[:, j],
            float(em_mean[j]),
            float(em_var[j].sqrt()),
            float(exact_mean[j]),
            float(exact_std[j]),
            f"coordinate {j}",
        )


# ---------------------------------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------------------------------


@LIMIT
@given(data=st.data())
def test_sample_marginal_and_marginal_moments(data):
    s = data.draw(testing.schedules())
    t = data.draw(testing.times(s, size=3))
    seed = data.draw(st.integers(0, 2**31 - 1))
    sde = ForwardSDE(s)
    x0 = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(seed + 1))
    a, sig = (broadcast_coeff(c, x0) for c in (s.alpha(t), s.sigma(t)))
    torch.testing.assert_close(sde.sample_marginal(x0, t, noise=noise), a * x0 + sig * noise, rtol=1e-14, atol=0)
    # with a generator: the noise is torch.randn from that generator
    drawn = sde.sample_marginal(x0, t, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(drawn, a * x0 + sig * noise, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.marginal_mean(x0, t), a * x0, rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.marginal_std(t), s.sigma(t), rtol=0, atol=0)
    # a scalar time applies to the whole batch
    t0 = float(t[0])
    torch.testing.assert_close(
        sde.sample_marginal(x0, t0, noise=noise), s.alpha(t0) * x0 + s.sigma(t0) * noise, rtol=1e-14, atol=0
    )


@LIMIT
@given(data=st.data())
def test_drift_and_diffusion_closed_forms(data):
    s = data.draw(testing.schedules())
    t = data.draw(testing.times(s, size=4))
    sde = ForwardSDE(s)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 1000))))
    torch.testing.assert_close(sde.drift(x, t), s.f(t)[:, None] * x, rtol=0, atol=0)
    torch.testing.assert_close(sde.diffusion(t) ** 2, s.g2(t), rtol=1e-14, atol=0)


@LIMIT
@given(data=st.data())
def test_prior_sample_and_logp(data):
    s = data.draw(testing.schedules())
    seed = data.draw(st.integers(0, 2**31 - 1))
    sde = ForwardSDE(s)
    std = float(s.sigma(s.t_max))
    assert sde.prior_std() == pytest.approx(std, rel=1e-15)
    z = sde.prior_sample((5, 3, 2), generator=torch.Generator().manual_seed(seed))
    assert z.shape == (5, 3, 2) and z.dtype == torch.float64
    want = std * torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(z, want, rtol=1e-15, atol=0)
    logp = sde.prior_logp(z)
    ref = torch.distributions.Normal(0.0, std).log_prob(z).reshape(5, -1).sum(-1)
    torch.testing.assert_close(logp, ref, rtol=1e-12, atol=1e-10)
    assert sde.prior_sample((2, 3), dtype=torch.float32).dtype == torch.float32


def test_prior_sample_statistics():
    s = VPLinear()
    z = ForwardSDE(s).prior_sample((40000,), generator=torch.Generator().manual_seed(5))
    std = float(s.sigma(1.0))
    assert abs(float(z.mean())) <= 5 * std / 200  # 5 standard errors
    assert abs(float(z.std()) - std) <= 5 * std / math.sqrt(2 * 40000)


@LIMIT
@given(data=st.data())
def test_vector_fields_from_the_score(data):
    s = data.draw(testing.schedules(("vp_linear", "vp_cosine", "subvp_linear", "ve_geometric", "edm", "vp_discrete")))
    t = data.draw(testing.times(s, size=3))
    gs = Gaussian(torch.tensor([1.0, -1.0]), torch.tensor([0.7, 1.3]))
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 1000))))
    score = gs.score(x, t, s)
    f, g2 = s.f(t)[:, None], s.g2(t)[:, None]
    model = gs.model(s, "eps")
    ode = ProbabilityFlowODE(s, model)
    rev = ReverseSDE(s, model)
    scale = float((f.abs() * x.abs() + g2 * score.abs()).max()) + 1e-300
    torch.testing.assert_close(ode.vector_field(x, t), f * x - 0.5 * g2 * score, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(ode(t, x), ode.vector_field(x, t), rtol=0, atol=0)
    torch.testing.assert_close(rev.drift(x, t), f * x - g2 * score, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(rev.diffusion(x, t), torch.sqrt(g2).expand_as(x), rtol=1e-14, atol=0)
    # torchsde form in s = -t: f_s(s, y) = -drift(y, -s), g_s = g
    sde = rev.torchsde()
    torch.testing.assert_close(sde.f(-t, x), -rev.drift(x, t), rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.g(-t, x), rev.diffusion(x, t), rtol=0, atol=0)
    assert (sde.noise_type, sde.sde_type) == ("diagonal", "ito")


def test_torchsde_wrapper_reshapes_events():
    s = VPLinear()
    gs = Gaussian(torch.zeros(2, 2), torch.ones(2, 2))
    rev = ForwardSDE(s).reverse(gs.model(s))
    y = torch.randn(3, 4)
    sde = rev.torchsde(event_shape=(2, 2))
    t = torch.tensor(0.5)
    torch.testing.assert_close(sde.f(-t, y), -rev.drift(y.reshape(3, 2, 2), t).reshape(3, 4))
    assert sde.g(-t, y).shape == (3, 4)
    assert isinstance(ForwardSDE(s).probability_flow(gs.model(s)), ProbabilityFlowODE)


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_bad_sde_arguments():
    s = VPLinear()
    with pytest.raises(TypeError, match="schedule"):
        ForwardSDE("vp")
    with pytest.raises(TypeError, match="model"):
        ProbabilityFlowODE(s, lambda x, t: x)
    with pytest.raises(TypeError, match="model"):
        ReverseSDE(s, None)
    sde = ForwardSDE(s)
    with pytest.raises(ValueError, match="noise shape"):
        sde.sample_marginal(torch.zeros(2, 3), 0.5, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="t=.*outside the domain"):
        sde.drift(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="t=.*outside the domain"):
        sde.sample_marginal(torch.zeros(2, 3), torch.tensor([0.5, -1.0]))
    model = Model(lambda x, t: x[:, :1], s)
    with pytest.raises(ValueError, match="shape"):
        ProbabilityFlowODE(s, model).vector_field(torch.zeros(2, 3), 0.5)
