"""Hypothesis strategies: schedules, times, grids, analytic data, predictions and solvers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..analytic import Gaussian, GaussianMixture, PointMass
from ..grids import make_grid, validate_grid
from ..models import PREDICTIONS
from ..schedules import EDM, NoiseSchedule, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear
from ..solvers.base import get_solver, registered_solvers
from .common import F64, hypothesis_modules


def _floats(st, lo, hi, log=False):
    if log:
        return st.floats(math.log(lo), math.log(hi), allow_nan=False).map(math.exp)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


SCHEDULE_KINDS = ("vp_linear", "vp_cosine", "vp_discrete", "subvp_linear", "ve_geometric", "edm")
"""The kinds [`schedules`][sde_diffusion.testing.strategies.schedules] draws from."""


def schedules(kinds: tuple[str, ...] | None = None):
    """Strategy over every built-in schedule with random valid parameters.

    ``kinds`` restricts to a subset of [`SCHEDULE_KINDS`][sde_diffusion.testing.strategies.SCHEDULE_KINDS]. Discrete
    schedules come from random valid beta
    sequences (increasing, in ``(0, 1)``) and from random diffusers-style configs.
    """
    _, st = hypothesis_modules()

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
    _, st = hypothesis_modules()
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
"""The kinds [`grids`][sde_diffusion.testing.strategies.grids] draws from: the named grids of
[`sde_diffusion.grids`][sde_diffusion.grids] and explicit grids."""


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

    Every grid drawn passes [`sde_diffusion.grids.validate_grid`][sde_diffusion.grids.validate_grid].
    """
    _, st = hypothesis_modules()
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
"""The kinds [`analytic_data`][sde_diffusion.testing.strategies.analytic_data] draws from."""


def analytic_data(event_shape: tuple[int, ...] = (2,), kinds: tuple[str, ...] | None = None):
    """Strategy over exact oracles of [`sde_diffusion.analytic`][sde_diffusion.analytic] with random parameters
    (float64):
    [`PointMass`][sde_diffusion.analytic.PointMass] (location in ``[-3, 3]``), diagonal
    [`Gaussian`][sde_diffusion.analytic.Gaussian] (mean in ``[-3, 3]``, std in
    ``[0.05, 3]``) and [`GaussianMixture`][sde_diffusion.analytic.GaussianMixture] (1--4 components, isotropic or
    diagonal stds, random weights)."""
    _, st = hypothesis_modules()
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
    _, st = hypothesis_modules()
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
    "unipc": lambda st: st.fixed_dictionaries(
        {"predictor_order": st.integers(1, 3), "b_h": st.sampled_from(["bh1", "bh2"])}
    ),
    "pndm": lambda st: st.fixed_dictionaries({"warmup": st.sampled_from(["heun", "rk4"])}),
}
"""Registry name -> ``f(hypothesis.strategies)`` giving a strategy of valid option dicts for that solver.
[`solvers`][sde_diffusion.testing.strategies.solvers] uses the default options (``{}``) for a registered name that is
not in this table, so every new
solver is covered; add an entry to explore its options."""


def solvers(
    names: Iterable[str] | None = None,
    *,
    options: dict[str, Callable[[Any], Any]] | None = None,
    stochastic: bool | None = None,
):
    """Strategy over registered solvers (read from [`registered_solvers`][sde_diffusion.solvers.base.registered_solvers]
    when called)
    built with valid options.

    Args:
        names: registry names to draw from (default: all registered).
        options: extra or replacement entries for [`SOLVER_OPTIONS`][sde_diffusion.testing.strategies.SOLVER_OPTIONS]
            (same form).
        stochastic: keep only stochastic (``True``) or deterministic (``False``) instances.
    """
    _, st = hypothesis_modules()
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
