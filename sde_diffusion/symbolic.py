r"""Symbolic (sympy) derivations used to check the numeric code.

* [`schedule_formulas`][sde_diffusion.symbolic.schedule_formulas] derives \(\log\alpha\), \(\log\sigma\),
  \(f = \mathrm{d}\log\alpha/\mathrm{d}t\),
  \(g^2 = \mathrm{d}\sigma^2/\mathrm{d}t - 2 f \sigma^2\), \(\lambda\) and ``inverse_lambda`` of the closed-form
  schedules from their definitions alone (\(\alpha\) and \(\sigma\) as functions of \(t\)), independently of
  [`sde_diffusion.schedules`][sde_diffusion.schedules].
* [`lagrange_exp_weights`][sde_diffusion.symbolic.lagrange_exp_weights] and
  [`phi_symbolic`][sde_diffusion.symbolic.phi_symbolic] give the exact integrals behind the exponential
  integrators (see [`sde_diffusion.solvers.expint`][sde_diffusion.solvers.expint]).
* [`deis_tab_weights`][sde_diffusion.symbolic.deis_tab_weights] gives DEIS-tAB's weights (Lagrange in \(t\)) from their
  defining integral.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import sympy as sp

__all__ = ["ScheduleFormulas", "schedule_formulas", "lagrange_exp_weights", "phi_symbolic", "deis_tab_weights"]

t, lam = sp.symbols("t lambda", real=True)


@dataclass
class ScheduleFormulas:
    """Symbolic expressions in ``t`` (and ``lambda`` for the inverse) with their numeric (mpmath) lambdas."""

    log_alpha: sp.Expr
    log_sigma: sp.Expr
    f: sp.Expr
    g2: sp.Expr
    lambda_: sp.Expr
    inverse_lambda: sp.Expr

    def numeric(self) -> dict[str, Callable[[float], float]]:
        out = {}
        for name in ("log_alpha", "log_sigma", "f", "g2", "lambda_"):
            out[name] = sp.lambdify(t, getattr(self, name), "mpmath")
        out["inverse_lambda"] = sp.lambdify(lam, self.inverse_lambda, "mpmath")
        return out


def _derive(alpha: sp.Expr, sigma: sp.Expr, inverse: sp.Expr) -> ScheduleFormulas:
    log_alpha = sp.log(alpha)
    log_sigma = sp.log(sigma)
    f = sp.diff(log_alpha, t)
    g2 = sp.diff(sigma**2, t) - 2 * f * sigma**2
    lambda_ = log_alpha - log_sigma
    return ScheduleFormulas(log_alpha, log_sigma, f, g2, lambda_, inverse)


def schedule_formulas(name: str, **params: float) -> ScheduleFormulas:
    """Symbolic formulas for ``vp_linear``, ``vp_cosine``, ``subvp_linear``, ``ve_geometric`` or ``edm``.

    ``inverse_lambda`` is obtained by solving ``lambda(t) = lambda`` for ``t`` with sympy (the root inside the
    domain is picked by evaluating it), not copied from the numeric code.
    """
    p = {k: sp.nsimplify(v) for k, v in params.items()}
    if name in ("vp_linear", "subvp_linear"):
        b0, b1 = p.get("beta_min", sp.Rational(1, 10)), p.get("beta_max", 20)
        alpha = sp.exp(-(b1 - b0) * t**2 / 4 - b0 * t / 2)
        sigma = sp.sqrt(1 - alpha**2) if name == "vp_linear" else 1 - alpha**2
        # solve in u = alpha first (VP: alpha^2 = sigmoid(2 lam); sub-VP: alpha/(1-alpha^2) = e^lam), then in t.
        u = sp.symbols("u", positive=True)
        eq = u / sp.sqrt(1 - u**2) - sp.exp(lam) if name == "vp_linear" else u / (1 - u**2) - sp.exp(lam)
        u_roots = [r for r in sp.solve(eq, u) if _positive_at(r)]
        t_roots = sp.solve(sp.Eq(sp.log(alpha), sp.log(u_roots[0])), t)
        inverse = _pick_positive(t_roots)
    elif name == "vp_cosine":
        s = p.get("s", sp.Rational(8, 1000))
        alpha = sp.cos(sp.pi / 2 * (t + s) / (1 + s)) / sp.cos(sp.pi / 2 * s / (1 + s))
        sigma = sp.sqrt(1 - alpha**2)
        u = sp.symbols("u", positive=True)
        u_root = [r for r in sp.solve(u / sp.sqrt(1 - u**2) - sp.exp(lam), u) if _positive_at(r)][0]
        inverse = 2 * (1 + s) / sp.pi * sp.acos(u_root * sp.cos(sp.pi / 2 * s / (1 + s))) - s
    elif name == "ve_geometric":
        smin, smax = p.get("sigma_min", sp.Rational(1, 100)), p.get("sigma_max", 50)
        alpha = sp.Integer(1)
        sigma = smin * (smax / smin) ** t
        inverse = sp.solve(sp.Eq(-sp.log(sigma), lam), t)[0]
    elif name == "edm":
        alpha = sp.Integer(1)
        sigma = t
        inverse = sp.solve(sp.Eq(-sp.log(sigma), lam), t)[0]
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return _derive(alpha, sigma, sp.simplify(inverse))


def _positive_at(expr: sp.Expr) -> bool:
    v = complex(expr.subs(lam, sp.Rational(1, 3)).evalf())
    return abs(v.imag) < 1e-12 and 0 < v.real < 1


def _pick_positive(roots) -> sp.Expr:
    for r in roots:
        v = complex(r.subs(lam, sp.Rational(1, 3)).evalf())
        if abs(v.imag) < 1e-12 and v.real > 0:
            return r
    raise RuntimeError("no positive root")


# ---------------------------------------------------------------------------------------------------------------------
# Exponential-integrator weights
# ---------------------------------------------------------------------------------------------------------------------


def phi_symbolic(k: int, h: sp.Expr) -> sp.Expr:
    r"""\(\varphi_k(h) = \int_0^1 e^{(1-s) h} \frac{s^{k-1}}{(k-1)!}\, \mathrm{d}s\) exactly (\(\varphi_0 = e^h\))."""
    s = sp.symbols("s", real=True)
    if k == 0:
        return sp.exp(h)
    return sp.integrate(sp.exp((1 - s) * h) * s ** (k - 1) / sp.factorial(k - 1), (s, 0, 1))


def _lagrange_basis(x: sp.Expr, nodes: list, j: int) -> sp.Expr:
    r"""The Lagrange basis polynomial \(L_j(x) = \prod_{m \ne j} (x - x_m)/(x_j - x_m)\) through ``nodes``."""
    basis = sp.Integer(1)
    for m, nm in enumerate(nodes):
        if m != j:
            basis *= (x - nm) / (nodes[j] - nm)
    return basis


def lagrange_exp_weights(ratios: list, h: sp.Expr, sign: int = 1) -> list[sp.Expr]:
    r"""Exact \(W_j = \int_0^h e^{\pm (h - u)} L_j(u)\, \mathrm{d}u\) (sign \(\pm\) = ``sign``) with \(L_j\) the
    Lagrange basis through \(u_m = r_m h\).

    The symbolic counterpart of
    [`sde_diffusion.solvers.expint.lagrange_weights`][sde_diffusion.solvers.expint.lagrange_weights] (``sign = +1`` for
    noise
    prediction, ``-1`` for data prediction).
    """
    u = sp.symbols("u", real=True)
    nodes = [sp.nsimplify(r) * h for r in ratios]
    weights = []
    for j in range(len(nodes)):
        basis = _lagrange_basis(u, nodes, j)
        weights.append(sp.integrate(sp.exp(sign * (h - u)) * sp.expand(basis), (u, 0, h)))
    return weights


def deis_tab_weights(
    formulas: ScheduleFormulas, t_from, t_to, nodes: list, *, closed_form: bool = False, digits: int = 30
) -> list[sp.Expr]:
    r"""DEIS-tAB weights from their definition (Zhang & Chen 2022, arXiv:2204.13902, eq. for ``C_ij``):

    \[C_j = \int_{t_{\rm from}}^{t_{\rm to}} \frac{\alpha(t_{\rm to})}{\alpha(\tau)} \frac{g^2(\tau)}{2 \sigma(\tau)}
    L_j(\tau)\, \mathrm{d}\tau,\]

    with \(L_j\) the Lagrange basis **in t** through ``nodes`` and \(\alpha\), \(\sigma\), \(g^2\) taken from
    ``formulas`` ([`schedule_formulas`][sde_diffusion.symbolic.schedule_formulas]). Times are converted exactly
    (``sp.Rational`` of the binary float).

    ``closed_form=True`` asks ``sp.integrate`` for an antiderivative (polynomial or exponential kernels: ``edm``,
    ``ve_geometric``); otherwise the integral is evaluated numerically to ``digits`` digits
    (``mpmath.quad`` of the lambdified sympy integrand), which is what schedules without a closed form
    (``vp_linear``, ``vp_cosine``) need.
    """
    tau = t
    a, b = sp.Rational(t_from), sp.Rational(t_to)
    pts = [sp.Rational(v) for v in nodes]
    kernel = sp.exp(formulas.log_alpha.subs(t, b) - formulas.log_alpha) * formulas.g2 / (2 * sp.exp(formulas.log_sigma))
    out = []
    for j in range(len(pts)):
        basis = _lagrange_basis(tau, pts, j)
        if closed_form:
            out.append(sp.integrate(sp.expand(kernel * basis), (tau, a, b)))
        else:
            f = sp.lambdify(tau, kernel * basis, "mpmath")
            with mpmath.workdps(digits):
                out.append(sp.Float(mpmath.quad(f, [mpmath.mpf(a.p) / a.q, mpmath.mpf(b.p) / b.q]), digits))
    return out
