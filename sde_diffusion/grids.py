r"""Time grids for sampling: decreasing sequences of ``steps + 1`` times from ``t_start`` to ``t_end``.

For an exponential integrator the trajectory depends on the grid only through its half-log-SNR knots
\(\lambda_0 < \dots < \lambda_N\), so most grids here are *families of lambda distributions*: a rule that places
\(N + 1\) knots between \(\lambda(t_{\rm start})\) and \(\lambda(t_{\rm end})\), mapped to the model's time by its
``inverse_lambda``. Such a grid means the same thing on every schedule:

* ``logsnr`` -- uniform in \(\lambda\) (the natural variable of exponential integrators);
* ``karras`` -- uniform in \(\sigma_{\rm ve}^{1/\rho}\) with \(\sigma_{\rm ve} = e^{-\lambda}\) (Karras et al. 2022,
  arXiv:2206.00364, \(\rho = 7\); this is also EDM's and AMED's "polynomial" schedule, arXiv:2312.00094, with a
  continuous exponent \(\rho\));
* ``vp_uniform``, ``vp_quadratic``, ``vp_power`` (``p``) -- uniform in \(t^{1/p}\) (\(p = 1\), \(2\), any \(p\))
  in the time of the reference VP-linear schedule (\(\beta_{\min} = 0.1\), \(\beta_{\max} = 20\)) over the same lambda
  range: ``vp_quadratic`` on an EDM model places exactly the lambda knots that ``time_quadratic`` places on the
  VP-linear model with that lambda range;
* ``cosine_uniform``, ``cosine_quadratic``, ``cosine_power`` (``p``) -- the same in the time of the reference VP
  cosine schedule (\(s = 0.008\));
* ``lambda_power`` (``p``) -- \(\lambda = \lambda_{\rm lo} + (\lambda_{\rm hi} - \lambda_{\rm lo})\, u^p\)
  with \(u\) uniform from the noisy end (\(p > 1\) puts more knots at high noise, \(p < 1\) at low noise; \(p = 1\) is
  ``logsnr``).

Two grids are defined in the model's own time (they depend on the schedule): ``time_uniform`` (uniform in \(t\))
and ``time_quadratic`` (uniform in \(\sqrt{t}\), DPM-Solver's choice for discrete-time models).

A grid name may carry its continuous parameter: ``"vp_power:p=1.5"``, ``"karras:rho=5"`` (see
[`parse_grid`][sde_diffusion.grids.parse_grid]). All grids are computed in float64; the end points are exact
(set, not computed) and the result is validated: strictly monotone, inside the schedule's ``[t_min, t_max]``, no
duplicates. Which family wins where is measured in the accuracy benchmark (docs/benchmarks/accuracy.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .schedules import NoiseSchedule, VPCosine, VPLinear

__all__ = [
    "GRIDS",
    "GRID_FAMILIES",
    "GridFamily",
    "make_grid",
    "parse_grid",
    "format_grid",
    "validate_grid",
    "family_lambdas",
    "grid_from_lambdas",
    "time_uniform",
    "time_quadratic",
    "logsnr",
    "karras",
]


def _ends(schedule: NoiseSchedule, t_start, t_end) -> tuple[float, float]:
    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    return t_start, t_end


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def _check_exponent(name: str, value) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _finish(schedule, ts: torch.Tensor, t_start: float, t_end: float) -> torch.Tensor:
    ts = ts.to(torch.float64).clone()
    ts[0], ts[-1] = t_start, t_end
    return validate_grid(schedule, ts, decreasing=t_start > t_end)


# ---------------------------------------------------------------------------------------------------------------------
# grids in the model's own time
# ---------------------------------------------------------------------------------------------------------------------


def time_uniform(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    r"""Uniform in \(t\)."""
    a, b = _ends(schedule, t_start, t_end)
    return _finish(schedule, torch.linspace(a, b, _check_steps(steps) + 1, dtype=torch.float64), a, b)


def time_quadratic(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None) -> torch.Tensor:
    r"""Uniform in \(\sqrt{t}\) (needs \(t \ge 0\))."""
    a, b = _ends(schedule, t_start, t_end)
    if min(a, b) < 0:
        raise ValueError("time_quadratic needs non-negative times")
    r = torch.linspace(math.sqrt(a), math.sqrt(b), _check_steps(steps) + 1, dtype=torch.float64)
    return _finish(schedule, r * r, a, b)


# ---------------------------------------------------------------------------------------------------------------------
# lambda distributions (schedule-independent families)
# ---------------------------------------------------------------------------------------------------------------------

#: the reference schedules of the ``vp_*`` and ``cosine_*`` families (their default parameters)
_VP_REFERENCE = VPLinear()
_COSINE_REFERENCE = VPCosine()


def _cosine_time(lam: torch.Tensor) -> torch.Tensor:
    """The VP-cosine reference time with half log-SNR ``lam``, by bisection in ``log t`` on the forward map (whose
    ``log1p``/``sin`` forms stay accurate as ``t -> 0``, where the closed-form ``arccos`` inverse loses every
    digit: ``lambda = 30`` is ``t ~ 1e-26``)."""
    lo = torch.full_like(lam, math.log(1e-300))
    hi = torch.full_like(lam, math.log1p(-1e-15))
    for _ in range(80):  # the bracket (~690 wide in log t) shrinks below float64 resolution
        mid = 0.5 * (lo + hi)
        above = _COSINE_REFERENCE.lambda_(torch.exp(mid)) > lam  # lambda decreases in t: the root is later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return torch.exp(0.5 * (lo + hi))


def _reference_power(to_time: Callable, to_lambda: Callable, lam_lo: float, lam_hi: float, u, p: float):
    """Knots uniform in ``t^{1/p}`` of a reference schedule between the times of ``lam_lo`` and ``lam_hi``."""
    t = to_time(torch.tensor([lam_lo, lam_hi], dtype=torch.float64)) ** (1.0 / p)
    # (1 - u) t0 + u t1 is exact at both ends (t0 + u (t1 - t0) can round the tiny end to 0 when t1 << t0)
    return to_lambda(((1 - u) * t[0] + u * t[1]) ** p)


def _logsnr_knots(lam_lo: float, lam_hi: float, u: torch.Tensor) -> torch.Tensor:
    return lam_lo + u * (lam_hi - lam_lo)


def _karras_knots(lam_lo: float, lam_hi: float, u: torch.Tensor, rho: float = 7.0) -> torch.Tensor:
    s = torch.tensor([-lam_lo, -lam_hi], dtype=torch.float64).div(rho).exp()  # sigma_ve^(1/rho) at both ends
    return -rho * torch.log(s[0] + u * (s[1] - s[0]))


def _vp_knots(lam_lo: float, lam_hi: float, u: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return _reference_power(_VP_REFERENCE.inverse_lambda, _VP_REFERENCE.lambda_, lam_lo, lam_hi, u, p)


def _cosine_knots(lam_lo: float, lam_hi: float, u: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return _reference_power(_cosine_time, _COSINE_REFERENCE.lambda_, lam_lo, lam_hi, u, p)


def _lambda_power_knots(lam_lo: float, lam_hi: float, u: torch.Tensor, p: float = 1.0) -> torch.Tensor:
    return lam_lo + (lam_hi - lam_lo) * u**p


@dataclass(frozen=True)
class GridFamily:
    r"""A lambda distribution: ``knots(lam_lo, lam_hi, u, **params)`` maps ``u`` uniform in \([0, 1]\) (from the
    noisy end) to increasing half-log-SNR knots from ``lam_lo`` to ``lam_hi``.

    ``param`` names the continuous parameter (``None``: none), ``default`` its value and ``bounds`` the range a
    search over the family explores (any positive value is accepted)."""

    name: str
    knots: Callable
    param: str | None = None
    default: float | None = None
    bounds: tuple[float, float] | None = None


#: the schedule-independent grid families (``vp_uniform``/``vp_quadratic`` are ``vp_power`` with ``p = 1``/``2``,
#: and likewise for ``cosine_*``)
GRID_FAMILIES: dict[str, GridFamily] = {
    f.name: f
    for f in (
        GridFamily("logsnr", _logsnr_knots),
        GridFamily("karras", _karras_knots, "rho", 7.0, (1.0, 20.0)),
        GridFamily("vp_uniform", lambda a, b, u: _vp_knots(a, b, u, 1.0)),
        GridFamily("vp_quadratic", lambda a, b, u: _vp_knots(a, b, u, 2.0)),
        GridFamily("vp_power", _vp_knots, "p", 2.0, (0.5, 4.0)),
        GridFamily("cosine_uniform", lambda a, b, u: _cosine_knots(a, b, u, 1.0)),
        GridFamily("cosine_quadratic", lambda a, b, u: _cosine_knots(a, b, u, 2.0)),
        GridFamily("cosine_power", _cosine_knots, "p", 2.0, (0.5, 4.0)),
        GridFamily("lambda_power", _lambda_power_knots, "p", 1.0, (0.4, 2.5)),
    )
}


def family_lambdas(family: str, lam_start: float, lam_end: float, steps: int, **params) -> torch.Tensor:
    """The ``steps + 1`` half-log-SNR knots of a family from ``lam_start`` to ``lam_end`` (either direction; the
    family's shape is always stated from the noisy end, so an increasing-time grid is the mirror image). float64,
    end points exact."""
    fam = _family(family)
    params = _family_params(fam, params)
    lo, hi = sorted((float(lam_start), float(lam_end)))
    u = torch.linspace(0.0, 1.0, _check_steps(steps) + 1, dtype=torch.float64)
    lam = fam.knots(lo, hi, u, **params).to(torch.float64)
    lam[0], lam[-1] = lo, hi
    return lam if lam_start <= lam_end else lam.flip(0)


def grid_from_lambdas(schedule: NoiseSchedule, lambdas, t_start: float, t_end: float) -> torch.Tensor:
    """The validated time grid of ``schedule`` with half-log-SNR knots ``lambdas`` and exact end points."""
    ts = schedule.inverse_lambda(torch.as_tensor(lambdas, dtype=torch.float64)).clone()
    return _finish(schedule, ts, float(t_start), float(t_end))


def _family(name: str) -> GridFamily:
    if name not in GRID_FAMILIES:
        raise ValueError(f"unknown grid family {name!r}; known families: {', '.join(GRID_FAMILIES)}")
    return GRID_FAMILIES[name]


def _family_params(fam: GridFamily, params: dict) -> dict:
    unknown = set(params) - ({fam.param} if fam.param else set())
    if unknown:
        valid = fam.param or "(none)"
        raise ValueError(f"grid {fam.name!r} has no parameter {sorted(unknown)[0]!r}; its parameters: {valid}")
    return {k: _check_exponent(k, v) for k, v in params.items()}


def _family_grid(name: str) -> Callable:
    def grid(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None, **params) -> torch.Tensor:
        a, b = _ends(schedule, t_start, t_end)
        lam = schedule.lambda_(torch.tensor([a, b], dtype=torch.float64))
        return grid_from_lambdas(schedule, family_lambdas(name, float(lam[0]), float(lam[1]), steps, **params), a, b)

    grid.__name__ = name
    grid.__doc__ = f"The ``{name}`` lambda distribution on ``schedule`` (see the module docstring)."
    return grid


logsnr = _family_grid("logsnr")
logsnr.__doc__ = "Uniform in the half log-SNR ``lambda``."


def karras(schedule: NoiseSchedule, steps: int, t_start=None, t_end=None, rho: float = 7.0) -> torch.Tensor:
    r"""Uniform in \(\sigma_{\rm ve}^{1/\rho}\) (EDM's grid; \(\rho = 1\) is uniform in \(\sigma_{\rm ve}\))."""
    return _family_grid("karras")(schedule, steps, t_start, t_end, rho=rho)


#: every named grid: ``name -> grid(schedule, steps, t_start, t_end, **params)``
GRIDS: dict[str, Callable] = {
    "time_uniform": time_uniform,
    "time_quadratic": time_quadratic,
    "logsnr": logsnr,
    "karras": karras,
    **{name: _family_grid(name) for name in GRID_FAMILIES if name not in ("logsnr", "karras")},
}


def parse_grid(text: str) -> tuple[str, dict[str, float]]:
    """``"vp_power:p=1.5"`` -> ``("vp_power", {"p": 1.5})``; a bare name has no parameters. Unknown names and
    parameters raise ``ValueError`` naming the valid ones."""
    name, _, rest = text.strip().partition(":")
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; known grids: {', '.join(GRIDS)}")
    params: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            eq = ""
        if not eq:
            raise ValueError(f"grid parameter {item!r} in {text!r} is not of the form name=number")
    if params:
        if name not in GRID_FAMILIES:
            raise ValueError(f"grid {name!r} has no parameters")
        _family_params(GRID_FAMILIES[name], params)
    return name, params


def format_grid(name: str, **params) -> str:
    """The inverse of [`parse_grid`][sde_diffusion.grids.parse_grid] (``repr`` of each float: an exact round
    trip)."""
    return name + (":" + ",".join(f"{k}={v!r}" for k, v in params.items()) if params else "")


def validate_grid(schedule: NoiseSchedule, ts, *, decreasing: bool = True) -> torch.Tensor:
    """Check a grid of shape ``(N+1,)`` (or ``(N+1, B)``: one grid per sample) and return it as float64.

    Raises ``ValueError`` unless it has at least two points, is finite, strictly monotone in the required
    direction (which also rules out duplicates) and lies inside ``[t_min, t_max]`` (a relative slack of 1e-12 is
    allowed for round-off at the ends).
    """
    ts = torch.as_tensor(ts).detach().to(device="cpu", dtype=torch.float64)
    if ts.ndim not in (1, 2) or ts.shape[0] < 2:
        raise ValueError(f"grid must have shape (steps+1,) or (steps+1, batch) with steps >= 1, got {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("grid contains non-finite times")
    d = ts[1:] - ts[:-1]
    if bool((d == 0).any()):
        i = int((d == 0).nonzero()[0, 0])
        raise ValueError(f"grid has duplicate times at positions {i} and {i + 1} ({ts[i].tolist()})")
    ok = (d < 0) if decreasing else (d > 0)
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0, 0])
        word = "decreasing" if decreasing else "increasing"
        raise ValueError(f"grid must be strictly {word}; it is not between positions {i} and {i + 1}")
    slack = 1e-12 * max(1.0, abs(schedule.t_max), abs(schedule.t_min))
    lo, hi = float(ts.min()), float(ts.max())
    if lo < schedule.t_min - slack or hi > schedule.t_max + slack:
        raise ValueError(
            f"grid times must lie in [t_min, t_max] = [{schedule.t_min}, {schedule.t_max}] of {schedule!r}; "
            f"got [{lo}, {hi}]"
        )
    return ts


def make_grid(
    schedule: NoiseSchedule,
    grid="logsnr",
    steps: int | None = None,
    t_start=None,
    t_end=None,
    *,
    rho: float = 7.0,
    decreasing: bool = True,
) -> torch.Tensor:
    """A validated float64 grid from a name in [`GRIDS`][sde_diffusion.grids.GRIDS] (optionally with its
    parameter, ``"vp_power:p=1.5"``) or an explicit tensor of times.

    ``rho`` is the exponent of ``"karras"`` when the name does not set it. For an explicit tensor,
    ``steps``/``t_start``/``t_end`` are taken from it (when also given they must agree). ``decreasing=False``
    builds the grid from ``t_end`` up to ``t_start`` order as given (used by inversion).
    """
    if isinstance(grid, str):
        name, params = parse_grid(grid)
        if steps is None:
            raise ValueError("steps is required with a named grid")
        if name == "karras":
            params.setdefault("rho", rho)
            _check_exponent("rho", params["rho"])
        return GRIDS[name](schedule, steps, t_start, t_end, **params)
    if not isinstance(grid, (torch.Tensor, list, tuple)):
        raise TypeError(f"grid must be a name or a tensor of times, got {type(grid).__name__}")
    ts = validate_grid(schedule, grid, decreasing=decreasing)
    if steps is not None and _check_steps(steps) != ts.shape[0] - 1:
        raise ValueError(f"steps={steps} disagrees with the explicit grid of {ts.shape[0] - 1} steps")
    for name, want, got in (("t_start", t_start, ts[0]), ("t_end", t_end, ts[-1])):
        if want is not None and not bool(torch.all(got == float(want))):
            raise ValueError(f"{name}={want} disagrees with the explicit grid")
    return ts
