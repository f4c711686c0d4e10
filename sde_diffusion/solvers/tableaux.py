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
computed once per grid ([`rk_coefficients`][sde_diffusion.solvers.tableaux.rk_coefficients]); the step
([`rk_step`][sde_diffusion.solvers.tableaux.rk_step]) is one fused ``lincomb`` per
stage. Zero tableau entries cost nothing. NFE per step = number of stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from .._ops import lincomb, time_like
from .base import host_scalars
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


class RKLayout:
    """The RK step of one tableau in one variable, with the coefficient keys it reads (``prefix`` lets a solver hold
    several methods' coefficients). Built once per solver.

    ``combos[i]`` (``i = 1..s``; ``s`` is the final update) is ``(ratio_key, ((key, "x" | "e", j), ...))``: the
    input of stage ``i`` is ``c[ratio_key] x + sum c[key] * (x_j if "x" else eps_j)`` (``x_0 = x``).
    ``points[i]`` is ``"start"``, ``"end"`` or ``(t_key, alpha_key, sigma_key)`` for an interior stage point.

    From these, ``source`` is the step written out as straight-line Python (one ``lincomb`` per stage, zero tableau
    entries dropped), compiled once: a tableau then costs what a hand-written step costs in the loop (no per-step
    interpretation of the tableau, which on small states costs about a tenth of a step).
    """

    def __init__(self, tableau: ButcherTableau, variable: str, prefix: str = "rk_"):
        if variable not in ("t", "sigma"):
            raise ValueError(f"variable must be 't' or 'sigma', got {variable!r}")
        if variable == "t" and any(ci not in (0.0, 1.0) for ci in tableau.c):
            raise ValueError("in variable 't' only tableaux whose stages are at the step's ends are supported")
        self.tableau, self.variable, self.prefix = tableau, variable, prefix
        rows = list(tableau.A[1:]) + [tableau.b]
        # combos[0] is a placeholder: stage 0 is the start point, no combination
        self.combos: list[tuple[str, tuple[tuple[str, str, int], ...]]] = [("", ())]
        for i, row in enumerate(rows, start=1):
            name = "b" if i == tableau.stages else str(i)
            terms = []
            for j, a in enumerate(row):
                if a == 0.0:
                    continue
                if variable == "t" and j > 0:
                    terms.append((f"{prefix}{name}_x{j}", "x", j))
                terms.append((f"{prefix}{name}_e{j}", "e", j))
            self.combos.append((f"{prefix}ratio_{name}", tuple(terms)))
        self.points = [
            "start"
            if ci == 0.0
            else "end"
            if ci == 1.0
            else (f"{prefix}t{i}", f"{prefix}alpha{i}", f"{prefix}sigma{i}")
            for i, ci in enumerate(tableau.c)
        ]
        self.source = self._source()
        self.step = _compile_step(self.source)

    def _source(self) -> str:
        """The step as Python source: ``rk_step(model, x, c, first, upto) -> x_next``."""

        def combination(i):
            ratio_key, terms = self.combos[i]
            args = [f"c.{ratio_key}", "x"]
            for key, src, j in terms:
                args += [f"c.{key}", f"x{j}" if src == "x" else f"e{j}"]
            return f"lincomb({', '.join(args)})"

        where = {"start": "c.t, 'eps', c.alpha, c.sigma", "end": "c.t_next, 'eps', c.alpha_next, c.sigma_next"}
        lines = ["def rk_step(model, x, c, first, upto):"]
        for i, point in enumerate(self.points):
            xi = "x" if i == 0 else f"x{i}"
            if i > 0:
                lines += [f"    {xi} = {combination(i)}", f"    if upto == {i}:", f"        return {xi}"]
            args = where[point] if isinstance(point, str) else "time_like(c.t, c.{}), 'eps', c.{}, c.{}".format(*point)
            call = f"model.predict({xi}, {args})"
            lines.append(f"    e{i} = {call} if first is None else first" if i == 0 else f"    e{i} = {call}")
        lines.append(f"    return {combination(self.tableau.stages)}")
        return "\n".join(lines) + "\n"


@cache
def _compile_step(source: str):
    """The function defined by ``source`` (compiled once per distinct step: solvers are built per call)."""
    namespace = {"lincomb": lincomb, "time_like": time_like}
    exec(compile(source, "<rk step>", "exec"), namespace)
    return namespace["rk_step"]


@cache
def rk_layout(tableau: ButcherTableau, variable: str, prefix: str = "rk_") -> RKLayout:
    """The (cached) [`RKLayout`][sde_diffusion.solvers.tableaux.RKLayout] of ``tableau`` in ``variable``."""
    return RKLayout(tableau, variable, prefix)


def rk_coefficients(layout: RKLayout, ts: torch.Tensor, base) -> dict:
    """float64 per-step coefficients of ``layout`` on the grid ``ts`` (``base``: the grid's ``GridTable``; its
    ``at_lambda`` gives the interior stage points)."""
    tab = layout.tableau
    s = tab.stages
    t, dt = ts[:-1], ts[1:] - ts[:-1]
    alpha, sigma, h = base["alpha"], base["sigma"], base["h"]
    # stage points: (t, alpha, sigma) for every stage
    pts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    out: dict = {}
    for i, p in enumerate(layout.points):
        if p == "start":
            pts.append((t, alpha, sigma))
        elif p == "end":
            pts.append((ts[1:], base["alpha_next"], base["sigma_next"]))
        else:
            # sigma_ve(t) (1 + c_i (e^{-h} - 1)), without cancellation
            t_i, a_i, s_i = base.at_lambda(base["lam"] - torch.log1p(tab.c[i] * torch.expm1(-h)))
            pts.append((t_i, a_i, s_i))
            out.update(dict(zip(p, (t_i, a_i, s_i))))
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
            ratio = a_i / alpha
            incr = long_step_consistent((-s_i * torch.expm1(h_i))[..., None], h_i, ratio, sigma, s_i)[..., 0]
            return incr / ci

        for i in range(1, s + 1):
            ratio_key, terms = layout.combos[i]
            a_end = pts[i][1] if i < s else base["alpha_next"]
            out[ratio_key] = host_scalars(a_end / alpha)
            ad = alpha_d(i)
            row = tab.A[i] if i < s else tab.b
            for key, _, j in terms:
                out[key] = ad * row[j]
    else:
        # (every stage is at a grid point: RKLayout refuses interior stages in t)
        f = [base.f_grid[:-1] if p == "start" else base.f_grid[1:] for p in layout.points]
        k = [
            0.5 * (base.g2_grid[:-1] if p == "start" else base.g2_grid[1:]) / pt[2] for p, pt in zip(layout.points, pts)
        ]
        for i in range(1, s + 1):
            ratio_key, terms = layout.combos[i]
            row = tab.A[i] if i < s else tab.b
            out[ratio_key] = host_scalars(1.0 + dt * row[0] * f[0])
            for key, src, j in terms:
                out[key] = dt * row[j] * (f[j] if src == "x" else k[j])
    return out


def rk_step(model, x: torch.Tensor, c, layout: RKLayout, first: torch.Tensor | None = None, upto: int | None = None):
    """One explicit RK step of the PF-ODE from ``x`` (coefficients ``c`` from
    [`rk_coefficients`][sde_diffusion.solvers.tableaux.rk_coefficients]).

    ``first``: the noise prediction at ``x`` if already known (saves that evaluation). ``upto``: return the input of
    stage ``upto`` without evaluating it (Heun's last step: ``upto=1`` is its Euler predictor). Returns ``x_next``.
    """
    return layout.step(model, x, c, first, upto)
