r"""Model wrapper and the parametrisation conversion table.

With \(x = \alpha x_0 + \sigma \epsilon\) a network may predict

* ``eps`` -- the noise \(\epsilon\);
* ``x0`` -- the data \(x_0\) (denoiser \(D\));
* ``v`` -- the velocity \(v = \alpha \epsilon - \sigma x_0\) (Salimans & Ho 2022, arXiv:2202.00512);
* ``score`` -- \(\nabla_x \log p_t(x) = -\epsilon / \sigma\).

Inverting the 2x2 system

\[\begin{pmatrix} x \\ v \end{pmatrix} = \begin{pmatrix} \alpha & \sigma \\ -\sigma & \alpha \end{pmatrix}
\begin{pmatrix} x_0 \\ \epsilon \end{pmatrix}
\quad\text{gives}\quad
x_0 = \frac{\alpha x - \sigma v}{\alpha^2 + \sigma^2}, \qquad
\epsilon = \frac{\sigma x + \alpha v}{\alpha^2 + \sigma^2},\]

which holds for VP and VE schedules alike. The functions here are pure; ``alpha``/``sigma`` may be numbers or tensors
that broadcast against ``x`` (e.g. shape ``(B, 1, ..., 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ._ops import axpy
from .schedules import NoiseSchedule, VPDiscrete, as_tensor

__all__ = [
    "PREDICTIONS",
    "to_eps",
    "to_x0",
    "convert",
    "Model",
    "DynamicThresholding",
    "broadcast_coeff",
    "AnalyticFirstStep",
    "Predictor",
    "large_noise_eps",
]

PREDICTIONS = ("eps", "x0", "v", "score")


def check_prediction(kind: str, name: str = "prediction") -> str:
    if kind not in PREDICTIONS:
        raise ValueError(f"{name} must be one of {PREDICTIONS}, got {kind!r}")
    return kind


def to_eps(out, x, alpha, sigma, kind: str):
    """Noise prediction from a model output of type ``kind``."""
    if kind == "eps":
        return out
    if kind == "x0":
        # subtract first (one fused kernel), then divide in place: exact cancellation when x ~ alpha x0 (small sigma)
        return axpy(x, -alpha, out).div_(sigma)
    if kind == "v":
        return (sigma * x + alpha * out) / (alpha * alpha + sigma * sigma)
    if kind == "score":
        return -sigma * out
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {kind!r}")


def to_x0(out, x, alpha, sigma, kind: str):
    """Data prediction from a model output of type ``kind``."""
    if kind == "x0":
        return out
    if kind == "eps":
        return axpy(x, -sigma, out).div_(alpha)  # subtract first (see to_eps)
    if kind == "v":
        return (alpha * x - sigma * out) / (alpha * alpha + sigma * sigma)
    if kind == "score":
        return (x + sigma * sigma * out) / alpha
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {kind!r}")


def convert(out, x, alpha, sigma, source: str, target: str):
    """Convert a model output between parametrisations (``eps``, ``x0``, ``v``, ``score``)."""
    check_prediction(source, "source")
    check_prediction(target, "target")
    if source == target:
        return out
    if target == "eps":
        return to_eps(out, x, alpha, sigma, source)
    if target == "x0":
        return to_x0(out, x, alpha, sigma, source)
    if target == "score":
        return -to_eps(out, x, alpha, sigma, source) / sigma
    # v = alpha eps - sigma x0, with both taken from the source
    return alpha * to_eps(out, x, alpha, sigma, source) - sigma * to_x0(out, x, alpha, sigma, source)


def broadcast_coeff(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape ``(B,)`` (or a scalar tensor) to broadcast against ``x``."""
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@dataclass(frozen=True)
class DynamicThresholding:
    r"""Imagen-style dynamic thresholding of x0 predictions (Saharia et al. 2022, arXiv:2205.11487).

    Per sample, \(s\) is the ``percentile`` quantile of \(|x_0|\), clamped to \([1, \mathtt{max\_value}]\); then
    \(x_0 \leftarrow \operatorname{clamp}(x_0, -s, s) / s\) (the diffusers convention; ``max_value = inf`` gives
    Imagen's \(\max(s, 1)\)).
    """

    percentile: float = 0.995
    max_value: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.percentile <= 1.0:
            raise ValueError(f"percentile must be in (0, 1], got {self.percentile!r}")
        if not self.max_value >= 1.0:
            raise ValueError(f"max_value must be >= 1, got {self.max_value!r}")

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.ndim < 1:
            raise ValueError(f"x0 must have a batch dimension, got a tensor of shape {tuple(x0.shape)}")
        if x0.numel() == 0:  # an empty batch (or empty samples): nothing to threshold
            return x0
        flat = x0.reshape(x0.shape[0], -1).abs()
        compute = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(compute, self.percentile, dim=1).to(x0.dtype)
        s = torch.clamp(s, min=1.0, max=self.max_value)
        s = broadcast_coeff(s, x0)
        return torch.clamp(x0, -s, s) / s


