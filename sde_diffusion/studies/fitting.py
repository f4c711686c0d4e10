r"""Empirical order of convergence: slopes of ``log(error)`` against ``log(NFE)``.

For a method of order ``p``, ``error ~ C NFE^{-p}`` once the step is small enough (the *asymptotic* range); at
small NFE the error follows no power law yet (the *pre-asymptotic* range), and at large NFE it stops decreasing at a
*floor* -- round-off, the accuracy of the reference solution, or the Monte-Carlo error of a distributional metric.
:func:`fit_order` separates the three:

1. **Floor.** Points with ``error <= floor`` (an absolute level the caller knows: e.g. a few times the reference's
   estimated error, ``100 eps`` of the dtype times the solution's scale, or the metric's sampling floor) are
   excluded; then, from the largest NFE downwards, a point is excluded while the local order between it and its
   predecessor is below ``min_order`` (the error has stopped decreasing) or -- once a floor has been found -- below
   ``knee`` times the local order of the segment before (the bend into the plateau).
2. **Asymptotic range.** Starting from the last ``min_points`` remaining points, the range is extended towards
   smaller NFE while the local order of each added segment agrees with the running fit within
   ``tol * max(1, order)``. An explicit ``asymptotic_from`` (an NFE) overrides the search.
3. **Pre-asymptotic range.** The remaining smaller-NFE points (when at least two) get their own fit.

Each fit is ordinary least squares on ``(log NFE, log error)``: order ``= -slope`` with the usual standard error
``sqrt(SSR/(n-2) / Sxx)`` (``None`` for two points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["LineFit", "OrderFit", "fit_line", "fit_order", "local_orders"]


@dataclass
class LineFit:
    """A least-squares line through ``(log NFE, log error)``: ``order = -slope``."""

    order: float
    stderr: float | None
    intercept: float
    nfe_min: int
    nfe_max: int
    points: int

    def to_dict(self) -> dict:
        return asdict(self)


def fit_line(nfe: Sequence[float], err: Sequence[float]) -> LineFit:
    """OLS of ``log err`` on ``log nfe`` (at least two distinct NFE values)."""
    if len(nfe) != len(err) or len(nfe) < 2:
        raise ValueError("fit_line needs at least two (nfe, error) points")
    xs = [math.log(n) for n in nfe]
    ys = [math.log(e) for e in err]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_line needs at least two distinct NFE values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    stderr = None
    if n > 2:
        ssr = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
        stderr = math.sqrt(ssr / (n - 2) / sxx)
    return LineFit(
        order=-slope, stderr=stderr, intercept=intercept, nfe_min=int(min(nfe)), nfe_max=int(max(nfe)), points=n
    )


def local_orders(nfe: Sequence[float], err: Sequence[float]) -> list[float]:
    """``-(log e_i - log e_{i-1}) / (log n_i - log n_{i-1})`` for consecutive points (sorted by NFE)."""
    return [
        -(math.log(err[i]) - math.log(err[i - 1])) / (math.log(nfe[i]) - math.log(nfe[i - 1]))
        for i in range(1, len(nfe))
    ]


@dataclass
class OrderFit:
    """Result of :func:`fit_order`: asymptotic and pre-asymptotic fits, and the points excluded as floor."""

    asymptotic: LineFit | None
    pre_asymptotic: LineFit | None
    floor: float
    excluded: list[int] = field(default_factory=list)
    declared: float | None = None

    @property
    def order(self) -> float | None:
        """The asymptotic order (``None`` when fewer than two usable points)."""
        return None if self.asymptotic is None else self.asymptotic.order

    def to_dict(self) -> dict:
        return {
            "asymptotic": None if self.asymptotic is None else self.asymptotic.to_dict(),
            "pre_asymptotic": None if self.pre_asymptotic is None else self.pre_asymptotic.to_dict(),
            "floor": self.floor,
            "excluded": list(self.excluded),
            "declared": self.declared,
        }

    @classmethod
    def from_dict(cls, d: dict) -> OrderFit:
        def line(v):
            return None if v is None else LineFit(**v)

        return cls(
            asymptotic=line(d["asymptotic"]),
            pre_asymptotic=line(d["pre_asymptotic"]),
            floor=d["floor"],
            excluded=list(d.get("excluded", [])),
            declared=d.get("declared"),
        )

    def describe(self) -> str:
        """``"2.01 ± 0.02 (NFE 48-240)"``-style summary of the asymptotic fit."""
        return _describe(self.asymptotic)


def _describe(f: LineFit | None) -> str:
    if f is None:
        return "-"
    se = "" if f.stderr is None else f" ± {f.stderr:.2f}"
    return f"{f.order:.2f}{se} (NFE {f.nfe_min}-{f.nfe_max})"


def fit_order(
    nfe: Sequence[float],
    err: Sequence[float | None],
    *,
    floor: float = 0.0,
    min_order: float = 0.25,
    knee: float = 0.5,
    min_points: int = 3,
    tol: float = 0.3,
    asymptotic_from: float | None = None,
    declared: float | None = None,
) -> OrderFit:
    """Fit the empirical order of convergence (see the module docstring for the algorithm).

    Args:
        nfe: model evaluations actually spent, one per point.
        err: the error at each point (``None``/non-finite/non-positive points are ignored).
        floor: absolute error level at or below which points are excluded (round-off / reference / sampling floor).
        min_order: a trailing point whose local order is below this is taken as the floor.
        knee: once points have been excluded as floor, a trailing point whose local order is below ``knee`` times
            the previous local order is taken as the onset of the floor (the bend into the plateau).
        min_points: smallest asymptotic range searched from the large-NFE end.
        tol: agreement (relative to ``max(1, order)``) that a segment needs to join the asymptotic range.
        asymptotic_from: use exactly the points with ``nfe >= asymptotic_from`` as the asymptotic range.
        declared: the method's declared order (stored for reports).
    """
    pts = sorted((int(n), float(e)) for n, e in zip(nfe, err) if e is not None and math.isfinite(e) and e > 0)
    pts = _merge_duplicates(pts)
    excluded = [n for n, e in pts if e <= floor]
    pts = [(n, e) for n, e in pts if e > floor]
    while len(pts) >= 2:
        p = local_orders(*zip(*pts[-3:]))
        if p[-1] < min_order or (excluded and len(p) == 2 and p[-1] < knee * p[0]):
            excluded.append(pts.pop()[0])
        else:
            break
    excluded.sort()
    if len(pts) < 2:
        return OrderFit(None, None, floor, excluded, declared)
    ns, es = [p[0] for p in pts], [p[1] for p in pts]
    if asymptotic_from is not None:
        start = next((i for i, n in enumerate(ns) if n >= asymptotic_from), len(ns))
        start = min(start, len(ns) - 2)
    else:
        start = _asymptotic_start(ns, es, min_points, tol)
    asym = fit_line(ns[start:], es[start:])
    pre = fit_line(ns[:start], es[:start]) if start >= 2 else None
    return OrderFit(asym, pre, floor, excluded, declared)


def _merge_duplicates(pts: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Several budgets can map to the same actual NFE: keep one point per NFE (the geometric mean)."""
    out: dict[int, list[float]] = {}
    for n, e in pts:
        out.setdefault(n, []).append(e)
    return [(n, math.exp(sum(map(math.log, es)) / len(es))) for n, es in sorted(out.items())]


def _asymptotic_start(ns: list[int], es: list[float], min_points: int, tol: float) -> int:
    start = max(len(ns) - max(min_points, 2), 0)
    fit = fit_line(ns[start:], es[start:])
    while start > 0:
        p = local_orders(ns[start - 1 : start + 1], es[start - 1 : start + 1])[0]
        if abs(p - fit.order) > tol * max(1.0, abs(fit.order)):
            break
        start -= 1
        fit = fit_line(ns[start:], es[start:])
    return start
