r"""Step-size controllers: what the one loop ([`sample`][sde_diffusion.sample.sample]) consults to choose steps.

A controller holds only its knobs; the per-run state lives in the object its ``start`` returns. The loop of an
adaptive controller is, for every attempt::

    lam_target, land = controller.propose(st)           # host floats; land: go exactly to t_end
    ... one solver step to t(lam_target) (or t_end) -> EmbeddedStep(x_new, state, error, error_order, retry)
    e = float(controller.error_norm(st, error, x, x_new))   # the one host/device synchronisation of the attempt
    accepted = controller.update(st, e, error_order, lam_new, abs(t_new - t_end))
    ... until controller.finished(st)

* [`FixedGrid`][sde_diffusion.solvers.controllers.FixedGrid] -- the default: the grid is fixed before the loop; no host
  decision per step, no synchronisation (the loop never calls it).
* [`PIController`][sde_diffusion.solvers.controllers.PIController] -- the PI rule (Gustafsson 1991; Hairer & Wanner,
  *Solving ODEs II*, IV.2) on the scaled error
  \(E = \max_b \operatorname{rms}\big(\mathrm{err} / (\mathrm{atol} + \mathrm{rtol} \max(|x_n|, |x_{n+1}|))\big)\):
  accept when \(E \le 1\) and set
  \(h_{\rm new} = h \operatorname{clip}(s E_n^{-b_1/p} E_{n-1}^{b_2/p}, f_{\min}, f_{\max})\) (\(p\) the order of the
  estimate, \(f_{\max} = 1\) right after a rejection); a rejected step retries with
  \(h \min(0.9, \max(f_{\min}, s E^{-1/p}))\) (at least a 10% cut, so retries cannot stall). The last step is
  shortened to land on \(t_{\rm end}\), or stretched when it would leave a sliver under 10% of \(h\).
* [`DPMSolverStepRule`][sde_diffusion.solvers.controllers.DPMSolverStepRule] -- Algorithm 4 of DPM-Solver (Lu et al.
  2022, arXiv:2206.00927): with \(x_{\rm low}\) the lower-order solution,
  \(E = \max_b \operatorname{rms}\big((x_{\rm high} - x_{\rm low})/\delta\big)\),
  \(\delta = \max(\mathrm{atol}, \mathrm{rtol} \max(|x_{\rm low}|, |x_{\rm prev}|))\) (\(x_{\rm prev}\) the lower-order
  solution of the last accepted step, initially \(x_T\)); accept when \(E \le 1\) and in any case
  \(h \leftarrow \min(\theta h E^{-1/k}, \lambda_{\rm end} - \lambda_s)\); stop when
  \(|s - t_{\rm end}| \le t_{\rm err}\).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

__all__ = [
    "Controller",
    "FixedGrid",
    "PIController",
    "DPMSolverStepRule",
    "pi_factor",
    "check_tolerances",
    "forwards_options_of",
]

_Init = TypeVar("_Init", bound=Callable)


def check_tolerances(rtol, atol, *, allow_zero: bool = True) -> tuple[float, float]:
    """``(rtol, atol)`` as floats: finite, non-negative (positive unless ``allow_zero``), not both zero."""
    out = []
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
        if v == 0 and not allow_zero:
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")
        out.append(float(v))
    if out[0] == 0 and out[1] == 0:
        raise ValueError("rtol and atol cannot both be zero")
    return out[0], out[1]


def forwards_options_of(controller: type) -> Callable[[_Init], _Init]:
    """Decorator for a solver's ``__init__(self, <own options>, **controller_options)`` that builds its default
    controller as ``controller(**controller_options)`` (which validates them), so the options keep one home: the
    controller's ``__init__``. The decorator gives that ``__init__`` the signature ``inspect.signature`` reports
    (option listings of studies, the CLI and the diffusers adapter): the solver's own parameters followed by the
    controller's, keyword-only, with their defaults."""

    def deco(init: _Init) -> _Init:
        own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_KEYWORD]
        ctrl = inspect.signature(controller).parameters.values()
        init.__signature__ = inspect.Signature(own + [p.replace(kind=p.KEYWORD_ONLY) for p in ctrl])  # type: ignore[attr-defined]
        return init

    return deco


