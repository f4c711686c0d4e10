r"""Property-testing toolkit: Hypothesis strategies and conformance checks for schedules and solvers.

Hypothesis is an optional dependency, imported when a strategy or check is first used::

    from hypothesis import given
    from sde_diffusion import testing

    @given(testing.schedules())
    def test_mine(schedule): ...

    testing.check_schedule(MySchedule())   # raises ScheduleCheckError naming the failed property
    testing.check_solver("ddim")           # raises SolverCheckError naming the failed property

Strategies: :func:`schedules`, :func:`times`, :func:`grids`, :func:`analytic_data`, :func:`predictions`,
:func:`solvers`. Checks: :func:`check_schedule` (the properties in :data:`SCHEDULE_PROPERTIES`) and
:func:`check_solver` (:data:`SOLVER_PROPERTIES`); both return a :class:`CheckReport`. The project's own test-suite
uses exactly these strategies and checks.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .analytic import AnalyticDistribution, Gaussian, GaussianMixture, PointMass
from .grids import make_grid, validate_grid
from .models import PREDICTIONS, Model
from .schedules import EDM, NoiseSchedule, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear
from .solvers.base import NoiseSource, Solver, get_solver, registered_solvers

__all__ = [
    "PropertyCheckError",
    "ScheduleCheckError",
    "SolverCheckError",
    "CheckReport",
    "OrderMeasurement",
    "SCHEDULE_KINDS",
    "GRID_KINDS",
    "DATA_KINDS",
    "SOLVER_OPTIONS",
    "schedules",
    "times",
    "grids",
    "analytic_data",
    "predictions",
    "solvers",
    "SCHEDULE_PROPERTIES",
    "SOLVER_PROPERTIES",
    "check_schedule",
    "check_solver",
    "measure_order",
    "ORDER_NFE",
]

F64 = torch.float64


def _hyp():
    try:
        import hypothesis
        import hypothesis.strategies as st
    except ImportError as e:  # pragma: no cover - exercised only without hypothesis
        raise ImportError("sde_diffusion.testing needs hypothesis: pip install hypothesis") from e
    return hypothesis, st


class PropertyCheckError(AssertionError):
    """A conformance property failed. ``prop`` names it; the message carries the (shrunk) counterexample."""

    def __init__(self, prop: str, message: str, subject: str | None = None):
        where = f" for {subject}" if subject else ""
        super().__init__(f"property '{prop}' failed{where}: {message}")
        self.prop = prop
        self.subject = subject


class ScheduleCheckError(PropertyCheckError):
    """A schedule property of :data:`SCHEDULE_PROPERTIES` failed."""


class SolverCheckError(PropertyCheckError):
    """A solver property of :data:`SOLVER_PROPERTIES` failed."""


@dataclass
class CheckReport:
    """What a check did: the properties that ``passed``, those ``skipped`` (with the reason) and ``measured``
    numbers (e.g. the fitted order)."""

    subject: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{self.subject}: {len(self.passed)} properties passed"]
        lines += [f"  ok       {name}" for name in self.passed]
        lines += [f"  skipped  {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  measured {name} = {value}" for name, value in self.measured.items()]
        return "\n".join(lines)


class _Skip(Exception):
    """Raised by a property that does not apply; the message says why."""


def _given(body: Callable, strategy, max_examples: int, argname: str = "data") -> None:
    """Run ``body`` under Hypothesis (reproducible: derandomised, no database, no deadline, one bug reported); the
    falsifying example is printed as ``run(<argname>=...)``."""
    hypothesis, _ = _hyp()

    phases = [p for p in hypothesis.Phase if p.name != "explain"]  # (explain re-runs the failure many times)

    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=phases,
        report_multiple_bugs=False,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(**{argname: strategy})
    def run(**example):
        last.clear()
        last.update(example)
        body(*example.values())

    last: dict = {}
    try:
        run()
    except Exception as e:
        # Hypothesis replays the shrunk example last; name it ourselves (its own note's wording varies by version)
        if not any("Falsifying example" in n for n in getattr(e, "__notes__", [])):
            e.add_note("Falsifying example: run(" + ", ".join(f"{k}={v!r}" for k, v in last.items()) + ")")
        raise


def _run_checks(
    props: dict[str, Callable], names: Iterable[str], args: tuple, error: type[PropertyCheckError], report: CheckReport
) -> CheckReport:
    for name in names:
        try:
            props[name](*args)
        except _Skip as s:
            report.skipped[name] = str(s)
            continue
        except PropertyCheckError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the property is reported under its name
            notes = "\n".join(getattr(e, "__notes__", []))
            raise error(name, f"{type(e).__name__}: {e}\n{notes}".rstrip(), report.subject) from e
        report.passed.append(name)
    return report


def _select(available: Iterable[str], properties: Iterable[str] | None, default: list[str]) -> list[str]:
    if properties is None:
        return default
    names = list(properties)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {sorted(available)}")
    return names


# ---------------------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------------------


def _floats(st, lo, hi, log=False):
    if log:
        return st.floats(math.log(lo), math.log(hi), allow_nan=False).map(math.exp)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


SCHEDULE_KINDS = ("vp_linear", "vp_cosine", "vp_discrete", "subvp_linear", "ve_geometric", "edm")
"""The kinds :func:`schedules` draws from."""


def schedules(kinds: tuple[str, ...] | None = None):
    """Strategy over every built-in schedule with random valid parameters.

    ``kinds`` restricts to a subset of :data:`SCHEDULE_KINDS`. Discrete schedules come from random valid beta
    sequences (increasing, in ``(0, 1)``) and from random diffusers-style configs.
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
            {"num_train_timesteps": n, "beta_start": b0, "beta_end": b1, "beta_schedule": kind}
        )

    table: dict[str, Any] = {
        "vp_linear": linear_pair(VPLinear),
        "subvp_linear": linear_pair(SubVPLinear),
        "vp_cosine": _floats(st, 1e-3, 0.05).map(VPCosine),
        "vp_discrete": discrete(),
        "ve_geometric": ve(),
        "edm": edm(),
    }
    kinds = SCHEDULE_KINDS if kinds is None else tuple(kinds)
    unknown = set(kinds) - set(table)
    if unknown:
        raise ValueError(f"unknown schedule kinds {sorted(unknown)}; choose from {sorted(table)}")
    return st.one_of(*(table[k] for k in kinds))


