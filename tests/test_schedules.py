"""Noise schedules: the public property suite of ``sde_diffusion.testing`` over random schedules, plus the properties
that suite does not cover (closed forms, the sub-VP formula, the discrete schedule, config betas, bad input)."""

from __future__ import annotations

import contextlib
import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from sde_diffusion import testing
from sde_diffusion.schedules import (
    EDM,
    NoiseSchedule,
    SubVPLinear,
    VEGeometric,
    VPCosine,
    VPDiscrete,
    VPLinear,
    betas_from_config,
)
from sde_diffusion.sdes import ForwardSDE

# a fixed example budget per property keeps the suite fast (the profile may lower it further)
LIMIT = settings(max_examples=min(50, settings.default.max_examples))

VP_KINDS = ("vp_linear", "vp_cosine", "vp_discrete")
F64 = torch.float64


def _t(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=F64)


# ---------------------------------------------------------------------------------------------------------------------
# the public property suite, over random schedules (Hypothesis) and on the default schedules (check_schedule)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prop", sorted(testing.SCHEDULE_PROPERTIES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_schedule_property_random_parameters(prop, data):
    schedule = data.draw(testing.schedules(VP_KINDS if prop == "vp_identity" else None), label="schedule")
    t = data.draw(testing.times(schedule, size=6), label="t")
    with contextlib.nullcontext() if "autograd" in prop else torch.no_grad():
        testing.SCHEDULE_PROPERTIES[prop](schedule, t)


