r"""Latent diffusion: the same probability-flow ODE, solved in an autoencoder's latent space.

A latent diffusion model (Rombach et al. 2022, arXiv:2112.10752) trains the score network on \(z = s\, (E(x) - b)\),
the encoder's output shifted by \(b\) (``shift_factor``, zero for Stable Diffusion 1/2) and scaled by \(s\)
(``scaling_factor``, chosen so that the latents have about unit variance: Stable Diffusion's 0.18215 is
\(1/\mathrm{std}\) of its autoencoder's latents). Sampling is then ordinary sampling of the latent
[`Model`][sde_diffusion.models.Model] -- any solver, any grid -- followed by one decoding \(x = D(z / s + b)\).
Nothing in the solvers knows about the autoencoder.

[`LatentModel`][sde_diffusion.latent.LatentModel] holds the three pieces;
[`stable_diffusion_schedule`][sde_diffusion.latent.stable_diffusion_schedule] is the
``scaled_linear`` schedule Stable Diffusion was trained with (\(\beta\) from 0.00085 to 0.012 over 1000 steps,
linear in \(\sqrt\beta\)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from .models import Model
from .sample import SampleResult, sample
from .schedules import VPDiscrete

__all__ = ["LatentModel", "stable_diffusion_schedule", "fit_scaling_factor"]


def stable_diffusion_schedule(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> VPDiscrete:
    """Stable Diffusion's training schedule: ``scaled_linear`` betas (``sqrt(beta)`` linear between the square roots
    of ``beta_start`` and ``beta_end``), as a [`VPDiscrete`][sde_diffusion.schedules.VPDiscrete]."""
    return VPDiscrete.from_config(
        {
            "num_train_timesteps": num_train_timesteps,
            "beta_start": beta_start,
            "beta_end": beta_end,
            "beta_schedule": "scaled_linear",
        }
    )


def fit_scaling_factor(latents: torch.Tensor) -> float:
    """``1 / std`` of (a batch of) unscaled latents: the recipe behind Stable Diffusion's ``scaling_factor``, which
    makes the scaled latents about unit-variance like the diffusion prior ``N(0, I)``."""
    std = float(latents.detach().double().std())
    if not std > 0:
        raise ValueError("latents have zero spread: cannot fit a scaling factor")
    return 1.0 / std


def _vae_encoding(out: Any, sample_posterior: bool, generator: torch.Generator | None) -> torch.Tensor:
    """The latent of a diffusers-style ``encode`` output (``.latent_dist`` or ``.latents``) or a plain tensor."""
    dist = getattr(out, "latent_dist", None)
    if dist is not None:
        return dist.sample(generator) if sample_posterior else dist.mode()
    if hasattr(out, "latents"):
        return out.latents
    return out


class LatentModel:
    """A latent [`Model`][sde_diffusion.models.Model] with the autoencoder around it.

    Args:
        model: the score network on *scaled* latents, with its schedule and parametrisation.
        decode: ``decode(u) -> x`` on unscaled latents ``u`` (e.g. ``lambda u: vae.decode(u).sample``).
        encode: ``encode(x) -> u`` to unscaled latents (optional: only sampling needs none).
        scaling_factor: ``s`` in ``z = s (u - b)``.
        shift_factor: ``b`` (zero for Stable Diffusion 1/2).

    ``sample`` runs any solver on the latent model and decodes the result; ``encode``/``decode`` apply the scaling
    exactly as Stable Diffusion's pipelines do (``latents = s * E(x)``, ``x = D(latents / s)``).
    """

    def __init__(
        self,
        model: Model,
        decode: Callable[[torch.Tensor], torch.Tensor],
        encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        if not isinstance(model, Model):
            raise TypeError(f"model must be a sde_diffusion.Model, got {type(model).__name__}")
        if not callable(decode) or (encode is not None and not callable(encode)):
            raise TypeError("decode (and encode, when given) must be callables")
        s = float(scaling_factor)
        if not (s > 0 and s < float("inf")):
            raise ValueError(f"scaling_factor must be a positive finite number, got {scaling_factor!r}")
        self.model = model
        self._decode, self._encode = decode, encode
        self.scaling_factor, self.shift_factor = s, float(shift_factor)

    @classmethod
    def from_vae(
        cls,
        model: Model,
        vae: torch.nn.Module,
        *,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
    ) -> LatentModel:
        """Around a diffusers ``AutoencoderKL`` (or any module with ``encode(x).latent_dist`` and
        ``decode(u).sample``); ``scaling_factor``/``shift_factor`` default to ``vae.config``'s (``shift_factor``
        ``None`` there means 0). ``encode`` takes the posterior's mode, or a draw with ``sample_posterior``."""
        config = getattr(vae, "config", None)
        if scaling_factor is None:
            scaling_factor = getattr(config, "scaling_factor", None)
            if scaling_factor is None:
                raise ValueError("the autoencoder's config has no scaling_factor: pass scaling_factor=")
        if shift_factor is None:
            shift_factor = getattr(config, "shift_factor", None) or 0.0

        def decode(u):
            out = vae.decode(u)
            return out.sample if hasattr(out, "sample") else out

        def encode(x):
            return _vae_encoding(vae.encode(x), sample_posterior, generator)

        return cls(model, decode, encode, scaling_factor=scaling_factor, shift_factor=shift_factor)

    @property
    def schedule(self):
        return self.model.schedule

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``z = s (E(x) - b)`` of images ``x``."""
        if self._encode is None:
            raise ValueError("this LatentModel has no encoder")
        return (self._encode(x) - self.shift_factor) * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``D(z / s + b)`` of scaled latents ``z``."""
        return self._decode(z / self.scaling_factor + self.shift_factor)

    def prior_sample(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, *, dtype=None, device=None
    ) -> torch.Tensor:
        """Latents at ``t_max``: ``N(0, (alpha^2 + sigma^2) I)`` at the schedule's ``t_max`` (``N(0, I)`` for VP)."""
        t = torch.tensor(self.schedule.t_max, dtype=torch.float64)
        std = float(torch.sqrt(self.schedule.alpha(t) ** 2 + self.schedule.sigma(t) ** 2))
        return std * torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def noised(self, x: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
        """``alpha(t) E(x) + sigma(t) noise`` in scaled latents: the starting point of an img2img run from ``t``
        (then ``sample(z_t, t_start=t)``)."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        z = self.encode(x)
        return float(self.schedule.alpha(tt)) * z + float(self.schedule.sigma(tt)) * noise.to(z)

    def sample(self, z_T: torch.Tensor, *, decode: bool = True, **kwargs: Any) -> SampleResult:
        """[`sample`][sde_diffusion.sample.sample] in latent space (every keyword is passed on), then one decoding:
        ``x`` of the result is the image (``decode=False`` keeps the latent) and ``info["latents"]`` the final
        scaled latent."""
        result = sample(self.model, z_T, **kwargs)
        x = self.decode(result.x) if decode else result.x
        return dataclasses.replace(result, x=x, info={**(result.info or {}), "latents": result.x})

    def __repr__(self) -> str:
        return f"LatentModel(model={self.model!r}, scaling_factor={self.scaling_factor}, shift={self.shift_factor})"
