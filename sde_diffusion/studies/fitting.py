r"""Empirical order of convergence: slopes of ``log(error)`` against ``log(NFE)``, and when they are asymptotic.

For a method of order ``p``, ``error = C NFE^{-p} (1 + O(NFE^{-q}))`` once the step is small enough (the
*asymptotic* range); at small NFE the error follows no power law yet (the *pre-asymptotic* range), and at large NFE
it stops decreasing at a *floor* -- round-off, the accuracy of the reference solution, or the Monte-Carlo error of a
distributional metric. The **local order** between successive points,

$$ p_i = -\frac{\log e_i - \log e_{i-1}}{\log n_i - \log n_{i-1}}, $$

tends to ``p`` in the asymptotic range. [`fit_order`][sde_diffusion.studies.fitting.fit_order] separates the three
ranges and *claims* an asymptotic range
only when the local orders say so:

1. **Floor.** Points with ``error <= floor`` (an absolute level the caller knows: a few times the reference's
   estimated error, ``100 eps`` of the dtype times the solution's scale, or the metric's sampling floor) are
   excluded; then, from the largest NFE downwards, a point is excluded while its error is not below every coarser
   error ``e_j`` by at least the rate ``min_order`` (``e > e_j (n_j / n)^min_order`` for some ``j``: the error has
   stopped decreasing -- a plateau, jitter included), or -- once a floor has been found -- while its local order is
   below ``knee`` times the local order of the segment before (the bend into the plateau).
2. **Agreement.** The candidate range is the longest run of trailing segments (at least two, i.e. three points)
   whose local orders agree within ``tol`` (``max - min <= tol``, default 0.1).
3. **No trend.** Changes of the last local orders all below ``tol / 10`` (the resolution of the test) are no
   trend. Otherwise the last three local orders (at log-midpoints ``u``) give two slopes ``g = dp/du``. Same signs
   with ``|g|`` shrinking are modelled as a deviation decaying like ``NFE^{-kappa}`` (``kappa`` from the two
   slopes), whose remaining drift beyond the last point, ``|g_b| e^{-kappa (u_m - w_b)} / kappa``, must be at most
   ``tol / 2``; a slope that does not shrink is a trend. Opposite signs are scatter when the agreeing run has at
   least three segments, otherwise a pre-asymptotic turn-around (undecided). Fewer than three local orders cannot
   show the absence of a trend unless they differ by less than ``tol / 10``.

The range is claimed when 2 and 3 hold; its least-squares fit is the asymptotic order, compared with the declared
order within ``confirm_tol`` (default 0.15) for the verdict ("order p confirmed", "below declared", "above
declared"). Otherwise the verdict is "not reached" -- with the local orders and, at the current trend, the NFE at
which the range would be reached -- or "floor at NFE n" when a floor cut the sequence first.

Each fit is ordinary least squares on ``(log NFE, log error)`` ([`fit_line`][sde_diffusion.studies.fitting.fit_line],
the one order fit of the package:
studies, [`testing`][sde_diffusion.testing] and the tests all use it): order ``= -slope`` with the usual standard error
``sqrt(SSR/(n-k) (X^T X)^{-1})`` (``None`` without spare points), optionally with a ``1/NFE`` correction column that
absorbs the leading pre-asymptotic term.

**Reference-free orders** ([`richardson_orders`][sde_diffusion.studies.fitting.richardson_orders]): solutions ``x_N,
x_{2N}, x_{4N}`` of three successive
step doublings give ``d_N = ||x_N - x_{2N}|| = C N^{-p} (1 - 2^{-p}) + ...``, so
``p_R = log2(d_N / d_{2N})`` estimates the order without any reference; twice the change from the previous triplet is
its error bar (it bounds the remaining bias when the deviation shrinks by at least a third per doubling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "ASYMPTOTIC_TOL",
    "CONFIRM_TOL",
    "KAPPA_MAX",
    "MIN_SPAN",
    "LineFit",
    "OrderFit",
    "RichardsonEstimate",
    "fit_line",
    "fit_order",
    "local_orders",
    "richardson_orders",
]

#: local orders of a claimed asymptotic range agree within this (``max - min``)
ASYMPTOTIC_TOL = 0.1
#: a measured asymptotic order within this of the declared one confirms it
CONFIRM_TOL = 0.15
#: a claimed asymptotic range spans at least this factor in NFE (two doublings)
MIN_SPAN = 4.0
#: the fastest decay ``NFE^{-kappa}`` assumed for the deviation of the local order: the leading correction of an
#: order-p method is relative ``O(h) = O(1/NFE)``; faster apparent decays are not trusted
KAPPA_MAX = 1.0
#: a deviation decaying slower than ``NFE^{-KAPPA_MIN}`` counts as a trend that does not fade
KAPPA_MIN = 0.1
#: predictions of the NFE needed beyond this factor of the last NFE are not made
NEEDED_MAX = 1024


def _number(v: float) -> int | float:
    """NFE values stay ints (JSON ``24``, not ``24.0``); other abscissae (tolerances, ...) stay floats."""
    return int(v) if float(v).is_integer() else float(v)


@dataclass
class LineFit:
    """A least-squares line through ``(log NFE, log error)``: ``order = -slope``; ``residual`` is the RMS of the
    residuals of ``log error`` (0 for a pure power law)."""

    order: float
    stderr: float | None
    intercept: float
    nfe_min: int | float
    nfe_max: int | float
    points: int
    residual: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """``"2.01 ± 0.02 (NFE 48-240)"``."""
        se = "" if self.stderr is None else f" ± {self.stderr:.2f}"
        return f"{self.order:.2f}{se} (NFE {self.nfe_min}-{self.nfe_max})"


def fit_line(nfe: Sequence[float], err: Sequence[float], *, correction: bool = False) -> LineFit:
    r"""Least squares of ``log err`` on ``log nfe``: ``log e = c - p log n`` (``p`` is returned as ``order``).

    With ``correction=True`` the model is ``log e = c - p log n + d / n``: the ``d/n`` term absorbs the leading
    pre-asymptotic correction ``e = C n^{-p} (1 + d/n + O(n^{-2}))`` that biases a plain slope at moderate NFE.
    Any positive abscissae work (NFE, tolerances, batch sizes); at least two distinct values, three with
    ``correction``.
    """
    if len(nfe) != len(err):
        raise ValueError("fit_line needs as many errors as NFE values")
    k = 3 if correction else 2
    if len(set(float(n) for n in nfe)) < k:
        raise ValueError(f"fit_line needs at least {k} distinct NFE values, got {list(nfe)}")
    x = torch.tensor([float(n) for n in nfe], dtype=torch.float64)
    y = torch.tensor([float(e) for e in err], dtype=torch.float64).log()
    cols = [torch.ones_like(x), -x.log()] + ([1.0 / x] if correction else [])
    a = torch.stack(cols, dim=1)
    coef = torch.linalg.lstsq(a, y[:, None], driver="gelsd").solution[:, 0]
    res = y - a @ coef
    ssr = float((res * res).sum())
    n = len(x)
    stderr = None
    if n > k:
        cov = torch.linalg.inv(a.T @ a) * (ssr / (n - k))
        stderr = math.sqrt(max(float(cov[1, 1]), 0.0))
    return LineFit(
        order=float(coef[1]),
        stderr=stderr,
        intercept=float(coef[0]),
        nfe_min=_number(min(nfe)),
        nfe_max=_number(max(nfe)),
        points=n,
        residual=math.sqrt(ssr / n),
    )


def local_orders(nfe: Sequence[float], err: Sequence[float]) -> list[float]:
    """``-(log e_i - log e_{i-1}) / (log n_i - log n_{i-1})`` for consecutive points (sorted by NFE)."""
    return [
        -(math.log(err[i]) - math.log(err[i - 1])) / (math.log(nfe[i]) - math.log(nfe[i - 1]))
        for i in range(1, len(nfe))
    ]


# ---------------------------------------------------------------------------------------------------------------------
# the asymptotic range
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Range:
    start: int | None  # index of the first point of the claimed range (None: not claimed)
    drift: float | None  # predicted change of the local order beyond the last point (inf: a trend that persists)
    nfe_needed: int | None  # at the current trend, the NFE by which the range would be claimed


def _asymptotic_range(ns: list, es: list, tol: float, declared: float | None) -> _Range:
    p = local_orders(ns, es)
    m = len(p)
    if m < 2:
        return _Range(None, None, None)
    u = [0.5 * (math.log(ns[i]) + math.log(ns[i + 1])) for i in range(m)]  # log-midpoints of the segments
    # 2. agreement: the longest trailing run of local orders within tol
    j = m - 1
    while j > 0 and max(p[j - 1 :]) - min(p[j - 1 :]) <= tol:
        j -= 1
    agree = m - j >= 2 and ns[-1] >= MIN_SPAN * ns[j] * (1 - 1e-9)
    # 3. trend from the last three local orders
    drift, kappa, g_b, w_b = _drift(p, u, tol, long_run=m - j >= 3)
    claimed = agree and drift is not None and abs(drift) <= tol / 2
    if claimed:
        return _Range(j, drift, None)
    return _Range(None, drift, _nfe_needed(p, u, ns, tol, declared, kappa, g_b, w_b))


def _drift(p: list[float], u: list[float], tol: float, long_run: bool):
    """``(drift, kappa, g_b, w_b)``: predicted remaining change of the local order (``None``: cannot be told,
    ``+-inf``: a trend that does not fade), the decay rate of its deviation, the last slope ``dp/du`` and the
    abscissa where it was measured."""
    steps = [abs(p[-1] - p[-2])] + ([abs(p[-2] - p[-3])] if len(p) >= 3 else [])
    if max(steps) <= tol / 10:
        return 0.0, None, None, None  # changes below the resolution of the test
    if len(p) < 3:
        return None, None, None, None
    g_a = (p[-2] - p[-3]) / (u[-2] - u[-3])
    g_b = (p[-1] - p[-2]) / (u[-1] - u[-2])
    w_a, w_b = 0.5 * (u[-3] + u[-2]), 0.5 * (u[-2] + u[-1])
    if g_a * g_b <= 0:  # a turn: scatter if a longer run agrees, else a pre-asymptotic turn-around
        return (0.0 if long_run else None), None, g_b, w_b
    kappa = math.log(abs(g_a) / abs(g_b)) / (w_b - w_a) if abs(g_b) < abs(g_a) else 0.0
    if kappa < KAPPA_MIN:
        return math.copysign(math.inf, g_b), None, g_b, w_b  # a trend that does not fade
    kappa = min(kappa, KAPPA_MAX)
    return g_b / kappa * math.exp(-kappa * (u[-1] - w_b)), kappa, g_b, w_b


def _nfe_needed(p, u, ns, tol, declared, kappa, g_b, w_b) -> int | None:
    """At the current trend, the NFE by which the range would be claimed (``None`` when no trend can be
    extrapolated or the answer exceeds ``NEEDED_MAX`` times the last NFE)."""
    log_n = _extrapolate(p, u, ns, tol, declared, kappa, g_b, w_b)
    if log_n is None or log_n > math.log(NEEDED_MAX * ns[-1]):
        return None
    return max(math.ceil(math.exp(log_n)), int(ns[-1]) + 1)


def _extrapolate(p, u, ns, tol, declared, kappa, g_b, w_b) -> float | None:
    """``log NFE`` where the trend predicts the range (``None``: no trend to extrapolate)."""
    if g_b is None or g_b == 0:
        return None
    half_step = 0.5 * (math.log(ns[-1]) - math.log(ns[-2]))
    if kappa is not None:  # fading deviation: where its remaining drift falls below tol / 2 (and one segment more)
        return w_b + math.log(2 * abs(g_b) / (kappa * tol)) / kappa + 3 * half_step
    if declared is not None and (declared - p[-1]) * g_b > 0:  # linear trend towards the declared order
        return u[-1] + (declared - p[-1]) / g_b + half_step
    return None


# ---------------------------------------------------------------------------------------------------------------------
# the order fit
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class OrderFit:
    """Result of [`fit_order`][sde_diffusion.studies.fitting.fit_order].

    ``asymptotic`` is the fit over the claimed asymptotic range (``None`` when it was not reached), ``effective``
    the plain fit over the practical range (the points within ``effective_range``, all kept points by default),
    ``pre_asymptotic`` the fit below the asymptotic range; ``nfe``/``errors`` the points used (floor excluded,
    duplicates merged) and ``local`` their local orders; ``status`` one of ``"confirmed"``, ``"below"``,
    ``"above"``, ``"measured"`` (no declared order), ``"not_reached"``, ``"floor"``."""

    asymptotic: LineFit | None
    pre_asymptotic: LineFit | None
    floor: float
    excluded: list[int] = field(default_factory=list)
    declared: float | None = None
    effective: LineFit | None = None
    nfe: list[int] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    local: list[float] = field(default_factory=list)
    status: str = "not_reached"
    drift: float | None = None
    nfe_needed: int | None = None
    tol: float = ASYMPTOTIC_TOL
    confirm_tol: float = CONFIRM_TOL

    @property
    def order(self) -> float | None:
        """The asymptotic order (``None`` when the asymptotic range was not reached)."""
        return None if self.asymptotic is None else self.asymptotic.order

    @property
    def reached(self) -> bool:
        return self.asymptotic is not None

    @property
    def floor_nfe(self) -> int | None:
        """The smallest NFE excluded as floor above the kept points (``None``: no floor was hit)."""
        top = self.nfe[-1] if self.nfe else -1
        above = [n for n in self.excluded if n > top]
        return min(above) if above else None

    @property
    def verdict(self) -> str:
        """One line: ``"order 3 confirmed"``, ``"below declared (1.00 < 3)"``, ``"above declared (..)"``,
        ``"order 2.01 (no declared order)"``, ``"not reached (...)"``, ``"floor at NFE 1600"``."""
        d = "-" if self.declared is None else f"{self.declared:g}"
        if self.status == "confirmed":
            return f"order {d} confirmed"
        if self.status == "below":
            return f"below declared ({self.order:.2f} < {d})"
        if self.status == "above":
            return f"above declared ({self.order:.2f} > {d})"
        if self.status == "measured":
            return f"order {self.order:.2f} (no declared order)"
        if self.status == "floor":
            return f"floor at NFE {self.floor_nfe}"
        if not self.local:
            return "not reached (fewer than two points)"
        last = ", ".join(f"{q:.2f}" for q in self.local[-3:])
        trend = ""
        if self.drift is not None and self.drift != 0:
            trend = "; rising" if self.drift > 0 else "; falling"
        needed = f"; ~NFE {self.nfe_needed} at this trend" if self.nfe_needed else ""
        return f"not reached (local orders {last}{trend}{needed})"

    def describe(self) -> str:
        """``"2.01 ± 0.02 (NFE 48-240)"``-style summary of the asymptotic fit (``"not reached"`` without one)."""
        return "not reached" if self.asymptotic is None else self.asymptotic.describe()

    def to_dict(self) -> dict:
        def line(f):
            return None if f is None else f.to_dict()

        return {
            "asymptotic": line(self.asymptotic),
            "pre_asymptotic": line(self.pre_asymptotic),
            "effective": line(self.effective),
            "floor": self.floor,
            "excluded": list(self.excluded),
            "declared": self.declared,
            "nfe": list(self.nfe),
            "errors": list(self.errors),
            "local_orders": list(self.local),
            "status": self.status,
            "verdict": self.verdict,
            "drift": None if self.drift is None or math.isinf(self.drift) else self.drift,
            "trend_persists": self.drift is not None and math.isinf(self.drift),
            "nfe_needed": self.nfe_needed,
            "floor_nfe": self.floor_nfe,
            "tol": self.tol,
            "confirm_tol": self.confirm_tol,
        }

    @classmethod
    def from_dict(cls, d: dict) -> OrderFit:
        def line(v):
            return None if v is None else LineFit(**v)

        drift = d.get("drift")
        if d.get("trend_persists"):
            drift = math.inf  # the sign is lost in JSON; a persisting trend is what matters
        return cls(
            asymptotic=line(d["asymptotic"]),
            pre_asymptotic=line(d["pre_asymptotic"]),
            floor=d["floor"],
            excluded=list(d.get("excluded", [])),
            declared=d.get("declared"),
            effective=line(d.get("effective")),
            nfe=list(d.get("nfe", [])),
            errors=list(d.get("errors", [])),
            local=list(d.get("local_orders", [])),
            status=d.get("status", "not_reached"),
            drift=drift,
            nfe_needed=d.get("nfe_needed"),
            tol=d.get("tol", ASYMPTOTIC_TOL),
            confirm_tol=d.get("confirm_tol", CONFIRM_TOL),
        )


def fit_order(
    nfe: Sequence[float],
    err: Sequence[float | None],
    *,
    floor: float = 0.0,
    declared: float | None = None,
    tol: float = ASYMPTOTIC_TOL,
    confirm_tol: float = CONFIRM_TOL,
    min_order: float = 0.25,
    knee: float = 0.5,
    effective_range: tuple[float, float] | None = None,
) -> OrderFit:
    """Fit the empirical order of convergence and say whether it is asymptotic (see the module docstring).

    Args:
        nfe: model evaluations actually spent, one per point.
        err: the error at each point (``None``/non-finite/non-positive points are ignored).
        floor: absolute error level at or below which points are excluded (round-off / reference / sampling floor).
        declared: the method's declared order (the verdict compares the asymptotic order with it).
        tol: local orders of a claimed asymptotic range agree within this; its remaining drift is below ``tol/2``.
        confirm_tol: the asymptotic order confirms the declared one within this.
        min_order: a trailing point that does not improve on every coarser error at least at this rate is taken as
            the floor.
        knee: once points have been excluded as floor, a trailing point whose local order is below ``knee`` times
            the previous local order is taken as the onset of the floor (the bend into the plateau).
        effective_range: ``(nfe_min, nfe_max)`` of the practical range whose plain fit is ``effective``.
    """
    pts = sorted((int(n), float(e)) for n, e in zip(nfe, err) if e is not None and math.isfinite(e) and e > 0)
    pts = _merge_duplicates(pts)
    excluded = [n for n, e in pts if e <= floor]
    pts = [(n, e) for n, e in pts if e > floor]
    while len(pts) >= 2:
        p = local_orders(*zip(*pts[-3:]))
        n_last, e_last = pts[-1]
        # stalled: not below every coarser error by at least the rate min_order (a plateau, jitter included)
        stalled = any(e_last > e * (n / n_last) ** min_order for n, e in pts[:-1])
        if stalled or (excluded and len(p) == 2 and p[-1] < knee * p[0]):
            excluded.append(pts.pop()[0])
        else:
            break
    excluded.sort()
    ns, es = [p[0] for p in pts], [p[1] for p in pts]
    fit = OrderFit(None, None, floor, excluded, declared, nfe=ns, errors=es, tol=tol, confirm_tol=confirm_tol)
    if len(pts) < 2:
        fit.status = "floor" if fit.floor_nfe is not None else "not_reached"
        return fit
    fit.local = local_orders(ns, es)
    lo, hi = effective_range if effective_range is not None else (ns[0], ns[-1])
    practical = [(n, e) for n, e in pts if lo <= n <= hi]
    if len({n for n, _ in practical}) >= 2:
        fit.effective = fit_line(*zip(*practical))
    r = _asymptotic_range(ns, es, tol, declared)
    fit.drift, fit.nfe_needed = r.drift, r.nfe_needed
    if r.start is None:
        fit.status = "floor" if fit.floor_nfe is not None else "not_reached"
        return fit
    fit.asymptotic = fit_line(ns[r.start :], es[r.start :])
    fit.pre_asymptotic = fit_line(ns[: r.start], es[: r.start]) if r.start >= 2 else None
    fit.status = _status(fit.asymptotic.order, declared, confirm_tol)
    return fit


def _status(order: float, declared: float | None, confirm_tol: float) -> str:
    if declared is None:
        return "measured"
    if abs(order - declared) <= confirm_tol:
        return "confirmed"
    return "below" if order < declared else "above"


def _merge_duplicates(pts: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Several budgets can map to the same actual NFE: keep one point per NFE (the geometric mean)."""
    out: dict[int, list[float]] = {}
    for n, e in pts:
        out.setdefault(n, []).append(e)
    return [(n, math.exp(sum(map(math.log, es)) / len(es))) for n, es in sorted(out.items())]


