r"""Exact oracles: data distributions whose diffused marginals, scores and flows are known in closed form.

For data \(x_0 \sim p_0\) and \(x_t = \alpha x_0 + \sigma \epsilon\):

* [`PointMass`][sde_diffusion.analytic.PointMass] -- \(p_t = \mathcal{N}(\alpha m, \sigma^2 I)\); the exact data
  prediction is the constant \(m\),
  so every exponential integrator is exact at any step count.
* [`Gaussian`][sde_diffusion.analytic.Gaussian] (diagonal) -- \(p_t = \mathcal{N}(\alpha m, \alpha^2 s^2 + \sigma^2)\).
  Its probability-flow ODE is
  linear and keeps the standardised coordinate \((x - \alpha m)/\sqrt{\alpha^2 s^2 + \sigma^2}\) fixed, which gives
  the exact flow map.
* [`GaussianMixture`][sde_diffusion.analytic.GaussianMixture] --
  \(p_t = \sum_k w_k \mathcal{N}(\alpha \mu_k, \alpha^2 s_k^2 + \sigma^2)\); score and
  posterior mean in log-sum-exp form (stable for tiny \(\sigma\) and far-away \(x\)).

Samples have shape ``(B, *event_shape)``. Each oracle gives a [`Model`][sde_diffusion.models.Model] in any
parametrisation through [`AnalyticDistribution.model`][sde_diffusion.analytic.AnalyticDistribution.model].
"""

from __future__ import annotations

import math

import torch

from .models import Model, broadcast_coeff, check_prediction
from .schedules import NoiseSchedule

__all__ = ["AnalyticDistribution", "PointMass", "Gaussian", "GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


def _coeffs(schedule: NoiseSchedule, t, x: torch.Tensor, check: bool):
    """alpha, sigma at ``t`` (scalar or ``(B,)``), shaped to broadcast against ``x``."""
    t = schedule.check_t(t) if check else torch.as_tensor(t)
    t = t.to(device=x.device, dtype=x.dtype)
    a, s = schedule.alpha_sigma_unchecked(t)
    return broadcast_coeff(a, x), broadcast_coeff(s, x)


class AnalyticDistribution:
    """Base class: the exact ``eps``/``x0`` predictions define every parametrisation."""

    event_shape: torch.Size

    def log_prob(self, x: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        r"""Exact \(\log p_t(x)\) of the diffused marginal, shape ``(B,)``."""
        raise NotImplementedError

    def score(self, x: torch.Tensor, t, schedule: NoiseSchedule) -> torch.Tensor:
        r"""Exact score \(\nabla_x \log p_t(x)\)."""
        a, s = _coeffs(schedule, t, x, True)
        return -self._eps(x, a, s) / s

    def eps(self, x, t, schedule):
        r"""Exact noise prediction \(\mathbb{E}[\epsilon \mid x_t = x]\)."""
        a, s = _coeffs(schedule, t, x, True)
        return self._eps(x, a, s)

    def x0(self, x, t, schedule):
        r"""Exact data prediction \(\mathbb{E}[x_0 \mid x_t = x]\)."""
        a, s = _coeffs(schedule, t, x, True)
        return self._x0(x, a, s)

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype=None, device=None) -> torch.Tensor:
        r"""``n`` samples of the data distribution \(p_0\)."""
        raise NotImplementedError

    def _eps(self, x, a, s):
        raise NotImplementedError

    def _x0(self, x, a, s):
        raise NotImplementedError

    def model(self, schedule: NoiseSchedule, prediction: str = "eps", **kwargs) -> Model:
        """A [`Model`][sde_diffusion.models.Model] whose network is the exact oracle in the chosen parametrisation."""
        check_prediction(prediction)

        def fn(x, t):
            a, s = _coeffs(schedule, t, x, False)
            if prediction == "eps":
                return self._eps(x, a, s)
            if prediction == "x0":
                return self._x0(x, a, s)
            if prediction == "score":
                return -self._eps(x, a, s) / s
            return a * self._eps(x, a, s) - s * self._x0(x, a, s)

        return Model(fn, schedule, prediction, **kwargs)

    def _like(self, x: torch.Tensor, name: str, make):
        """``make()`` moved to ``x``'s device and dtype, cached per (name, device, dtype): a host-to-device copy on
        every model call would synchronise a CUDA sampling loop."""
        key = (name, x.device, x.dtype)
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = tuple(v.to(device=x.device, dtype=x.dtype) for v in make())
        return cache[key]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.event_shape)
        if tuple(x.shape[x.ndim - n :]) != tuple(self.event_shape):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, self.event_shape))})")
        return x.reshape(x.shape[: x.ndim - n] + (-1,))


