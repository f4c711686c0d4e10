r"""Explicit Runge--Kutta methods as data: a Butcher tableau, and one step that runs any tableau on the
probability-flow ODE.

A tableau \((A, b, c)\) with \(s\) stages takes a step of size \(d\) of \(\mathrm{d}y/\mathrm{d}s = F(s, y)\) as

\[k_i = F\Big(s_0 + c_i d,\ y_0 + d \sum_{j<i} A_{ij} k_j\Big), \qquad y_1 = y_0 + d \sum_i b_i k_i\]

(as diffrax's ``ButcherTableau`` or scipy's ``RK45.A/B/C``). The PF-ODE is run in one of two variables:

* ``variable="sigma"``: EDM's variables (arXiv:2206.00364) \(y = x/\alpha\),
  \(s = \sigma_{\rm ve} = \sigma/\alpha = e^{-\lambda}\), where the ODE is
  \(\mathrm{d}y/\mathrm{d}\sigma_{\rm ve} = \epsilon(\alpha y, t)\). Stage \(i\) sits at
  \(\sigma_{\rm ve} = \sigma_{\rm ve}(t) + c_i d\); in \(x\) a partial move is
  \(x_i = \frac{\alpha_i}{\alpha} x + \alpha_i d \sum_j A_{ij} \epsilon_j\),
  i.e. a DDIM(eta=0) transfer with a combined noise prediction. Euler is DDIM(eta=0); this serves ``euler``/``heun``
  with ``variable="sigma"``, DEIS rhoRK (arXiv:2204.13902, \(\rho = \sigma_{\rm ve}\)) and the pseudo-Runge--Kutta
  warm-up steps of PNDM (arXiv:2202.09778), which *are* classical RK in \(\sigma_{\rm ve}\). Exact for point-mass data
  (\(\epsilon\) is constant along the flow and \(\sum_i b_i = 1\)).
* ``variable="t"``: \(\frac{\mathrm{d}x}{\mathrm{d}t} = f(t)\, x + \frac{g^2(t)}{2 \sigma(t)} \epsilon(x, t)\), stage
  \(i\) at \(t + c_i \Delta t\) (stages at the step's ends only, \(c_i \in \{0, 1\}\): Euler and Heun).

Both right-hand sides are linear in \((x, \epsilon)\), so every stage input and the result are linear combinations of
``x``, the earlier stage inputs (``variable="t"`` only) and the stage outputs with per-step float64 coefficients
computed once per grid ([`rk_coefficients`][sde_diffusion.solvers.tableaux.rk_coefficients]: typed per-step
vectors, no per-stage field names). The method stays data: an [`RKLayout`][sde_diffusion.solvers.tableaux.RKLayout]
works out once per tableau which terms are non-zero, and the one generic step
([`rk_step`][sde_diffusion.solvers.tableaux.rk_step]) runs the stages in a loop with one fused ``lincomb`` per
stage over those terms only: zero tableau entries cost no kernel. NFE per step = number of stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from operator import itemgetter

import torch
from torch.compiler import is_dynamo_compiling

from .._ops import lincomb, time_like
from .base import vector_column
from .expint import long_step_consistent

__all__ = ["ButcherTableau", "TABLEAUX", "get_tableau", "RKLayout", "rk_layout", "rk_coefficients", "rk_step"]


@dataclass(frozen=True)
class ButcherTableau:
    """Butcher tableau of an explicit Runge--Kutta method: stage ``i`` is evaluated at ``c[i]`` with increments
    ``A[i][j]`` (``j < i``; row ``i`` has ``i`` entries); the step uses weights ``b``. ``order`` is the classical
    order (checked against the order conditions in the tests)."""

    A: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self):
        s = len(self.b)
        if s < 1 or len(self.c) != s or len(self.A) != s:
            raise ValueError(f"a tableau needs as many rows of A and entries of c as weights b (got {self})")
        if any(len(row) != i for i, row in enumerate(self.A)):
            raise ValueError("an explicit tableau has i entries in row i of A")
        if any(abs(ci - sum(row)) > 1e-14 for ci, row in zip(self.c, self.A)):
            raise ValueError("c[i] must equal the sum of row i of A")
        if abs(sum(self.b) - 1.0) > 1e-14:
            raise ValueError("the weights b must sum to 1 (consistency)")

    @property
    def stages(self) -> int:
        return len(self.b)


#: the built-in tableaux by name: forward Euler, Heun (explicit trapezoid), Kutta's third-order method, classical RK4
TABLEAUX: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(A=((),), b=(1.0,), c=(0.0,), order=1),
    "heun": ButcherTableau(A=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2),
    "kutta3": ButcherTableau(A=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 0.5, 1.0), order=3),
    "rk4": ButcherTableau(
        A=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0), order=4
    ),
}


def get_tableau(tableau: str | ButcherTableau) -> ButcherTableau:
    """A tableau by name (one of [`TABLEAUX`][sde_diffusion.solvers.tableaux.TABLEAUX]) or the instance itself."""
    if isinstance(tableau, ButcherTableau):
        return tableau
    if isinstance(tableau, str) and tableau in TABLEAUX:
        return TABLEAUX[tableau]
    raise ValueError(f"tableau must be one of {', '.join(map(repr, TABLEAUX))} or a ButcherTableau, got {tableau!r}")


def tableau_name(tableau: ButcherTableau) -> str | ButcherTableau:
    """The registered name of ``tableau``, or the instance if it has none (for ``Solver.options``)."""
    return next((n for n, t in TABLEAUX.items() if t == tableau), tableau)


#: where a stage is evaluated: at the step's start, at its end, or at a point inside the step
START, END, INTERIOR = 0, 1, 2


class RKLayout:
    """The RK step of one tableau in one variable, as data: built once per solver; nothing of it is worked out per
    step.

    The step forms ``s`` *combinations* (``s`` stages): combination ``r = 0 .. s-2`` is the input ``x_{r+1}`` of
    stage ``r + 1`` (tableau row ``A[r+1]``), combination ``s-1`` the result (weights ``b``). With ``x_0 = x`` and
    ``e_j`` the noise prediction of stage ``j``, combination ``r`` is

    ``rk_ratio[r] * x + sum_j (rk_wx[r*s + j] * x_j + rk_we[r*s + j] * e_j)``

    over the non-zero tableau entries ``j <= r`` only (``x_j`` terms, ``j >= 1``, in ``variable="t"`` only: there
    the right-hand side at a stage depends on that stage's input; in ``sigma_ve`` every ``x_j`` is folded into
    ``rk_ratio`` and the ``e_j`` weights). This sparsity is fixed by the tableau, so it is worked out here, once:

    * ``terms[r]``: the ``(j, from_x)`` pairs of combination ``r`` in the order they are summed (``from_x``: the
      term is ``rk_wx[r*s + j] * x_j``, else ``rk_we[r*s + j] * e_j``); zero entries have no term;
    * ``points[i]``: ``START``, ``END`` or ``INTERIOR`` for stage ``i`` (``c_i = 0``, ``c_i = 1``, or in between:
      then the record carries the point as ``rk_t_stage[i]``, ``rk_alpha_stage[i]``, ``rk_sigma_stage[i]``);
    * ``eager = (stages, result)``: ``stages`` holds ``(i, pick, points[i])`` for the stages ``i = 1 .. s-1``,
      ``result`` the ``pick`` of the result. The step keeps one list per step, the *pool*:
      ``(*rk_ratio, *rk_we, *rk_wx, x, e_0, x_1, e_1, ...)`` (no ``rk_wx`` in ``sigma_ve``; each stage appends its
      input and output); ``pick``, an ``operator.itemgetter``, takes from it the arguments of ``lincomb`` for one
      combination -- ``rk_ratio[r], x`` and the ``(weight, vector)`` pair of each term -- in one C call (a Python
      loop over the terms would cost, per step, about as much as a small state's kernels);
    * ``traced``: the same with ``_TracedPick`` picks, for ``torch.compile``;
    * ``fields``: the record fields [`rk_coefficients`][sde_diffusion.solvers.tableaux.rk_coefficients] returns.
    """

    def __init__(self, tableau: ButcherTableau, variable: str):
        if variable not in ("t", "sigma"):
            raise ValueError(f"variable must be 't' or 'sigma', got {variable!r}")
        if variable == "t" and any(ci not in (0.0, 1.0) for ci in tableau.c):
            raise ValueError("in variable 't' only tableaux whose stages are at the step's ends are supported")
        self.tableau, self.variable = tableau, variable
        s = tableau.stages
        #: the tableau rows of the combinations: A[1], ..., A[s-1], b
        self.rows: tuple[tuple[float, ...], ...] = tuple(tableau.A[1:]) + (tableau.b,)
        self.terms: tuple[tuple[tuple[int, bool], ...], ...] = tuple(
            tuple(
                (j, from_x)
                for j, a in enumerate(row)
                if a != 0.0
                for from_x in ((True, False) if variable == "t" and j > 0 else (False,))
            )
            for row in self.rows
        )
        self.points: tuple[int, ...] = tuple(START if ci == 0.0 else END if ci == 1.0 else INTERIOR for ci in tableau.c)
        # pool positions: rk_ratio[r] at r, rk_we[r*s + j] at s + r*s + j, rk_wx[r*s + j] at s + s^2 + r*s + j
        # (variable "t"), x at `at_x`, then x_j at at_x + 2j and e_j at at_x + 2j + 1 (x_0 = x)
        at_x = s + s * s * (2 if variable == "t" else 1)
        positions = []
        for r, terms in enumerate(self.terms):
            args = [r, at_x]  # lincomb(rk_ratio[r], x, weight, vector, weight, vector, ...)
            for j, from_x in terms:
                args += (s + s * s + r * s + j, at_x + 2 * j) if from_x else (s + r * s + j, at_x + 2 * j + 1)
            positions.append(tuple(args))
        #: ``(stages, result)`` with ``itemgetter`` picks (eager) and with picks dynamo can trace (``torch.compile``)
        self.eager = self._picks(positions, itemgetter)
        self.traced = self._picks(positions, _TracedPick)
        self.interior = INTERIOR in self.points
        #: ``x_j`` terms exist (variable ``"t"``): the pool holds ``rk_wx``
        self.with_wx = variable == "t"
        #: one stage: the step is the single combination ``rk_ratio[0] x + rk_we[0] e_0`` (no pool, no picks)
        self.single = s == 1
        self.fields = (
            ("rk_ratio", "rk_we")
            + (("rk_wx",) if variable == "t" else ())
            + (("rk_t_stage", "rk_alpha_stage", "rk_sigma_stage") if self.interior else ())
        )

    def _picks(self, positions: list[tuple[int, ...]], pick: Callable) -> tuple[tuple, Callable]:
        stages = tuple((i, pick(*positions[i - 1]), self.points[i]) for i in range(1, self.tableau.stages))
        return stages, pick(*positions[-1])


class _TracedPick:
    """``pool -> tuple(pool[p] for p in positions)`` in plain Python: what an ``operator.itemgetter`` does, in a form
    ``torch.compile`` traces (dynamo cannot call an itemgetter; eager steps use the itemgetter, which is faster)."""

    __slots__ = ("positions",)

    def __init__(self, *positions: int):
        self.positions = positions

    def __call__(self, pool: list) -> tuple:
        return tuple(map(pool.__getitem__, self.positions))


@cache
def rk_layout(tableau: ButcherTableau, variable: str) -> RKLayout:
    """The (cached) [`RKLayout`][sde_diffusion.solvers.tableaux.RKLayout] of ``tableau`` in ``variable``."""
    return RKLayout(tableau, variable)


def rk_coefficients(layout: RKLayout, ts: torch.Tensor, base) -> dict:
    """float64 per-step coefficients of ``layout`` on the grid ``ts`` (``base``: the grid's ``GridTable``; its
    ``at_lambda`` gives the interior stage points), as typed columns (``s`` = number of stages):

    * ``rk_ratio``: ``s`` multipliers of ``x`` (a [`vector_column`][sde_diffusion.solvers.base.vector_column]
      of host scalars), one per combination row (see [`RKLayout`][sde_diffusion.solvers.tableaux.RKLayout]);
    * ``rk_we``: the weights of the stage outputs, ``rk_we[r*s + j]`` the weight of ``e_j`` in combination ``r``
      (an ``s x s`` matrix stored row-major as a vector: the step reads it through one flat pool, and flattening
      nested tuples would cost it a call per step; zero where the tableau is);
    * ``rk_wx`` (``variable="t"`` only): the weights of the stage inputs ``x_j``, stored alike (``j = 0`` is zero:
      ``x_0``'s weight is ``rk_ratio``);
    * ``rk_t_stage``, ``rk_alpha_stage``, ``rk_sigma_stage`` (tableaux with stages inside the step only): the ``s``
      stage points (at ``c_i = 0`` and ``c_i = 1`` the step's start and end values).
    """
    tab = layout.tableau
    s = tab.stages
    t, dt = ts[:-1], ts[1:] - ts[:-1]
    alpha, sigma, h = base["alpha"], base["sigma"], base["h"]
    # stage points: (t, alpha, sigma) for every stage
    pts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for i, p in enumerate(layout.points):
        if p == START:
            pts.append((t, alpha, sigma))
        elif p == END:
            pts.append((ts[1:], base["alpha_next"], base["sigma_next"]))
        else:
            # sigma_ve(t) (1 + c_i (e^{-h} - 1)), without cancellation
            t_i, a_i, s_i = base.at_lambda(base["lam"] - torch.log1p(tab.c[i] * torch.expm1(-h)))
            pts.append((t_i, a_i, s_i))
    ratio = torch.zeros(h.shape + (s,), dtype=torch.float64)
    we = torch.zeros(h.shape + (s, s), dtype=torch.float64)
    wx = torch.zeros_like(we)
    if layout.variable == "sigma":
        # alpha_i d from the consistent DDIM(0) increment of the sub-step to c_i (alpha_i c_i d = sigma_i - r_i sigma)
        def alpha_d(i):
            ci = tab.c[i] if i < s else 1.0
            if ci == 0.0:  # (a stage at the start point with non-zero increments)
                return alpha * alpha_d(s) / base["alpha_next"]
            if ci == 1.0:
                a_i, s_i, h_i = base["alpha_next"], base["sigma_next"], h
            else:
                _, a_i, s_i = pts[i]
                h_i = torch.log(a_i / s_i) - base["lam"]
            incr = long_step_consistent((-s_i * torch.expm1(h_i))[..., None], h_i, a_i / alpha, sigma, s_i)[..., 0]
            return incr / ci

        for r, row in enumerate(layout.rows):
            a_end = pts[r + 1][1] if r + 1 < s else base["alpha_next"]
            ratio[..., r] = a_end / alpha
            ad = alpha_d(r + 1)
            for j, _ in layout.terms[r]:
                we[..., r, j] = ad * row[j]
    else:
        # (every stage is at a grid point: RKLayout refuses interior stages in t)
        f = [base.f_grid[:-1] if p == START else base.f_grid[1:] for p in layout.points]
        k = [0.5 * (base.g2_grid[:-1] if p == START else base.g2_grid[1:]) / pt[2] for p, pt in zip(layout.points, pts)]
        for r, row in enumerate(layout.rows):
            ratio[..., r] = 1.0 + dt * row[0] * f[0]
            for j, from_x in layout.terms[r]:
                (wx if from_x else we)[..., r, j] = dt * row[j] * (f[j] if from_x else k[j])
    flat = h.shape + (s * s,)
    out = {"rk_ratio": vector_column(ratio, scalars=True), "rk_we": vector_column(we.reshape(flat))}
    if layout.variable == "t":
        out["rk_wx"] = vector_column(wx.reshape(flat))
    if layout.interior:
        for m, name in enumerate(("rk_t_stage", "rk_alpha_stage", "rk_sigma_stage")):
            out[name] = vector_column(torch.stack([pt[m] for pt in pts], dim=-1))
    return out


def rk_step(model, x: torch.Tensor, c, layout: RKLayout, first: torch.Tensor | None = None, upto: int | None = None):
    """One explicit RK step of the PF-ODE from ``x`` (coefficients ``c`` from
    [`rk_coefficients`][sde_diffusion.solvers.tableaux.rk_coefficients]): stage by stage, one ``lincomb`` per
    combination over the layout's non-zero terms only, one model evaluation per stage.

    ``first``: the noise prediction at ``x`` if already known (saves that evaluation). ``upto``: return the input of
    stage ``upto`` without evaluating it (Heun's last step: ``upto=1`` is its Euler predictor). Returns ``x_next``.
    """
    # stage 0 is at the start point (c_0 = 0 in an explicit tableau)
    e = model.predict(x, c.t, "eps", c.alpha, c.sigma) if first is None else first
    if layout.single:  # one stage (Euler): the result is the one combination rk_ratio[0] x + rk_we[0] e_0
        return lincomb(c.rk_ratio[0], x, c.rk_we[0], e)
    # the pool the layout's picks read (see RKLayout): coefficients, x, then each stage's input and output
    if layout.with_wx:
        pool = [*c.rk_ratio, *c.rk_we, *c.rk_wx, x, e]
    else:
        pool = [*c.rk_ratio, *c.rk_we, x, e]
    stages, result = layout.traced if is_dynamo_compiling() else layout.eager
    for i, pick, point in stages:
        xi = lincomb(*pick(pool))
        if upto == i:
            return xi
        if point == END:
            e = model.predict(xi, c.t_next, "eps", c.alpha_next, c.sigma_next)
        elif point == INTERIOR:
            e = model.predict(xi, time_like(c.t, c.rk_t_stage[i]), "eps", c.rk_alpha_stage[i], c.rk_sigma_stage[i])
        else:
            e = model.predict(xi, c.t, "eps", c.alpha, c.sigma)
        pool += (xi, e)
    return lincomb(*result(pool))