def _positive(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    return float(v)


def _max_steps(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"max_steps must be a positive int, got {v!r}")
    return v


def pi_factor(
    err: float, err_prev: float, p: float, *, safety: float, b1: float, b2: float, fac_min: float, fac_max: float
) -> float:
    r"""Step-size factor of the PI controller, \(s\, E_n^{-b_1/p} E_{n-1}^{b_2/p}\) (\(s\) = ``safety``) clipped to
    ``[fac_min, fac_max]``."""
    err = max(err, 1e-10)
    err_prev = max(err_prev, 1e-10)
    return min(fac_max, max(fac_min, safety * err ** (-b1 / p) * err_prev ** (b2 / p)))


class Controller:
    """Base class. ``adaptive = False`` means the grid is fixed before the loop (the loop never consults it)."""

    adaptive: bool = True
    #: attempts (accepted + rejected) before the loop gives up with ``RuntimeError``
    max_steps: int = 10_000
    #: the error a non-finite estimate counts as when ``check_finite=False``
    nonfinite_error: float = math.inf

    def start(self, lam_start: float, lam_end: float, x: torch.Tensor, t_gap: float):
        raise NotImplementedError

    def propose(self, st) -> tuple[float, bool]:
        raise NotImplementedError

    def error_norm(self, st, error: torch.Tensor, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, st, e: float, error_order: float, lam_new: float, t_gap: float) -> bool:
        raise NotImplementedError

    def finished(self, st) -> bool:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


class FixedGrid(Controller):
    """The grid given by ``steps``/``grid`` (or the solver's own); no decision inside the loop."""

    adaptive = False


# ---------------------------------------------------------------------------------------------------------------------
# PI control
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _PIState:
    lam: float
    lam_end: float
    h: float
    err_prev: float = 1.0
    fac_max: float = 2.0
    land: bool = False
    done: bool = False


class PIController(Controller):
    r"""PI step-size control in lambda (module docstring).

    Args:
        rtol: relative tolerance of the scaled local error.
        atol: absolute tolerance of the scaled local error.
        h_init: first step in lambda (default \(\min(\Lambda/10, \sqrt{\max(\mathrm{rtol}, \mathrm{atol})}/2)\),
            \(\Lambda\) the whole range in lambda).
        safety: safety factor \(s\).
        fac_min: smallest step-size factor.
        fac_max: largest step-size factor (also bounds the ratio of consecutive steps).
        b1: PI exponent on the current error (\(E_n^{-b_1/p}\)).
        b2: PI exponent on the previous error (\(E_{n-1}^{b_2/p}\)).
        max_steps: attempts before giving up.
    """

    nonfinite_error = 1.0

    def __init__(
        self,
        rtol: float = 1e-4,
        atol: float = 1e-4,
        h_init: float | None = None,
        safety: float = 0.9,
        fac_min: float = 0.2,
        fac_max: float = 2.0,
        b1: float = 0.7,
        b2: float = 0.4,
        max_steps: int = 100_000,
    ):
        self.rtol, self.atol = check_tolerances(rtol, atol)
        if h_init is not None:
            h_init = _positive("h_init", h_init)
        if not (0 < safety <= 1 and 0 < fac_min < 1 < fac_max):
            raise ValueError("need 0 < safety <= 1 and 0 < fac_min < 1 < fac_max")
        self.h_init = h_init
        self.safety, self.fac_min, self.fac_max, self.b1, self.b2 = safety, fac_min, fac_max, b1, b2
        self.max_steps = _max_steps(max_steps)

    def options(self):
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "h_init": self.h_init,
            "safety": self.safety,
            "fac_min": self.fac_min,
            "fac_max": self.fac_max,
            "b1": self.b1,
            "b2": self.b2,
        }

    def start(self, lam_start, lam_end, x, t_gap):
        span = lam_end - lam_start
        h = self.h_init if self.h_init is not None else min(span / 10, 0.5 * math.sqrt(max(self.rtol, self.atol)))
        return _PIState(lam=lam_start, lam_end=lam_end, h=h, fac_max=self.fac_max)

    def propose(self, st):
        st.land = st.lam_end - st.lam - st.h < 0.1 * st.h  # land on t_end; never leave a sliver under 10% of h
        return st.lam + st.h, st.land

    def error_norm(self, st, error, x, x_new):
        """``max_b rms(err / (atol + rtol max(|x|, |x_new|)))`` as a device scalar."""
        scale = torch.maximum(x.abs(), x_new.abs()).mul_(self.rtol).add_(self.atol)
        r = (error / scale).reshape(x.shape[0], -1)
        return r.square().mean(dim=1).sqrt().max()

    def update(self, st, e, error_order, lam_new, t_gap):
        h_act = lam_new - st.lam
        if e <= 1.0:
            factor = pi_factor(
                e,
                st.err_prev,
                error_order,
                safety=self.safety,
                b1=self.b1,
                b2=self.b2,
                fac_min=self.fac_min,
                fac_max=st.fac_max,
            )
            st.err_prev, st.fac_max = e, self.fac_max
            st.h, st.lam, st.done = h_act * factor, lam_new, st.land
            return True
        st.h = h_act * min(0.9, max(self.fac_min, self.safety * e ** (-1.0 / error_order)))
        st.fac_max = 1.0
        return False

    def finished(self, st):
        return st.done