def times(schedule: NoiseSchedule, *, size: int | None = None):
    """Strategy over times in ``[t_min, t_max]``: the end points, points at relative distances ``10^-k``
    (``k = 1..15``) from either end, and arbitrary interior points.

    With ``size`` it draws a float64 tensor of that many such times, else a Python float.
    """
    _, st = _hyp()
    lo, hi = schedule.t_min, schedule.t_max
    span = hi - lo
    near = st.integers(1, 15).map(lambda k: span * 10.0**-k)
    one = st.one_of(
        st.sampled_from([lo, hi]),
        near.map(lambda d: lo + d),
        near.map(lambda d: hi - d),
        st.floats(lo, hi, allow_nan=False),
    )
    if size is None:
        return one
    return st.lists(one, min_size=size, max_size=size).map(lambda v: torch.tensor(v, dtype=torch.float64))


GRID_KINDS = ("time_uniform", "time_quadratic", "logsnr", "karras", "explicit")
"""The kinds :func:`grids` draws from: the named grids of :mod:`sde_diffusion.grids` and explicit grids."""


def grids(
    schedule: NoiseSchedule,
    max_steps: int = 20,
    *,
    min_steps: int = 1,
    kinds: tuple[str, ...] | None = None,
    batch: int | None = None,
    decreasing: bool = True,
    sub_intervals: bool = True,
):
    """Strategy over valid float64 time grids for ``schedule``.

    Each grid is a named grid (``time_uniform``, ``time_quadratic`` -- only when ``t_min >= 0`` --, ``logsnr``,
    ``karras`` with a random ``rho`` in ``[1, 10]``) or an ``explicit`` strictly monotone grid with random gaps
    (ratios of neighbouring gaps at most 20), with ``min_steps..max_steps`` steps. With ``sub_intervals`` the grid
    may cover a random sub-interval of ``[t_min, t_max]`` (at least 20% of it) instead of the whole domain.

    Args:
        batch: draw ``batch`` grids with the same number of steps (each of its own kind and interval) and stack
            them to shape ``(steps+1, batch)``: one grid per sample.
        decreasing: ``True`` (sampling, ``t_start > t_end``) or ``False`` (inversion: the flipped grids).

    Every grid drawn passes :func:`sde_diffusion.grids.validate_grid`.
    """
    _, st = _hyp()
    kinds = GRID_KINDS if kinds is None else tuple(kinds)
    unknown = set(kinds) - set(GRID_KINDS)
    if unknown:
        raise ValueError(f"unknown grid kinds {sorted(unknown)}; choose from {GRID_KINDS}")
    if schedule.t_min < 0:
        kinds = tuple(k for k in kinds if k != "time_quadratic")
    if not kinds:
        raise ValueError("no grid kind applies to this schedule")
    lo, hi = schedule.t_min, schedule.t_max
    margin = st.one_of(st.just(0.0), _floats(st, 0.0, 0.4)) if sub_intervals else st.just(0.0)

    @st.composite
    def one(draw, steps):
        kind = draw(st.sampled_from(kinds))
        a, b = draw(margin), draw(margin)
        t_end = lo + a * (hi - lo) if a else lo
        t_start = hi - b * (hi - lo) if b else hi
        if kind != "explicit":
            rho = draw(_floats(st, 1.0, 10.0)) if kind == "karras" else 7.0
            return make_grid(schedule, kind, steps, t_start, t_end, rho=rho)
        gaps = torch.tensor(draw(st.lists(_floats(st, 0.05, 1.0), min_size=steps, max_size=steps)), dtype=F64)
        frac = torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, 0)]) / gaps.sum()
        ts = t_start + (t_end - t_start) * frac
        ts[0], ts[-1] = t_start, t_end
        return validate_grid(schedule, ts)

    @st.composite
    def strategy(draw):
        steps = draw(st.integers(min_steps, max_steps))
        cols = [draw(one(steps)) for _ in range(batch or 1)]
        ts = torch.stack(cols, 1) if batch else cols[0]
        return ts if decreasing else ts.flip(0).contiguous()

    return strategy()


