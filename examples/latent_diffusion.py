r"""Latent diffusion end to end on the CPU: train a small autoencoder on the procedural ``shapes`` images, train a
score network on its scaled latents with Stable Diffusion's ``scaled_linear`` schedule, then sample the latent
probability-flow ODE with several solvers and decode.

The pieces, as in Stable Diffusion (Rombach et al. 2022, arXiv:2112.10752):

1. an autoencoder ``E``/``D`` (convolutional, deterministic, a light L2 penalty on the latents), 16x16 images ->
   4x4x4 latents (a 4x compression);
2. the scaling factor ``s = 1 / std(E(x))`` (:func:`~sde_diffusion.latent.fit_scaling_factor`, the recipe behind
   SD's 0.18215), so the scaled latents ``z = s E(x)`` are about unit-variance like the prior;
3. an eps-prediction UNet on ``z`` for :func:`~sde_diffusion.latent.stable_diffusion_schedule` (``scaled_linear``
   betas from 0.00085 to 0.012), trained with Ho's ``L_simple``;
4. :class:`~sde_diffusion.latent.LatentModel`: every solver runs on the latent ODE; one decoding at the end.

Printed per solver: NFE, the median distance (in scaled latents) to a fine reference run (DPM-Solver++(3M), 200
steps) from the same starting latents -- the solver's own error, since the PF-ODE is deterministic -- and the Frechet
distance between Gaussian fits of the sample latents and the data latents. A PNG shows data, reconstructions and the
decoded samples.

Run:  python examples/latent_diffusion.py --out latent_diffusion.png        (a few minutes on one CPU core)
      python examples/latent_diffusion.py --gpu --out latent_gpu.png        (32x32 images, larger nets, CUDA)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from sde_diffusion import Model
from sde_diffusion.latent import LatentModel, fit_scaling_factor, stable_diffusion_schedule
from sde_diffusion.studies.plots import new_figure, save_figure
from sde_diffusion.training.data import shapes
from sde_diffusion.training.nets import UNet
from sde_diffusion.training.train import train

# (label, solver, options, steps)
SOLVERS = [
    ("DDIM", "ddim", {}, 20),
    ("DPM-Solver++(2M)", "dpm_solver++", {"order": 2}, 10),
    ("UniPC", "unipc", {}, 10),
    ("Heun", "heun", {}, 10),
    ("DEIS", "deis", {}, 10),
]
REFERENCE = ("dpm_solver++", {"order": 3}, 200)

SIZES = {  # image size, autoencoder width, latent channels, UNet base channels, AE steps, latent steps, batch
    "cpu": (16, 32, 4, 32, 600, 1500, 64),
    "gpu": (32, 64, 4, 64, 4000, 8000, 256),
}


class AutoEncoder(nn.Module):
    """``1 x S x S -> C x S/4 x S/4`` by two stride-2 convolutions, and back (nearest upsampling + convolutions)."""

    def __init__(self, width: int = 32, latent_channels: int = 4):
        super().__init__()
        act = nn.SiLU()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), act,
            nn.Conv2d(width, width, 3, stride=2, padding=1), act,
            nn.Conv2d(width, width, 3, stride=2, padding=1), act,
            nn.Conv2d(width, latent_channels, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, width, 3, padding=1), act,
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), act,
            nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), act,
            nn.Conv2d(width, 1, 3, padding=1), nn.Tanh(),
        )  # fmt: skip

    def encode(self, x):
        return self.encoder(x)

    def decode(self, u):
        return self.decoder(u)


def train_autoencoder(ae: AutoEncoder, size: int, steps: int, batch: int, device, seed: int) -> list[float]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    losses = []
    for i in range(steps):
        x = shapes(batch, g, size=size).to(device)
        u = ae.encode(x)
        loss = torch.mean((ae.decode(u) - x) ** 2) + 1e-4 * torch.mean(u * u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i == steps * 3 // 4:
            for group in opt.param_groups:
                group["lr"] *= 0.2
        losses.append(loss.item())
    return losses


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """``|m_x - m_y|^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2)`` between Gaussian fits (rows are samples)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.cov(x.T), torch.cov(y.T)

    def sqrtm(c):
        w, v = torch.linalg.eigh(c)
        return (v * w.clamp(min=0).sqrt()) @ v.T

    r = sqrtm(cx)
    return float((mx - my).pow(2).sum() + torch.trace(cx + cy - 2 * sqrtm(r @ cy @ r)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="latent_diffusion.png", help="where to save the PNG (default: %(default)s)")
    parser.add_argument("--gpu", action="store_true", help="the GPU-sized variant (32x32 images, larger nets)")
    parser.add_argument("--ae-steps", type=int, default=None, help="autoencoder training steps")
    parser.add_argument("--steps", type=int, default=None, help="latent score network training steps")
    parser.add_argument("-n", type=int, default=512, help="samples per solver (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.gpu else "cpu")
    if not args.gpu:
        torch.set_num_threads(1)
    size, width, lc, base, ae_steps, steps, batch = SIZES["gpu" if args.gpu else "cpu"]
    ae_steps = args.ae_steps or ae_steps
    steps = args.steps or steps
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    ae = AutoEncoder(width, lc).to(device)
    ae_losses = train_autoencoder(ae, size, ae_steps, batch, device, args.seed)
    ae.eval().requires_grad_(False)
    print(f"autoencoder: {ae_steps} steps in {time.perf_counter() - t0:.0f} s, loss {ae_losses[-1]:.4f}")

    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        data = shapes(args.n, g, size=size).to(device)
        scale = fit_scaling_factor(ae.encode(data))

    def latents(n, generator=None, **_):
        with torch.no_grad():
            return ae.encode(shapes(n, generator, size=size).to(device)) * scale

    schedule = stable_diffusion_schedule()
    t1 = time.perf_counter()
    net = UNet(in_channels=lc, base_channels=base, channel_mults=(1, 2))
    result = train(net, schedule, latents, prediction="eps", steps=steps, batch_size=batch, seed=args.seed,
                   device=device)  # fmt: skip
    print(f"latent UNet: {steps} steps in {time.perf_counter() - t1:.0f} s (scaling factor {scale:.4f})")

    model: Model = result.model
    lm = LatentModel(model, ae.decode, ae.encode, scaling_factor=scale)
    with torch.no_grad():
        z_data = lm.encode(data)
        z_T = lm.prior_sample(tuple(z_data.shape), g).to(device)
        name, options, ref_steps = REFERENCE
        ref = lm.sample(z_T, solver=name, steps=ref_steps, **options)
        rows = [("data", data), ("reconstruction", lm.decode(z_data))]
        fd_ref = frechet_distance(ref.info["latents"], z_data)
        print(f"{'reference ' + name:26s} NFE {ref.nfe:4d}   FD to data latents {fd_ref:7.3f}")
        for label, solver, opts, n_steps in SOLVERS:
            out = lm.sample(z_T, solver=solver, steps=n_steps, **opts)
            z = out.info["latents"]
            err = float((z - ref.info["latents"]).flatten(1).norm(dim=1).median())
            fd = frechet_distance(z, z_data)
            print(f"{label:26s} NFE {out.nfe:4d}   to reference {err:.4f}   FD to data latents {fd:7.3f}")
            rows.append((f"{label}, NFE {out.nfe}", out.x))
    print(f"total {time.perf_counter() - t0:.0f} s")

    k = 8
    fig, axes = new_figure(len(rows), k, size=(1.1 * k, 1.2 * len(rows)))
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    save_figure(fig, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