def _param(value, name: str) -> torch.Tensor:
    t = torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t


class PointMass(AnalyticDistribution):
    """All data at one point ``x0``: the exact denoiser is the constant ``x0``."""

    def __init__(self, x0):
        self.x0_value = _param(x0, "x0")
        self.event_shape = self.x0_value.shape

    def _m(self, x):
        return self._like(x, "m", lambda: (self.x0_value,))[0]

    def _eps(self, x, a, s):
        return (x - a * self._m(x)) / s

    def _x0(self, x, a, s):
        return self._m(x).expand_as(x)

    def log_prob(self, x, t, schedule):
        a, s = _coeffs(schedule, t, x, True)
        z = self._flat((x - a * self._m(x)) / s)
        d = z.shape[-1]
        log_s = torch.log(s).reshape(-1) if s.ndim else torch.log(s)
        return -0.5 * (z * z).sum(-1) - d * log_s - 0.5 * d * _LOG_2PI

    def sample(self, n, generator=None, *, dtype=None, device=None):
        return self.x0_value.to(dtype=dtype or self.x0_value.dtype, device=device).expand(n, *self.event_shape).clone()


class Gaussian(AnalyticDistribution):
    r"""Diagonal Gaussian data \(\mathcal{N}(\mathrm{mean}, \operatorname{diag}(\mathrm{std}^2))\), with the exact
    probability-flow map and data density."""

    def __init__(self, mean, std):
        self.mean = _param(mean, "mean")
        self.std = _param(std, "std")
        if bool((self.std <= 0).any()):
            raise ValueError("std must be positive")
        self.mean, self.std = torch.broadcast_tensors(self.mean, self.std)
        self.event_shape = self.mean.shape

    def _ms(self, x):
        return self._like(x, "ms", lambda: (self.mean, self.std))

    def _var_t(self, x, a, s):
        _, sd = self._ms(x)
        return a * a * sd * sd + s * s

    def _eps(self, x, a, s):
        m, _ = self._ms(x)
        return s * (x - a * m) / self._var_t(x, a, s)

    def _x0(self, x, a, s):
        m, sd = self._ms(x)
        return m + a * sd * sd * (x - a * m) / self._var_t(x, a, s)

    def log_prob(self, x, t, schedule):
        a, s = _coeffs(schedule, t, x, True)
        m, _ = self._ms(x)
        var = self._var_t(x, a, s)
        r = (x - a * m) ** 2 / var + torch.log(var) + _LOG_2PI
        return -0.5 * self._flat(r.expand_as(x)).sum(-1)

    def data_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        r"""Exact \(\log p_0(x)\)."""
        m, sd = self._ms(x)
        r = ((x - m) / sd) ** 2 + 2 * torch.log(sd) + _LOG_2PI
        return -0.5 * self._flat(r.expand_as(x)).sum(-1)

    def flow(self, x: torch.Tensor, t_from, t_to, schedule: NoiseSchedule) -> torch.Tensor:
        """Exact probability-flow map from time ``t_from`` to ``t_to`` (either direction)."""
        a0, s0 = _coeffs(schedule, t_from, x, True)
        a1, s1 = _coeffs(schedule, t_to, x, True)
        m, _ = self._ms(x)
        z = (x - a0 * m) / torch.sqrt(self._var_t(x, a0, s0))
        return a1 * m + torch.sqrt(self._var_t(x, a1, s1)) * z

    def sample(self, n, generator=None, *, dtype=None, device=None):
        dtype = dtype or self.mean.dtype
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=dtype)
        return (self.mean.to(dtype) + self.std.to(dtype) * z).to(device)