DATA_KINDS = ("point_mass", "gaussian", "mixture")
"""The kinds :func:`analytic_data` draws from."""


def analytic_data(event_shape: tuple[int, ...] = (2,), kinds: tuple[str, ...] | None = None):
    """Strategy over exact oracles of :mod:`sde_diffusion.analytic` with random parameters (float64):
    :class:`PointMass` (location in ``[-3, 3]``), diagonal :class:`Gaussian` (mean in ``[-3, 3]``, std in
    ``[0.05, 3]``) and :class:`GaussianMixture` (1--4 components, isotropic or diagonal stds, random weights)."""
    _, st = _hyp()
    kinds = DATA_KINDS if kinds is None else tuple(kinds)
    unknown = set(kinds) - set(DATA_KINDS)
    if unknown:
        raise ValueError(f"unknown data kinds {sorted(unknown)}; choose from {DATA_KINDS}")
    shape = tuple(event_shape)
    size = math.prod(shape)

    def arrays(lo, hi, lead=(), log=False):
        n = math.prod(lead) * size
        return st.lists(_floats(st, lo, hi, log), min_size=n, max_size=n).map(
            lambda v: torch.tensor(v, dtype=F64).reshape(lead + shape)
        )

    @st.composite
    def mixture(draw):
        k = draw(st.integers(1, 4))
        means = draw(arrays(-3.0, 3.0, (k,)))
        if draw(st.booleans()):
            stds = torch.tensor(draw(st.lists(_floats(st, 0.05, 3.0, True), min_size=k, max_size=k)), dtype=F64)
        else:
            stds = draw(arrays(0.05, 3.0, (k,), log=True))
        weights = draw(st.lists(_floats(st, 0.05, 1.0), min_size=k, max_size=k))
        return GaussianMixture(means, stds, torch.tensor(weights, dtype=F64))

    table = {
        "point_mass": arrays(-3.0, 3.0).map(PointMass),
        "gaussian": st.builds(Gaussian, arrays(-3.0, 3.0), arrays(0.05, 3.0, log=True)),
        "mixture": mixture(),
    }
    return st.one_of(*(table[k] for k in kinds))


def predictions():
    """Strategy over the model parametrisations ``"eps"``, ``"x0"``, ``"v"``, ``"score"``."""
    _, st = _hyp()
    return st.sampled_from(PREDICTIONS)


SOLVER_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "ddim": lambda st: st.fixed_dictionaries(
        {"eta": st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0, allow_nan=False))}
    ),
    "ddpm": lambda st: st.fixed_dictionaries({"variance": st.sampled_from(["beta_tilde", "beta"])}),
    "euler": lambda st: st.fixed_dictionaries({"variable": st.sampled_from(["t", "sigma"])}),
    "heun": lambda st: st.fixed_dictionaries({"variable": st.sampled_from(["t", "sigma"])}),
    "pc": lambda st: st.fixed_dictionaries(
        {
            "predictor": st.sampled_from(["reverse_diffusion", "euler_maruyama"]),
            "snr": st.floats(0.01, 0.5, allow_nan=False),
            "n_corrector": st.integers(0, 2),
        }
    ),
    "dpm_solver": lambda st: st.fixed_dictionaries({"order": st.integers(1, 3), "multistep": st.booleans()}),
    "dpm_solver++": lambda st: st.fixed_dictionaries({"order": st.integers(1, 3), "multistep": st.booleans()}),
    "sde_dpm_solver++": lambda st: st.fixed_dictionaries(
        {"order": st.integers(1, 2), "eta": st.one_of(st.just(0.0), st.floats(0.0, 1.0, allow_nan=False))}
    ),
    "unipc": lambda st: st.fixed_dictionaries({"order": st.integers(1, 3), "variant": st.sampled_from(["bh1", "bh2"])}),
    "pndm": lambda st: st.fixed_dictionaries({"variant": st.sampled_from(["s", "f"])}),
}
"""Registry name -> ``f(hypothesis.strategies)`` giving a strategy of valid option dicts for that solver.
:func:`solvers` uses the default options (``{}``) for a registered name that is not in this table, so every new
solver is covered; add an entry to explore its options."""


def solvers(
    names: Iterable[str] | None = None,
    *,
    options: dict[str, Callable[[Any], Any]] | None = None,
    stochastic: bool | None = None,
):
    """Strategy over registered solvers (read from :func:`~sde_diffusion.solvers.registered_solvers` when called)
    built with valid options.

    Args:
        names: registry names to draw from (default: all registered).
        options: extra or replacement entries for :data:`SOLVER_OPTIONS` (same form).
        stochastic: keep only stochastic (``True``) or deterministic (``False``) instances.
    """
    _, st = _hyp()
    known = registered_solvers()
    names = sorted(known) if names is None else list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown solvers {unknown}; registered: {sorted(known)}")
    table = {**SOLVER_OPTIONS, **(options or {})}
    parts = [(table[n](st) if n in table else st.just({})).map(lambda o, n=n: get_solver(n, **o)) for n in names]
    strategy = st.one_of(*parts)
    if stochastic is not None:
        strategy = strategy.filter(lambda s: bool(s.stochastic) == stochastic)
    return strategy


