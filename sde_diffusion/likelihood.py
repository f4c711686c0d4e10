r"""Exact likelihoods through the probability-flow ODE.

The probability-flow ODE \(\mathrm{d}x/\mathrm{d}t = v(x, t) = f(t)\, x - \tfrac12 g^2(t)\, \nabla_x \log p_t(x)\)
transports \(p_t\) (Song et al. 2021, arXiv:2011.13456). Along a trajectory the instantaneous change of variables
(Chen et al. 2018, arXiv:1806.07366) gives \(\frac{\mathrm{d}}{\mathrm{d}t} \log p_t(x(t)) = -\nabla \cdot v(x(t), t)\),
hence

\[\log p_{t_{\min}}(x) = \log p_{t_{\max}}(x(t_{\max}))
+ \int_{t_{\min}}^{t_{\max}} \nabla \cdot v(x(t), t)\, \mathrm{d}t,\]

with \(x(t_{\min}) = x\). [`log_likelihood`][sde_diffusion.likelihood.log_likelihood] integrates the augmented state
\((x, \int \nabla \cdot v)\) from
\(t_{\min}\) to \(t_{\max}\) with torchdiffeq (dopri5 by default, float64 by default; the end time is passed as
``step_t`` so that the solver lands on it instead of interpolating) and replaces the unknown \(p_{t_{\max}}\) by the
prior \(\mathcal{N}(0, \sigma(t_{\max})^2 I)\) ([`prior_logp`][sde_diffusion.sdes.ForwardSDE.prior_logp]) unless another
prior
is given.

The divergence is either exact (\(d\) vector-Jacobian products per evaluation -- for small \(d\)) or Hutchinson's
estimator \(\nabla \cdot v \approx \frac1P \sum_j z_j^\top \frac{\partial v}{\partial x} z_j\) with
\(\mathbb{E}[z z^\top] = I\) (Hutchinson 1989; FFJORD, Grathwohl et al.
2019, arXiv:1810.01367). The probes are drawn once and kept fixed along the trajectory, so each probe gives an
unbiased estimate \(z^\top \big(\int \frac{\partial v}{\partial x}\, \mathrm{d}t\big) z\) of the integral; with
``n_probes > 1`` the spread over probes gives a standard error.

Bits per dimension for data quantised to ``num_bins`` levels on ``data_range = (lo, hi)``: with bin width
\(\Delta = (\mathrm{hi} - \mathrm{lo})/\mathtt{num\_bins}\), \(\mathrm{bpd} = -(\log p(y) + d \log \Delta)/(d \log 2)\),
where \(y\) is the uniformly dequantised point (Theis et al. 2016, arXiv:1511.01844):
\(\log P(k) \ge \mathbb{E}_u \log p((k + u) \Delta + \mathrm{lo}) + d \log \Delta\). For 8-bit images on \([-1, 1]\)
that is \(-\log p/(d \log 2) + 7\).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .models import Model
from .schedules import NoiseSchedule
from .sdes import ForwardSDE, ProbabilityFlowODE

__all__ = ["LikelihoodResult", "log_likelihood", "dequantize", "bits_per_dim", "divergence"]

_LOG2 = math.log(2.0)


@dataclass
class LikelihoodResult:
    r"""Result of [`log_likelihood`][sde_diffusion.likelihood.log_likelihood] (per sample, shape ``(B,)``).

    Attributes:
        log_prob: \(\log p_{t_{\min}}(x)\) in nats (of the dequantised point when dequantising).
        std_err: standard error of ``log_prob`` over Hutchinson probes (zeros for the exact trace; NaN with a single
            probe).
        bpd: bits per dimension (\(-\log p/(d \log 2)\), or the discrete bound when ``num_bins`` is given).
        bpd_std_err: standard error of ``bpd``.
        prior_logp: \(\log \mathrm{prior}(x(t_{\max}))\).
        delta_logp: \(\int_{t_{\min}}^{t_{\max}} \nabla \cdot v\, \mathrm{d}t\) (mean over probes).
        z: the end point \(x(t_{\max})\).
        nfe: number of vector-field evaluations of the ODE solver.
    """

    log_prob: torch.Tensor
    std_err: torch.Tensor
    bpd: torch.Tensor
    bpd_std_err: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    z: torch.Tensor
    nfe: int


def divergence(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    trace: str = "exact",
    probes: torch.Tensor | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""\(v\) = ``fn(x)`` and its divergence \(\sum_i \partial v_i/\partial x_i\) per sample.

    ``trace="exact"``: one vector-Jacobian product per dimension, returns ``(v, div)`` with ``div`` of shape ``(B,)``.
    ``trace="hutchinson"``: ``probes`` of shape ``(P, *x.shape)``; returns \((v, z^\top J z)\) of shape ``(P, B)``.
    ``fn`` must treat samples independently (no batch mixing).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = fn(x)
        b = x.shape[0]
        if trace == "exact":
            vf = v.reshape(b, -1)
            d = vf.shape[1]
            div = torch.zeros(b, dtype=v.dtype, device=v.device)
            for i in range(d):
                (gi,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
                div = div + gi.reshape(b, -1)[:, i]
            return v, div
        if trace == "hutchinson":
            if probes is None:
                raise ValueError("trace='hutchinson' needs probes")
            est = []
            for z in probes:
                (g,) = torch.autograd.grad(v, x, grad_outputs=z, retain_graph=True, create_graph=create_graph)
                est.append((g * z).reshape(b, -1).sum(-1))
            return v, torch.stack(est)
    raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")


def dequantize(
    x: torch.Tensor,
    *,
    num_bins: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Uniform dequantisation. ``x`` holds quantised values \(\mathrm{lo} + k (\mathrm{hi} - \mathrm{lo})/(n - 1)\),
    \(k = 0, \dots, n - 1\) with \(n\) = ``num_bins`` (e.g. 8-bit images scaled to \([-1, 1]\) as \(k/127.5 - 1\));
    returns \(y = \mathrm{lo} + (k + u) (\mathrm{hi} - \mathrm{lo})/n\) with \(u \sim U[0, 1)\), so \(y\) lies in bin
    \(k\) of \([\mathrm{lo}, \mathrm{hi})\)."""
    lo, hi = (float(v) for v in data_range)
    if not hi > lo or num_bins < 2:
        raise ValueError("need data_range lo < hi and num_bins >= 2")
    k = torch.round((x - lo) / (hi - lo) * (num_bins - 1)).clamp(0, num_bins - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return lo + (k + u) * ((hi - lo) / num_bins)


def bits_per_dim(
    log_prob: torch.Tensor, dim: int, *, num_bins: int | None = None, data_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    r"""\(-(\log p + d \log \Delta)/(d \log 2)\) with \(\Delta = (\mathrm{hi} - \mathrm{lo})/\mathtt{num\_bins}\)
    (\(\Delta = 1\) when ``num_bins`` is ``None``: plain nats-to-bits of a density)."""
    offset = 0.0 if num_bins is None else dim * math.log((data_range[1] - data_range[0]) / num_bins)
    return -(log_prob + offset) / (dim * _LOG2)


class _CastModel:
    """Calls ``model`` in its own dtype on a float64 ODE state."""

    def __init__(self, model: Model, dtype: torch.dtype | None):
        self.model, self.dtype = model, dtype

    def __call__(self, x, t):
        dt = self.dtype or x.dtype
        return self.model(x.to(dt), t).to(x.dtype)


def _model_dtype(model: Model) -> torch.dtype | None:
    fn = model.fn
    params = getattr(fn, "parameters", None)
    if callable(params):
        for p in params():
            return p.dtype
    return None


def log_likelihood(
    model: Model,
    x: torch.Tensor,
    *,
    trace: str = "exact",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    n_probes: int = 1,
    probe: str = "rademacher",
    t_min: float | None = None,
    t_max: float | None = None,
    dtype: torch.dtype = torch.float64,
    model_dtype: torch.dtype | None = None,
    prior: Callable | None = None,
    dequantize_data: bool = False,
    num_bins: int | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
    step_at_knots: bool = True,
    options: dict | None = None,
) -> LikelihoodResult:
    r"""\(\log p_{t_{\min}}(x)\) of the model's probability-flow ODE (see the module docstring).

    Args:
        model: the score model (any parametrisation; thresholding is ignored).
        x: data ``(B, ...)``.
        trace: ``"exact"`` (``d`` backward passes per evaluation) or ``"hutchinson"``.
        rtol: relative tolerance of the ODE solver.
        atol: absolute tolerance of the ODE solver.
        method: torchdiffeq method (``dopri5``, ``dopri8``, ``bosh3``, ...).
        n_probes: Hutchinson probes (fixed along the trajectory).
        probe: ``"rademacher"`` (entries +-1) or ``"gaussian"``.
        t_min: start time (default ``schedule.t_min``).
        t_max: end time (default ``schedule.t_max``).
        dtype: dtype of the ODE state (float64 recommended).
        model_dtype: dtype the network is called in (default: its parameters' dtype, else ``dtype``).
        prior: ``prior(z) -> log density (B,)`` at ``t_max``; default ``N(0, sigma(t_max)^2 I)``.
        dequantize_data: uniformly dequantise ``x`` first (needs ``num_bins``), see
            [`dequantize`][sde_diffusion.likelihood.dequantize].
        num_bins: quantisation levels; with it ``bpd`` is the discrete bound \(-(\log p + d \log \Delta)/(d \log 2)\).
        data_range: ``(lo, hi)`` of the quantised data.
        generator: random generator for probes and dequantisation noise.
        step_at_knots: for adaptive methods, pass the kinks of a piecewise schedule
            ([`knots`][sde_diffusion.schedules.VPDiscrete.knots], where \(f\) and \(g^2\) jump) as torchdiffeq
            ``jump_t``: the solver steps onto each and re-evaluates the field on the far side.
        options: extra torchdiffeq options (``step_t`` gets the end time added, ``jump_t`` the knots).
    """
    import torchdiffeq

    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model, got {type(model).__name__}")
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    if n_probes < 1:
        raise ValueError("n_probes must be >= 1")
    sch: NoiseSchedule = model.schedule
    t0 = sch.t_min if t_min is None else float(t_min)
    t1 = sch.t_max if t_max is None else float(t_max)
    sch.check_t(torch.tensor([t0, t1], dtype=torch.float64), "t_min/t_max")
    if not t0 < t1:
        raise ValueError(f"need t_min < t_max, got {t0}, {t1}")
    if dequantize_data:
        if num_bins is None:
            raise ValueError("dequantize_data needs num_bins")
        x = dequantize(x, num_bins=num_bins, data_range=data_range, generator=generator)

    x = x.detach().to(dtype)
    b = x.shape[0]
    d = x[0].numel()
    wrapped = Model(_CastModel(model, model_dtype or _model_dtype(model)), sch, model.prediction)
    ode = ProbabilityFlowODE(sch, wrapped)
    probes = None
    if trace == "hutchinson":
        shape = (n_probes, *x.shape)
        if probe == "rademacher":
            probes = torch.randint(0, 2, shape, generator=generator, device=x.device).to(dtype) * 2 - 1
        else:
            probes = torch.randn(shape, generator=generator, dtype=dtype, device=x.device)
    nfe = 0

    def func(t, state):
        nonlocal nfe
        nfe += 1
        xt = state[0]
        v, div = divergence(lambda y: ode.vector_field(y, t), xt, trace=trace, probes=probes)
        return v.detach(), div.detach()

    n_div = n_probes if trace == "hutchinson" else 1
    delta0 = torch.zeros((n_div, b) if trace == "hutchinson" else (b,), dtype=dtype, device=x.device)
    ts = torch.tensor([t0, t1], dtype=dtype, device=x.device)
    opts = dict(options or {})
    if method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"):
        step_t = {t1} | {float(v) for v in torch.as_tensor(opts.get("step_t", [])).flatten()}
        jump_t = {float(v) for v in torch.as_tensor(opts.get("jump_t", [])).flatten()}
        knots = getattr(sch, "knots", None)
        if knots is not None and step_at_knots:
            # f and g^2 jump at the knots: step to them and re-evaluate the field on the far side (no FSAL reuse)
            jump_t |= {float(k) for k in knots if t0 < float(k) < t1}
        step_t -= jump_t
        opts["step_t"] = torch.tensor(sorted(step_t), dtype=dtype)
        if jump_t:
            opts["jump_t"] = torch.tensor(sorted(jump_t), dtype=dtype)
    with torch.no_grad():
        xs, deltas = torchdiffeq.odeint(func, (x, delta0), ts, rtol=rtol, atol=atol, method=method, options=opts)
    z, delta = xs[-1], deltas[-1]
    prior_fn = prior if prior is not None else ForwardSDE(sch).prior_logp
    prior_lp = prior_fn(z).to(dtype)
    if trace == "hutchinson":
        lp_each = prior_lp[None] + delta
        log_prob = lp_each.mean(0)
        std_err = lp_each.std(0) / math.sqrt(n_probes) if n_probes > 1 else torch.full_like(log_prob, math.nan)
        delta = delta.mean(0)
    else:
        log_prob = prior_lp + delta
        std_err = torch.zeros_like(log_prob)
    bpd = bits_per_dim(log_prob, d, num_bins=num_bins, data_range=data_range)
    return LikelihoodResult(log_prob, std_err, bpd, std_err / (d * _LOG2), prior_lp, delta, z, nfe)