class GaussianMixture(AnalyticDistribution):
    r"""Mixture \(\sum_k w_k \mathcal{N}(\mu_k, \operatorname{diag}(s_k^2))\).

    Args:
        means (Tensor): ``(K, *event_shape)``.
        stds (Tensor): ``(K,)`` (isotropic per component) or ``(K, *event_shape)`` (diagonal).
        weights (Tensor | None): ``(K,)`` non-negative, normalised here; default uniform.

    With \(v_k = \alpha^2 s_k^2 + \sigma^2\) and responsibilities
    \(r_k(x) = \operatorname{softmax}_k\big(\log w_k + \log \mathcal{N}(x; \alpha \mu_k, v_k)\big)\) (computed with
    log-sum-exp),

    \[\mathbb{E}[\epsilon \mid x] = \sum_k r_k \frac{\sigma (x - \alpha \mu_k)}{v_k}, \qquad
    \mathbb{E}[x_0 \mid x] = \sum_k r_k \Big(\mu_k + \frac{\alpha s_k^2 (x - \alpha \mu_k)}{v_k}\Big).\]
    """

    def __init__(self, means, stds, weights=None):
        self.means = _param(means, "means")
        if self.means.ndim < 2:
            raise ValueError("means must have shape (K, *event_shape)")
        k = self.means.shape[0]
        self.event_shape = self.means.shape[1:]
        stds = _param(stds, "stds").to(self.means.dtype)
        if stds.ndim == 1:
            if stds.shape[0] != k:
                raise ValueError(f"stds has {stds.shape[0]} entries for {k} components")
            stds = stds.reshape((k,) + (1,) * len(self.event_shape)).expand_as(self.means)
        elif stds.shape != self.means.shape:
            raise ValueError(f"stds must have shape (K,) or {tuple(self.means.shape)}, got {tuple(stds.shape)}")
        if bool((stds <= 0).any()):
            raise ValueError("stds must be positive")
        self.stds = stds.contiguous()
        w = torch.full((k,), 1.0 / k, dtype=self.means.dtype) if weights is None else _param(weights, "weights")
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        self.weights = (w / w.sum()).to(self.means.dtype)

    def _params_like(self, x):
        k = self.means.shape[0]
        return self._like(
            x, "params", lambda: (self.means.reshape(k, -1), self.stds.reshape(k, -1), torch.log(self.weights))
        )

    def _components(self, x, a, s):
        """Flattened x (B, d), per-component residuals (B, K, d), variances, and log-responsibility logits."""
        mu, sd, logw = self._params_like(x)
        xf = self._flat(x)
        af = a.reshape(-1, 1, 1) if isinstance(a, torch.Tensor) and a.ndim else a
        sf = s.reshape(-1, 1, 1) if isinstance(s, torch.Tensor) and s.ndim else s
        diff = xf[:, None, :] - af * mu[None]
        var = af * af * sd[None] ** 2 + sf * sf
        var = var.expand_as(diff)
        logn = -0.5 * ((diff * diff) / var + torch.log(var) + _LOG_2PI).sum(-1)
        return xf, diff, var, af, sf, logn + logw

    def log_prob(self, x, t, schedule):
        a, s = _coeffs(schedule, t, x, True)
        return torch.logsumexp(self._components(x, a, s)[-1], dim=-1)

    def _eps(self, x, a, s):
        xf, diff, var, af, sf, logits = self._components(x, a, s)
        r = torch.softmax(logits, dim=-1)[..., None]
        return (r * sf * diff / var).sum(1).reshape(x.shape)

    def _x0(self, x, a, s):
        mu, sd, _ = self._params_like(x)
        xf, diff, var, af, sf, logits = self._components(x, a, s)
        r = torch.softmax(logits, dim=-1)[..., None]
        return (r * (mu[None] + af * sd[None] ** 2 * diff / var)).sum(1).reshape(x.shape)

    def sample(self, n, generator=None, *, dtype=None, device=None):
        dtype = dtype or self.means.dtype
        idx = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=dtype)
        return (self.means.to(dtype)[idx] + self.stds.to(dtype)[idx] * z).to(device)