# ---------------------------------------------------------------------------------------------------------------------
# schedule properties: each takes (schedule, t) with t a float64 tensor of times, raises AssertionError on failure
# ---------------------------------------------------------------------------------------------------------------------


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
        s._check_t(torch.tensor([s.t_min, s.t_max], dtype=F64), "t_min/t_max")
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
            s._inverse_lambda(s._lambda(t))
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
"""Every schedule property by name, in the order :func:`check_schedule` runs them (``vp_identity`` only for VP
schedules). Each is ``prop(schedule, t) -> None`` raising ``AssertionError``, with ``t`` a float64 tensor of times
from :func:`times`; call them inside your own ``@given`` tests as well."""


def check_schedule(
    schedule: NoiseSchedule, *, vp: bool | None = None, max_examples: int = 50, properties: Iterable[str] | None = None
) -> CheckReport:
    """Run the schedule property suite on any :class:`NoiseSchedule`, built-in or user-defined.

    Each property is run by Hypothesis on ``max_examples`` draws of six times from :func:`times` (derandomised, so
    a run is reproducible); a failure is shrunk to a minimal counterexample.

    Args:
        schedule: the schedule under test.
        vp: whether to check ``alpha^2 + sigma^2 = 1``; default ``schedule.is_vp``.
        max_examples: Hypothesis examples per property.
        properties: subset of :data:`SCHEDULE_PROPERTIES` (default: all that apply).

    Returns:
        a :class:`CheckReport` listing the properties that passed.

    Raises:
        ScheduleCheckError: naming the first failed property, with Hypothesis' shrunk counterexample.
    """
    vp = schedule.is_vp if vp is None else vp
    default = [n for n in SCHEDULE_PROPERTIES if vp or n != "vp_identity"]
    names = _select(SCHEDULE_PROPERTIES, properties, default)
    report = CheckReport(repr(schedule))
    if not vp and properties is None:
        report.skipped["vp_identity"] = "not a VP schedule (pass vp=True to check alpha^2 + sigma^2 = 1)"
    runners = {n: _schedule_runner(SCHEDULE_PROPERTIES[n], schedule, max_examples) for n in names}
    return _run_checks(runners, names, (), ScheduleCheckError, report)


def _schedule_runner(prop: Callable, schedule: NoiseSchedule, max_examples: int) -> Callable[[], None]:
    hypothesis, _ = _hyp()

    def body(t):
        hypothesis.note(f"t = {t.tolist()}")  # full precision (a tensor's repr rounds)
        with torch.no_grad():  # properties that need autograd switch it back on themselves
            prop(schedule, t)

    return lambda: _given(body, times(schedule, size=6), max_examples, "t")


# ---------------------------------------------------------------------------------------------------------------------
# solver checks
# ---------------------------------------------------------------------------------------------------------------------


class _TableNoise(NoiseSource):
    """Pre-drawn standard normals indexed by (step, draw, sample column): a sample sees the same numbers whether it
    runs alone or in a batch (``cols`` picks the columns of the batch being run)."""

    def __init__(self, steps: int, columns: int, event_shape: tuple, seed: int, extra: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.inc = torch.randn((steps, columns, *event_shape), generator=g, dtype=F64)
        self.extra = torch.randn((steps, extra, columns, *event_shape), generator=g, dtype=F64)
        self.cols: Any = slice(None)

    def select(self, cols) -> _TableNoise:
        """The same numbers, restricted to the batch columns ``cols`` (a slice)."""
        view = copy.copy(self)
        view.cols = cols
        return view

    def increment(self, i, ts, x):
        return self.inc[i, self.cols].to(device=x.device, dtype=x.dtype)

    def normal(self, i, k, x):
        if k >= self.extra.shape[1]:
            raise ValueError(
                f"the check provides {self.extra.shape[1]} extra normals per step; the solver asked for draw {k}"
            )
        return self.extra[i, k, self.cols].to(device=x.device, dtype=x.dtype)


class _RecordingNoise(NoiseSource):
    """Zero noise that records which draws a run makes, as keys ``(step, -1)`` (increment) and ``(step, k)``."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def increment(self, i, ts, x):
        self.keys.append((i, -1))
        return torch.zeros_like(x)

    def normal(self, i, k, x):
        self.keys.append((i, k))
        return torch.zeros_like(x)


class _ProbeNoise(NoiseSource):
    """Noise given per draw key as a tensor of the batch's shape."""

    def __init__(self, values: dict[tuple[int, int], torch.Tensor]):
        self.values = values

    def _get(self, key, x):
        if key not in self.values:
            raise _Skip(f"the solver's noise draws differ between runs (unexpected draw {key})")
        return self.values[key].to(device=x.device, dtype=x.dtype)

    def increment(self, i, ts, x):
        return self._get((i, -1), x)

    def normal(self, i, k, x):
        return self._get((i, k), x)


def _solve(solver: Solver, model: Model, x: torch.Tensor, ts: torch.Tensor, noise: NoiseSource | None = None):
    from .sample import sample

    return sample(model, x, solver=solver, grid=ts, noise=noise, check_finite=False)


def _forward(solver: Solver) -> bool:
    return getattr(solver, "direction", "backward") == "forward"


def _oriented(solver: Solver, ts: torch.Tensor) -> torch.Tensor:
    """A decreasing grid, flipped for solvers that integrate forward in time."""
    return ts.flip(0).contiguous() if _forward(solver) else ts


def _marginal_sample(data: AnalyticDistribution, schedule: NoiseSchedule, t: torch.Tensor, n: int, seed: int):
    """``n`` exact samples of ``p_t`` (``t`` scalar or per sample ``(n,)``): ``alpha x0 + sigma z``."""
    g = torch.Generator().manual_seed(seed)
    x0 = data.sample(n, g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    a, s = schedule._alpha_sigma(t)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    return a.reshape(shape) * x0 + s.reshape(shape) * z if a.ndim else a * x0 + s * z


def _describe(data: AnalyticDistribution) -> str:
    if isinstance(data, PointMass):
        return f"PointMass(x0={data.x0_value.tolist()})"
    if isinstance(data, Gaussian):
        return f"Gaussian(mean={data.mean.tolist()}, std={data.std.tolist()})"
    if isinstance(data, GaussianMixture):
        return (
            f"GaussianMixture(means={data.means.tolist()}, stds={data.stds.tolist()}, weights={data.weights.tolist()})"
        )
    return repr(data)


@dataclass
class _SolverCase:
    solver: Solver
    order: float
    order_tol: float
    exact: bool | None
    max_examples: int
    nfe: tuple[int, ...]
    report: CheckReport


# the fixed problem of the deterministic properties: a diagonal Gaussian on VPLinear (anisotropic, off-centre)
def _gaussian_problem() -> tuple[NoiseSchedule, Gaussian]:
    return VPLinear(), Gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.3, 0.8, 1.5], dtype=F64))