class Model:
    r"""A denoising network with its schedule and output parametrisation.

    Args:
        fn: ``fn(x, t) -> output`` with ``t`` of shape ``(B,)`` (continuous time; or the discrete label when
            ``time_input="label"``). The output must have the shape of ``x``.
        schedule: the [`NoiseSchedule`][sde_diffusion.schedules.NoiseSchedule] the network was trained with.
        prediction: what ``fn`` predicts: ``eps``, ``x0``, ``v`` or ``score``.
        time_input: ``"continuous"`` (default) or ``"label"`` (a [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete]
            network taking
            \(1000\,(t - 1/N)\)), or a callable mapping ``t`` to the network's input.
        thresholding: optional [`DynamicThresholding`][sde_diffusion.models.DynamicThresholding] applied to every x0
            prediction.

    ``nfe`` counts calls of ``fn`` through this wrapper (one guided evaluation counts once).
    """

    def __init__(
        self,
        fn: Callable,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        *,
        time_input: str | Callable = "continuous",
        thresholding: DynamicThresholding | None = None,
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.fn = fn
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        if time_input == "continuous":
            self._time_map = None
        elif time_input == "label":
            if not isinstance(schedule, VPDiscrete):
                raise ValueError("time_input='label' needs a VPDiscrete schedule")
            n = schedule.num_steps
            self._time_map = lambda t: (t - 1.0 / n) * 1000.0
        elif callable(time_input):
            self._time_map = time_input
        else:
            raise ValueError(f"time_input must be 'continuous', 'label' or a callable, got {time_input!r}")
        if thresholding is not None and not isinstance(thresholding, DynamicThresholding):
            raise TypeError("thresholding must be a DynamicThresholding or None")
        self.thresholding = thresholding
        self.nfe = 0

    def reset_nfe(self) -> None:
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """Raw network output at ``(x, t)``; ``t`` is a scalar or shape ``(B,)``. Counts one NFE."""
        if not (isinstance(t, torch.Tensor) and t.ndim == 1 and t.dtype == x.dtype and t.device == x.device):
            # (the sampling loop already passes a device row of the state's dtype: nothing to do then)
            t = as_tensor(t)
            if t.ndim == 0:
                t = t.expand(x.shape[0])
            t = t.to(device=x.device, dtype=x.dtype if x.is_floating_point() else t.dtype)
        if self._time_map is not None:
            t = self._time_map(t)
        out = self.fn(x, t)
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model output shape {shape} does not match x shape {tuple(x.shape)}")
        return out

    def predict(self, x: torch.Tensor, t, target: str, alpha=None, sigma=None) -> torch.Tensor:
        """Model prediction of ``target`` at ``(x, t)``.

        ``alpha``/``sigma`` may be passed precomputed (numbers, or tensors broadcasting against ``x``); the sampling
        loop does so, so that nothing is recomputed or checked on the device inside the loop.
        """
        if alpha is None or sigma is None:
            alpha, sigma = self.alpha_sigma(x, t)
        return self.as_prediction(self(x, t), x, target, alpha, sigma, self.prediction)

    def alpha_sigma(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha(t)``, ``sigma(t)`` (checked ``t``), shaped to broadcast against ``x``."""
        tt = self.schedule.check_t(t)
        a, s = self.schedule.alpha_sigma_unchecked(tt.to(device=x.device, dtype=x.dtype))
        return broadcast_coeff(a, x), broadcast_coeff(s, x)

    def as_prediction(self, out, x, target: str, alpha, sigma, source: str) -> torch.Tensor:
        """A prediction ``out`` of type ``source`` at ``x`` as ``target``, through this model's thresholding (if any)
        -- what [`predict`][sde_diffusion.models.Model.predict] returns for a network output ``out``."""
        if self.thresholding is not None:
            x0 = self.thresholding(to_x0(out, x, alpha, sigma, source))
            return convert(x0, x, alpha, sigma, "x0", target)
        if target == source:
            return out
        return convert(out, x, alpha, sigma, source, target)

    def eps(self, x, t, alpha=None, sigma=None):
        """Noise prediction."""
        return self.predict(x, t, "eps", alpha, sigma)

    def x0(self, x, t, alpha=None, sigma=None):
        """Data prediction (the denoiser)."""
        return self.predict(x, t, "x0", alpha, sigma)

    def v(self, x, t, alpha=None, sigma=None):
        r"""Velocity prediction \(v = \alpha \epsilon - \sigma x_0\)."""
        return self.predict(x, t, "v", alpha, sigma)

    def score(self, x, t, alpha=None, sigma=None):
        r"""Score \(\nabla_x \log p_t(x) = -\epsilon/\sigma\)."""
        return self.predict(x, t, "score", alpha, sigma)

    @classmethod
    def guided(
        cls,
        cond_fn: Callable,
        uncond_fn: Callable,
        scale: float,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        **kwargs,
    ) -> Model:
        r"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598):
        \(\mathrm{out} = \mathrm{uncond} + w\,(\mathrm{cond} - \mathrm{uncond})\) with \(w\) = ``scale``, applied in the
        network's own parametrisation (``scale = 1`` is the conditional model, ``0`` the unconditional one). One guided
        call counts as one NFE.
        """
        for name, f in (("cond_fn", cond_fn), ("uncond_fn", uncond_fn)):
            if not callable(f):
                raise TypeError(f"{name} must be a callable fn(x, t), got {type(f).__name__}")
        try:
            value = float(scale)
        except (TypeError, ValueError):
            value = None
        if value is None or isinstance(scale, (bool, str)):
            raise TypeError(f"scale must be a real number, got {scale!r}")
        if not math.isfinite(value):
            raise ValueError(f"scale must be finite, got {scale!r}")
        scale = value

        def fn(x, t):
            u = uncond_fn(x, t)
            return u + scale * (cond_fn(x, t) - u)

        return cls(fn, schedule, prediction, **kwargs)

    def __repr__(self) -> str:
        return f"Model(prediction={self.prediction!r}, schedule={self.schedule!r}, nfe={self.nfe})"


class Predictor(Protocol):
    """What a solver's ``step`` evaluates: a [`Model`][sde_diffusion.models.Model], or a stand-in for one such as
    [`AnalyticFirstStep`][sde_diffusion.models.AnalyticFirstStep]."""

    def predict(self, x: torch.Tensor, t, target: str, alpha=None, sigma=None) -> torch.Tensor: ...


def large_noise_eps(x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    r"""The large-noise limit of the noise prediction, \(x / \sqrt{\alpha^2 + \sigma^2}\) (AMED's analytical first
    step, arXiv:2312.00094; see [`AnalyticFirstStep`][sde_diffusion.models.AnalyticFirstStep])."""
    return x * (alpha * alpha + sigma * sigma) ** -0.5


class AnalyticFirstStep:
    r"""AMED's analytical first step (Zhou et al., arXiv:2312.00094, Sec. 3.4): the model, during the first step of a
    solve, with its first evaluation -- at the initial state \(x_T\) -- replaced by the large-noise limit of the noise
    prediction

    \[\hat\epsilon(x_T) = \frac{x_T}{\sqrt{\alpha_T^2 + \sigma_T^2}}\]

    (in EDM variables \(x/\sqrt{1 + t^2}\), the paper's form): for \(\sigma_T \gg \alpha_T\) the data contribute
    \(O(\alpha_T/\sigma_T)\) to \(x_T\), so the network's output there is nearly this normalised state. No network
    call is made, so a solve spends one evaluation less (``solver.final_nfe(steps) - 1``) -- at a fixed budget, one step
    more. The error it makes is that of taking the data prediction \(\hat x_0 \approx 0\) at \(t_{\max}\): small
    for data of zero mean and a small \(\alpha_T\), not for data far from the origin.

    Used through ``sample(..., analytic_first_step=True)``; the loop hands this stand-in to the solver's first step
    and the model itself to every later step. Its first call must be at the initial state (every solver that
    evaluates at the start of a step first; a solver that perturbs the state first, e.g. EDM's churn, is refused);
    every later call goes to the model.
    """

    __slots__ = ("model", "x_T", "used")

    def __init__(self, model: Model, x_T: torch.Tensor):
        self.model, self.x_T, self.used = model, x_T, False

    @property
    def schedule(self) -> NoiseSchedule:
        return self.model.schedule

    @property
    def nfe(self) -> int:
        return self.model.nfe

    def predict(self, x: torch.Tensor, t, target: str, alpha=None, sigma=None) -> torch.Tensor:
        if self.used:
            return self.model.predict(x, t, target, alpha, sigma)
        self.used = True
        if x is not self.x_T:
            raise ValueError(
                "analytic_first_step: the solver's first evaluation is not at the initial state (it perturbs the "
                "state before evaluating, e.g. EDM churn); use a solver that evaluates at the start of its first step"
            )
        if alpha is None or sigma is None:
            alpha, sigma = self.model.alpha_sigma(x, t)
        return self.model.as_prediction(large_noise_eps(x, alpha, sigma), x, target, alpha, sigma, "eps")