DEFAULT_SCHEDULES = [
    VPLinear(),
    VPCosine(),
    SubVPLinear(),
    VEGeometric(),
    EDM(),
    VPDiscrete.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"}),
    VPDiscrete.from_config({"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}),
]


@pytest.mark.parametrize("schedule", DEFAULT_SCHEDULES, ids=repr)
def test_check_schedule_passes_on_defaults(schedule):
    testing.check_schedule(schedule, max_examples=15)


class _WrongDrift(VPLinear):
    """f off by 1%: every other property still holds."""

    def f_unchecked(self, t):
        return 1.01 * super().f_unchecked(t)


class _WrongInverse(VEGeometric):
    def inverse_lambda_unchecked(self, lam):
        return super().inverse_lambda_unchecked(lam) + 1e-6


class _WrongG2(SubVPLinear):
    def g2_unchecked(self, t):
        return 1.001 * super().g2_unchecked(t)


@pytest.mark.parametrize(
    ("schedule", "prop"),
    [
        (_WrongDrift(), "f_autograd"),
        (_WrongInverse(), "inverse_lambda"),
        (_WrongG2(), "g2_autograd"),
        (_WrongG2(), "moment_ode"),
    ],
)
def test_check_schedule_detects_broken_schedules(schedule, prop):
    # the suite must be able to fail: each broken schedule is caught by the property that concerns it
    with pytest.raises(testing.ScheduleCheckError, match=prop):
        testing.check_schedule(schedule, max_examples=15, properties=(prop,))


# ---------------------------------------------------------------------------------------------------------------------
# properties the public suite does not have
# ---------------------------------------------------------------------------------------------------------------------


@LIMIT
@given(data=st.data())
def test_lambda_then_inverse_round_trip(data):
    # the other direction of the suite's t -> lambda -> t: lam -> t -> lam over [lambda_min, lambda_max]
    s = data.draw(testing.schedules())
    lam = _t(data.draw(st.lists(st.floats(s.lambda_min, s.lambda_max), min_size=1, max_size=6)))
    back = s.lambda_(torch.clamp(s.inverse_lambda(lam), s.t_min, s.t_max))
    # lambda spans up to ~1e2 and its slope can reach ~1e5 (VPDiscrete): a t-rounding of 1e-16 moves lambda by 1e-11
    torch.testing.assert_close(back, lam, rtol=0, atol=1e-9 * max(1.0, s.lambda_max - s.lambda_min))


@LIMIT
@given(data=st.data())
def test_lambda_extremes_are_the_end_points(data):
    s = data.draw(testing.schedules())
    assert s.lambda_max == pytest.approx(float(s.lambda_(s.t_min)), rel=1e-15, abs=1e-15)
    assert s.lambda_min == pytest.approx(float(s.lambda_(s.t_max)), rel=1e-15, abs=1e-15)
    assert s.lambda_min < s.lambda_max


@LIMIT
@given(data=st.data())
def test_batched_evaluation_equals_scalar_evaluation(data):
    s = data.draw(testing.schedules())
    t = data.draw(testing.times(s, size=4))
    for name in ("alpha", "sigma", "lambda_", "sigma_ve", "f", "g2"):
        fn = getattr(s, name)
        scalar = torch.stack([fn(float(ti)) for ti in t])
        torch.testing.assert_close(fn(t), scalar, rtol=1e-14, atol=0)


@LIMIT
@given(data=st.data())
def test_float32_matches_float64(data):
    s = data.draw(testing.schedules(("vp_linear", "vp_cosine", "subvp_linear", "ve_geometric", "edm")))
    t = data.draw(testing.times(s, size=4))
    t32 = t.float()
    for name in ("log_alpha", "log_sigma", "lambda_"):
        fn = getattr(s, name)
        # log-quantities: absolute error in float32 (scaled by the value's magnitude)
        ref = fn(t32.double())
        torch.testing.assert_close(fn(t32).double(), ref, rtol=1e-5, atol=1e-5)


@LIMIT
@given(data=st.data())
def test_vp_marginal_std_in_unit_interval_and_increasing(data):
    s = data.draw(testing.schedules(VP_KINDS))
    t = torch.sort(data.draw(testing.times(s, size=6))).values
    std = ForwardSDE(s).marginal_std(t)
    assert bool(((std > 0) & (std <= 1)).all())
    assert bool(((s.alpha(t) > 0) & (s.alpha(t) <= 1)).all())
    assert bool((std[1:] >= std[:-1]).all())


@LIMIT
@given(data=st.data())
def test_subvp_sigma_is_one_minus_alpha_squared(data):
    s = data.draw(testing.schedules(("subvp_linear",)))
    t = data.draw(testing.times(s, size=6))
    a = s.alpha(t)
    torch.testing.assert_close(s.sigma(t), 1 - a * a, rtol=1e-12, atol=1e-15)
    # same alpha as the VP schedule with the same betas, and variance below the VP variance 1 - alpha^2
    vp = VPLinear(s.beta_min, s.beta_max)
    torch.testing.assert_close(a, vp.alpha(t), rtol=1e-14, atol=0)
    assert bool((s.sigma(t) ** 2 <= vp.sigma(t) ** 2 * (1 + 1e-14)).all())
    beta = s.beta_min + t * (s.beta_max - s.beta_min)
    torch.testing.assert_close(s.g2(t), beta * (1 - a**4), rtol=1e-12, atol=1e-15)


@LIMIT
@given(data=st.data())
def test_vp_linear_closed_form(data):
    s = data.draw(testing.schedules(("vp_linear",)))
    t = data.draw(testing.times(s, size=6))
    b0, b1 = s.beta_min, s.beta_max
    integral = b0 * t + 0.5 * (b1 - b0) * t * t  # int_0^t beta
    torch.testing.assert_close(s.alpha(t), torch.exp(-0.5 * integral), rtol=1e-13, atol=0)
    torch.testing.assert_close(s.sigma(t), torch.sqrt(-torch.expm1(-integral)), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.f(t), -0.5 * (b0 + (b1 - b0) * t), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.g2(t), b0 + (b1 - b0) * t, rtol=1e-14, atol=0)


@LIMIT
@given(data=st.data())
def test_vp_cosine_closed_form(data):
    s = data.draw(testing.schedules(("vp_cosine",)))
    t = data.draw(testing.times(s, size=6))
    c = s.s
    alpha = torch.cos(math.pi / 2 * (t + c) / (1 + c)) / math.cos(math.pi / 2 * c / (1 + c))
    # the naive formula loses ~1e-16/(1 - alpha) relative accuracy in sigma near t = 0; alpha is well conditioned
    torch.testing.assert_close(s.alpha(t), alpha, rtol=1e-13, atol=0)
    torch.testing.assert_close(s.sigma(t), torch.sqrt(1 - alpha**2), rtol=1e-9, atol=0)


@LIMIT
@given(data=st.data())
def test_variance_exploding_closed_forms(data):
    s = data.draw(testing.schedules(("ve_geometric", "edm")))
    t = data.draw(testing.times(s, size=6))
    torch.testing.assert_close(s.alpha(t), torch.ones_like(t), rtol=0, atol=0)
    torch.testing.assert_close(s.f(t), torch.zeros_like(t), rtol=0, atol=0)
    # for alpha = 1 the VE noise level is sigma itself
    torch.testing.assert_close(s.sigma_ve(t), s.sigma(t), rtol=1e-14, atol=0)
    if isinstance(s, EDM):
        torch.testing.assert_close(s.sigma(t), t, rtol=1e-15, atol=0)
        torch.testing.assert_close(s.g2(t), 2 * t, rtol=1e-15, atol=0)
        torch.testing.assert_close(s.inverse_lambda(-torch.log(t)), t, rtol=1e-15, atol=0)
    else:
        ratio = s.sigma_max / s.sigma_min
        torch.testing.assert_close(s.sigma(t), s.sigma_min * ratio**t, rtol=1e-12, atol=0)
        torch.testing.assert_close(s.g2(t), 2 * math.log(ratio) * s.sigma(t) ** 2, rtol=1e-12, atol=0)
        assert float(s.sigma(s.t_min)) == pytest.approx(s.sigma_min, rel=1e-15)
        assert float(s.sigma(s.t_max)) == pytest.approx(s.sigma_max, rel=1e-12)


# ---- the discrete (DDPM) schedule -----------------------------------------------------------------------------------


@LIMIT
@given(data=st.data())
def test_vp_discrete_exact_at_grid_points(data):
    s = data.draw(testing.schedules(("vp_discrete",)))
    n = s.num_steps
    betas = s.betas
    # alphas_cumprod by a plain running product, independent of the class's log-space cumsum
    acp, running = [], 1.0
    for b in betas.tolist():
        running *= 1.0 - b
        acp.append(running)
    acp = _t(acp)
    tn = _t([(k + 1) / n for k in range(n)])
    torch.testing.assert_close(s.alpha(tn), torch.sqrt(acp), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sigma(tn), torch.sqrt(1 - acp), rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(s.knots, tn, rtol=0, atol=0)


@LIMIT
@given(data=st.data())
def test_vp_discrete_monotone_and_log_linear_between_grid_points(data):
    s = data.draw(testing.schedules(("vp_discrete",)))
    n = s.num_steps
    k = data.draw(st.integers(0, n - 2))
    u = torch.sort(_t(data.draw(st.lists(st.floats(0, 1), min_size=2, max_size=8)))).values
    lo, hi = (k + 1) / n, (k + 2) / n
    t = torch.clamp(lo + u * (hi - lo), lo, hi)
    la = s.log_alpha(t)
    ends = s.log_alpha(_t([lo, hi]))
    # linear interpolation of log alpha between the knots ...
    torch.testing.assert_close(la, ends[0] + (t - lo) / (hi - lo) * (ends[1] - ends[0]), rtol=1e-12, atol=1e-14)
    # ... hence alpha non-increasing (strictly, up to rounding) and f the constant slope of the piece
    assert bool((la[1:] <= la[:-1] + 1e-15).all())
    mid = _t([0.5 * (lo + hi)])
    torch.testing.assert_close(s.f(mid), (ends[1] - ends[0]).reshape(1) * n, rtol=1e-9, atol=1e-12)


@LIMIT
@given(data=st.data())
def test_vp_discrete_betas_and_alphas_cumprod_round_trip(data):
    s = data.draw(testing.schedules(("vp_discrete",)))
    again = VPDiscrete(betas=s.betas)
    other = VPDiscrete(alphas_cumprod=s.alphas_cumprod)
    t = data.draw(testing.times(s, size=5))
    for sch in (again, other):
        torch.testing.assert_close(sch.log_alpha(t), s.log_alpha(t), rtol=1e-12, atol=1e-13)
    assert bool((s.betas > 0).all()) and bool((s.betas < 1).all())


@LIMIT
@given(st.integers(2, 2000))
def test_vp_discrete_labels(n):
    s = VPDiscrete.from_config({"num_train_timesteps": n, "beta_start": 1e-4, "beta_end": 0.02})
    tn = s.knots
    # the label is (t - 1/N) * 1000; for N = 1000 it is the step index n at t_n = (n+1)/N
    torch.testing.assert_close(s.t_to_label(tn), (tn - 1 / n) * 1000, rtol=0, atol=1e-12)
    torch.testing.assert_close(s.label_to_t(s.t_to_label(tn)), tn, rtol=0, atol=1e-12)
    if n == 1000:
        torch.testing.assert_close(s.t_to_label(tn), torch.arange(n, dtype=F64), rtol=0, atol=1e-9)


# ---- config constructor ----------------------------------------------------------------------------------------------


def _independent_betas(kind: str, n: int, b0: float, b1: float) -> list[float]:
    """The three diffusers beta schedules, written out element by element."""
    if kind == "linear":
        return [b0 + (b1 - b0) * i / (n - 1) for i in range(n)]
    if kind == "scaled_linear":
        r0, r1 = math.sqrt(b0), math.sqrt(b1)
        return [(r0 + (r1 - r0) * i / (n - 1)) ** 2 for i in range(n)]

    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]


BETA_KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2")
configs = st.fixed_dictionaries(
    {
        "num_train_timesteps": st.integers(2, 1200),
        "beta_start": st.floats(math.log(1e-5), math.log(1e-3)).map(math.exp),
        "beta_end": st.floats(math.log(2e-3), math.log(5e-2)).map(math.exp),
        "beta_schedule": st.sampled_from(BETA_KINDS),
    }
)


@LIMIT
@given(configs)
def test_config_betas_match_independent_formula(config):
    want = _t(
        _independent_betas(
            config["beta_schedule"], config["num_train_timesteps"], config["beta_start"], config["beta_end"]
        )
    )
    torch.testing.assert_close(betas_from_config(config), want, rtol=1e-12, atol=1e-17)
    s = VPDiscrete.from_config(config)
    torch.testing.assert_close(s.betas, want, rtol=1e-9, atol=1e-15)
    assert s.num_steps == config["num_train_timesteps"]


@settings(max_examples=15)
@given(configs)
def test_config_betas_match_diffusers(config):
    try:
        from diffusers import DDPMScheduler
    except ImportError:  # pragma: no cover - diffusers is a test dependency
        pytest.skip("diffusers not importable")
    ref = DDPMScheduler(**config)
    # diffusers works in float32: agreement to float32 rounding (a few ulp, accumulated over the cumprod)
    torch.testing.assert_close(betas_from_config(config), ref.betas.double(), rtol=2e-6, atol=1e-12)
    s = VPDiscrete.from_config(config)
    # float32 cumprod: a few float32 roundings (u = 6e-8) per factor, and a rounding of beta moves log(1 - beta) by
    # u beta/(1 - beta); so compare logs with atol = 4u (N + sum beta/(1 - beta)) + 1e-6
    b = s.betas
    tol = 4 * 6e-8 * (b.numel() + float((b / (1 - b)).sum())) + 1e-6
    torch.testing.assert_close(torch.log(s.alphas_cumprod), torch.log(ref.alphas_cumprod.double()), rtol=0, atol=tol)


def test_config_defaults_and_trained_betas():
    torch.testing.assert_close(betas_from_config({}), _t(_independent_betas("linear", 1000, 1e-4, 0.02)))
    trained = [0.01, 0.02, 0.05]
    torch.testing.assert_close(betas_from_config({"trained_betas": trained, "beta_schedule": "nonsense"}), _t(trained))


# ---------------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: VPLinear(beta_min=5.0, beta_max=5.0), ValueError, "beta_max"),
        (lambda: VPLinear(beta_min=1.0, beta_max=0.5), ValueError, "beta_max"),
        (lambda: SubVPLinear(beta_min=2.0, beta_max=1.0), ValueError, "beta_max"),
        (lambda: VPLinear(beta_min=-0.1), ValueError, "beta_min"),
        (lambda: VPLinear(beta_max=float("nan")), ValueError, "beta_max"),
        (lambda: VPLinear(beta_min=float("nan")), ValueError, "beta_min"),
        (lambda: VPLinear(beta_max=float("inf")), ValueError, "beta_max"),
        (lambda: VPLinear(beta_min="0.1"), TypeError, "beta_min"),
        (lambda: VPLinear(t_min=0.5, t_max=0.5), ValueError, "t_min"),
        (lambda: VPLinear(t_min=0.0), ValueError, "t_min"),
        (lambda: VPLinear(t_max=float("nan")), ValueError, "t_max"),
        (lambda: VPCosine(s=-0.008), ValueError, "s must"),
        (lambda: VPCosine(s=float("nan")), ValueError, "s must"),
        (lambda: VPCosine(t_max=1.0), ValueError, "t_min/t_max"),
        (lambda: VEGeometric(sigma_min=1.0, sigma_max=1.0), ValueError, "sigma_min"),
        (lambda: VEGeometric(sigma_min=50.0, sigma_max=0.01), ValueError, "sigma_min"),
        (lambda: VEGeometric(sigma_min=-0.01), ValueError, "sigma_min"),
        (lambda: VEGeometric(sigma_max=float("nan")), ValueError, "sigma_max"),
        (lambda: EDM(sigma_min=80.0, sigma_max=0.002), ValueError, "sigma_min"),
        (lambda: EDM(sigma_min=0.0), ValueError, "sigma_min"),
        (lambda: VPDiscrete([0.1, 1.0]), ValueError, "betas"),
        (lambda: VPDiscrete([0.0, 0.1]), ValueError, "betas"),
        (lambda: VPDiscrete([-0.1, 0.1]), ValueError, "betas"),
        (lambda: VPDiscrete([0.1, float("nan")]), ValueError, "betas"),
        (lambda: VPDiscrete([0.1]), ValueError, "betas"),
        (lambda: VPDiscrete(), ValueError, "betas"),
        (lambda: VPDiscrete([0.1, 0.2], alphas_cumprod=[0.9, 0.8]), ValueError, "betas"),
        (lambda: VPDiscrete(alphas_cumprod=[0.9, 0.95]), ValueError, "alphas_cumprod"),
        (lambda: VPDiscrete(alphas_cumprod=[1.0, 0.5]), ValueError, "alphas_cumprod"),
        (lambda: VPDiscrete.from_config({"beta_end": 1.5}), ValueError, "betas"),
        (lambda: betas_from_config({"beta_schedule": "quadratic"}), ValueError, "beta_schedule"),
        (lambda: betas_from_config({"num_train_timesteps": 0}), ValueError, "num_train_timesteps"),
        (lambda: betas_from_config({"num_train_timesteps": 10.5}), ValueError, "num_train_timesteps"),
        (lambda: betas_from_config({"beta_start": -1e-4}), ValueError, "beta_start"),
        (lambda: betas_from_config({"beta_end": float("nan")}), ValueError, "beta_end"),
    ],
)
def test_bad_parameters_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


