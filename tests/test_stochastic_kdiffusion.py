"""Agreement with k-diffusion's samplers on the same sigmas and the same noise (float64, to 1e-10).

k-diffusion is optional (``pip install --no-deps k-diffusion``): only its ``sampling`` module is loaded
(:func:`~sde_diffusion.studies.stochastic.load_kdiffusion_sampling`).

The noise: k-diffusion asks a ``noise_sampler(sigma, sigma_next)`` for normalised increments; we give it the same
continuous path ``W`` (piecewise linear through a random walk) that our solvers read through
:class:`~sde_diffusion.solvers.base.BrownianNoise` (EDM schedule: ``t = sigma``, so both query the same intervals and
query points that differ by an ulp give increments that differ by an ulp).
"""

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.analytic import Gaussian, GaussianMixture
from sde_diffusion.solvers.base import BrownianNoise
from sde_diffusion.studies.stochastic import load_kdiffusion_sampling

pytest.importorskip("torchsde")
pytest.importorskip("scipy")


kd = load_kdiffusion_sampling()
if kd is None:
    pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)", allow_module_level=True)


class PiecewiseLinearPath:
    """A continuous path ``W(s)`` on ``[s0, s1]``: linear interpolation of a random walk on a fine grid.
    ``path(sa, sb) = W(sb) - W(sa)`` (torchsde's calling convention)."""

    def __init__(self, shape, s0, s1, knots=4096, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.s = torch.linspace(s0, s1, knots + 1, dtype=torch.float64)
        steps = torch.randn((knots,) + tuple(shape), generator=g, dtype=torch.float64) * (self.s[1] - self.s[0]).sqrt()
        self.w = torch.cat([torch.zeros((1,) + tuple(shape), dtype=torch.float64), steps.cumsum(0)])

    def at(self, s):
        s = float(s)
        k = int(torch.searchsorted(self.s, torch.tensor(s, dtype=torch.float64)).clamp(1, len(self.s) - 1))
        a, b = float(self.s[k - 1]), float(self.s[k])
        f = (s - a) / (b - a)
        return self.w[k - 1] * (1.0 - f) + self.w[k] * f

    def __call__(self, sa, sb):
        return self.at(sb) - self.at(sa)


def _problem(kind="gauss"):
    sch = sd.schedules.EDM(sigma_min=0.02, sigma_max=20.0)
    if kind == "gauss":
        data = Gaussian(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 0.8, 1.5]))
    else:
        data = GaussianMixture(torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0]]), torch.tensor([0.2, 0.4]))
    model = data.model(sch)
    x = 20.0 * torch.randn(16, 3, generator=torch.Generator().manual_seed(3))
    return sch, data, model, x


def _denoiser(data, sch):
    return lambda x, sigma: data.x0(x, sigma, sch)


def _noise_sampler(path):
    """k-diffusion's noise sampler on our path, indexed by ``s = -t = -sigma``."""
    return lambda sigma, sigma_next: path(-float(sigma), -float(sigma_next)) / (float(sigma) - float(sigma_next)) ** 0.5


CASES = [
    ("euler_ancestral", {"eta": 1.0}, "sample_euler_ancestral", {"eta": 1.0}),
    ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}, "sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("dpm_solver_2_ancestral", {"eta": 1.0}, "sample_dpm_2_ancestral", {"eta": 1.0}),
    ("dpm_solver++_2s_ancestral", {"eta": 1.0}, "sample_dpmpp_2s_ancestral", {"eta": 1.0}),
    ("dpm_solver++_2s_ancestral", {"eta": 0.7}, "sample_dpmpp_2s_ancestral", {"eta": 0.7}),
    ("sde_dpm_solver++_2s", {"eta": 1.0}, "sample_dpmpp_sde", {"eta": 1.0}),
    (
        "sde_dpm_solver++_2s",
        {"eta": 0.8, "r": 0.3, "s_noise": 1.1},
        "sample_dpmpp_sde",
        {"eta": 0.8, "r": 0.3, "s_noise": 1.1},
    ),
    ("sde_dpm_solver++", {"eta": 1.0, "lower_order_final": False}, "sample_dpmpp_2m_sde", {"eta": 1.0}),
    (
        "sde_dpm_solver++",
        {"eta": 0.5, "lower_order_final": False, "update": "heun"},
        "sample_dpmpp_2m_sde",
        {"eta": 0.5, "solver_type": "heun"},
    ),
    ("sde_dpm_solver++_3m", {"eta": 1.0, "lower_order_final": False}, "sample_dpmpp_3m_sde", {"eta": 1.0}),
    ("sde_dpm_solver++_3m", {"eta": 0.6, "lower_order_final": False}, "sample_dpmpp_3m_sde", {"eta": 0.6}),
]


@pytest.mark.parametrize("data_kind", ["gauss", "mixture"])
@pytest.mark.parametrize("ours, opts, theirs, kd_opts", CASES)
def test_same_as_kdiffusion(ours, opts, theirs, kd_opts, data_kind):
    sch, data, model, x = _problem(data_kind)
    ts = sd.grids.make_grid(sch, "karras", 12)
    path = PiecewiseLinearPath(x.shape, -sch.t_max, -sch.t_min)
    got = sd.sample(model, x, solver=ours, grid=ts, noise=BrownianNoise(path), **opts).x
    want = getattr(kd, theirs)(_denoiser(data, sch), x, ts, disable=True, noise_sampler=_noise_sampler(path), **kd_opts)
    assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()


@pytest.mark.parametrize("churn", [(0.0, 0.0, float("inf"), 1.0), (8.0, 0.05, 10.0, 1.003), (80.0, 0.0, 50.0, 1.0)])
def test_edm_churn_same_as_kdiffusion_heun(churn):
    """EDM's churned Heun against k-diffusion's ``sample_heun``: k-diffusion draws ``torch.randn_like`` at every step
    and takes a Heun step on every interval (its grids end at sigma = 0, ours at t_min): we compare our state one
    step before the end with k-diffusion run on the first ``N - 1`` intervals (``s_churn`` rescaled so that
    ``gamma = s_churn/N`` is the same)."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    sch, data, model, x = _problem("mixture")
    n = 10
    ts = sd.grids.make_grid(sch, "karras", n)
    torch.manual_seed(123)
    draws = torch.stack([torch.randn_like(x) for _ in range(n)])
    got = sd.sample(
        model,
        x,
        solver="edm_stochastic",
        grid=ts,
        noise=draws,
        return_trajectory=True,
        s_churn=s_churn,
        s_tmin=s_tmin,
        s_tmax=s_tmax,
        s_noise=s_noise,
    ).trajectory[n - 1]
    torch.manual_seed(123)
    want = kd.sample_heun(
        _denoiser(data, sch),
        x,
        ts[:-1],
        disable=True,
        s_churn=s_churn * (n - 1) / n,
        s_tmin=s_tmin,
        s_tmax=s_tmax,
        s_noise=s_noise,
    )
    assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()