def _start(solver, schedule, data, n, seed):
    t0 = schedule.t_min if _forward(solver) else schedule.t_max
    return _marginal_sample(data, schedule, torch.tensor(t0, dtype=F64), n, seed)


def _skip_adaptive(solver):
    if getattr(solver, "adaptive", False):
        raise _Skip("adaptive step-size solver: a fixed-grid property")


def _skip_coupled(solver, why: str):
    if getattr(solver, "couples_batch", False):
        raise _Skip(f"the solver couples the samples of a batch (couples_batch = True): {why}")


def _prop_nfe(case: _SolverCase):
    _skip_adaptive(case.solver)
    schedule, data = _gaussian_problem()
    model = data.model(schedule)
    x = _start(case.solver, schedule, data, 2, 0)
    for steps in (1, 2, 3, 7):
        ts = _oriented(case.solver, make_grid(schedule, "logsnr", steps))
        res = _solve(case.solver, model, x, ts, _TableNoise(steps, 2, x.shape[1:], 0))
        if res.nfe != case.solver.final_nfe(steps):
            raise AssertionError(
                f"{steps} steps spent {res.nfe} model evaluations; final_nfe({steps}) says "
                f"{case.solver.final_nfe(steps)}"
            )


def _run_seeded(solver, model, x, schedule, seed):
    from .sample import sample

    g = torch.Generator().manual_seed(seed)
    if getattr(solver, "adaptive", False):
        return sample(model, x, solver=solver, generator=g, check_finite=False).x
    ts = _oriented(solver, make_grid(schedule, "logsnr", 8))
    return sample(model, x, solver=solver, grid=ts, generator=g, check_finite=False).x


def _prop_determinism(case: _SolverCase):
    schedule, data = _gaussian_problem()
    model = data.model(schedule)
    x = _start(case.solver, schedule, data, 4, 1)
    first, again = (_run_seeded(case.solver, model, x.clone(), schedule, 7) for _ in range(2))
    if not torch.equal(first, again):
        diff = (first - again).abs().max().item()
        raise AssertionError(f"two runs with the same input and seed differ (max |difference| = {diff!r})")
    if case.solver.stochastic:
        other = _run_seeded(case.solver, model, x.clone(), schedule, 8)
        if torch.equal(first, other):
            raise AssertionError("the solver says stochastic=True but two different seeds gave the same result")


def _prop_finite_low_precision(case: _SolverCase):
    # the state in float32, the network's output in float32 or float16; compared with the float64 run
    schedule, data = _gaussian_problem()
    x64 = _start(case.solver, schedule, data, 8, 2)
    adaptive = getattr(case.solver, "adaptive", False)
    ts = _oriented(case.solver, make_grid(schedule, "logsnr", 12))
    noise = _TableNoise(12, 8, x64.shape[1:], 3)

    def run(model, x):
        if adaptive:
            return _run_seeded(case.solver, model, x, schedule, 3)
        return _solve(case.solver, model, x, ts, noise).x

    oracle = data.model(schedule).fn
    ref = run(data.model(schedule), x64)
    scale = max(1.0, float(ref.abs().max()))
    for out_dtype, tol in ((torch.float32, 1e-3), (torch.float16, 5e-2)):
        x32 = x64.to(torch.float32)
        out = run(Model(lambda x, t, d=out_dtype: oracle(x, t).to(d), schedule, "eps"), x32)
        what = f"float32 state with {str(out_dtype).removeprefix('torch.')} model outputs"
        if out.dtype != torch.float32 or out.shape != x32.shape:
            raise AssertionError(
                f"{what}: the result is {out.dtype} of shape {tuple(out.shape)}; expected "
                f"torch.float32 of shape {tuple(x32.shape)}"
            )
        if not bool(torch.isfinite(out).all()):
            raise AssertionError(f"{what}: non-finite result")
        err = float((out.double() - ref).abs().max())
        if not adaptive and err > tol * scale:
            raise AssertionError(f"{what}: max |x - x_float64| = {err:.3g} > {tol * scale:.3g}")


