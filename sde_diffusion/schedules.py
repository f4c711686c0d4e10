r"""Noise schedules: the marginal coefficients of the forward process.

Every schedule describes ``x_t = alpha(t) x_0 + sigma(t) eps`` on a time domain ``[t_min, t_max]`` and provides

* ``alpha``, ``sigma``, ``log_alpha``, ``log_sigma``;
* ``lambda_(t) = log(alpha/sigma)`` -- the **half** log-SNR (``log SNR = 2 lambda``), strictly decreasing in ``t``;
* ``inverse_lambda`` -- its inverse (closed form where one exists, exact piecewise inverse for :class:`VPDiscrete`);
* ``sigma_ve = sigma/alpha = exp(-lambda)`` -- the variance-exploding noise level (k-diffusion / EDM "sigma");
* ``f(t) = d log alpha / dt`` and ``g2(t) = d sigma^2/dt - 2 f sigma^2`` -- the coefficients of the linear forward SDE
  ``dx = f x dt + g dW`` whose marginals are the ones above.

Inputs may be Python numbers (computed in float64) or tensors of any shape; tensors keep their dtype and device.
Public methods validate that ``t`` lies where the formulas hold; the underscored methods skip that check and are what
the sampling loop and the analytic models use (a check on a GPU tensor would synchronise the device).
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


def _as_tensor(t: Tensorish) -> torch.Tensor:
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
    """Abstract noise schedule. Subclasses implement ``_log_alpha``, ``_log_sigma``, ``_f`` and ``_inverse_lambda``
    (and may override ``_g2`` with a closed form).

    Attributes:
        t_min, t_max: the sampling domain; sampling runs from ``t_max`` down to ``t_min``.
        is_vp: whether ``alpha^2 + sigma^2 = 1``.
    """

    t_min: float
    t_max: float
    is_vp: bool = False
    #: open/closed interval where the formulas are defined, ``(lo, hi)``; checked by the public methods.
    domain: tuple[float, float] = (-math.inf, math.inf)

    # ---- to implement -------------------------------------------------------------------------------------------
    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dlog_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _g2(self, t: torch.Tensor) -> torch.Tensor:
        # d sigma^2/dt - 2 f sigma^2 = 2 sigma^2 (d log sigma/dt - f)
        return 2.0 * torch.exp(2.0 * self._log_sigma(t)) * (self._dlog_sigma(t) - self._f(t))

    # ---- derived, unchecked -------------------------------------------------------------------------------------
    def _lambda(self, t: torch.Tensor) -> torch.Tensor:
        return self._log_alpha(t) - self._log_sigma(t)

    def _alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.exp(self._log_alpha(t)), torch.exp(self._log_sigma(t))

    # ---- validation -------------------------------------------------------------------------------------------
    def _check_t(self, t: Tensorish, name: str = "t") -> torch.Tensor:
        t = _as_tensor(t)
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

    def _check_lambda(self, lam: Tensorish) -> torch.Tensor:
        lam = _as_tensor(lam)
        if bool(torch.isnan(lam).any()):
            raise ValueError("lam contains NaN")
        return lam

    # ---- public API -----------------------------------------------------------------------------------------------
    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """``log alpha(t)``."""
        return self._log_alpha(self._check_t(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """``log sigma(t)``."""
        return self._log_sigma(self._check_t(t))

    def alpha(self, t: Tensorish) -> torch.Tensor:
        """Signal coefficient ``alpha(t)``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensorish) -> torch.Tensor:
        """Noise coefficient ``sigma(t)``."""
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t: Tensorish) -> torch.Tensor:
        """Half log-SNR ``lambda(t) = log(alpha(t)/sigma(t))`` (so ``SNR = exp(2 lambda)``); strictly decreasing."""
        return self._lambda(self._check_t(t))

    def inverse_lambda(self, lam: Tensorish) -> torch.Tensor:
        """The time ``t`` with ``lambda_(t) = lam``."""
        return self._inverse_lambda(self._check_lambda(lam))

    def sigma_ve(self, t: Tensorish) -> torch.Tensor:
        """Variance-exploding noise level ``sigma/alpha = exp(-lambda)`` (the k-diffusion / EDM sigma)."""
        return torch.exp(-self.lambda_(t))

    def f(self, t: Tensorish) -> torch.Tensor:
        """Drift coefficient of the forward SDE, ``f(t) = d log alpha / dt``."""
        return self._f(self._check_t(t))

    def g2(self, t: Tensorish) -> torch.Tensor:
        """Squared diffusion coefficient, ``g^2(t) = d sigma^2/dt - 2 f(t) sigma^2(t)``."""
        return self._g2(self._check_t(t))

    @property
    def lambda_min(self) -> float:
        """``lambda(t_max)`` in float64."""
        return float(self._lambda(torch.tensor(self.t_max, dtype=torch.float64)))

    @property
    def lambda_max(self) -> float:
        """``lambda(t_min)`` in float64."""
        return float(self._lambda(torch.tensor(self.t_min, dtype=torch.float64)))

    def _set_range(self, t_min: float | None, t_max: float | None, default: tuple[float, float]) -> None:
        t_min = default[0] if t_min is None else t_min
        t_max = default[1] if t_max is None else t_max
        for name, v in (("t_min", t_min), ("t_max", t_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not t_min < t_max:
            raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._check_t(torch.tensor([self.t_min, self.t_max], dtype=torch.float64), name="t_min/t_max")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, Any]:
        return {"t_min": self.t_min, "t_max": self.t_max}


class VPSchedule(NoiseSchedule):
    """Variance-preserving family: ``sigma = sqrt(1 - alpha^2)``, ``g^2 = -2 f``."""

    is_vp = True

    def _log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _dlog_sigma(self, t):
        # sigma^2 = 1 - alpha^2  =>  d log sigma/dt = -alpha^2 f / sigma^2
        la = self._log_alpha(t)
        return -self._f(t) / torch.expm1(-2.0 * la)

    def _g2(self, t):
        return -2.0 * self._f(t)

    def _log_alpha_to_t(self, log_alpha: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inverse_lambda(self, lam):
        return self._log_alpha_to_t(_vp_log_alpha_from_lambda(lam))


class _LinearBeta:
    """``beta(t) = beta_min + t (beta_max - beta_min)``, ``int_0^t beta = beta_min t + (beta_max-beta_min) t^2/2``."""

    def _init_beta(self, beta_min: float, beta_max: float) -> None:
        self.beta_min = _positive_finite("beta_min", beta_min, allow_zero=True)
        self.beta_max = _positive_finite("beta_max", beta_max)
        if not self.beta_max > self.beta_min:
            raise ValueError(f"beta_max must be > beta_min, got beta_min={beta_min}, beta_max={beta_max}")

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _linear_log_alpha(self, t):
        return -0.25 * (self.beta_max - self.beta_min) * t * t - 0.5 * self.beta_min * t

    def _linear_log_alpha_to_t(self, log_alpha):
        # a t^2 + b t + c = 0 with a = (b1-b0)/4, b = b0/2, c = log alpha; root = -2c / (b + sqrt(b^2 - 4ac)).
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return -2.0 * log_alpha / (b + torch.sqrt(b * b - 4.0 * a * log_alpha))


class VPLinear(_LinearBeta, VPSchedule):
    r"""VP SDE with linear ``beta(t)`` (DDPM continuous limit; Song et al. 2021, arXiv:2011.13456).

    ``log alpha(t) = -(beta_max - beta_min) t^2/4 - beta_min t/2``, ``f = -beta(t)/2``, ``g^2 = beta(t)``.
    Domain ``t > 0``; defaults ``t_min = 1e-3``, ``t_max = 1``.
    """

    domain = (0.0, math.inf)

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float | None = None, t_max: float | None = None
    ):
        self._init_beta(beta_min, beta_max)
        self._set_range(t_min, t_max, (1e-3, 1.0))

    def _log_alpha(self, t):
        return self._linear_log_alpha(t)

    def _f(self, t):
        return -0.5 * self._beta(t)

    def _log_alpha_to_t(self, log_alpha):
        return self._linear_log_alpha_to_t(log_alpha)

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, **super()._params()}


