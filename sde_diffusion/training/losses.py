r"""Training objectives for score models: the discrete variational bound, Ho's simplified loss, continuous-time
denoising score matching, the v-loss and min-SNR weighting.

Every loss takes a [`Model`][sde_diffusion.models.Model], so the network may predict ``eps``, ``x0``, ``v`` or the
``score``. With \(x_t = \alpha x_0 + \sigma \epsilon\) all four parametrisations are linear in \((x_0, \epsilon)\) given
\(x_t\), so every squared error is a multiple of the noise error:

* ``eps``: \(\hat\epsilon - \epsilon\);
* ``x0``: \(\hat x_0 - x_0 = -\frac{\sigma}{\alpha} (\hat\epsilon - \epsilon)\);
* ``v`` \(= \alpha \epsilon - \sigma x_0\):
  \(\hat v - v = \frac{\alpha^2 + \sigma^2}{\alpha} (\hat\epsilon - \epsilon)\);
* ``score``: \(\hat s - \nabla \log q(x_t \mid x_0) = -(\hat\epsilon - \epsilon)/\sigma\).

Hence each objective below is \(\mathbb{E}_t\big[w(t)\, \|\hat\epsilon - \epsilon\|^2\big]\) for some weight \(w\)
(Kingma et al. 2021, arXiv:2107.00630; Kingma & Gao 2023, arXiv:2303.00848). The implementation computes the error in
the network's own parametrisation (no cancellation) and multiplies by \(w(t)\) times the conversion factor squared, both
in float64.

Conventions: squared norms are summed over all non-batch dimensions (values are in nats for the bounds); a time drawn
for a sample is shared by its dimensions; ``reduction`` is ``"mean"`` (batch mean, the default), ``"sum"`` or
``"none"`` (per-sample values of shape ``(B,)``). \(\mathrm{SNR}(t) = \alpha^2/\sigma^2 = e^{2\lambda}\) with
\(\lambda\) the half log-SNR of [`sde_diffusion.schedules`][sde_diffusion.schedules].

Discrete chain (Sohl-Dickstein et al. 2015, arXiv:1503.03585; Ho et al. 2020, arXiv:2006.11239): for a
[`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule with \(N\) steps, step \(k = 1, \dots, N\) is the continuous
time \(t_k = k/N\) and \(\bar\alpha_k = \alpha(t_k)^2\); see [`vlb`][sde_diffusion.training.losses.vlb] for the bound
and its terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models import Model, broadcast_coeff
from ..schedules import NoiseSchedule, VPDiscrete
from ._registry import lookup

__all__ = [
    "TIME_SAMPLINGS",
    "DSM_WEIGHTINGS",
    "VLB_VARIANCES",
    "LOSSES",
    "sample_time",
    "time_density",
    "eps_weighted_loss",
    "simple_loss",
    "dsm_loss",
    "v_loss",
    "min_snr_loss",
    "VLBCoefficients",
    "vlb_coefficients",
    "prior_kl",
    "vlb_term",
    "vlb_terms",
    "vlb",
    "get_loss",
]

TIME_SAMPLINGS = ("uniform", "logsnr", "discrete")
DSM_WEIGHTINGS = ("sigma2", "likelihood")
VLB_VARIANCES = ("beta", "beta_tilde")
_REDUCTIONS = ("mean", "sum", "none")
_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_model(model: Model) -> Model:
    if not isinstance(model, Model):
        raise TypeError(f"model must be a sde_diffusion.models.Model, got {type(model).__name__}")
    return model


def _discrete_steps(schedule: NoiseSchedule) -> VPDiscrete:
    if not isinstance(schedule, VPDiscrete):
        raise ValueError(f"the discrete chain needs a VPDiscrete schedule, got {type(schedule).__name__}")
    return schedule


def _step_range(schedule: VPDiscrete) -> tuple[int, int]:
    """The steps ``k`` with ``k/N`` in ``[t_min, t_max]``."""
    n = schedule.num_steps
    lo = max(1, math.ceil(schedule.t_min * n - 1e-9))
    hi = min(n, math.floor(schedule.t_max * n + 1e-9))
    if lo > hi:
        raise ValueError("no grid time k/N of the VPDiscrete schedule lies in [t_min, t_max]")
    return lo, hi


def sample_time(
    schedule: NoiseSchedule,
    n: int,
    *,
    kind: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Draw ``n`` training times (float64, shape ``(n,)``).

    Args:
        schedule: the noise schedule; times lie in ``[t_min, t_max]``.
        n: how many.
        kind: ``"uniform"`` -- \(t \sim U[t_{\min}, t_{\max}]\); ``"logsnr"`` -- the half log-SNR \(\lambda(t)\)
            uniform on \([\lambda(t_{\max}), \lambda(t_{\min})]\) (density
            \(p(t) = -\lambda'(t)/(\lambda_{\max} - \lambda_{\min})\), which is proportional to \(g^2/\sigma^2\):
            importance sampling for the likelihood weighting); ``"discrete"`` -- a uniform step \(k\) of a
            [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] chain, \(t = k/N\).
        generator: random generator (its device is used when ``device`` is not given).
        device: where to put the times.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    if kind == "discrete":
        chain = _discrete_steps(schedule)
        lo, hi = _step_range(chain)
        k = torch.randint(lo, hi + 1, (n,), generator=generator, device=device)
        return k.to(torch.float64) / chain.num_steps
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    if kind == "uniform":
        t = schedule.t_min + (schedule.t_max - schedule.t_min) * u
    elif kind == "logsnr":
        lam = schedule.lambda_min + (schedule.lambda_max - schedule.lambda_min) * u
        t = schedule.inverse_lambda_unchecked(lam)
    else:
        raise ValueError(f"kind must be one of {TIME_SAMPLINGS}, got {kind!r}")
    return t.clamp(schedule.t_min, schedule.t_max)


def time_density(schedule: NoiseSchedule, t: torch.Tensor, kind: str = "uniform") -> torch.Tensor:
    r"""Density ``p(t)`` of [`sample_time`][sde_diffusion.training.losses.sample_time] (continuous kinds only).

    ``uniform``: \(1/(t_{\max} - t_{\min})\); ``logsnr``: \(-\lambda'(t)/(\lambda_{\max} - \lambda_{\min})\) with
    \(-\lambda'(t) = g^2(t)/(2 \sigma^2(t))\) (from
    \(g^2 = \mathrm{d}\sigma^2/\mathrm{d}t - 2 f \sigma^2 = -2 \sigma^2 \lambda'\)).
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    if kind == "uniform":
        return torch.full_like(t, 1.0 / (schedule.t_max - schedule.t_min))
    if kind == "logsnr":
        _, s = schedule.alpha_sigma_unchecked(t)
        return schedule.g2_unchecked(t) / (2.0 * s * s * (schedule.lambda_max - schedule.lambda_min))
    if kind == "discrete":
        raise ValueError("the discrete time sampling has no density; it defines an average over steps")
    raise ValueError(f"kind must be one of {TIME_SAMPLINGS}, got {kind!r}")


def _eps_factor2(prediction: str, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``c`` with ``||eps_hat - eps||^2 = c ||native_hat - native||^2`` (float64)."""
    if prediction == "eps":
        return torch.ones_like(a)
    if prediction == "x0":
        return (a / s) ** 2
    if prediction == "v":
        return (a / (a * a + s * s)) ** 2
    if prediction == "score":
        return s * s
    raise ValueError(f"unknown prediction {prediction!r}")


def _native_sq_error(
    model: Model, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, a64: torch.Tensor, s64: torch.Tensor
) -> torch.Tensor:
    """``||out - target||^2`` per sample, in the model's parametrisation, at ``x_t = alpha x0 + sigma noise``."""
    a = broadcast_coeff(a64.to(x0.dtype), x0)
    s = broadcast_coeff(s64.to(x0.dtype), x0)
    xt = a * x0 + s * noise
    out = model(xt, t)
    kind = model.prediction
    if kind == "eps":
        target = noise
    elif kind == "x0":
        target = x0
    elif kind == "v":
        target = a * noise - s * x0
    else:
        target = -noise / s
    work = torch.promote_types(out.dtype, x0.dtype)
    if work in (torch.float16, torch.bfloat16):
        work = torch.float32
    err = out.to(work) - target.to(work)
    return (err * err).reshape(err.shape[0], -1).sum(-1)


def _prepare(model: Model, x0: torch.Tensor, t, noise, generator, kind: str):
    _check_model(model)
    if x0.ndim < 1:
        raise ValueError("x0 must have a batch dimension")
    b = x0.shape[0]
    if t is None:
        t = sample_time(model.schedule, b, kind=kind, generator=generator, device=x0.device)
    else:
        t = torch.as_tensor(t, dtype=torch.float64, device=x0.device)
        t = t.expand(b) if t.ndim == 0 else t
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        model.schedule.check_t(t)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match x0 shape {tuple(x0.shape)}")
    a64, s64 = model.schedule.alpha_sigma_unchecked(t)
    return t, noise, a64, s64


def eps_weighted_loss(
    model: Model,
    x0: torch.Tensor,
    weight: Callable,
    *,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    time_sampling: str = "uniform",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""The general form \(w(t)\, \|\hat\epsilon(x_t, t) - \epsilon\|^2\) with
    \(x_t = \alpha(t) x_0 + \sigma(t) \epsilon\).

    Args:
        model: the network with its schedule and parametrisation.
        x0: data batch ``(B, ...)``.
        weight: ``weight(t, alpha, sigma) -> w`` on float64 tensors of shape ``(B,)``.
        generator: random generator for ``t`` and ``eps``.
        t: times ``(B,)`` (or a scalar); drawn with ``time_sampling`` when omitted.
        noise: ``eps``; drawn when omitted.
        time_sampling: see [`sample_time`][sde_diffusion.training.losses.sample_time].
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    t, noise, a64, s64 = _prepare(model, x0, t, noise, generator, time_sampling)
    coeff = weight(t, a64, s64) * _eps_factor2(model.prediction, a64, s64)
    sq = _native_sq_error(model, x0, t, noise, a64, s64)
    return _reduce(coeff.to(sq.dtype) * sq, reduction)


# ---------------------------------------------------------------------------------------------------------------------
# continuous-time objectives
# ---------------------------------------------------------------------------------------------------------------------


def simple_loss(
    model: Model,
    x0: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    time_sampling: str | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Ho et al.'s simplified objective (arXiv:2006.11239, eq. 14):

    \[L_{\rm simple} = \mathbb{E}_{t, x_0, \epsilon}
    \|\epsilon - \hat\epsilon(\alpha_t x_0 + \sigma_t \epsilon, t)\|^2.\]

    \(t\) is a uniform step of the chain for a [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule (Ho's
    \(t \sim U\{1, \dots, T\}\)) and \(U[t_{\min}, t_{\max}]\) otherwise (override with ``time_sampling``). It is the
    VLB with the per-step weights of [`vlb_coefficients`][sde_diffusion.training.losses.vlb_coefficients] replaced by a
    constant (see [`vlb`][sde_diffusion.training.losses.vlb]); in continuous
    time it is \(2/(t_{\max} - t_{\min})\) times [`dsm_loss`][sde_diffusion.training.losses.dsm_loss] with
    ``weighting="sigma2"``.
    """
    if time_sampling is None:
        time_sampling = "discrete" if isinstance(_check_model(model).schedule, VPDiscrete) else "uniform"
    return eps_weighted_loss(
        model,
        x0,
        lambda t, a, s: torch.ones_like(t),
        generator=generator,
        t=t,
        noise=noise,
        time_sampling=time_sampling,
        reduction=reduction,
    )


def _dsm_weight(schedule: NoiseSchedule, weighting) -> Callable:
    if callable(weighting):
        return lambda t, a, s: torch.as_tensor(weighting(t), dtype=torch.float64, device=t.device).expand_as(t)
    if weighting == "sigma2":
        return lambda t, a, s: s * s
    if weighting == "likelihood":
        return lambda t, a, s: schedule.g2_unchecked(t)
    raise ValueError(f"weighting must be one of {DSM_WEIGHTINGS} or a callable, got {weighting!r}")


def dsm_loss(
    model: Model,
    x0: torch.Tensor,
    *,
    weighting: str | Callable = "sigma2",
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    time_sampling: str = "uniform",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Continuous-time denoising score matching (Song et al. 2021, arXiv:2011.13456, eq. 7):

    \[J(\theta; w) = \frac12 \int_{t_{\min}}^{t_{\max}} w(t)\, \mathbb{E} \|s_\theta(x_t, t)
    - \nabla \log q(x_t \mid x_0)\|^2\, \mathrm{d}t,\]

    with \(\nabla \log q(x_t \mid x_0) = -\epsilon/\sigma_t\) and the weighting written \(w(t)\) (Song's
    \(\lambda(t)\); here \(\lambda\) is the half log-SNR), estimated by one \(t \sim p(t)\) per sample as
    \(\frac{w(t)}{2 p(t)} \|s_\theta - \nabla \log q\|^2 = \frac{w(t)}{2 p(t) \sigma^2} \|\hat\epsilon - \epsilon\|^2\).

    Weightings: ``"sigma2"`` -- \(w = \sigma^2\) (Song's choice; the integrand is
    \(\|\hat\epsilon - \epsilon\|^2/2\), Ho's \(L_{\rm simple}\) in continuous time); ``"likelihood"`` -- \(w = g^2\)
    (Song, Durkan, Murray & Ermon 2021, arXiv:2101.09258): then \(g^2/\sigma^2 = -2 \lambda'(t)\) and \(J\) is the
    score-matching part of the bound
    \(\mathrm{KL}(p_0 \,\|\, p_\theta^{\rm SDE}) \le J(\theta; g^2) + \mathrm{KL}(p_T \,\|\, \pi)\); or a callable
    \(w(t)\).

    ``time_sampling="logsnr"`` samples \(\lambda(t)\) uniformly; for the likelihood weighting this is the exact
    importance sampler \(p(t) \propto g^2/\sigma^2\) and the estimator becomes
    \((\lambda_{\max} - \lambda_{\min})\, \|\hat\epsilon - \epsilon\|^2\). (Song's eq. 7 is the expectation under
    \(U[0, T]\) without the \(\frac12\); it differs by the constant factor \(2/(t_{\max} - t_{\min})\).)
    """
    if time_sampling == "discrete":
        raise ValueError("dsm_loss estimates an integral over t; use time_sampling='uniform' or 'logsnr'")
    sch = _check_model(model).schedule
    lam = _dsm_weight(sch, weighting)

    def weight(t, a, s):
        return lam(t, a, s) / (2.0 * time_density(sch, t, time_sampling) * s * s)

    return eps_weighted_loss(
        model, x0, weight, generator=generator, t=t, noise=noise, time_sampling=time_sampling, reduction=reduction
    )


def v_loss(
    model: Model,
    x0: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    time_sampling: str = "uniform",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""v-prediction loss (Salimans & Ho 2022, arXiv:2202.00512): \(\mathbb{E}_t \|\hat v - v\|^2\) with
    \(v = \alpha \epsilon - \sigma x_0\).

    Since \(\hat v - v = \frac{\alpha^2 + \sigma^2}{\alpha} (\hat\epsilon - \epsilon)\), it is the eps-loss weighted by
    \((\alpha^2 + \sigma^2)^2/\alpha^2\); for VP schedules \(1/\alpha^2 = 1 + 1/\mathrm{SNR}\), i.e.
    \((1 + \mathrm{SNR})\, \|\hat x_0 - x_0\|^2\).
    """
    return eps_weighted_loss(
        model,
        x0,
        lambda t, a, s: ((a * a + s * s) / a) ** 2,
        generator=generator,
        t=t,
        noise=noise,
        time_sampling=time_sampling,
        reduction=reduction,
    )


def min_snr_loss(
    model: Model,
    x0: torch.Tensor,
    *,
    gamma: float = 5.0,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    time_sampling: str = "uniform",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Min-SNR-gamma weighting (Hang et al. 2023, arXiv:2303.09556):
    \(\mathbb{E}_t \min(\mathrm{SNR}(t), \gamma)\, \|\hat x_0 - x_0\|^2\).

    The paper's eps form \(\frac{\min(\mathrm{SNR}, \gamma)}{\mathrm{SNR}} \|\hat\epsilon - \epsilon\|^2\) and v form
    (VP) \(\frac{\min(\mathrm{SNR}, \gamma)}{\mathrm{SNR} + 1} \|\hat v - v\|^2\) are the same quantity, because
    \(\|\hat\epsilon - \epsilon\|^2 = \mathrm{SNR}\, \|\hat x_0 - x_0\|^2\) and
    \(\|\hat v - v\|^2 = (1 + \mathrm{SNR})\, \|\hat x_0 - x_0\|^2\); the value therefore does not depend on the
    network's parametrisation. ``gamma = inf`` gives \(L_{\rm simple}\).
    """
    gamma = float(gamma)
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")

    def weight(t, a, s):
        snr = (a / s) ** 2
        return torch.clamp(snr, max=gamma) / snr

    return eps_weighted_loss(
        model, x0, weight, generator=generator, t=t, noise=noise, time_sampling=time_sampling, reduction=reduction
    )


# ---------------------------------------------------------------------------------------------------------------------
# the discrete variational bound
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLBCoefficients:
    r"""Per-step coefficients of the discrete VLB (float64 tensors of length ``N``, index ``k-1`` for step ``k``).

    Attributes:
        alphas_cumprod: \(\bar\alpha_k\).
        betas: \(\beta_k = 1 - \bar\alpha_k/\bar\alpha_{k-1}\).
        posterior_variance: \(\tilde\beta_k = \frac{1 - \bar\alpha_{k-1}}{1 - \bar\alpha_k} \beta_k\) (0 for \(k = 1\)).
        model_variance: \(s_k^2\), the variance of \(p_\theta(x_{k-1} \mid x_k)\) (for \(k = 1\): the decoder's).
        eps_weight: \(w_k\) with \(L_{k-1} = \mathrm{const}_k + w_k \|\hat\epsilon - \epsilon\|^2\);
            \(w_k = \beta_k^2 / \big(2 s_k^2 (1 - \beta_k)(1 - \bar\alpha_k)\big)\).
        const: \(\mathrm{const}_k\) per dimension: \((r - 1 - \log r)/2\), \(r = \tilde\beta_k/s_k^2\) for \(k \ge 2\);
            \(\log(2 \pi s_1^2)/2\) for the decoder.
    """

    alphas_cumprod: torch.Tensor
    betas: torch.Tensor
    posterior_variance: torch.Tensor
    model_variance: torch.Tensor
    eps_weight: torch.Tensor
    const: torch.Tensor


def vlb_coefficients(schedule: VPDiscrete, variance: str = "beta") -> VLBCoefficients:
    r"""The per-step coefficients of [`vlb`][sde_diffusion.training.losses.vlb] for a
    [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule.

    ``variance="beta"``: \(s_k^2 = \beta_k\) (decoder \(s_1^2 = \beta_1\)); ``"beta_tilde"``: \(s_k^2 = \tilde\beta_k\)
    (decoder \(s_1^2 = \tilde\beta_2\), the clipped value of Ho et al.'s code, since \(\tilde\beta_1 = 0\)). With
    ``beta_tilde``, for \(k \ge 2\),

    \[w_k = \tfrac12 (\mathrm{SNR}_{k-1}/\mathrm{SNR}_k - 1)
    = \tfrac12 \operatorname{expm1}\big(2 (\lambda_{k-1} - \lambda_k)\big).\]
    """
    sch = _discrete_steps(schedule)
    if variance not in VLB_VARIANCES:
        raise ValueError(f"variance must be one of {VLB_VARIANCES}, got {variance!r}")
    log_ab = 2.0 * sch.log_alpha_knots  # log alpha_bar_k, k = 1..N
    log_ab_prev = torch.cat([log_ab.new_zeros(1), log_ab[:-1]])
    ab = torch.exp(log_ab)
    beta = -torch.expm1(log_ab - log_ab_prev)
    one_m_ab = -torch.expm1(log_ab)
    one_m_ab_prev = -torch.expm1(log_ab_prev)
    beta_tilde = one_m_ab_prev / one_m_ab * beta
    if variance == "beta":
        s2 = beta.clone()
    else:
        s2 = beta_tilde.clone()
        s2[0] = beta_tilde[1]
    w = beta * beta / (2.0 * s2 * (1.0 - beta) * one_m_ab)
    r = beta_tilde / s2
    const = 0.5 * (r - 1.0 - torch.log(r))
    const[0] = 0.5 * (_LOG_2PI + torch.log(s2[0]))
    return VLBCoefficients(ab, beta, beta_tilde, s2, w, const)


def prior_kl(schedule: VPDiscrete, x0: torch.Tensor) -> torch.Tensor:
    r"""\(L_T = \mathrm{KL}(q(x_N \mid x_0) \,\|\, \mathcal{N}(0, I))
    = \frac12 \sum_i \big[\bar\alpha_N (x_{0,i}^2 - 1) - \log(1 - \bar\alpha_N)\big]\), per sample (shape ``(B,)``)."""
    sch = _discrete_steps(schedule)
    log_ab = float(2.0 * sch.log_alpha_knots[-1])
    ab = math.exp(log_ab)
    d = x0[0].numel()
    sq = (x0 * x0).reshape(x0.shape[0], -1).sum(-1)
    return 0.5 * (ab * sq - d * (ab + math.log(-math.expm1(log_ab))))


def vlb_term(
    model: Model,
    x0: torch.Tensor,
    k: torch.Tensor,
    noise: torch.Tensor,
    *,
    variance: str = "beta",
    coefficients: VLBCoefficients | None = None,
) -> torch.Tensor:
    r"""One term of the bound per sample: \(L_{k-1}\) evaluated at
    \(x_k = \sqrt{\bar\alpha_k}\, x_0 + \sqrt{1 - \bar\alpha_k}\, \epsilon\) (``noise``; step \(k\) in \(1, \dots, N\),
    one per sample).

    For \(k \ge 2\): \(\mathrm{KL}(q(x_{k-1} \mid x_k, x_0) \,\|\, p_\theta(x_{k-1} \mid x_k))
    = d\, \mathrm{const}_k + w_k \|\hat\epsilon - \epsilon\|^2\); for \(k = 1\):
    \(-\log \mathcal{N}(x_0; \mu_\theta(x_1, 1), s_1^2 I)\) (see [`vlb`][sde_diffusion.training.losses.vlb]).
    """
    sch = _discrete_steps(_check_model(model).schedule)
    c = coefficients or vlb_coefficients(sch, variance)
    k = torch.as_tensor(k, device=x0.device).to(torch.long)
    k = k.expand(x0.shape[0]) if k.ndim == 0 else k
    n = sch.num_steps
    if bool(((k < 1) | (k > n)).any()):
        raise ValueError(f"steps k must lie in 1..{n}")
    idx = k - 1
    ab = c.alphas_cumprod.to(x0.device)[idx]
    a64, s64 = torch.sqrt(ab), torch.sqrt(-torch.expm1(torch.log(ab)))
    t = k.to(torch.float64) / n
    sq = _native_sq_error(model, x0, t, noise, a64, s64)
    coeff = c.eps_weight.to(x0.device)[idx] * _eps_factor2(model.prediction, a64, s64)
    d = x0[0].numel()
    return (d * c.const.to(x0.device)[idx]).to(sq.dtype) + coeff.to(sq.dtype) * sq


def vlb_terms(
    model: Model,
    x0: torch.Tensor,
    *,
    variance: str = "beta",
    generator: torch.Generator | None = None,
    steps_per_call: int = 64,
) -> torch.Tensor:
    r"""All terms of the bound, shape ``(B, N + 1)``: columns ``0..N-1`` hold \(L_0, \dots, L_{N-1}\) (step
    \(k\) = column + 1, each with its own noise draw), column \(N\) holds \(L_T\). Their row sum is the exact
    full-sum VLB estimator (exact in ``k``, one Monte Carlo draw of ``x_k`` per term).

    ``steps_per_call`` steps are stacked into one network call of batch ``steps_per_call * B``.
    """
    sch = _discrete_steps(_check_model(model).schedule)
    c = vlb_coefficients(sch, variance)
    n, b = sch.num_steps, x0.shape[0]
    cols = []
    for start in range(1, n + 1, steps_per_call):
        ks = torch.arange(start, min(start + steps_per_call, n + 1), device=x0.device)
        m = ks.numel()
        xr = x0.unsqueeze(0).expand(m, *x0.shape).reshape(m * b, *x0.shape[1:])
        noise = torch.randn(xr.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        kr = ks.repeat_interleave(b)
        cols.append(vlb_term(model, xr, kr, noise, coefficients=c).reshape(m, b).T)
    cols.append(prior_kl(sch, x0).to(cols[0].dtype)[:, None])
    return torch.cat(cols, dim=1)


def vlb(
    model: Model,
    x0: torch.Tensor,
    *,
    variance: str = "beta",
    estimator: str = "mc",
    generator: torch.Generator | None = None,
    k: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Variational bound on \(-\log p_\theta(x_0)\) (nats) of the discrete chain of a
    [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule (Sohl-Dickstein et al. 2015, arXiv:1503.03585;
    Ho et al. 2020, arXiv:2006.11239, eq. 5):

    \[L_{\rm vlb} = L_T + \sum_{k=2}^N L_{k-1} + L_0,\]

    with

    * \(L_T = \mathrm{KL}(q(x_N \mid x_0) \,\|\, \mathcal{N}(0, I))\)
      ([`prior_kl`][sde_diffusion.training.losses.prior_kl]);
    * \(L_{k-1} = \mathbb{E}_q \mathrm{KL}(q(x_{k-1} \mid x_k, x_0) \,\|\, p_\theta(x_{k-1} \mid x_k))\), where
      \(q(x_{k-1} \mid x_k, x_0) = \mathcal{N}(\tilde\mu(x_k, x_0), \tilde\beta_k I)\),
      \(\tilde\mu(x_k, x_0) = \frac{\sqrt{\bar\alpha_{k-1}}\, \beta_k}{1 - \bar\alpha_k} x_0 +
      \frac{\sqrt{1 - \beta_k}\, (1 - \bar\alpha_{k-1})}{1 - \bar\alpha_k} x_k\),
      and \(p_\theta(x_{k-1} \mid x_k) = \mathcal{N}(\tilde\mu(x_k, \hat x_0(x_k)), s_k^2 I)\), i.e. Ho's
      \(\mu_\theta = \big(x_k - \frac{\beta_k}{\sqrt{1 - \bar\alpha_k}} \hat\epsilon\big)/\sqrt{1 - \beta_k}\).
      The Gaussian KL is \(\frac{d}{2} (r - 1 - \log r) + \|\tilde\mu - \mu_\theta\|^2/(2 s_k^2)\) with
      \(r = \tilde\beta_k/s_k^2\) and
      \(\tilde\mu - \mu_\theta = -\frac{\beta_k}{\sqrt{(1 - \beta_k)(1 - \bar\alpha_k)}} (\epsilon - \hat\epsilon)\);
    * \(L_0 = -\mathbb{E}_q \log \mathcal{N}(x_0; \mu_\theta(x_1, 1), s_1^2 I)\) -- a *continuous* Gaussian decoder
      (our choice: the data here are real-valued, so the bound is on a density; Ho et al.'s discretised decoder for
      8-bit images is not used). \(\mu_\theta(x_1, 1) = \hat x_0(x_1)\) since \(\bar\alpha_0 = 1\).

    So \(L_{\rm vlb} = L_T + \sum_k \big(d\, \mathrm{const}_k + w_k \mathbb{E}\|\hat\epsilon - \epsilon\|^2\big)\) (see
    [`VLBCoefficients`][sde_diffusion.training.losses.VLBCoefficients]): \(L_{\rm simple}\) is this bound with the
    weights \(w_k\) replaced by a constant and
    the constants dropped. The bound always covers the whole chain \(k = 1, \dots, N\); the schedule's
    ``t_min``/``t_max`` are not used.

    Args:
        model: network on a [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete] schedule (evaluated at ``t = k/N``).
        x0: data ``(B, ...)``.
        variance: ``"beta"`` or ``"beta_tilde"`` (see
            [`vlb_coefficients`][sde_diffusion.training.losses.vlb_coefficients]).
        estimator: ``"mc"`` -- unbiased one-step estimate \(L_T + N L_{k-1}\) with \(k \sim U\{1, \dots, N\}\) per
            sample; ``"full"`` -- all ``N`` terms ([`vlb_terms`][sde_diffusion.training.losses.vlb_terms]; cost ``N``
            network evaluations per sample).
        generator: random generator.
        k: steps for the ``"mc"`` estimator (drawn when omitted).
        noise: noise for the ``"mc"`` estimator (drawn when omitted).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    sch = _discrete_steps(_check_model(model).schedule)
    if estimator == "full":
        return _reduce(vlb_terms(model, x0, variance=variance, generator=generator).sum(1), reduction)
    if estimator != "mc":
        raise ValueError(f"estimator must be 'mc' or 'full', got {estimator!r}")
    n, b = sch.num_steps, x0.shape[0]
    if k is None:
        k = torch.randint(1, n + 1, (b,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    term = vlb_term(model, x0, k, noise, variance=variance)
    return _reduce(prior_kl(sch, x0).to(term.dtype) + n * term, reduction)


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------

LOSSES: dict[str, Callable] = {
    "simple": simple_loss,
    "dsm": dsm_loss,
    "v": v_loss,
    "min_snr": min_snr_loss,
    "vlb": vlb,
}
"""Losses by name; each is ``loss(model, x0, *, generator=..., reduction=..., **options)``."""


def get_loss(name: str | Callable, **options) -> Callable:
    """A loss ``fn(model, x0, generator) -> scalar`` by name (see [`LOSSES`][sde_diffusion.training.losses.LOSSES]) with
    its options bound."""
    fn = lookup(LOSSES, name, "loss")

    def loss(model: Model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return fn(model, x0, generator=generator, **options)

    return loss