def _expects_exact(case: _SolverCase) -> bool:
    if case.exact is not None:
        return case.exact
    return not case.solver.stochastic and bool(getattr(case.solver, "exact_for_point_mass", False))


def _prop_point_mass_exact(case: _SolverCase):
    _skip_adaptive(case.solver)
    if case.solver.stochastic:
        raise _Skip("stochastic solver: point-mass exactness is a property of deterministic solvers")
    if not _expects_exact(case):
        raise _Skip("the solver does not claim exact_for_point_mass = True")
    hypothesis, st = _hyp()
    solver = case.solver

    def body(data):
        schedule = data.draw(schedules(), label="schedule")
        ts = data.draw(grids(schedule, 8, decreasing=not _forward(solver)), label="grid")
        prediction = data.draw(predictions(), label="prediction")
        m = data.draw(analytic_data((2,), ("point_mass",)), label="point mass")
        hypothesis.note(f"grid = {ts.tolist()}")
        x = _marginal_sample(m, schedule, ts[0], 3, data.draw(st.integers(0, 2**16), label="seed"))
        out = _solve(solver, m.model(schedule, prediction), x, ts).x
        # exact flow of the point mass: (x - alpha m)/sigma is constant
        a0, s0 = schedule._alpha_sigma(ts[0])
        a1, s1 = schedule._alpha_sigma(ts[-1])
        want = a1 * m.x0_value + s1 * (x - a0 * m.x0_value) / s0
        scale = max(1.0, float(x.abs().max()), float(want.abs().max()))
        err = float((out - want).abs().max())
        if not err <= 1e-9 * scale:
            raise AssertionError(
                f"the solver is not exact for point-mass data: max |x - exact| = {err!r} (tolerance {1e-9 * scale:.3g})"
            )

    _given(body, st.data(), case.max_examples)


def _prop_per_sample_times(case: _SolverCase):
    _skip_adaptive(case.solver)
    _skip_coupled(case.solver, "a sample's result depends on the rest of its batch")
    hypothesis, st = _hyp()
    solver, batch = case.solver, 3

    def body(data):
        schedule = data.draw(schedules(), label="schedule")
        ts = data.draw(grids(schedule, 6, batch=batch, decreasing=not _forward(solver)), label="grid")
        dist = data.draw(analytic_data((2,)), label="data")
        hypothesis.note(f"grid = {ts.tolist()}\ndata = {_describe(dist)}")
        model = dist.model(schedule, data.draw(predictions(), label="prediction"))
        x = _marginal_sample(dist, schedule, ts[0], batch, 5)
        noise = _TableNoise(ts.shape[0] - 1, batch, x.shape[1:], 6)
        together = _solve(solver, model, x, ts, noise.select(slice(None))).x
        for j in range(batch):
            alone = _solve(solver, model, x[j : j + 1], ts[:, j].contiguous(), noise.select(slice(j, j + 1))).x
            mine, finite = together[j : j + 1], torch.isfinite(alone)
            if not torch.equal(torch.isfinite(mine), finite):
                raise AssertionError(
                    f"sample {j}: the batched run and the run alone differ in which entries are "
                    f"finite ({mine.tolist()} vs {alone.tolist()})"
                )
            if not bool(finite.any()):
                continue
            scale = max(1.0, float(alone[finite].abs().max()))
            err = float((mine - alone)[finite].abs().max())
            if not err <= 1e-9 * scale:
                raise AssertionError(
                    f"sample {j} of a batch with per-sample grids differs from its run alone on its "
                    f"own grid: max |difference| = {err!r}"
                )

    _given(body, st.data(), case.max_examples)


ORDER_NFE = (48, 72, 107, 161, 240)
"""Default model-evaluation counts of the order study (geometric, in the asymptotic range)."""


@dataclass
class OrderMeasurement:
    r"""A convergence study: ``errors[i]`` at ``nfe[i]`` model evaluations and the fitted order.

    ``order`` is ``p`` from the least-squares fit ``log e = c - p log N + d/N``: the error of an order-``p`` method
    is ``e = C N^{-p} (1 + d/N + O(N^{-2}))``, and the ``d/N`` term absorbs the leading pre-asymptotic correction
    that biases a plain slope at moderate NFE (e.g. singlestep DPM-Solver-3 or PNDM look 0.2 too high on
    48--240 NFE). ``slope`` is the plain least-squares slope of ``-log e`` against ``log N``, for reference.
    ``kind`` is ``"global"`` (deterministic: max abs error of the final state against the exact flow) or ``"weak"``
    (stochastic: error of the exact mean plus variance of the output)."""

    order: float
    slope: float
    nfe: list[int]
    errors: list[float]
    kind: str

    def __str__(self) -> str:
        pts = ", ".join(f"{n}: {e:.3g}" for n, e in zip(self.nfe, self.errors))
        return f"{self.kind} order {self.order:.3f} (plain slope {self.slope:.3f}; NFE: error = {pts})"


