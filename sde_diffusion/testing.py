r"""Property-testing toolkit: Hypothesis strategies and conformance checks for schedules (and solvers).

Hypothesis is an optional dependency, imported when a strategy or check is first used::

    from hypothesis import given
    from sde_diffusion import testing

    @given(testing.schedules())
    def test_mine(schedule): ...

    testing.check_schedule(MySchedule())   # raises ScheduleCheckError naming the failed property

The project's own test-suite uses exactly these strategies and checks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from .schedules import EDM, NoiseSchedule, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear

__all__ = [
    "PropertyCheckError",
    "ScheduleCheckError",
    "schedules",
    "times",
    "check_schedule",
    "SCHEDULE_PROPERTIES",
]


def _hyp():
    try:
        import hypothesis
        import hypothesis.strategies as st
    except ImportError as e:  # pragma: no cover - exercised only without hypothesis
        raise ImportError("sde_diffusion.testing needs hypothesis: pip install hypothesis") from e
    return hypothesis, st


class PropertyCheckError(AssertionError):
    """A conformance property failed. ``prop`` names it; the message carries the (shrunk) counterexample."""

    def __init__(self, prop: str, message: str):
        super().__init__(f"property '{prop}' failed: {message}")
        self.prop = prop


class ScheduleCheckError(PropertyCheckError):
    pass


# ---------------------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------------------

def _floats(st, lo, hi, log=False):
    if log:
        return st.floats(math.log(lo), math.log(hi), allow_nan=False).map(math.exp)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def schedules(kinds: tuple[str, ...] | None = None):
    """Strategy over every built-in schedule with random valid parameters.

    ``kinds`` restricts to a subset of ``vp_linear, vp_cosine, vp_discrete, subvp_linear, ve_geometric, edm``.
    Discrete schedules come from random valid beta sequences (increasing, in ``(0, 1)``) and random configs.
    """
    _, st = _hyp()

    @st.composite
    def linear_pair(draw, cls):
        b0 = draw(_floats(st, 1e-3, 2.0, log=True))
        b1 = b0 + draw(_floats(st, 0.5, 40.0))
        return cls(beta_min=b0, beta_max=b1)

    @st.composite
    def ve(draw):
        smin = draw(_floats(st, 1e-3, 1.0, log=True))
        return VEGeometric(smin, smin * draw(_floats(st, 2.0, 1e5, log=True)))

    @st.composite
    def edm(draw):
        smin = draw(_floats(st, 1e-3, 0.5, log=True))
        return EDM(smin, smin * draw(_floats(st, 2.0, 1e5, log=True)))

    @st.composite
    def discrete(draw):
        n = draw(st.integers(4, 300))
        kind = draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "random"]))
        if kind == "random":
            raw = draw(st.lists(_floats(st, 1e-4, 0.5, log=True), min_size=n, max_size=n))
            return VPDiscrete(sorted(raw))
        b0 = draw(_floats(st, 1e-5, 1e-3, log=True))
        b1 = draw(_floats(st, 2e-3, 0.05, log=True))
        return VPDiscrete.from_config(
            {"num_train_timesteps": n, "beta_start": b0, "beta_end": b1, "beta_schedule": kind})

    table: dict[str, Any] = {
        "vp_linear": linear_pair(VPLinear),
        "subvp_linear": linear_pair(SubVPLinear),
        "vp_cosine": _floats(st, 1e-3, 0.05).map(VPCosine),
        "vp_discrete": discrete(),
        "ve_geometric": ve(),
        "edm": edm(),
    }
    kinds = tuple(table) if kinds is None else kinds
    unknown = set(kinds) - set(table)
    if unknown:
        raise ValueError(f"unknown schedule kinds {sorted(unknown)}; choose from {sorted(table)}")
    return st.one_of(*(table[k] for k in kinds))


def times(schedule: NoiseSchedule, *, size: int | None = None):
    """Strategy over times in ``[t_min, t_max]``: the end points, values next to them, and interior points.

    With ``size`` it draws a float64 tensor of that many such times, else a Python float.
    """
    _, st = _hyp()
    lo, hi = schedule.t_min, schedule.t_max
    span = hi - lo
    one = st.one_of(
        st.sampled_from([lo, hi, lo + 1e-9 * span, hi - 1e-9 * span]),
        st.floats(lo, hi, allow_nan=False),
    )
    if size is None:
        return one
    return st.lists(one, min_size=size, max_size=size).map(lambda v: torch.tensor(v, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------------
# schedule properties: each takes (schedule, t) with t a float64 tensor of times, raises AssertionError on failure
# ---------------------------------------------------------------------------------------------------------------------

def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float, what: str):
    bad = ~torch.isclose(a, b, rtol=rtol, atol=atol)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(f"{what}: {a.flatten()[i].item()!r} != {b.flatten()[i].item()!r}")


def _prop_finite(s: NoiseSchedule, t):
    for name in ("alpha", "sigma", "lambda_", "f", "g2"):
        v = getattr(s, name)(t)
        if not bool(torch.isfinite(v).all()):
            i = int((~torch.isfinite(v)).flatten().nonzero()[0])
            raise AssertionError(f"{name}(t={t.flatten()[i].item()!r}) = {v.flatten()[i].item()!r}")
    if not bool(((s.alpha(t) > 0) & (s.sigma(t) > 0)).all()):
        raise AssertionError("alpha and sigma must be positive")


def _prop_lambda_decreasing(s: NoiseSchedule, t):
    ts = torch.sort(torch.unique(t)).values
    lam = s.lambda_(ts)
    bad = (lam[1:] >= lam[:-1]) & (ts[1:] - ts[:-1] > 1e-12 * (s.t_max - s.t_min))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(f"lambda({ts[i].item()!r}) = {lam[i].item()!r} <= lambda({ts[i + 1].item()!r}) = "
                             f"{lam[i + 1].item()!r}")
    ends = s.lambda_(torch.tensor([s.t_min, s.t_max], dtype=torch.float64))
    if not bool(ends[0] > ends[1]):
        raise AssertionError("lambda(t_min) must exceed lambda(t_max)")


def _prop_inverse_lambda(s: NoiseSchedule, t):
    # compare in lambda (well conditioned whatever the slope of lambda(t)) and in t, scaled by the domain
    back = s.inverse_lambda(s.lambda_(t))
    span = s.t_max - s.t_min
    _close(back, t, rtol=0, atol=1e-9 * max(span, 1e-300) + 1e-9 * t.abs().max().item(),
           what="inverse_lambda(lambda_(t)) vs t")


def _prop_f_autograd(s: NoiseSchedule, t):
    tt = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(s.log_alpha(tt).sum(), tt)
    _close(s.f(t), grad, rtol=1e-7, atol=1e-9, what="f(t) vs d log alpha/dt (autograd)")


def _prop_g2_autograd(s: NoiseSchedule, t):
    tt = t.clone().requires_grad_(True)
    (dsig2,) = torch.autograd.grad((s.sigma(tt) ** 2).sum(), tt)
    want = dsig2 - 2 * s.f(t) * s.sigma(t) ** 2
    _close(s.g2(t), want, rtol=1e-6, atol=1e-9 * float(want.abs().max()) + 1e-12,
           what="g2(t) vs d sigma^2/dt - 2 f sigma^2 (autograd)")
    if not bool((s.g2(t) > 0).all()):
        raise AssertionError("g2 must be positive")


def _prop_vp_identity(s: NoiseSchedule, t):
    _close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12,
           what="alpha^2 + sigma^2 vs 1")


def _prop_sigma_ve(s: NoiseSchedule, t):
    _close(s.sigma_ve(t), s.sigma(t) / s.alpha(t), rtol=1e-12, atol=0, what="sigma_ve vs sigma/alpha")


def _prop_tensor_semantics(s: NoiseSchedule, t):
    for dtype in (torch.float32, torch.float64):
        x = t.to(dtype).reshape(-1, 1).expand(-1, 2)
        for name in ("alpha", "sigma", "lambda_", "f", "g2"):
            v = getattr(s, name)(x)
            if v.dtype != dtype or v.shape != x.shape or v.device != x.device:
                raise AssertionError(f"{name} returned {v.dtype}, shape {tuple(v.shape)} for {dtype} input of "
                                     f"shape {tuple(x.shape)}")
    scalar = s.alpha(float(t.flatten()[0]))
    if scalar.ndim != 0:
        raise AssertionError("a Python float must give a 0-d tensor")


def _prop_moment_ode(s: NoiseSchedule, t):
    # For dx = f x dt + g dW the variance of x_t/alpha_t (started from a point) grows at rate g^2/alpha^2, so the
    # marginals are those of the SDE iff  sigma_ve^2(t) - sigma_ve^2(t0) = int_{t0}^{t} g^2(u)/alpha^2(u) du.
    # This ties g2 to lambda without using f. Composite Gauss-Legendre, graded towards both ends, split at `knots`.
    import numpy as np

    nodes, weights = (torch.as_tensor(a) for a in np.polynomial.legendre.leggauss(8))
    t0 = s.t_min
    for ti in torch.unique(t)[:4].tolist():
        if ti <= t0:
            continue
        k = torch.arange(65, dtype=torch.float64)
        breaks = t0 + (ti - t0) * (1 - torch.cos(math.pi * k / 64)) / 2
        knots = getattr(s, "knots", None)
        if knots is not None:
            breaks = torch.unique(torch.cat([breaks, knots[(knots > t0) & (knots < ti)]]))
        a, b = breaks[:-1, None], breaks[1:, None]
        u = a + (b - a) * (nodes + 1) / 2
        integral = float(((b - a) / 2 * weights * s.g2(u) / s.alpha(u) ** 2).sum())
        ends = s.sigma_ve(torch.tensor([t0, ti], dtype=torch.float64)) ** 2
        lhs = float(ends[1] - ends[0])
        if not math.isclose(lhs, integral, rel_tol=1e-7, abs_tol=1e-12 * float(ends[1])):
            raise AssertionError(f"at t={ti!r}: sigma_ve^2 increment {lhs!r} vs int g^2/alpha^2 = {integral!r}")


SCHEDULE_PROPERTIES: dict[str, Callable] = {
    "finite": _prop_finite,
    "lambda_decreasing": _prop_lambda_decreasing,
    "inverse_lambda": _prop_inverse_lambda,
    "f_autograd": _prop_f_autograd,
    "g2_autograd": _prop_g2_autograd,
    "vp_identity": _prop_vp_identity,
    "sigma_ve": _prop_sigma_ve,
    "tensor_semantics": _prop_tensor_semantics,
    "moment_ode": _prop_moment_ode,
}
"""Every schedule property by name; ``check_schedule`` runs them all (``vp_identity`` only for VP schedules)."""


def _run_property(hypothesis, schedule, name, prop, max_examples):
    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(times(schedule, size=6))
    def run(t):
        with contextlib.nullcontext() if "autograd" in name else torch.no_grad():
            prop(schedule, t)

    run()


def check_schedule(schedule: NoiseSchedule, *, vp: bool | None = None, max_examples: int = 50,
                   properties: tuple[str, ...] | None = None) -> None:
    """Run the schedule property suite on any :class:`NoiseSchedule`, built-in or user-defined.

    Args:
        schedule: the schedule under test.
        vp: whether to check ``alpha^2 + sigma^2 = 1``; default ``schedule.is_vp``.
        max_examples: Hypothesis examples per property.
        properties: subset of :data:`SCHEDULE_PROPERTIES` (default: all that apply).

    Raises:
        ScheduleCheckError: naming the first failed property, with Hypothesis' shrunk counterexample.
    """
    hypothesis, st = _hyp()
    vp = schedule.is_vp if vp is None else vp
    names = list(properties or SCHEDULE_PROPERTIES)
    if not vp and properties is None:
        names.remove("vp_identity")
    for name in names:
        try:
            _run_property(hypothesis, schedule, name, SCHEDULE_PROPERTIES[name], max_examples)
        except ScheduleCheckError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the property is reported under its name
            notes = "\n".join(getattr(e, "__notes__", []))
            raise ScheduleCheckError(name, f"{type(e).__name__}: {e}\n{notes}".rstrip()) from e