class VPCosine(VPSchedule):
    r"""Cosine VP schedule (Nichol & Dhariwal 2021, arXiv:2102.09672).

    ``alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))``; ``f = -pi/(2(1+s)) tan(pi/2 (t+s)/(1+s))``.
    ``alpha(1) = 0``, so the end is clipped: ``t_max = 0.9946`` by default (as in DPM-Solver, where
    ``lambda(t_max)`` matches the clipped discrete schedule), ``t_min = 1e-3``. Domain ``0 < t < 1``.
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

    def _log_alpha(self, t):
        # cos(th) - cos(th0) = -2 sin((th+th0)/2) sin((th-th0)/2): no cancellation near t = 0
        th, d = self._angle(t), (math.pi / 2) * t / (1 + self.s)  # d = th - th0, computed without cancellation
        return torch.log1p(-2.0 * torch.sin(0.5 * (th + self._theta0)) * torch.sin(0.5 * d) / self._cos0)

    def _log_sigma(self, t):
        # 1 - alpha^2 = sin(th - th0) sin(th + th0) / cos(th0)^2
        th, d = self._angle(t), (math.pi / 2) * t / (1 + self.s)
        return 0.5 * (torch.log(torch.sin(d)) + torch.log(torch.sin(th + self._theta0))) - math.log(self._cos0)

    def _f(self, t):
        return -(math.pi / (2 * (1 + self.s))) * torch.tan(self._angle(t))

    def _log_alpha_to_t(self, log_alpha):
        return (2 * (1 + self.s) / math.pi) * torch.arccos(torch.exp(log_alpha + self._log_alpha0)) - self.s

    def _params(self):
        return {"s": self.s, **super()._params()}


class SubVPLinear(_LinearBeta, NoiseSchedule):
    r"""Sub-VP SDE (Song et al. 2021, arXiv:2011.13456): same ``alpha`` as :class:`VPLinear`,
    ``sigma = 1 - alpha^2``, ``g^2 = beta(t) (1 - alpha^4)``. Domain ``t > 0``.
    """

    domain = (0.0, math.inf)

    def __init__(
        self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float | None = None, t_max: float | None = None
    ):
        self._init_beta(beta_min, beta_max)
        self._set_range(t_min, t_max, (1e-3, 1.0))

    def _log_alpha(self, t):
        return self._linear_log_alpha(t)

    def _log_sigma(self, t):
        return torch.log(-torch.expm1(2.0 * self._log_alpha(t)))

    def _f(self, t):
        return -0.5 * self._beta(t)

    def _dlog_sigma(self, t):
        # sigma = 1 - alpha^2  =>  d log sigma/dt = -2 alpha^2 f / sigma
        return -2.0 * self._f(t) / torch.expm1(-2.0 * self._log_alpha(t))

    def _g2(self, t):
        return -self._beta(t) * torch.expm1(4.0 * self._log_alpha(t))

    def _inverse_lambda(self, lam):
        # alpha/(1-alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})), in logs.
        # log u = log sigma = log(1 - alpha^2) = log 2 - log(1 + sqrt(1 + 4 e^{2 lam})); for large lam alpha = e^lam u
        # cancels nothing, for small lam take alpha^2 = 1 - u instead (no cancellation either way).
        zero = torch.zeros_like(lam)
        log_u = math.log(2.0) - torch.logaddexp(zero, 0.5 * torch.logaddexp(zero, math.log(4.0) + 2.0 * lam))
        log_alpha = torch.where(log_u > -math.log(2.0), lam + log_u, 0.5 * torch.log1p(-torch.exp(log_u)))
        return self._linear_log_alpha_to_t(log_alpha)

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, **super()._params()}


class _VarianceExploding(NoiseSchedule):
    """``alpha = 1``: ``f = 0`` and ``g^2 = d sigma^2/dt``."""

    def _log_alpha(self, t):
        return 0.0 * t  # (not zeros_like: keeps the autograd graph)

    def _f(self, t):
        return 0.0 * t

    def _init_sigmas(self, sigma_min: float, sigma_max: float) -> None:
        self.sigma_min = _positive_finite("sigma_min", sigma_min)
        self.sigma_max = _positive_finite("sigma_max", sigma_max)
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, **super()._params()}


class VEGeometric(_VarianceExploding):
    r"""VE SDE with geometric noise levels (SMLD / NCSN++, Song et al. 2021, arXiv:2011.13456).

    ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``, ``g^2 = 2 sigma^2 log(sigma_max/sigma_min)``.
    The formulas hold for every real ``t`` (it may extrapolate); sampling domain ``[0, 1]`` by default.
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

    def _log_sigma(self, t):
        return math.log(self.sigma_min) + t * self._log_ratio

    def _dlog_sigma(self, t):
        return 0.0 * t + self._log_ratio

    def _g2(self, t):
        return 2.0 * self._log_ratio * torch.exp(2.0 * self._log_sigma(t))

    def _inverse_lambda(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._log_ratio


class EDM(_VarianceExploding):
    r"""EDM parametrisation (Karras et al. 2022, arXiv:2206.00364): ``alpha = 1``, ``sigma(t) = t``,
    ``g^2 = 2 t``, ``lambda = -log t``. Domain ``t > 0``; sampling from ``sigma_max`` down to ``sigma_min``.
    """

    domain = (0.0, math.inf)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self._init_sigmas(sigma_min, sigma_max)
        self._set_range(self.sigma_min, self.sigma_max, (self.sigma_min, self.sigma_max))

    def _log_sigma(self, t):
        return torch.log(t)

    def _dlog_sigma(self, t):
        return 1.0 / t

    def _g2(self, t):
        return 2.0 * t

    def _inverse_lambda(self, lam):
        return torch.exp(-lam)

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


# ---------------------------------------------------------------------------------------------------------------------
# Discrete-time (DDPM) schedules
# ---------------------------------------------------------------------------------------------------------------------


def _alpha_bar_cosine(t: torch.Tensor) -> torch.Tensor:
    return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """DDPM betas (float64) from a diffusers-style scheduler config.

    Keys: ``num_train_timesteps`` (default 1000), ``beta_start`` (1e-4), ``beta_end`` (0.02), ``beta_schedule``
    (``linear`` | ``scaled_linear`` | ``squaredcos_cap_v2``) or ``trained_betas`` (which wins when given).
    """
    trained = config.get("trained_betas")
    if trained is not None:
        return torch.as_tensor(trained, dtype=torch.float64)
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
    if kind == "squaredcos_cap_v2":
        i = torch.arange(n, dtype=torch.float64)
        ratio = _alpha_bar_cosine((i + 1) / n) / _alpha_bar_cosine(i / n)
        return torch.clamp(1.0 - ratio, max=0.999)
    raise ValueError(f"beta_schedule must be one of 'linear', 'scaled_linear', 'squaredcos_cap_v2', got {kind!r}")


class VPDiscrete(VPSchedule):
    r"""Discrete DDPM schedule made continuous (as in DPM-Solver, arXiv:2206.00927).

    With ``N`` steps and ``alphas_cumprod[n] = prod_{i<=n} (1 - beta_i)``, the grid times are ``t_n = (n+1)/N``
    and ``log alpha`` is interpolated piecewise-linearly between them, so ``alpha(t_n) = sqrt(alphas_cumprod[n])``
    exactly. ``f`` is the (piecewise-constant) slope of that interpolant. ``inverse_lambda`` is exact: for VP,
    ``log alpha = -softplus(-2 lambda)/2``, then the piecewise-linear map is inverted. Domain ``[1/N, 1]``.

    A network trained on integer labels ``0..N-1`` gets ``t_to_label(t) = (t - 1/N) * 1000`` (the DPM-Solver
    convention, which equals the step index when ``N = 1000``); ``label_to_t`` is its inverse.
    """

    _open_lo = False
    _open_hi = False

    def __init__(
        self, betas: Any = None, *, alphas_cumprod: Any = None, t_min: float | None = None, t_max: float | None = None
    ):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of betas or alphas_cumprod")
        if betas is not None:
            b = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if b.numel() < 2 or bool(torch.isnan(b).any()) or bool(((b <= 0) | (b >= 1)).any()):
                raise ValueError("betas must have at least 2 entries, each in the open interval (0, 1)")
            log_ac = torch.cumsum(torch.log1p(-b), 0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
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
        """Build from a diffusers-style config dict (see :func:`betas_from_config`)."""
        return cls(betas_from_config(config), **kwargs)

    @property
    def knots(self) -> torch.Tensor:
        """The grid times ``t_n = (n+1)/N`` where the interpolant has kinks."""
        return self._t_grid

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

    def _log_alpha(self, t):
        grid = self._log_alpha_grid.to(device=t.device, dtype=t.dtype)
        slopes = self._slopes.to(device=t.device, dtype=t.dtype)
        k = self._segment(t)
        return grid[k] + slopes[k] * (t - (k + 1).to(t.dtype) / self.num_steps)

    def _f(self, t):
        return self._slopes.to(device=t.device, dtype=t.dtype)[self._segment(t)]

    def _log_alpha_to_t(self, log_alpha):
        grid = self._log_alpha_grid.to(device=log_alpha.device, dtype=log_alpha.dtype)
        # -log alpha is increasing along the grid: locate the segment, then invert the linear piece exactly.
        k = torch.searchsorted(-grid, -log_alpha.contiguous()) - 1
        k = torch.clamp(k, 0, self.num_steps - 2)
        slopes = self._slopes.to(device=log_alpha.device, dtype=log_alpha.dtype)
        return (k + 1).to(log_alpha.dtype) / self.num_steps + (log_alpha - grid[k]) / slopes[k]

    def t_to_label(self, t: Tensorish) -> torch.Tensor:
        """Continuous time to the network's discrete-time input, ``(t - 1/N) * 1000``."""
        return (_as_tensor(t) - 1.0 / self.num_steps) * 1000.0

    def label_to_t(self, label: Tensorish) -> torch.Tensor:
        """Inverse of :meth:`t_to_label`: ``label / 1000 + 1/N``."""
        return _as_tensor(label) / 1000.0 + 1.0 / self.num_steps

    def _params(self):
        return {"num_steps": self.num_steps, **super()._params()}