def _fit_order(nfe: list[int], errors: list[float], kind: str) -> OrderMeasurement:
    import numpy as np

    if len(nfe) < 4 or len(set(nfe)) != len(nfe):
        raise ValueError(f"an order fit needs at least 4 distinct NFE values, got {nfe}")
    if not all(math.isfinite(e) and e > 0 for e in errors):
        raise AssertionError(f"errors must be positive and finite to fit an order: {dict(zip(nfe, errors))}")
    n, log_e = np.asarray(nfe, dtype=float), np.log(errors)
    design = np.stack([np.ones_like(n), -np.log(n), 1.0 / n], axis=1)
    order = np.linalg.lstsq(design, log_e, rcond=None)[0][1]
    slope = -np.polyfit(np.log(n), log_e, 1)[0]
    return OrderMeasurement(float(order), float(slope), list(nfe), list(errors), kind)


def _steps_for(solver: Solver, nfe: int) -> int:
    return max(1, round(nfe / max(1, solver.nfe_per_step)))


def _global_errors(solver, schedule, data, nfes):
    model = data.model(schedule)
    x = _start(solver, schedule, data, 8, 11)
    out_nfe, errors = [], []
    for n in nfes:
        steps = _steps_for(solver, n)
        ts = _oriented(solver, make_grid(schedule, "logsnr", steps))
        res = _solve(solver, model, x, ts)
        want = data.flow(x, float(ts[0]), float(ts[-1]), schedule)
        out_nfe.append(res.nfe)
        errors.append(float((res.x - want).abs().max()))
    return out_nfe, errors


def _weak_error(solver, schedule, data: Gaussian, ts) -> tuple[int, float]:
    """Exact weak error for Gaussian data. With an affine model, a run is affine in the start and the noise:
    ``out = A x + b + sum_k C_k z_k`` (elementwise). One batched run with probe columns gives ``A``, ``b`` and every
    ``C_k``; a random column verifies the affine form. Then ``E out = A mu_T + b``, ``Var out = A^2 v_T + sum C_k^2``
    are compared with the exact marginal at the end time."""
    event = data.event_shape
    model = data.model(schedule)
    rec = _RecordingNoise()
    _solve(solver, model, torch.zeros((1, *event), dtype=F64), ts, rec)
    keys = list(dict.fromkeys(rec.keys))
    n = len(keys) + 3  # columns: b, A + b, b + C_k ..., verification
    g = torch.Generator().manual_seed(12)
    x = torch.zeros((n, *event), dtype=F64)
    x[1] = 1.0
    x[-1] = torch.randn(event, generator=g, dtype=F64)
    values = {}
    for j, key in enumerate(keys):
        v = torch.zeros((n, *event), dtype=F64)
        v[2 + j] = 1.0
        v[-1] = torch.randn(event, generator=g, dtype=F64)
        values[key] = v
    res = _solve(solver, model, x, ts, _ProbeNoise(values))
    out = res.x
    b, A = out[0], out[1] - out[0]
    C = out[2:-1] - b
    pred = A * x[-1] + b + sum(C[j] * values[k][-1] for j, k in enumerate(keys))
    if not bool(torch.allclose(out[-1], pred, rtol=1e-7, atol=1e-9 * max(1.0, float(out.abs().max())))):
        raise _Skip(
            "the solver is not affine in its noise on Gaussian data (e.g. a step size that depends on the "
            "state's norm), so the exact-moment weak error does not apply; weak order not measured"
        )
    t0, t1 = torch.tensor(float(ts[0]), dtype=F64), torch.tensor(float(ts[-1]), dtype=F64)
    (a0, s0), (a1, s1) = schedule._alpha_sigma(t0), schedule._alpha_sigma(t1)
    mu0, v0 = a0 * data.mean, a0**2 * data.std**2 + s0**2
    mu1, v1 = a1 * data.mean, a1**2 * data.std**2 + s1**2
    mean, var = A * mu0 + b, A**2 * v0 + (C**2).sum(0)
    return res.nfe, float(((mean - mu1).abs() + (var - v1).abs()).max())


def measure_order(solver: str | type[Solver] | Solver, *, nfe: Iterable[int] = ORDER_NFE) -> OrderMeasurement:
    """Measure the convergence order of ``solver`` (name, class or instance) on a Gaussian problem.

    The problem: :class:`VPLinear` (``beta`` from 0.1 to 20, ``t`` from 1 to 1e-3), diagonal Gaussian data
    ``N([0.5, -1, 2], diag([0.3, 0.8, 1.5])^2)``, logSNR-uniform grids with about ``nfe`` model evaluations each.
    Deterministic solvers: the max abs error of the final state against :meth:`Gaussian.flow` (global order).
    Stochastic solvers: the exact weak error ``max |E x - E x_exact| + |Var x - Var x_exact|`` of the output, from
    one batched run with probe columns (on Gaussian data every step is affine in the state and the noise, so the
    moments follow exactly from the response to unit inputs; the affine form is verified on a random column).
    Raises ``ValueError`` saying why when that does not apply (adaptive, not affine in the noise, ``couples_batch``).
    """
    try:
        return _measure_order(get_solver(solver), list(nfe))
    except _Skip as e:
        raise ValueError(str(e)) from None


