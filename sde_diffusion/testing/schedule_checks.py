"""Conformance properties of noise schedules (SCHEDULE_PROPERTIES) and `check_schedule`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..schedules import NoiseSchedule
from .common import (
    F64,
    CheckReport,
    ScheduleCheckError,
    hypothesis_modules,
    run_checks,
    run_given,
    select_properties,
)
from .strategies import times


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float, what: str, at: torch.Tensor | None = None):
    bad = ~torch.isclose(a, b, rtol=rtol, atol=atol)
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        where = f" at t={at.flatten()[i].item()!r}" if at is not None else ""
        raise AssertionError(f"{what}{where}: {a.flatten()[i].item()!r} != {b.flatten()[i].item()!r}")


def _derivative(fn: Callable, t: torch.Tensor) -> torch.Tensor:
    """Elementwise ``d fn / dt`` by autograd (zero where ``fn`` does not depend on ``t``)."""
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        out = fn(tt)
        if not out.requires_grad:
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(out.sum(), tt, allow_unused=True)
    return torch.zeros_like(t) if grad is None else grad


def _prop_contract(s: NoiseSchedule, t):
    for name in ("t_min", "t_max"):
        v = getattr(s, name, None)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise AssertionError(f"{name} must be a finite number (set it, e.g. with _set_range), got {v!r}")
    if not s.t_min < s.t_max:
        raise AssertionError(f"t_min={s.t_min!r} must be < t_max={s.t_max!r}")
    try:
        s.check_t(torch.tensor([s.t_min, s.t_max], dtype=F64), "t_min/t_max")
    except ValueError as e:
        raise AssertionError(f"[t_min, t_max] must lie inside domain={s.domain!r}: {e}") from None
    if not isinstance(s.is_vp, bool):
        raise AssertionError(f"is_vp must be a bool, got {s.is_vp!r}")
    with torch.no_grad():
        for method, needs in (
            ("_log_alpha", "_log_alpha"),
            ("_log_sigma", "_log_sigma"),
            ("_f", "_f"),
            ("_g2", "_dlog_sigma or _g2"),
            ("_lambda", "_log_alpha and _log_sigma"),
        ):
            try:
                getattr(s, method)(t)
            except NotImplementedError:
                raise AssertionError(f"{type(s).__name__} must implement {needs}") from None
        try:
            s.inverse_lambda_unchecked(s.lambda_unchecked(t))
        except NotImplementedError:
            raise AssertionError(f"{type(s).__name__} must implement _inverse_lambda") from None


def _prop_finite(s: NoiseSchedule, t):
    for name in ("alpha", "sigma", "lambda_", "sigma_ve", "f", "g2"):
        v = getattr(s, name)(t)
        if not bool(torch.isfinite(v).all()):
            i = int((~torch.isfinite(v)).flatten().nonzero()[0])
            raise AssertionError(f"{name}(t={t.flatten()[i].item()!r}) = {v.flatten()[i].item()!r}")
    pos = (s.alpha(t) > 0) & (s.sigma(t) > 0)
    if not bool(pos.all()):
        i = int((~pos).flatten().nonzero()[0])
        raise AssertionError(
            f"alpha and sigma must be positive; at t={t[i].item()!r} alpha={s.alpha(t[i]).item()!r}, "
            f"sigma={s.sigma(t[i]).item()!r}"
        )
    for name in ("lambda_min", "lambda_max"):
        if not math.isfinite(getattr(s, name)):
            raise AssertionError(f"{name} = {getattr(s, name)!r}")


def _prop_lambda_decreasing(s: NoiseSchedule, t):
    # local: d lambda/dt < 0 at every sampled time (catches any interval where lambda rises, whatever its length)
    dlam = _derivative(s.lambda_, t)
    bad = ~(dlam < 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(f"d lambda/dt (autograd) = {dlam[i].item()!r} >= 0 at t={t[i].item()!r}")
    # global: lambda strictly decreasing over the sorted sample and between the end points
    ts = torch.sort(torch.unique(t)).values
    lam = s.lambda_(ts)
    bad = (lam[1:] >= lam[:-1]) & (ts[1:] - ts[:-1] > 1e-12 * (s.t_max - s.t_min))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise AssertionError(
            f"lambda({ts[i].item()!r}) = {lam[i].item()!r} <= lambda({ts[i + 1].item()!r}) = {lam[i + 1].item()!r}"
        )
    if not s.lambda_max > s.lambda_min:
        raise AssertionError(f"lambda(t_min) = {s.lambda_max!r} must exceed lambda(t_max) = {s.lambda_min!r}")


def _prop_inverse_lambda(s: NoiseSchedule, t):
    back = s.inverse_lambda(s.lambda_(t))
    span = s.t_max - s.t_min
    _close(
        back,
        t,
        rtol=0,
        atol=1e-9 * max(span, 1e-300) + 1e-9 * t.abs().max().item(),
        what="inverse_lambda(lambda_(t)) vs t",
        at=t,
    )


def _prop_f_autograd(s: NoiseSchedule, t):
    _close(s.f(t), _derivative(s.log_alpha, t), rtol=1e-7, atol=1e-9, what="f(t) vs d log alpha/dt (autograd)", at=t)


def _prop_g2_autograd(s: NoiseSchedule, t):
    want = _derivative(lambda u: s.sigma(u) ** 2, t) - 2 * s.f(t) * s.sigma(t) ** 2
    _close(
        s.g2(t),
        want,
        rtol=1e-6,
        atol=1e-9 * float(want.abs().max()) + 1e-12,
        what="g2(t) vs d sigma^2/dt - 2 f sigma^2 (autograd)",
        at=t,
    )
    g2 = s.g2(t)
    if not bool((g2 > 0).all()):
        i = int((~(g2 > 0)).nonzero()[0])
        raise AssertionError(f"g2 must be positive; g2(t={t[i].item()!r}) = {g2[i].item()!r}")


def _prop_vp_identity(s: NoiseSchedule, t):
    _close(
        s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12, what="alpha^2 + sigma^2 vs 1", at=t
    )


def _prop_sigma_ve(s: NoiseSchedule, t):
    _close(s.sigma_ve(t), s.sigma(t) / s.alpha(t), rtol=1e-12, atol=0, what="sigma_ve vs sigma/alpha", at=t)


def _devices() -> list[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _prop_tensor_semantics(s: NoiseSchedule, t):
    for device in _devices():
        for dtype in (torch.float32, torch.float64):
            x = t.to(device=device, dtype=dtype).reshape(-1, 1).expand(-1, 2)
            for name in ("alpha", "sigma", "lambda_", "sigma_ve", "f", "g2"):
                v = getattr(s, name)(x)
                if v.dtype != dtype or v.shape != x.shape or v.device != x.device:
                    raise AssertionError(
                        f"{name} returned {v.dtype}, shape {tuple(v.shape)} on {v.device} for "
                        f"{dtype} input of shape {tuple(x.shape)} on {device}"
                    )
            lam = s.lambda_(x)
            back = s.inverse_lambda(lam)
            if back.dtype != dtype or back.shape != lam.shape or back.device != lam.device:
                raise AssertionError(
                    f"inverse_lambda returned {back.dtype}, shape {tuple(back.shape)} on "
                    f"{back.device} for {dtype} input of shape {tuple(lam.shape)} on {device}"
                )
    scalar = s.alpha(float(t.flatten()[0]))
    if scalar.ndim != 0 or scalar.dtype != F64:
        raise AssertionError(
            f"a Python float must give a 0-d float64 tensor, got {scalar.dtype} of shape {tuple(scalar.shape)}"
        )


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
        k = torch.arange(65, dtype=F64)
        breaks = t0 + (ti - t0) * (1 - torch.cos(math.pi * k / 64)) / 2
        knots = getattr(s, "knots", None)
        if knots is not None:
            breaks = torch.unique(torch.cat([breaks, knots[(knots > t0) & (knots < ti)]]))
        a, b = breaks[:-1, None], breaks[1:, None]
        u = a + (b - a) * (nodes + 1) / 2
        integral = float(((b - a) / 2 * weights * s.g2(u) / s.alpha(u) ** 2).sum())
        ends = s.sigma_ve(torch.tensor([t0, ti], dtype=F64)) ** 2
        lhs = float(ends[1] - ends[0])
        if not math.isclose(lhs, integral, rel_tol=1e-7, abs_tol=1e-12 * float(ends[1])):
            raise AssertionError(f"at t={ti!r}: sigma_ve^2 increment {lhs!r} vs int g^2/alpha^2 = {integral!r}")


SCHEDULE_PROPERTIES: dict[str, Callable] = {
    "contract": _prop_contract,
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
"""Every schedule property by name, in the order
[`check_schedule`][sde_diffusion.testing.schedule_checks.check_schedule] runs them (``vp_identity`` only for VP
schedules). Each is ``prop(schedule, t) -> None`` raising ``AssertionError``, with ``t`` a float64 tensor of times
from [`times`][sde_diffusion.testing.strategies.times]; call them inside your own ``@given`` tests as well."""


def check_schedule(
    schedule: NoiseSchedule, *, vp: bool | None = None, max_examples: int = 50, properties: Iterable[str] | None = None
) -> CheckReport:
    """Run the schedule property suite on any [`NoiseSchedule`][sde_diffusion.schedules.NoiseSchedule], built-in or
    user-defined.

    Each property is run by Hypothesis on ``max_examples`` draws of six times from
    [`times`][sde_diffusion.testing.strategies.times] (derandomised, so
    a run is reproducible); a failure is shrunk to a minimal counterexample.

    Args:
        schedule: the schedule under test.
        vp: whether to check ``alpha^2 + sigma^2 = 1``; default ``schedule.is_vp``.
        max_examples: Hypothesis examples per property.
        properties: subset of [`SCHEDULE_PROPERTIES`][sde_diffusion.testing.schedule_checks.SCHEDULE_PROPERTIES]
        (default: all that apply).

    Returns:
        a [`CheckReport`][sde_diffusion.testing.common.CheckReport] listing the properties that passed.

    Raises:
        ScheduleCheckError: naming the first failed property, with Hypothesis' shrunk counterexample.
    """
    vp = schedule.is_vp if vp is None else vp
    default = [n for n in SCHEDULE_PROPERTIES if vp or n != "vp_identity"]
    names = select_properties(SCHEDULE_PROPERTIES, properties, default)
    report = CheckReport(repr(schedule))
    if not vp and properties is None:
        report.skipped["vp_identity"] = "not a VP schedule (pass vp=True to check alpha^2 + sigma^2 = 1)"
    runners = {n: _schedule_runner(SCHEDULE_PROPERTIES[n], schedule, max_examples) for n in names}
    return run_checks(runners, names, (), ScheduleCheckError, report)


def _schedule_runner(prop: Callable, schedule: NoiseSchedule, max_examples: int) -> Callable[[], None]:
    hypothesis, _ = hypothesis_modules()

    def body(t):
        hypothesis.note(f"t = {t.tolist()}")  # full precision (a tensor's repr rounds)
        with torch.no_grad():  # properties that need autograd switch it back on themselves
            prop(schedule, t)

    return lambda: run_given(body, times(schedule, size=6), max_examples, "t")