_DISCRETE = VPDiscrete.from_config({"num_train_timesteps": 100})


@pytest.mark.parametrize(
    ("schedule", "t"),
    [
        (VPLinear(), 0.0),
        (VPLinear(), -0.5),
        (SubVPLinear(), 0.0),
        (VPCosine(), 1.0),
        (VPCosine(), 1.5),
        (VPCosine(), 0.0),
        (_DISCRETE, 0.5 / 100),
        (_DISCRETE, 1.0 + 1e-9),
        (EDM(), 0.0),
        (EDM(), -1.0),
        (VPLinear(), float("nan")),
        (VEGeometric(), float("nan")),
    ],
)
@pytest.mark.parametrize("method", ["alpha", "sigma", "log_alpha", "lambda_", "sigma_ve", "f", "g2"])
def test_time_outside_domain_raises(schedule, t, method):
    with pytest.raises(ValueError, match=r"t=.* outside the domain"):
        getattr(schedule, method)(t)
    # also when only one entry of a batch is bad
    good = 0.5 * (schedule.t_min + schedule.t_max)
    with pytest.raises(ValueError, match=r"t=.* outside the domain"):
        getattr(schedule, method)(_t([good, t]))


def test_inverse_lambda_rejects_nan():
    with pytest.raises(ValueError, match="lam"):
        VPLinear().inverse_lambda(float("nan"))


