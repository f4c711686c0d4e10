r"""Noise schedules: the marginal coefficients of the forward process.

Every schedule describes \(x_t = \alpha(t)\, x_0 + \sigma(t)\, \epsilon\) on a time domain ``[t_min, t_max]`` and
provides

* ``alpha``, ``sigma``, ``log_alpha``, ``log_sigma``;
* ``lambda_(t)``, \(\lambda(t) = \log(\alpha/\sigma)\) -- the **half** log-SNR (\(\log \mathrm{SNR} = 2\lambda\)),
  strictly decreasing in \(t\);
* ``inverse_lambda`` -- its inverse (closed form where one exists, exact piecewise inverse for
  [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete]);
* ``sigma_ve``, \(\sigma/\alpha = e^{-\lambda}\) -- the variance-exploding noise level (k-diffusion / EDM "sigma");
* ``f``, \(f(t) = \mathrm{d}\log\alpha/\mathrm{d}t\), and ``g2``,
  \(g^2(t) = \mathrm{d}\sigma^2/\mathrm{d}t - 2 f \sigma^2\) -- the coefficients of the linear forward SDE
  \(\mathrm{d}x = f x\,\mathrm{d}t + g\,\mathrm{d}W\) whose marginals are the ones above.

Inputs may be Python numbers (computed in float64) or tensors of any shape; tensors keep their dtype and device.

**Checked and unchecked.** The public methods above validate that ``t`` lies where the formulas hold (a check that
reads the tensor, which on a GPU would synchronise the device). Each has an *unchecked* twin that skips the check --
the protocol a schedule implements and what coefficient tables, analytic models and the SDE drift call:

==========================  =====================================================================================
``log_alpha_unchecked(t)``  ``log alpha(t)`` -- **implement**
``log_sigma_unchecked(t)``  ``log sigma(t)`` -- **implement** (given by
[`VPSchedule`][sde_diffusion.schedules.VPSchedule] for VP schedules)
``f_unchecked(t)``          ``d log alpha / dt`` -- **implement**
``dlog_sigma_unchecked(t)`` ``d log sigma / dt`` -- **implement** unless ``g2_unchecked`` is overridden
``inverse_lambda_unchecked`` the ``t`` of a half log-SNR -- **implement** (VP: ``log_alpha_to_t_unchecked`` instead)
``g2_unchecked(t)``         ``g^2(t)``; default ``2 sigma^2 (d log sigma/dt - f)``, override with a closed form
``lambda_unchecked(t)``     derived: ``log_alpha - log_sigma``
``alpha_sigma_unchecked(t)`` derived: ``(alpha, sigma)``
==========================  =====================================================================================

``check_t(t, name)`` and ``check_lambda(lam)`` are the validators the checked methods use. The pre-0.2 underscored
names (``_log_alpha``, ``_inverse_lambda``, ...) remain as aliases, both for callers and for subclasses that
implement them, but no module outside this one uses them (``tests/test_schedule_boundary.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = [
    "NoiseSchedule",
    "VPSchedule",
    "VPLinear",
    "VPCosine",
    "VPDiscrete",
    "SubVPLinear",
    "VEGeometric",
    "EDM",
    "betas_from_config",
]

Tensorish = torch.Tensor | float | int


def as_tensor(t: Tensorish) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def _positive_finite(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {kind} number, got {value!r}")
    return value


def _vp_log_alpha_from_lambda(lam: torch.Tensor) -> torch.Tensor:
    """For VP schedules ``alpha^2 = sigmoid(2 lambda)``, so ``log alpha = -softplus(-2 lambda)/2``."""
    return -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)  # (softplus' threshold would cut at 20)


class NoiseSchedule:
    r"""Abstract noise schedule. Subclasses implement ``log_alpha_unchecked``, ``log_sigma_unchecked``,
    ``f_unchecked``, ``dlog_sigma_unchecked`` and ``inverse_lambda_unchecked`` (and may override ``g2_unchecked``
    with a closed form); see the module docstring for the protocol.

    Attributes:
        t_min, t_max: the sampling domain; sampling runs from ``t_max`` down to ``t_min``.
        is_vp: whether \(\alpha^2 + \sigma^2 = 1\).
    """

    t_min: float
    t_max: float
    is_vp: bool = False
    #: open/closed interval where the formulas are defined, ``(lo, hi)``; checked by the public methods.
    domain: tuple[float, float] = (-math.inf, math.inf)

    # ---- to implement -------------------------------------------------------------------------------------------
    def log_alpha_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_sigma_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dlog_sigma_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse_lambda_unchecked(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g2_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        # d sigma^2/dt - 2 f sigma^2 = 2 sigma^2 (d log sigma/dt - f)
        return 2.0 * torch.exp(2.0 * self.log_sigma_unchecked(t)) * (self.dlog_sigma_unchecked(t) - self.f_unchecked(t))

    # ---- derived, unchecked -------------------------------------------------------------------------------------
    def lambda_unchecked(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_alpha_unchecked(t) - self.log_sigma_unchecked(t)

    def alpha_sigma_unchecked(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.exp(self.log_alpha_unchecked(t)), torch.exp(self.log_sigma_unchecked(t))

    # ---- validation -------------------------------------------------------------------------------------------
    def check_t(self, t: Tensorish, name: str = "t") -> torch.Tensor:
        t = as_tensor(t)
        lo, hi = self.domain
        bad = torch.isnan(t) | (t <= lo if self._open_lo else t < lo) | (t >= hi if self._open_hi else t > hi)
        if bool(bad.any()):
            value = t[bad].flatten()[0].item()
            lb = "(" if self._open_lo else "["
            rb = ")" if self._open_hi else "]"
            raise ValueError(f"{name}={value!r} is outside the domain {lb}{lo}, {hi}{rb} of {type(self).__name__}")
        return t

    _open_lo = True
    _open_hi = True

    def check_lambda(self, lam: Tensorish) -> torch.Tensor:
        r"""``lam`` as a tensor; raises ``ValueError`` for NaN and for ``+-inf`` (the half log-SNR of \(\alpha = 0\) or
        \(\sigma = 0\), which lies outside every schedule's domain)."""
        lam = as_tensor(lam)
        if not bool(torch.isfinite(lam).all()):
            value = lam[~torch.isfinite(lam)].flatten()[0].item()
            raise ValueError(f"lam={value!r}: the half log-SNR must be finite")
        return lam

    # ---- public API -----------------------------------------------------------------------------------------------
    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        r"""\(\log \alpha(t)\)."""
        return self.log_alpha_unchecked(self.check_t(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        r"""\(\log \sigma(t)\)."""
        return self.log_sigma_unchecked(self.check_t(t))

    def alpha(self, t: Tensorish) -> torch.Tensor:
        r"""Signal coefficient \(\alpha(t)\)."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensorish) -> torch.Tensor:
        r"""Noise coefficient \(\sigma(t)\)."""
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t: Tensorish) -> torch.Tensor:
        r"""Half log-SNR \(\lambda(t) = \log(\alpha(t)/\sigma(t))\) (so \(\mathrm{SNR} = e^{2\lambda}\)); strictly
        decreasing."""
        return self.lambda_unchecked(self.check_t(t))

    def inverse_lambda(self, lam: Tensorish) -> torch.Tensor:
        r"""The time \(t\) with \(\lambda(t) =\) ``lam``."""
        return self.inverse_lambda_unchecked(self.check_lambda(lam))

    def sigma_ve(self, t: Tensorish) -> torch.Tensor:
        r"""Variance-exploding noise level \(\sigma/\alpha = e^{-\lambda}\) (the k-diffusion / EDM sigma)."""
        return torch.exp(-self.lambda_(t))

    def f(self, t: Tensorish) -> torch.Tensor:
        r"""Drift coefficient of the forward SDE, \(f(t) = \mathrm{d}\log\alpha/\mathrm{d}t\)."""
        return self.f_unchecked(self.check_t(t))

    def g2(self, t: Tensorish) -> torch.Tensor:
        r"""Squared diffusion coefficient, \(g^2(t) = \mathrm{d}\sigma^2/\mathrm{d}t - 2 f(t) \sigma^2(t)\)."""
        return self.g2_unchecked(self.check_t(t))

    @property
    def lambda_min(self) -> float:
        r"""\(\lambda(t_{\max})\) in float64."""
        return float(self.lambda_unchecked(torch.tensor(self.t_max, dtype=torch.float64)))

    @property
    def lambda_max(self) -> float:
        r"""\(\lambda(t_{\min})\) in float64."""
        return float(self.lambda_unchecked(torch.tensor(self.t_min, dtype=torch.float64)))

    def _set_range(self, t_min: float | None, t_max: float | None, default: tuple[float, float]) -> None:
        t_min = default[0] if t_min is None else t_min
        t_max = default[1] if t_max is None else t_max
        for name, v in (("t_min", t_min), ("t_max", t_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not t_min < t_max:
            raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.check_t(torch.tensor([self.t_min, self.t_max], dtype=torch.float64), name="t_min/t_max")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"

    def params(self) -> dict[str, Any]:
        """The constructor arguments that define this schedule (what ``repr`` shows and checkpoints store)."""
        return {"t_min": self.t_min, "t_max": self.t_max}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _link_legacy_names(cls)


#: pre-0.2 (underscored) name -> public protocol name; see the module docstring
LEGACY_NAMES = {
    "_log_alpha": "log_alpha_unchecked",
    "_log_sigma": "log_sigma_unchecked",
    "_f": "f_unchecked",
    "_dlog_sigma": "dlog_sigma_unchecked",
    "_inverse_lambda": "inverse_lambda_unchecked",
    "_g2": "g2_unchecked",
    "_lambda": "lambda_unchecked",
    "_alpha_sigma": "alpha_sigma_unchecked",
    "_log_alpha_to_t": "log_alpha_to_t_unchecked",
    "_check_t": "check_t",
    "_check_lambda": "check_lambda",
    "_params": "params",
}


def _link_legacy_names(cls: type) -> None:
    """Make each class's own protocol methods reachable under both names: a class written against the public names
    gets the old aliases (so ``super()._f(t)`` in an old-style subclass finds its parent's ``f_unchecked``), a class
    written against the old names gets the public ones."""
    own = cls.__dict__
    for old, new in LEGACY_NAMES.items():
        if new in own and old not in own:
            setattr(cls, old, own[new])
        elif old in own and new not in own:
            setattr(cls, new, own[old])


_link_legacy_names(NoiseSchedule)


class VPSchedule(NoiseSchedule):
    r"""Variance-preserving family: \(\sigma = \sqrt{1 - \alpha^2}\), \(g^2 = -2 f\)."""

    is_vp = True

    def log_sigma_unchecked(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self.log_alpha_unchecked(t)))

    def dlog_sigma_unchecked(self, t):
        # sigma^2 = 1 - alpha^2  =>  d log sigma/dt = -alpha^2 f / sigma^2
        la = self.log_alpha_unchecked(t)
        return -self.f_unchecked(t) / torch.expm1(-2.0 * la)

    def g2_unchecked(self, t):
        return -2.0 * self.f_unchecked(t)

    def log_alpha_to_t_unchecked(self, log_alpha: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def inverse_lambda_unchecked(self, lam):
        return self.log_alpha_to_t_unchecked(_vp_log_alpha_from_lambda(lam))


class _LinearBeta(NoiseSchedule):
    r"""The linear-beta schedules' shared \(\alpha\): \(\beta(t) = \beta_{\min} + t (\beta_{\max} - \beta_{\min})\),
    \(\log \alpha(t) = -\tfrac12 \int_0^t \beta = -(\beta_{\max} - \beta_{\min}) t^2/4 - \beta_{\min} t/2\) and
    \(f = -\beta(t)/2\). Domain \(t > 0\); defaults ``t_min = 1e-3``, ``t_max = 1``."""

    domain = (0.0, math.inf)

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float | None = None, t_max: float | None = None
    ):
        self.beta_min = _positive_finite("beta_min", beta_min, allow_zero=True)
        self.beta_max = _positive_finite("beta_max", beta_max)
        if not self.beta_max > self.beta_min:
            raise ValueError(f"beta_max must be > beta_min, got beta_min={beta_min}, beta_max={beta_max}")
        self._set_range(t_min, t_max, (1e-3, 1.0))

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha_unchecked(self, t):
        return -0.25 * (self.beta_max - self.beta_min) * t * t - 0.5 * self.beta_min * t

    def f_unchecked(self, t):
        return -0.5 * self._beta(t)

    def _linear_log_alpha_to_t(self, log_alpha):
        # a t^2 + b t + c = 0 with a = (b1-b0)/4, b = b0/2, c = log alpha; root = -2c / (b + sqrt(b^2 - 4ac)).
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return -2.0 * log_alpha / (b + torch.sqrt(b * b - 4.0 * a * log_alpha))

    def params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, **super().params()}


class VPLinear(_LinearBeta, VPSchedule):
    r"""VP SDE with linear ``beta(t)`` (DDPM continuous limit; Song et al. 2021, arXiv:2011.13456).

    \(\log \alpha(t) = -(\beta_{\max} - \beta_{\min}) t^2/4 - \beta_{\min} t/2\), \(f = -\beta(t)/2\),
    \(g^2 = \beta(t)\).
    Domain \(t > 0\); defaults ``t_min = 1e-3``, ``t_max = 1``.
    """

    def log_alpha_to_t_unchecked(self, log_alpha):
        return self._linear_log_alpha_to_t(log_alpha)


class VPCosine(VPSchedule):
    r"""Cosine VP schedule (Nichol & Dhariwal 2021, arXiv:2102.09672).

    \[\alpha(t) = \frac{\cos\big(\frac{\pi}{2} \frac{t+s}{1+s}\big)}{\cos\big(\frac{\pi}{2} \frac{s}{1+s}\big)}, \qquad
    f(t) = -\frac{\pi}{2(1+s)} \tan\Big(\frac{\pi}{2} \frac{t+s}{1+s}\Big).\]

    \(\alpha(1) = 0\), so the end is clipped: ``t_max = 0.9946`` by default (as in DPM-Solver, where
    \(\lambda(t_{\max})\) matches the clipped discrete schedule), ``t_min = 1e-3``. Domain \(0 < t < 1\).
    """

    domain = (0.0, 1.0)

    def __init__(self, s: float = 0.008, *, t_min: float | None = None, t_max: float | None = None):
        self.s = _positive_finite("s", s)
        self._theta0 = math.pi / 2 * self.s / (1 + self.s)
        self._cos0 = math.cos(self._theta0)
        self._log_alpha0 = math.log(self._cos0)
        self._set_range(t_min, t_max, (1e-3, 0.9946))

    def _angle(self, t):
        return (math.pi / 2) * (t + self.s) / (1 + self.s)

    def log_alpha_unchecked(self, t):
        # cos(th) - cos(th0) = -2 sin((th+th0)/2) sin((th-th0)/2): no cancellation near t = 0
        th, d = self._angle(t), (math.pi / 2) * t / (1 + self.s)  # d = th - th0, computed without cancellation
        return torch.log1p(-2.0 * torch.sin(0.5 * (th + self._theta0)) * torch.sin(0.5 * d) / self._cos0)

    def log_sigma_unchecked(self, t):
        # 1 - alpha^2 = sin(th - th0) sin(th + th0) / cos(th0)^2
        th, d = self._angle(t), (math.pi / 2) * t / (1 + self.s)
        return 0.5 * (torch.log(torch.sin(d)) + torch.log(torch.sin(th + self._theta0))) - math.log(self._cos0)

    def f_unchecked(self, t):
        return -(math.pi / (2 * (1 + self.s))) * torch.tan(self._angle(t))

    def log_alpha_to_t_unchecked(self, log_alpha):
        return (2 * (1 + self.s) / math.pi) * torch.arccos(torch.exp(log_alpha + self._log_alpha0)) - self.s

    def params(self):
        return {"s": self.s, **super().params()}


class SubVPLinear(_LinearBeta):
    r"""Sub-VP SDE (Song et al. 2021, arXiv:2011.13456): same \(\alpha\) as
    [`VPLinear`][sde_diffusion.schedules.VPLinear],
    \(\sigma = 1 - \alpha^2\), \(g^2 = \beta(t) (1 - \alpha^4)\). Domain \(t > 0\).
    """

    def log_sigma_unchecked(self, t):
        return torch.log(-torch.expm1(2.0 * self.log_alpha_unchecked(t)))

    def dlog_sigma_unchecked(self, t):
        # sigma = 1 - alpha^2  =>  d log sigma/dt = -2 alpha^2 f / sigma
        return -2.0 * self.f_unchecked(t) / torch.expm1(-2.0 * self.log_alpha_unchecked(t))

    def g2_unchecked(self, t):
        return -self._beta(t) * torch.expm1(4.0 * self.log_alpha_unchecked(t))

    def inverse_lambda_unchecked(self, lam):
        # alpha/(1-alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})), in logs.
        # log u = log sigma = log(1 - alpha^2) = log 2 - log(1 + sqrt(1 + 4 e^{2 lam})); for large lam alpha = e^lam u
        # cancels nothing, for small lam take alpha^2 = 1 - u instead (no cancellation either way).
        zero = torch.zeros_like(lam)
        log_u = math.log(2.0) - torch.logaddexp(zero, 0.5 * torch.logaddexp(zero, math.log(4.0) + 2.0 * lam))
        log_alpha = torch.where(log_u > -math.log(2.0), lam + log_u, 0.5 * torch.log1p(-torch.exp(log_u)))
        return self._linear_log_alpha_to_t(log_alpha)


class _VarianceExploding(NoiseSchedule):
    """``alpha = 1``: ``f = 0`` and ``g^2 = d sigma^2/dt``."""

    def log_alpha_unchecked(self, t):
        return 0.0 * t  # (not zeros_like: keeps the autograd graph)

    def f_unchecked(self, t):
        return 0.0 * t

    def _init_sigmas(self, sigma_min: float, sigma_max: float) -> None:
        self.sigma_min = _positive_finite("sigma_min", sigma_min)
        self.sigma_max = _positive_finite("sigma_max", sigma_max)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")

    def params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, **super().params()}


class VEGeometric(_VarianceExploding):
    r"""VE SDE with geometric noise levels (SMLD / NCSN++, Song et al. 2021, arXiv:2011.13456).

    \(\alpha = 1\), \(\sigma(t) = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t\),
    \(g^2 = 2 \sigma^2 \log(\sigma_{\max}/\sigma_{\min})\).
    The formulas hold for every real \(t\) (it may extrapolate); sampling domain ``[0, 1]`` by default.
    """

    _open_lo = False
    _open_hi = False

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        *,
        t_min: float | None = None,
        t_max: float | None = None,
    ):
        self._init_sigmas(sigma_min, sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self._set_range(t_min, t_max, (0.0, 1.0))

    def log_sigma_unchecked(self, t):
        return math.log(self.sigma_min) + t * self._log_ratio

    def dlog_sigma_unchecked(self, t):
        return 0.0 * t + self._log_ratio

    def g2_unchecked(self, t):
        return 2.0 * self._log_ratio * torch.exp(2.0 * self.log_sigma_unchecked(t))

    def inverse_lambda_unchecked(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._log_ratio


class EDM(_VarianceExploding):
    r"""EDM parametrisation (Karras et al. 2022, arXiv:2206.00364): \(\alpha = 1\), \(\sigma(t) = t\),
    \(g^2 = 2 t\), \(\lambda = -\log t\). Domain \(t > 0\); sampling from ``sigma_max`` down to ``sigma_min``.
    """

    domain = (0.0, math.inf)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self._init_sigmas(sigma_min, sigma_max)
        self._set_range(self.sigma_min, self.sigma_max, (self.sigma_min, self.sigma_max))

    def log_sigma_unchecked(self, t):
        return torch.log(t)

    def dlog_sigma_unchecked(self, t):
        return 1.0 / t

    def g2_unchecked(self, t):
        return 2.0 * t

    def inverse_lambda_unchecked(self, lam):
        return torch.exp(-lam)

    def params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


# ---------------------------------------------------------------------------------------------------------------------
# Discrete-time (DDPM) schedules
# ---------------------------------------------------------------------------------------------------------------------


def _alpha_bar_cosine(t: torch.Tensor) -> torch.Tensor:
    return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _check_betas(b: torch.Tensor, name: str) -> torch.Tensor:
    """A one-dimensional float64 vector of at least two DDPM betas, each in the open interval ``(0, 1)``."""
    if b.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one beta per training step), got shape {tuple(b.shape)}")
    if b.numel() < 2 or bool(torch.isnan(b).any()) or bool(((b <= 0) | (b >= 1)).any()):
        raise ValueError(f"{name} must have at least 2 entries, each in the open interval (0, 1)")
    return b


def _alpha_bar_laplace(t: torch.Tensor) -> torch.Tensor:
    lam = -0.5 * torch.copysign(torch.ones_like(t), 0.5 - t) * torch.log(1.0 - 2.0 * (0.5 - t).abs() + 1e-6)
    return torch.sqrt(torch.sigmoid(lam))  # diffusers' sqrt(snr / (1 + snr)), snr = e^lam


#: ``alphas_cumprod(t)`` functions that diffusers discretises into betas (``betas_for_alpha_bar``)
_ALPHA_BAR = {
    "squaredcos_cap_v2": _alpha_bar_cosine,
    "exp": lambda t: torch.exp(-12.0 * t),
    "laplace": _alpha_bar_laplace,
}


def betas_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    r"""DDPM betas (float64) from a diffusers-style scheduler config.

    Keys: ``num_train_timesteps`` (default 1000), ``beta_start`` (1e-4), ``beta_end`` (0.02), ``beta_schedule``
    or ``trained_betas`` (which wins when given). Every ``beta_schedule`` of diffusers: ``linear``,
    ``scaled_linear`` (linear in \(\sqrt{\beta}\), Stable Diffusion's), ``sigmoid`` (GeoDiff), and the
    ``alphas_cumprod`` discretisations \(\beta_n = \min\big(1 - \bar\alpha(\tfrac{n+1}{N}) / \bar\alpha(\tfrac{n}{N}),
    0.999\big)\) of ``squaredcos_cap_v2`` (Nichol & Dhariwal's cosine), ``exp`` (\(\bar\alpha(t) = e^{-12 t}\)) and
    ``laplace``.

    ``rescale_betas_zero_snr=True`` (Lin et al., arXiv:2305.08891) is refused: it makes ``alphas_cumprod[N-1] = 0``,
    i.e. \(\alpha(t_{\max}) = 0\) and \(\lambda(t_{\max}) = -\infty\), where the probability-flow ODE in \(\lambda\) has
    no starting point (the first step of every exponential integrator would have \(h = +\infty\)).
    """
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError(
            "rescale_betas_zero_snr=True is not supported: zero terminal SNR puts alpha(t_max) = 0, so "
            "lambda(t_max) = -inf and the ODE in lambda has no finite starting point"
        )
    trained = config.get("trained_betas")
    if trained is not None:
        return _check_betas(torch.as_tensor(trained, dtype=torch.float64), "trained_betas")
    n = config.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {n!r}")
    b0 = _positive_finite("beta_start", config.get("beta_start", 1e-4))
    b1 = _positive_finite("beta_end", config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=torch.float64) ** 2
    if kind == "sigmoid":
        return torch.sigmoid(torch.linspace(-6.0, 6.0, n, dtype=torch.float64)) * (b1 - b0) + b0
    if kind in _ALPHA_BAR:
        i = torch.arange(n, dtype=torch.float64)
        ratio = _ALPHA_BAR[kind]((i + 1) / n) / _ALPHA_BAR[kind](i / n)
        return torch.clamp(1.0 - ratio, max=0.999)
    names = ", ".join(repr(k) for k in ("linear", "scaled_linear", "sigmoid", *_ALPHA_BAR))
    raise ValueError(f"beta_schedule must be one of {names}, got {kind!r}")


class VPDiscrete(VPSchedule):
    r"""Discrete DDPM schedule made continuous (as in DPM-Solver, arXiv:2206.00927).

    With \(N\) steps and ``alphas_cumprod[n]`` \(= \bar\alpha_n = \prod_{i \le n} (1 - \beta_i)\), the grid times are
    \(t_n = (n+1)/N\) and \(\log \alpha\) is interpolated piecewise-linearly between them, so
    \(\alpha(t_n) = \sqrt{\bar\alpha_n}\) exactly. \(f\) is the (piecewise-constant) slope of that interpolant.
    ``inverse_lambda`` is exact: for VP, \(\log \alpha = -\operatorname{softplus}(-2\lambda)/2\), then the
    piecewise-linear map is inverted. Domain \([1/N, 1]\).

    A network trained on integer labels ``0..N-1`` gets ``t_to_label(t)`` \(= 1000\,(t - 1/N)\) (the DPM-Solver
    convention, which equals the step index when \(N = 1000\)); ``label_to_t`` is its inverse.
    """

    _open_lo = False
    _open_hi = False

    def __init__(
        self, betas: Any = None, *, alphas_cumprod: Any = None, t_min: float | None = None, t_max: float | None = None
    ):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of betas or alphas_cumprod")
        if betas is not None:
            b = _check_betas(torch.as_tensor(betas, dtype=torch.float64), "betas")
            log_ac = torch.cumsum(torch.log1p(-b), 0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
            if ac.ndim != 1:
                raise ValueError(f"alphas_cumprod must be one-dimensional, got shape {tuple(ac.shape)}")
            if ac.numel() < 2 or bool(torch.isnan(ac).any()) or bool(((ac <= 0) | (ac >= 1)).any()):
                raise ValueError("alphas_cumprod must have at least 2 entries, each in (0, 1)")
            if bool((ac[1:] >= ac[:-1]).any()):
                raise ValueError("alphas_cumprod must be strictly decreasing")
            log_ac = torch.log(ac)
        self.num_steps = n = log_ac.numel()
        self._log_alpha_grid = 0.5 * log_ac  # strictly decreasing
        self._t_grid = torch.arange(1, n + 1, dtype=torch.float64) / n
        self._slopes = (self._log_alpha_grid[1:] - self._log_alpha_grid[:-1]) * n
        self.domain = (1.0 / n, 1.0)
        self._set_range(t_min, t_max, (1.0 / n, 1.0))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> VPDiscrete:
        """Build from a diffusers-style config dict (see
        [`betas_from_config`][sde_diffusion.schedules.betas_from_config])."""
        return cls(betas_from_config(config), **kwargs)

    @property
    def knots(self) -> torch.Tensor:
        r"""The grid times \(t_n = (n+1)/N\) where the interpolant has kinks."""
        return self._t_grid

    @property
    def log_alpha_knots(self) -> torch.Tensor:
        r"""\(\log \alpha\) at the [`knots`][sde_diffusion.schedules.VPDiscrete.knots]
        (\(= \tfrac12 \log \bar\alpha_n\)), float64."""
        return self._log_alpha_grid

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.exp(2.0 * self._log_alpha_grid)

    @property
    def betas(self) -> torch.Tensor:
        la = 2.0 * self._log_alpha_grid
        prev = torch.cat([la.new_zeros(1), la[:-1]])
        return -torch.expm1(la - prev)

    def _segment(self, t: torch.Tensor) -> torch.Tensor:
        # segment k covers [t_k, t_{k+1}), k = 0..N-2 (clamped so the end points use the outer segments); found by
        # searching the grid itself, so a time one ulp below a knot is never put to its right
        grid = self._t_grid.to(device=t.device, dtype=t.dtype)
        k = torch.searchsorted(grid, t.contiguous(), right=True) - 1
        return torch.clamp(k, 0, self.num_steps - 2)

    def log_alpha_unchecked(self, t):
        grid = self._log_alpha_grid.to(device=t.device, dtype=t.dtype)
        slopes = self._slopes.to(device=t.device, dtype=t.dtype)
        k = self._segment(t)
        return grid[k] + slopes[k] * (t - (k + 1).to(t.dtype) / self.num_steps)

    def f_unchecked(self, t):
        return self._slopes.to(device=t.device, dtype=t.dtype)[self._segment(t)]

    def log_alpha_to_t_unchecked(self, log_alpha):
        grid = self._log_alpha_grid.to(device=log_alpha.device, dtype=log_alpha.dtype)
        # -log alpha is increasing along the grid: locate the segment, then invert the linear piece exactly.
        k = torch.searchsorted(-grid, -log_alpha.contiguous()) - 1
        k = torch.clamp(k, 0, self.num_steps - 2)
        slopes = self._slopes.to(device=log_alpha.device, dtype=log_alpha.dtype)
        return (k + 1).to(log_alpha.dtype) / self.num_steps + (log_alpha - grid[k]) / slopes[k]

    def t_to_label(self, t: Tensorish) -> torch.Tensor:
        r"""Continuous time to the network's discrete-time input, \(1000\,(t - 1/N)\)."""
        return (as_tensor(t) - 1.0 / self.num_steps) * 1000.0

    def label_to_t(self, label: Tensorish) -> torch.Tensor:
        r"""Inverse of [`t_to_label`][sde_diffusion.schedules.VPDiscrete.t_to_label]:
        \(t = \mathrm{label}/1000 + 1/N\)."""
        return as_tensor(label) / 1000.0 + 1.0 / self.num_steps

    def params(self):
        return {"num_steps": self.num_steps, **super().params()}
