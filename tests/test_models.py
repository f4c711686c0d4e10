"""The parametrisation conversion table and the Model wrapper."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sde_diffusion import testing
from sde_diffusion.models import PREDICTIONS, DynamicThresholding, Model, broadcast_coeff, convert, to_eps, to_x0
from sde_diffusion.schedules import EDM, VEGeometric, VPDiscrete, VPLinear

# a fixed example budget per property keeps the suite fast (the profile may lower it further)
LIMIT = settings(max_examples=min(50, settings.default.max_examples))

PAIRS = list(itertools.product(PREDICTIONS, PREDICTIONS))


def _draw_state(data, kinds=None, batch=3, event=(2, 2)):
    """A schedule, per-sample times, and x = alpha x0 + sigma eps with every parametrisation by its definition."""
    s = data.draw(testing.schedules(kinds), label="schedule")
    t = data.draw(testing.times(s, size=batch), label="t")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((batch, *event), generator=g)
    eps = torch.randn((batch, *event), generator=g)
    shape = (batch,) + (1,) * len(event)
    a, sig = s.alpha(t).reshape(shape), s.sigma(t).reshape(shape)
    x = a * x0 + sig * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - sig * x0, "score": -eps / sig}
    return s, x, a, sig, truth


def _scale(kind, a, sig):
    """Natural magnitude of each quantity: x0 ~ 1, eps ~ 1, v ~ alpha + sigma, score ~ 1/sigma."""
    return {"eps": 1.0, "x0": 1.0, "v": a + sig, "score": 1.0 / sig}[kind]


U = 2.0**-52  # float64 unit roundoff (x2)


def _tol(a, sig, truth, power=1):
    """Rounding bound, relative to the target's scale: forming x costs u (alpha + sigma)(|x0| + |eps|), and recovering
    x0 divides by alpha, eps by sigma -- an amplification r = max(alpha/sigma, sigma/alpha) (``power`` = 2 for a
    round trip). 64 u covers the handful of operations in each conversion."""
    r = torch.maximum(a / sig, sig / a)
    return 64 * U * (r + 2) ** power * (1 + truth["x0"].abs() + truth["eps"].abs())


@LIMIT
@given(data=st.data())
def test_convert_matches_definitions(data):
    # every source -> target conversion reproduces the quantity defined from (x0, eps), for VP and VE alike
    s, x, a, sig, truth = _draw_state(data)
    for source, target in PAIRS:
        got = convert(truth[source], x, a, sig, source, target)
        err = ((got - truth[target]) / _scale(target, a, sig)).abs()
        assert bool((err <= _tol(a, sig, truth)).all()), (source, target, float(err.max()))


@LIMIT
@given(data=st.data())
def test_convert_round_trips(data):
    # source -> target -> source is the identity (VP and VE schedules: alpha^2 + sigma^2 need not be 1)
    s, x, a, sig, truth = _draw_state(data)
    for source, target in PAIRS:
        back = convert(convert(truth[source], x, a, sig, source, target), x, a, sig, target, source)
        err = ((back - truth[source]) / _scale(source, a, sig)).abs()
        assert bool((err <= _tol(a, sig, truth, power=2)).all()), (source, target, float(err.max()))


@LIMIT
@given(data=st.data())
def test_to_eps_and_to_x0_agree_with_convert(data):
    s, x, a, sig, truth = _draw_state(data)
    for kind in PREDICTIONS:
        torch.testing.assert_close(
            to_eps(truth[kind], x, a, sig, kind), convert(truth[kind], x, a, sig, kind, "eps"), rtol=0, atol=0
        )
        torch.testing.assert_close(
            to_x0(truth[kind], x, a, sig, kind), convert(truth[kind], x, a, sig, kind, "x0"), rtol=0, atol=0
        )


@LIMIT
@given(data=st.data())
def test_ve_and_vp_scalings_give_the_same_x0(data):
    # a VP state x and its VE rescaling x/alpha (schedule with alpha = 1, sigma = sigma_ve) share x0 and eps
    s, x, a, sig, truth = _draw_state(data, kinds=("vp_linear", "vp_cosine", "vp_discrete"))
    sig_ve = sig / a
    x_ve = x / a
    for kind in ("eps", "x0"):
        ve_out = convert(truth[kind], x_ve, torch.ones_like(a), sig_ve, kind, "x0")
        torch.testing.assert_close(ve_out, truth["x0"], rtol=1e-9, atol=1e-9 * float((1 + sig_ve).max()))


def test_broadcast_coeff_shapes():
    x = torch.zeros(4, 3, 5, 5)
    assert broadcast_coeff(torch.arange(4.0), x).shape == (4, 1, 1, 1)
    assert broadcast_coeff(torch.tensor(2.0), x).shape == ()
    torch.testing.assert_close((broadcast_coeff(torch.arange(4.0), x) + x)[:, 1, 2, 3], torch.arange(4.0))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


@LIMIT
@given(data=st.data())
def test_model_predict_per_sample_times(data):
    # a network returning the exact eps of a fixed (x0, eps) pair, queried with per-sample times (B,)
    s, x, a, sig, truth = _draw_state(data)
    t = s.inverse_lambda(torch.log(a / sig).flatten())  # recover per-sample times
    t = torch.clamp(t, s.t_min, s.t_max)
    a2, s2 = (broadcast_coeff(c, x) for c in (s.alpha(t), s.sigma(t)))
    for kind in PREDICTIONS:
        out = convert(truth["eps"], x, a2, s2, "eps", kind)
        model = Model(lambda x_, t_, out=out: out, s, prediction=kind)
        for target in PREDICTIONS:
            want = convert(out, x, a2, s2, kind, target)
            torch.testing.assert_close(model.predict(x, t, target), want, rtol=1e-12, atol=1e-12)
            # precomputed alpha/sigma (as the sampling loop passes them) give the same
            torch.testing.assert_close(model.predict(x, t, target, a2, s2), want, rtol=0, atol=0)


def test_model_counts_nfe_and_passes_time():
    seen = []
    sch = VPLinear()

    def fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    m = Model(fn, sch, "eps")
    x = torch.ones(3, 2)
    m.eps(x, 0.5)
    m.x0(x, torch.tensor([0.2, 0.3, 0.4]))
    m(x, 0.1)
    assert m.nfe == 3
    torch.testing.assert_close(seen[0], torch.full((3,), 0.5))
    torch.testing.assert_close(seen[1], torch.tensor([0.2, 0.3, 0.4]))
    m.reset_nfe()
    assert m.nfe == 0
    assert "eps" in repr(m)


def test_model_label_time_input():
    sch = VPDiscrete.from_config({"num_train_timesteps": 1000})
    seen = []
    m = Model(lambda x, t: seen.append(t) or torch.zeros_like(x), sch, "eps", time_input="label")
    m(torch.zeros(2, 1), torch.tensor([0.001, 1.0]))
    torch.testing.assert_close(seen[0], torch.tensor([0.0, 999.0]), rtol=0, atol=1e-9)
    m2 = Model(lambda x, t: seen.append(t) or torch.zeros_like(x), sch, "eps", time_input=lambda t: 2 * t)
    m2(torch.zeros(2, 1), 0.25)
    torch.testing.assert_close(seen[1], torch.tensor([0.5, 0.5]))


@LIMIT
@given(st.floats(-3, 3), st.sampled_from(PREDICTIONS))
def test_guided_model_is_linear_in_scale(scale, kind):
    sch = EDM()
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    m = Model.guided(lambda x, t: 2 * x, lambda x, t: x + 1, scale, sch, kind)
    out = m(x, 1.0)
    torch.testing.assert_close(out, (x + 1) + scale * (2 * x - (x + 1)), rtol=1e-14, atol=1e-14)
    assert m.nfe == 1 and m.prediction == kind


@LIMIT
@given(data=st.data())
def test_dynamic_thresholding(data):
    p = data.draw(st.floats(0.5, 1.0))
    cap = data.draw(st.floats(1.0, 5.0))
    vals = data.draw(st.lists(st.floats(-10, 10), min_size=8, max_size=8))
    x0 = torch.tensor(vals).reshape(2, 4)
    out = DynamicThresholding(p, cap)(x0)
    # per sample, s = clamp(quantile_p |x0|, 1, cap); out = clamp(x0, -s, s) / s
    for i in range(2):
        q = float(torch.quantile(x0[i].abs(), p))
        s = min(max(q, 1.0), cap)
        torch.testing.assert_close(out[i], torch.clamp(x0[i], -s, s) / s, rtol=1e-14, atol=1e-14)
    assert bool((out.abs() <= 1 + 1e-15).all())
    small = torch.clamp(x0, -1, 1)
    torch.testing.assert_close(DynamicThresholding(p, cap)(small), small, rtol=0, atol=0)


def test_thresholded_model_clips_x0():
    sch = VEGeometric()
    m = Model(lambda x, t: torch.full_like(x, 7.0), sch, "x0", thresholding=DynamicThresholding(1.0, 1.0))
    x = torch.zeros(2, 3)
    torch.testing.assert_close(m.x0(x, 0.5), torch.ones(2, 3))
    # eps is derived from the thresholded x0
    torch.testing.assert_close(m.eps(x, 0.5), (x - 1.0) / sch.sigma(0.5))


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_prediction_type_raises():
    sch = VPLinear()
    with pytest.raises(ValueError, match="prediction"):
        Model(lambda x, t: x, sch, prediction="noise")
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="source"):
        convert(x, x, 1.0, 1.0, "epsilon", "x0")
    with pytest.raises(ValueError, match="target"):
        convert(x, x, 1.0, 1.0, "eps", "sample")
    with pytest.raises(ValueError, match="prediction"):
        to_eps(x, x, 1.0, 1.0, "velocity")
    with pytest.raises(ValueError, match="prediction"):
        to_x0(x, x, 1.0, 1.0, "velocity")
    m = Model(lambda x, t: x, sch)
    with pytest.raises(ValueError, match="target"):
        m.predict(x, 0.5, "noise")


@pytest.mark.parametrize(
    "bad",
    [
        lambda x, t: x[:, :1],
        lambda x, t: x.reshape(-1),
        lambda x, t: x.sum(),
        lambda x, t: x.numpy(),
    ],
)
def test_shape_mismatch_raises(bad):
    m = Model(bad, VPLinear())
    with pytest.raises(ValueError, match="shape"):
        m.eps(torch.zeros(3, 2), 0.5)


def test_model_argument_types():
    with pytest.raises(TypeError, match="fn"):
        Model("not callable", VPLinear())
    with pytest.raises(TypeError, match="schedule"):
        Model(lambda x, t: x, "vp")
    with pytest.raises(ValueError, match="time_input"):
        Model(lambda x, t: x, VPLinear(), time_input="label")
    with pytest.raises(ValueError, match="time_input"):
        Model(lambda x, t: x, VPLinear(), time_input="discrete")
    with pytest.raises(TypeError, match="thresholding"):
        Model(lambda x, t: x, VPLinear(), thresholding=0.995)
    with pytest.raises(ValueError, match="t=.*outside the domain"):
        Model(lambda x, t: x, VPLinear()).eps(torch.zeros(2, 2), 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 1.5}, "percentile"),
        ({"max_value": 0.5}, "max_value"),
        ({"max_value": float("nan")}, "max_value"),
    ],
)
def test_dynamic_thresholding_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicThresholding(**kwargs)