# ---------------------------------------------------------------------------------------------------------------------
# reference-free (Richardson) orders
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RichardsonEstimate:
    """The order from the triplet ``steps = (N, 2N, 4N)`` (``nfe``: the actual NFE of the three solves):
    ``log2(d_N / d_{2N})`` with ``error_bar`` twice the change from the previous triplet (``None`` for the first)."""

    order: float
    error_bar: float | None
    steps: tuple[int, int, int]
    nfe: tuple[int, int, int]

    def describe(self) -> str:
        """``"2.94 ± 0.13 (NFE 200, 400, 800)"``."""
        bar = "" if self.error_bar is None else f" ± {self.error_bar:.2f}"
        return f"{self.order:.2f}{bar} (NFE {', '.join(map(str, self.nfe))})"


def richardson_orders(steps: Sequence[int], diffs: Sequence[float], nfe: Sequence[int]) -> list[RichardsonEstimate]:
    """Richardson order estimates along a chain of step doublings.

    Args:
        steps: step counts ``N_0 < N_1 < ...`` with ``N_{k+1} = 2 N_k`` (other ratios ``r`` work: ``log_r``).
        diffs: ``diffs[k] = ||x_{N_k} - x_{N_{k+1}}||`` (one fewer than ``steps``).
        nfe: model evaluations of each solve (one per step count).

    Returns:
        One estimate per triplet ``(N_k, N_{k+1}, N_{k+2})`` with a positive difference pair: the local order of
        ``diffs`` against ``steps``, with twice the change from the previous triplet as its error bar.
    """
    if len(diffs) != len(steps) - 1 or len(nfe) != len(steps):
        raise ValueError("richardson_orders needs one difference per consecutive pair of step counts")
    out: list[RichardsonEstimate] = []
    for k in range(len(diffs) - 1):
        if not (diffs[k] > 0 and diffs[k + 1] > 0):
            continue
        (p,) = local_orders(steps[k : k + 2], diffs[k : k + 2])
        bar = 2 * abs(p - out[-1].order) if out and out[-1].steps[1] == steps[k] else None
        s0, s1, s2 = (int(v) for v in steps[k : k + 3])
        n0, n1, n2 = (int(v) for v in nfe[k : k + 3])
        out.append(RichardsonEstimate(p, bar, (s0, s1, s2), (n0, n1, n2)))
    return out