# ---------------------------------------------------------------------------------------------------------------------
# DPM-Solver-12/23 rule
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _DPMState:
    lam: float
    lam_end: float
    h: float
    x_prev: torch.Tensor
    x_low: torch.Tensor | None = None
    t_gap: float = field(default=math.inf)


class DPMSolverStepRule(Controller):
    r"""The step rule of adaptive DPM-Solver-12/23 (arXiv:2206.00927, Algorithm 4; module docstring).

    Args:
        rtol: relative tolerance (0.05).
        atol: absolute tolerance (0.0078, the paper's value for data in \([-1, 1]\)).
        theta: safety factor (0.9).
        t_err: stop within this time of ``t_end`` (1e-5).
        h_init: first trial step in lambda (0.05).
        max_steps: attempts before giving up.
    """

    def __init__(
        self,
        rtol: float = 0.05,
        atol: float = 0.0078,
        theta: float = 0.9,
        t_err: float = 1e-5,
        h_init: float = 0.05,
        max_steps: int = 10_000,
    ):
        self.rtol, self.atol = _positive("rtol", rtol), _positive("atol", atol)
        self.theta, self.t_err, self.h_init = (
            _positive("theta", theta),
            _positive("t_err", t_err),
            _positive("h_init", h_init),
        )
        self.max_steps = _max_steps(max_steps)

    def options(self):
        return {
            "rtol": self.rtol,
            "atol": self.atol,
            "theta": self.theta,
            "t_err": self.t_err,
            "h_init": self.h_init,
            "max_steps": self.max_steps,
        }

    def start(self, lam_start, lam_end, x, t_gap):
        return _DPMState(lam=lam_start, lam_end=lam_end, h=self.h_init, x_prev=x, t_gap=t_gap)

    def propose(self, st):
        return st.lam + st.h, st.lam + st.h >= st.lam_end

    def error_norm(self, st, error, x, x_new):
        st.x_low = x_new - error
        delta = torch.clamp(self.rtol * torch.maximum(st.x_low.abs(), st.x_prev.abs()), min=self.atol)
        v = (error / delta).reshape(error.shape[0], -1)
        return torch.sqrt(torch.mean(v.double() ** 2, dim=-1)).max()

    def update(self, st, e, error_order, lam_new, t_gap):
        accepted = e <= 1.0
        if accepted:
            st.lam, st.x_prev, st.t_gap = lam_new, st.x_low, t_gap
        st.x_low = None
        st.h = min(self.theta * st.h * max(e, 1e-12) ** (-1.0 / error_order), st.lam_end - st.lam)
        return accepted

    def finished(self, st):
        return st.t_gap <= self.t_err