def _measure_order(solver: Solver, nfes: list[int]) -> OrderMeasurement:
    _skip_adaptive(solver)
    schedule, data = _gaussian_problem()
    if not solver.stochastic:
        return _fit_order(*_global_errors(solver, schedule, data, nfes), "global")
    _skip_coupled(solver, "the exact-moment weak error treats the batch columns as independent runs")
    pts = [
        _weak_error(solver, schedule, data, _oriented(solver, make_grid(schedule, "logsnr", _steps_for(solver, n))))
        for n in nfes
    ]
    return _fit_order([p[0] for p in pts], [p[1] for p in pts], "weak")


def _prop_order(case: _SolverCase):
    m = _measure_order(case.solver, list(case.nfe))
    case.report.measured["order"] = round(m.order, 3)
    low, high = case.order - case.order_tol, case.order + case.order_tol
    if m.kind == "weak" and m.order > high:
        # Gaussian data make the problem linear: a method may converge faster on it than its general weak order
        case.report.measured["order_note"] = f"weak order on Gaussian moments exceeds the declared {case.order}"
        return
    if not low <= m.order <= high:
        raise AssertionError(f"declared order {case.order}, measured {m} -- outside the tolerance +-{case.order_tol}")


SOLVER_PROPERTIES: dict[str, Callable] = {
    "nfe": _prop_nfe,
    "determinism": _prop_determinism,
    "finite_low_precision": _prop_finite_low_precision,
    "point_mass_exact": _prop_point_mass_exact,
    "per_sample_times": _prop_per_sample_times,
    "order": _prop_order,
}
"""Every solver property by name, in the order :func:`check_solver` runs them."""


def check_solver(
    solver: str | type[Solver] | Solver,
    *,
    order: float | None = None,
    order_tol: float = 0.2,
    exact_for_point_mass: bool | None = None,
    max_examples: int = 10,
    nfe: Iterable[int] = ORDER_NFE,
    properties: Iterable[str] | None = None,
) -> CheckReport:
    r"""Run the solver property suite on a solver (registry name, class or instance -- registered or not).

    Properties (:data:`SOLVER_PROPERTIES`, in this order):

    * ``nfe`` -- ``SampleResult.nfe`` equals ``solver.final_nfe(steps)`` for 1, 2, 3 and 7 steps.
    * ``determinism`` -- the same input (and seed) gives bitwise the same output; a stochastic solver gives different
      outputs for different seeds.
    * ``finite_low_precision`` -- a float32 state with float32 or float16 model outputs gives a finite float32 result
      close to the float64 one (relative 1e-3 / 5e-2), 12 logSNR steps.
    * ``point_mass_exact`` -- for deterministic solvers that claim it (``exact_for_point_mass``): on point-mass data
      the result equals the exact flow ``alpha_s m + sigma_s (x - alpha_t m)/sigma_t`` to ``1e-9`` (relative), over
      random schedules, grids, parametrisations and points (Hypothesis).
    * ``per_sample_times`` -- a batch with one grid per sample (shape ``(N+1, B)``) gives, for every sample, what a
      run of that sample alone on its own grid gives (with the same noise), over random schedules, grids, data and
      parametrisations (Hypothesis). Skipped for solvers that declare ``couples_batch = True`` (e.g. a Langevin
      corrector whose step size uses norms averaged over the batch).
    * ``order`` -- the order fitted by :func:`measure_order` on its Gaussian problem is the declared order within
      ``order_tol``. Deterministic solvers: global error, two-sided. Stochastic solvers: exact-moment weak error,
      one-sided (on Gaussian data the problem is linear and a method may converge faster than its general weak
      order; that is recorded in the report, not failed); skipped with a note when the weak error does not apply
      (not affine in the noise, or ``couples_batch``).

    Conventions a solver may declare (read with ``getattr``, default ``False``): ``exact_for_point_mass``,
    ``couples_batch``, ``adaptive`` (fixed-grid properties are skipped).

    Args:
        solver: the solver under test.
        order: the expected order (default ``solver.order``: global for deterministic, weak for stochastic).
        order_tol: accepted distance between measured and expected order.
        exact_for_point_mass: whether to demand point-mass exactness (default: deterministic and
            ``getattr(solver, "exact_for_point_mass", False)``).
        max_examples: Hypothesis examples for each randomised property.
        nfe: the model-evaluation counts of the order study.
        properties: subset of :data:`SOLVER_PROPERTIES` (default all).

    Returns:
        a :class:`CheckReport` (skipped properties with the reason; the measured order).

    Raises:
        SolverCheckError: naming the first failed property, with Hypothesis' shrunk counterexample where one applies.
    """
    solver = get_solver(solver)
    case = _SolverCase(
        solver,
        float(solver.order if order is None else order),
        order_tol,
        exact_for_point_mass,
        max_examples,
        tuple(nfe),
        CheckReport(repr(solver)),
    )
    names = _select(SOLVER_PROPERTIES, properties, list(SOLVER_PROPERTIES))
    return _run_checks(SOLVER_PROPERTIES, names, (case,), SolverCheckError, case.report)
