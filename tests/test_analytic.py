"""Exact oracles: scores against autograd of the exact log-density, Tweedie's formula, the Gaussian flow against the
probability-flow ODE, stability of the mixture score, and the Model built from an oracle."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sde_diffusion import testing
from sde_diffusion.analytic import Gaussian, GaussianMixture, PointMass
from sde_diffusion.models import PREDICTIONS, broadcast_coeff
from sde_diffusion.schedules import EDM, VEGeometric, VPCosine, VPLinear
from sde_diffusion.sdes import ProbabilityFlowODE

# a fixed example budget per property keeps the suite fast (the profile may lower it further)
LIMIT = settings(max_examples=min(50, settings.default.max_examples))

EVENT = (3,)
DISTRIBUTIONS = {
    "point": PointMass(torch.tensor([0.5, -1.0, 2.0])),
    "gaussian": Gaussian(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, 2.0])),
    "mixture": GaussianMixture(
        torch.tensor([[-1.0, 0.0, 1.0], [1.0, 1.0, -0.5], [0.0, -2.0, 0.0]]),
        torch.tensor([[0.3, 0.5, 0.2], [0.6, 0.1, 0.4], [0.25, 0.25, 0.25]]),
        torch.tensor([0.2, 0.5, 0.3]),
    ),
    "mixture_iso": GaussianMixture(torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.5, 0.0]]), torch.tensor([0.4, 0.7])),
}
# schedules where alpha is not astronomically small at t_max (Tweedie divides by alpha)
MODERATE = ("vp_linear", "vp_cosine", "subvp_linear", "ve_geometric", "edm")


def _draw(data, kinds=None, batch=4):
    """A schedule, per-sample times (B,), and points x ~ p_t (plus a spread so that x is not only typical)."""
    s = data.draw(testing.schedules(kinds), label="schedule")
    t = data.draw(testing.times(s, size=batch), label="t")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    return s, t, torch.Generator().manual_seed(seed)


def _points(dist, s, t, g):
    x0 = dist.sample(t.shape[0], generator=g)
    a, sig = (broadcast_coeff(c, x0) for c in (s.alpha(t), s.sigma(t)))
    return a * x0 + sig * 1.5 * torch.randn(x0.shape, generator=g), a, sig


def _autograd_score(dist, x, t, s):
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dist.log_prob(xx, t, s).sum(), xx)
    return grad


def _score_scale(x, a, sig):
    # |score| ~ |x - alpha mu| / var_t  <=  (|x| + alpha)/sigma^2 : the scale for absolute tolerances
    return (x.abs() + a + 1) / sig**2


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_score_is_gradient_of_log_prob(name, data):
    dist = DISTRIBUTIONS[name]
    s, t, g = _draw(data)
    x, a, sig = _points(dist, s, t, g)
    want = _autograd_score(dist, x, t, s)
    got = dist.score(x, t, s)
    assert got.shape == x.shape
    err = (got - want).abs() / _score_scale(x, a, sig)
    assert float(err.max()) <= 1e-12


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_tweedie_posterior_means(name, data):
    # Tweedie: E[x0|x] = (x + sigma^2 grad log p_t)/alpha and E[eps|x] = -sigma grad log p_t, with the gradient taken
    # by autograd of the exact log-density -- independent of the oracle's own eps/x0 formulas
    dist = DISTRIBUTIONS[name]
    s, t, g = _draw(data, MODERATE)
    x, a, sig = _points(dist, s, t, g)
    grad = _autograd_score(dist, x, t, s)
    scale = (x.abs() + 1) * (1 + sig / a)
    torch.testing.assert_close(dist.eps(x, t, s), -sig * grad, rtol=0, atol=1e-12 * float(scale.max()))
    x0_err = (dist.x0(x, t, s) - (x + sig**2 * grad) / a).abs()
    assert float((x0_err / (scale / a)).max()) <= 1e-11
    # and x = alpha E[x0|x] + sigma E[eps|x] exactly (the two oracle outputs are consistent)
    torch.testing.assert_close(
        a * dist.x0(x, t, s) + sig * dist.eps(x, t, s), x, rtol=1e-12, atol=1e-12 * float(scale.max())
    )


@LIMIT
@given(data=st.data())
def test_log_prob_closed_forms(data):
    s, t, g = _draw(data)
    x = torch.randn(t.shape[0], *EVENT, generator=g) * 3
    a, sig = (broadcast_coeff(c, x) for c in (s.alpha(t), s.sigma(t)))
    pm = DISTRIBUTIONS["point"]
    want = torch.distributions.Normal(a * pm.x0_value, sig).log_prob(x).sum(-1)
    torch.testing.assert_close(pm.log_prob(x, t, s), want, rtol=1e-12, atol=1e-9)
    gs = DISTRIBUTIONS["gaussian"]
    want = torch.distributions.Normal(a * gs.mean, torch.sqrt(a**2 * gs.std**2 + sig**2)).log_prob(x).sum(-1)
    torch.testing.assert_close(gs.log_prob(x, t, s), want, rtol=1e-12, atol=1e-9)
    mix = DISTRIBUTIONS["mixture"]
    comp = torch.distributions.Normal(
        a[:, None] * mix.means, torch.sqrt(a[:, None] ** 2 * mix.stds**2 + sig[:, None] ** 2)
    )
    per = comp.log_prob(x[:, None]).sum(-1)  # (B, K)
    want = torch.log((mix.weights * torch.exp(per - per.max(-1, keepdim=True).values)).sum(-1)) + per.max(-1).values
    torch.testing.assert_close(mix.log_prob(x, t, s), want, rtol=1e-12, atol=1e-9)


def test_gaussian_data_log_prob():
    gs = DISTRIBUTIONS["gaussian"]
    x = torch.randn(5, 3)
    torch.testing.assert_close(gs.data_log_prob(x), torch.distributions.Normal(gs.mean, gs.std).log_prob(x).sum(-1))


@LIMIT
@given(data=st.data())
def test_single_component_mixture_is_gaussian(data):
    s, t, g = _draw(data)
    gs = DISTRIBUTIONS["gaussian"]
    mix = GaussianMixture(gs.mean[None], gs.std[None])
    x, a, sig = _points(gs, s, t, g)
    torch.testing.assert_close(mix.log_prob(x, t, s), gs.log_prob(x, t, s), rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(
        mix.score(x, t, s), gs.score(x, t, s), rtol=1e-12, atol=1e-13 * float(_score_scale(x, a, sig).max())
    )
    torch.testing.assert_close(mix.x0(x, t, s), gs.x0(x, t, s), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# the exact Gaussian flow
# ---------------------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_gaussian_flow_solves_probability_flow_ode(data):
    # d/dt flow(x, t0, t) = f(t) y - g^2(t)/2 score(y, t) at y = flow(x, t0, t): autograd (per-sample times)
    # against the vector field of sdes.ProbabilityFlowODE driven by the exact model
    gs = DISTRIBUTIONS["gaussian"]
    s, t, g = _draw(data)
    t0 = data.draw(testing.times(s), label="t0")
    x, _, _ = _points(gs, s, torch.full_like(t, t0), g)
    tt = t.clone().requires_grad_(True)
    y_graph = gs.flow(x, t0, tt, s)
    # sample i depends only on t_i, so the gradient of a column sum w.r.t. t is that column's d/dt_i
    dydt = torch.stack(
        [torch.autograd.grad(y_graph[:, j].sum(), tt, retain_graph=True)[0] for j in range(y_graph.shape[1])], dim=1
    )
    y = y_graph.detach()
    prediction = data.draw(st.sampled_from(PREDICTIONS), label="prediction")
    field = ProbabilityFlowODE(s, gs.model(s, prediction)).vector_field(y, t)
    scale = (s.f(t).abs() + s.g2(t) / s.sigma(t) ** 2)[:, None] * (y.abs() + 1)
    assert float(((dydt - field).abs() / scale).max()) <= 1e-10


@LIMIT
@given(data=st.data())
def test_gaussian_flow_round_trip_and_transport(data):
    gs = DISTRIBUTIONS["gaussian"]
    s, t, g = _draw(data, MODERATE)
    t1 = data.draw(testing.times(s, size=t.shape[0]), label="t1")
    x, _, _ = _points(gs, s, t, g)
    y = gs.flow(x, t, t1, s)
    back = gs.flow(y, t1, t, s)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10 * float(x.abs().max() + 1))
    torch.testing.assert_close(gs.flow(x, t, t, s), x, rtol=1e-14, atol=1e-14)
    # the flow transports p_t to p_t1: log p_t1(y) = log p_t(x) - log|det dy/dx|, with the Jacobian by autograd
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(
                lambda xi, i=i: gs.flow(xi[None], t[i : i + 1], t1[i : i + 1], s)[0], x[i]
            )
            for i in range(x.shape[0])
        ]
    )
    logdet = torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(gs.log_prob(y, t1, s), gs.log_prob(x, t, s) - logdet, rtol=1e-10, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# stability of the mixture score
# ---------------------------------------------------------------------------------------------------------------------


def _single_component_score(mean, std, x, a, sig):
    return -(x - a * mean) / (a * a * std * std + sig * sig)


@pytest.mark.parametrize(
    "schedule",
    [
        EDM(sigma_min=1e-7, sigma_max=80.0),
        VPLinear(t_min=1e-9),
        VEGeometric(sigma_min=1e-6, sigma_max=50.0),
        VPCosine(t_min=1e-10),
    ],
    ids=repr,
)
def test_mixture_score_stable_for_tiny_sigma(schedule):
    # narrow components (std 1e-6) and sigma(t_min) ~ 1e-9..1e-5: exp(log N) underflows for every component but the
    # nearest, and the naive ratio of densities would be 0/0
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]])
    std = 1e-6
    mix = GaussianMixture(means, torch.full((3,), std))
    t = schedule.t_min
    a, sig = float(schedule.alpha(t)), float(schedule.sigma(t))
    assert sig < 1e-3
    g = torch.Generator().manual_seed(1)
    k = torch.tensor([0, 1, 2, 1])
    x = a * means[k] + math.sqrt(a * a * std * std + sig * sig) * torch.randn(4, 2, generator=g)
    score = mix.score(x, t, schedule)
    assert bool(torch.isfinite(score).all())
    want = _single_component_score(means[k], std, x, a, sig)
    torch.testing.assert_close(score, want, rtol=1e-12, atol=0)
    for tt in (t, torch.full((4,), t)):
        assert bool(torch.isfinite(mix.x0(x, tt, schedule)).all())
        assert bool(torch.isfinite(mix.log_prob(x, tt, schedule)).all())
    # half-way between two components both responsibilities are 1/2: still finite, the average of the two scores
    mid = a * 0.5 * (means[0] + means[1])[None]
    two = 0.5 * (
        _single_component_score(means[0], std, mid, a, sig) + _single_component_score(means[1], std, mid, a, sig)
    )
    torch.testing.assert_close(mix.score(mid, t, schedule), two, rtol=1e-9, atol=1e-9 * float(two.abs().max()))


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), VEGeometric(), EDM()], ids=repr)
@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.0, -1.0), (-0.6, 0.8)])
def test_mixture_score_stable_far_away(schedule, direction):
    # |x| ~ 1e3: log N ~ -1e6; the score must be finite and equal that of the dominating component
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]])
    stds = torch.tensor([0.5, 0.8, 0.3])
    mix = GaussianMixture(means, stds, torch.tensor([0.3, 0.3, 0.4]))
    t = float(schedule.inverse_lambda(0.0))  # alpha = sigma: the far point is ~1e3 noise levels away
    a, sig = float(schedule.alpha(t)), float(schedule.sigma(t))
    x = 1e3 * torch.tensor([direction])
    var = a * a * stds**2 + sig * sig
    logits = torch.log(mix.weights) - 0.5 * (((x - a * means) ** 2).sum(-1) / var + 2 * torch.log(var))
    top2 = torch.topk(logits, 2).values
    assert float(top2[0] - top2[1]) > 40  # one component really dominates (responsibility > 1 - 1e-17)
    k = int(logits.argmax())
    score = mix.score(x, t, schedule)
    assert bool(torch.isfinite(score).all())
    torch.testing.assert_close(score, _single_component_score(means[k], stds[k], x, a, sig), rtol=1e-12, atol=0)
    assert bool(torch.isfinite(mix.log_prob(x, t, schedule)).all())


# ---------------------------------------------------------------------------------------------------------------------
# the Model built from an oracle
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_oracle_model_consistent_in_every_parametrisation(name, data):
    dist = DISTRIBUTIONS[name]
    s, t, g = _draw(data, MODERATE)
    x, a, sig = _points(dist, s, t, g)
    eps, x0 = dist.eps(x, t, s), dist.x0(x, t, s)
    # rounding bound: converting between eps and x0 through x = alpha x0 + sigma eps divides by alpha or sigma, an
    # amplification r = max(alpha/sigma, sigma/alpha) of the float64 roundoff (64 u covers the few operations)
    r = torch.maximum(a / sig, sig / a)
    tol = 64 * 2.0**-52 * (r + 2) * (x.abs() + 1)
    want = {"eps": eps, "x0": x0, "score": -eps / sig, "v": a * eps - sig * x0}
    scale = {"eps": 1.0, "x0": 1.0, "score": 1.0 / sig, "v": a + sig}
    for prediction in PREDICTIONS:
        model = dist.model(s, prediction=prediction)
        assert model.prediction == prediction
        for target in PREDICTIONS:
            err = (model.predict(x, t, target) - want[target]).abs() / scale[target]
            assert bool((err <= tol).all()), (prediction, target, float((err / tol).max()))
        assert model.nfe == len(PREDICTIONS)
    # scalar time too
    t0 = float(t[0])
    torch.testing.assert_close(dist.model(s, "v").x0(x, t0), dist.x0(x, t0, s), rtol=0, atol=float(tol.max()))


def test_point_mass_is_exact_denoiser():
    pm = DISTRIBUTIONS["point"]
    s = VPCosine()
    x = torch.randn(5, 3)
    torch.testing.assert_close(pm.x0(x, 0.4, s), pm.x0_value.expand(5, 3))
    torch.testing.assert_close(pm.sample(4), pm.x0_value.expand(4, 3))


# ---------------------------------------------------------------------------------------------------------------------
# sampling the data distributions
# ---------------------------------------------------------------------------------------------------------------------


def test_samples_have_the_right_moments():
    # 5 standard errors, estimated from the sample itself (fixed seed)
    n = 40000
    g = torch.Generator().manual_seed(0)
    gs = DISTRIBUTIONS["gaussian"]
    z = gs.sample(n, generator=g)
    assert z.shape == (n, 3)
    se = z.std(0) / math.sqrt(n)
    assert bool(((z.mean(0) - gs.mean).abs() <= 5 * se).all())
    # var of the sample variance of a Gaussian: 2 sigma^4 / n
    assert bool(((z.var(0) - gs.std**2).abs() <= 5 * math.sqrt(2 / n) * gs.std**2).all())
    mix = DISTRIBUTIONS["mixture"]
    z = mix.sample(n, generator=g)
    w = mix.weights[:, None]
    mean = (w * mix.means).sum(0)
    second = (w * (mix.stds**2 + mix.means**2)).sum(0)
    assert bool(((z.mean(0) - mean).abs() <= 5 * z.std(0) / math.sqrt(n)).all())
    assert bool(((z.pow(2).mean(0) - second).abs() <= 5 * z.pow(2).std(0) / math.sqrt(n)).all())


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Gaussian([0.0, 1.0], [1.0, 0.0]), "std"),
        (lambda: Gaussian([0.0, float("nan")], [1.0, 1.0]), "mean"),
        (lambda: PointMass([0.0, float("inf")]), "x0"),
        (lambda: GaussianMixture([0.0, 1.0], [1.0, 1.0]), "means"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 1.0, 1.0]), "stds"),
        (lambda: GaussianMixture([[0.0], [1.0]], [[1.0, 1.0]]), "stds"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, -1.0]), "stds"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [0.5, -0.5]), "weights"),
        (lambda: GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [0.5]), "weights"),
    ],
)
def test_bad_distribution_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_oracle_arguments():
    s = VPLinear()
    mix = DISTRIBUTIONS["mixture"]
    with pytest.raises(ValueError, match="x has shape"):
        mix.score(torch.zeros(2, 4), 0.5, s)
    with pytest.raises(ValueError, match="t=.*outside the domain"):
        mix.score(torch.zeros(2, 3), 0.0, s)
    with pytest.raises(ValueError, match="prediction"):
        mix.model(s, prediction="noise")
