"""Latent diffusion: LatentModel's scaling conventions, exactness through a linear autoencoder, the diffusers VAE."""

from __future__ import annotations

import math

import pytest
import torch

from sde_diffusion import Gaussian, PointMass, VPDiscrete, VPLinear, sample
from sde_diffusion.latent import LatentModel, fit_scaling_factor, stable_diffusion_schedule

D = 6  # pixels of the toy "images"


def _linear_autoencoder(seed: int = 0):
    """An exactly invertible encoder ``u = W x`` (x of shape (B, D)), decoder ``x = W^{-1} u``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, D, generator=g, dtype=torch.float64) + 3.0 * torch.eye(D, dtype=torch.float64)
    w_inv = torch.linalg.inv(w)
    return (lambda x: x @ w.T), (lambda u: u @ w_inv.T), w


def test_stable_diffusion_schedule_is_scaled_linear():
    sch = stable_diffusion_schedule()
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    assert isinstance(sch, VPDiscrete) and sch.num_steps == 1000
    assert torch.allclose(sch.alphas_cumprod, torch.cumprod(1.0 - betas, 0), rtol=1e-12, atol=0)


def test_scaling_and_shift_follow_stable_diffusion():
    encode, decode, w = _linear_autoencoder()
    model = PointMass(torch.zeros(D, dtype=torch.float64)).model(VPLinear())
    lm = LatentModel(model, decode, encode, scaling_factor=0.25, shift_factor=0.5)
    x = torch.randn(4, D, dtype=torch.float64)
    z = lm.encode(x)
    assert torch.allclose(z, 0.25 * (x @ w.T - 0.5), rtol=1e-14, atol=1e-14)  # latents = s (E(x) - b)
    assert torch.allclose(lm.decode(z), x, rtol=0, atol=1e-12)  # x = D(latents / s + b)


@pytest.mark.parametrize("solver", ["ddim", "dpm_solver++", "unipc", "deis"])
def test_point_mass_through_a_linear_autoencoder_is_exact(solver):
    """Data at one image ``x*``: the scaled latents sit at ``z* = s (E(x*) - b)``, where every exponential integrator
    is exact, so the decoded sample is ``x*`` whatever the steps."""
    encode, decode, _ = _linear_autoencoder(1)
    x_star = torch.randn(D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lm = LatentModel(
        PointMass(torch.zeros(D, dtype=torch.float64)).model(VPLinear()),
        decode,
        encode,
        scaling_factor=0.3,
        shift_factor=-0.2,
    )
    z_star = lm.encode(x_star[None])[0]
    lm.model = PointMass(z_star).model(VPLinear(), prediction="eps")
    z_T = lm.prior_sample((3, D), torch.Generator().manual_seed(4), dtype=torch.float64)
    out = lm.sample(z_T, solver=solver, steps=4, denoise_to_zero=True)
    assert torch.allclose(out.info["latents"], z_star.expand(3, D), rtol=0, atol=1e-10)
    assert torch.allclose(out.x, x_star.expand(3, D), rtol=0, atol=1e-10)
    assert out.nfe == 5


def test_sample_is_the_latent_run_then_one_decoding():
    """``LatentModel.sample`` is exactly ``sample`` on the latent model followed by ``decode`` (Gaussian data)."""
    encode, decode, _ = _linear_autoencoder(3)
    sch = VPLinear()
    data = Gaussian(torch.linspace(-1, 1, D, dtype=torch.float64), torch.linspace(0.2, 1.0, D, dtype=torch.float64))
    lm = LatentModel(data.model(sch), decode, encode, scaling_factor=2.0)
    z_T = lm.prior_sample((2, D), torch.Generator().manual_seed(5), dtype=torch.float64)
    fine = lm.sample(z_T, solver="dpm_solver++", order=3, steps=20)
    direct = sample(data.model(sch), z_T, solver="dpm_solver++", order=3, steps=20)
    assert torch.equal(fine.info["latents"], direct.x)  # the same latent run
    assert torch.allclose(fine.x, decode(direct.x / 2.0), rtol=0, atol=1e-13)


def test_prior_noised_and_scaling_factor():
    sch = VPDiscrete.from_config({"num_train_timesteps": 1000})
    encode, decode, w = _linear_autoencoder()
    lm = LatentModel(PointMass(torch.zeros(D, dtype=torch.float64)).model(sch), decode, encode)
    z = lm.prior_sample((20000, D), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(z.std()) - 1.0) < 0.01  # VP: alpha^2 + sigma^2 = 1
    x = torch.randn(2, D, dtype=torch.float64)
    noise = torch.randn(2, D, dtype=torch.float64)
    t = 0.4
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    assert torch.allclose(lm.noised(x, t, noise), a * (x @ w.T) + s * noise, atol=1e-13)
    u = 3.0 * torch.randn(1000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert fit_scaling_factor(u) == pytest.approx(1.0 / float(u.std()))
    assert float((u * fit_scaling_factor(u)).std()) == pytest.approx(1.0)


def test_errors():
    encode, decode, _ = _linear_autoencoder()
    model = PointMass(torch.zeros(D, dtype=torch.float64)).model(VPLinear())
    with pytest.raises(TypeError, match="Model"):
        LatentModel(lambda x, t: x, decode)
    with pytest.raises(ValueError, match="scaling_factor"):
        LatentModel(model, decode, scaling_factor=0.0)
    with pytest.raises(ValueError, match="no encoder"):
        LatentModel(model, decode).encode(torch.zeros(1, D))
    with pytest.raises(ValueError, match="spread"):
        fit_scaling_factor(torch.ones(3, 3))


def test_from_vae_uses_the_autoencoders_config():
    pytest.importorskip("diffusers")
    from diffusers_tiny import tiny_vae

    torch.manual_seed(0)
    vae = tiny_vae(scaling_factor=0.18215)
    model = PointMass(torch.zeros(4, 8, 8, dtype=torch.float64)).model(stable_diffusion_schedule())
    lm = LatentModel.from_vae(model, vae)
    assert lm.scaling_factor == 0.18215 and lm.shift_factor == 0.0
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(lm.encode(x), vae.encode(x).latent_dist.mode() * 0.18215, atol=1e-12)
        z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
        assert torch.allclose(lm.decode(z), vae.decode(z / 0.18215).sample, atol=1e-12)  # the pipeline's decoding
        drawn = LatentModel.from_vae(model, vae, sample_posterior=True, generator=torch.Generator().manual_seed(0))
        want = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(0)) * 0.18215
        assert torch.allclose(drawn.encode(x), want, atol=1e-12)
    assert LatentModel.from_vae(model, vae, scaling_factor=2.0, shift_factor=0.1).shift_factor == 0.1
