r"""Forward SDE, reverse SDE and probability-flow ODE of a noise schedule.

Forward: \(\mathrm{d}x = f(t)\, x\, \mathrm{d}t + g(t)\, \mathrm{d}W\) with marginals
\(x_t \mid x_0 \sim \mathcal{N}(\alpha(t)\, x_0, \sigma(t)^2 I)\).

Reverse (Anderson 1982; Song et al. 2021, arXiv:2011.13456), with the score \(\nabla_x \log p_t(x)\):

\[\mathrm{d}x = \big[f(t)\, x - g(t)^2\, \nabla_x \log p_t(x)\big]\, \mathrm{d}t + g(t)\, \mathrm{d}\bar W,\]

run from ``t_max`` down to ``t_min``.

Probability flow, with the same marginals as the SDE:

\[\frac{\mathrm{d}x}{\mathrm{d}t} = f(t)\, x - \tfrac12 g(t)^2\, \nabla_x \log p_t(x).\]

For torchsde, whose time runs forward, the reverse SDE is written in \(s = -t\):
\(\mathrm{d}x = -\big[f x - g^2 \nabla_x \log p\big](-s)\, \mathrm{d}s + g(-s)\, \mathrm{d}B_s\). A Brownian path for it
is therefore indexed by \(s = -t\) (see
[`sde_diffusion.reference.brownian_path`][sde_diffusion.reference.brownian_path]).
"""

from __future__ import annotations

import math

import torch

from .models import Model, broadcast_coeff
from .schedules import NoiseSchedule

__all__ = ["ForwardSDE", "ReverseSDE", "ProbabilityFlowODE"]


def _time_vector(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class ForwardSDE:
    """The forward (noising) SDE of ``schedule``."""

    def __init__(self, schedule: NoiseSchedule):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""\(f(t)\, x\)."""
        return broadcast_coeff(self.schedule.f(_time_vector(t, x)), x) * x

    def diffusion(self, t) -> torch.Tensor:
        r"""\(g(t) = \sqrt{g^2(t)}\)."""
        return torch.sqrt(self.schedule.g2(t))

    def marginal_mean(self, x0: torch.Tensor, t) -> torch.Tensor:
        r"""\(\mathbb{E}[x_t \mid x_0] = \alpha(t)\, x_0\)."""
        return broadcast_coeff(self.schedule.alpha(_time_vector(t, x0)), x0) * x0

    def marginal_std(self, t) -> torch.Tensor:
        r"""\(\operatorname{std}[x_t \mid x_0] = \sigma(t)\)."""
        return self.schedule.sigma(t)

    def sample_marginal(
        self, x0: torch.Tensor, t, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""Draw \(x_t = \alpha(t)\, x_0 + \sigma(t)\, \epsilon\), \(\epsilon \sim \mathcal{N}(0, I)\)."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} does not match x0 shape {tuple(x0.shape)}")
        tv = _time_vector(t, x0)
        a = broadcast_coeff(self.schedule.alpha(tv), x0)
        s = broadcast_coeff(self.schedule.sigma(tv), x0)
        return a * x0 + s * noise

    def prior_std(self) -> float:
        r"""Standard deviation of the prior \(\mathcal{N}(0, \sigma(t_{\max})^2 I)\) used to start sampling."""
        return float(self.schedule.sigma(self.schedule.t_max))

    def prior_sample(self, shape, generator: torch.Generator | None = None, *, dtype=None, device=None) -> torch.Tensor:
        r"""Sample the prior \(\mathcal{N}(0, \sigma(t_{\max})^2 I)\)."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype or torch.get_default_dtype())
        return (self.prior_std() * z).to(device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of the prior, summed over all but the batch dimension."""
        s = self.prior_std()
        d = z[0].numel()
        return -0.5 * (z.reshape(z.shape[0], -1) ** 2).sum(-1) / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def reverse(self, model: Model) -> ReverseSDE:
        """The reverse-time SDE driven by ``model``'s score."""
        return ReverseSDE(self.schedule, model)

    def probability_flow(self, model: Model) -> ProbabilityFlowODE:
        """The probability-flow ODE driven by ``model``'s score."""
        return ProbabilityFlowODE(self.schedule, model)


class _ScoreField:
    def __init__(self, schedule: NoiseSchedule, model: Model):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a Model, got {type(model).__name__}")
        self.schedule = schedule
        self.model = model

    def _coeffs(self, t, x):
        tv = _time_vector(t, x)
        sch = self.schedule
        return (
            tv,
            broadcast_coeff(sch.f_unchecked(tv), x),
            broadcast_coeff(sch.g2_unchecked(tv), x),
            *(broadcast_coeff(c, x) for c in sch.alpha_sigma_unchecked(tv)),
        )

    def _score_term(self, x, t):
        tv, f, g2, a, s = self._coeffs(t, x)
        return f, g2, self.model.predict(x, tv, "score", a, s)


class ProbabilityFlowODE(_ScoreField):
    r"""\(\mathrm{d}x/\mathrm{d}t = f(t)\, x - \tfrac12 g^2(t)\, \nabla_x \log p_t(x)\). ``ode(t, x)`` is the vector
    field in torchdiffeq's order."""

    def vector_field(self, x: torch.Tensor, t) -> torch.Tensor:
        f, g2, score = self._score_term(x, t)
        return f * x - 0.5 * g2 * score

    def __call__(self, t, x):
        return self.vector_field(x, t)


class ReverseSDE(_ScoreField):
    r"""\(\mathrm{d}x = [f x - g^2 \nabla_x \log p_t(x)]\, \mathrm{d}t + g\, \mathrm{d}\bar W\) for decreasing \(t\).

    [`drift`][sde_diffusion.sdes.ReverseSDE.drift] and [`diffusion`][sde_diffusion.sdes.ReverseSDE.diffusion] are in
    ``t``; [`torchsde`][sde_diffusion.sdes.ReverseSDE.torchsde] returns the same SDE in ``s = -t``
    (Itô, diagonal noise) for ``torchsde.sdeint``.
    """

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        f, g2, score = self._score_term(x, t)
        return f * x - g2 * score

    def diffusion(self, x: torch.Tensor, t) -> torch.Tensor:
        g = torch.sqrt(broadcast_coeff(self.schedule.g2_unchecked(_time_vector(t, x)), x))
        return g.expand_as(x)

    def torchsde(self, event_shape=None) -> torch.nn.Module:
        r"""A torchsde SDE in \(s = -t\) on flattened states ``(B, d)`` (reshaped to ``event_shape`` for the model);
        see [`sde_diffusion.reference`][sde_diffusion.reference]."""
        return _TorchsdeReverse(self, event_shape)


class _TorchsdeReverse(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, rev: ReverseSDE, event_shape=None):
        super().__init__()
        self.rev = rev
        self.event_shape = event_shape

    def _x(self, y):
        return y if self.event_shape is None else y.reshape(y.shape[0], *self.event_shape)

    def f(self, s, y):
        return -self.rev.drift(self._x(y), -s).reshape(y.shape)

    def g(self, s, y):
        return self.rev.diffusion(self._x(y), -s).reshape(y.shape)