def test_ve_geometric_extrapolates():
    # VE formulas hold for every real t: no domain error outside [t_min, t_max]
    s = VEGeometric(0.01, 50.0)
    torch.testing.assert_close(s.sigma(_t([-1.0, 2.0])), 0.01 * 5000.0 ** _t([-1.0, 2.0]), rtol=1e-12, atol=0)


def test_schedule_is_abstract():
    with pytest.raises(NotImplementedError):
        NoiseSchedule().alpha(0.5)


# ---------------------------------------------------------------------------------------------------------------------
# issue 15, item 9: refused inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [math.inf, -math.inf, math.nan])
def test_inverse_lambda_refuses_non_finite_lambda(lam):
    for sch in (VPLinear(), VEGeometric(), EDM()):
        with pytest.raises(ValueError, match="lam="):
            sch.inverse_lambda(torch.tensor([0.0, lam], dtype=torch.float64))


def test_vp_discrete_refuses_multidimensional_betas():
    with pytest.raises(ValueError, match="one-dimensional"):
        VPDiscrete(torch.full((3, 3), 0.01))
    with pytest.raises(ValueError, match="one-dimensional"):
        VPDiscrete(alphas_cumprod=torch.linspace(0.9, 0.1, 9).reshape(3, 3))


@pytest.mark.parametrize("betas", [[0.5, 1.5], [0.0, 0.1], [0.1, -0.2], [[0.1, 0.2]], [0.1]])
def test_trained_betas_outside_the_open_unit_interval_are_refused(betas):
    with pytest.raises(ValueError, match="trained_betas"):
        betas_from_config({"trained_betas": betas})
