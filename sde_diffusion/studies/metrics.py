r"""Error metrics for convergence studies.

* [`rms_error`][sde_diffusion.studies.metrics.rms_error] -- pathwise error ``sqrt(mean_{b,i} (x - y)^2)``
  (root-mean-square over the batch *and* the
  coordinates, so that problems of different dimension are comparable);
  [`max_error`][sde_diffusion.studies.metrics.max_error] its ``max |x - y|``;
  [`median_error`][sde_diffusion.studies.metrics.median_error] the median over the batch of the per-sample
  ``sqrt(mean_i (x - y)^2)`` -- insensitive to the
  few samples that a solver sends to a different mode of a mixture than the exact flow does.
* [`gaussian_w2`][sde_diffusion.studies.metrics.gaussian_w2] -- the exact 2-Wasserstein distance between two Gaussians,
  ``W2^2 = |m_1 - m_2|^2 + tr(S_1 + S_2 - 2 (S_2^{1/2} S_1 S_2^{1/2})^{1/2})`` (Dowson & Landau 1982), used between
  ``N(empirical mean, empirical covariance)`` of the samples and the exact Gaussian marginal.
* [`sliced_w2`][sde_diffusion.studies.metrics.sliced_w2] -- the sliced 2-Wasserstein distance ``(E_u W2^2(u.X,
  u.Y))^{1/2}`` over random unit
  directions ``u`` (Rabin et al. 2011), each 1-D distance exact by sorting; used against exact samples of mixtures.

The two distributional metrics have a sampling floor of order ``scale * sqrt(d / n)``: they stop decreasing once the
solver error is below the Monte-Carlo error of ``n`` samples. Fits exclude that plateau automatically
([`fitting`][sde_diffusion.studies.fitting]).
"""

from __future__ import annotations

import torch

__all__ = ["rms_error", "median_error", "sample_squared_errors", "max_error", "gaussian_w2", "sliced_w2", "sqrtm_psd"]


def _flat64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def sample_squared_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference over coordinates, ``mean_i (x - y)^2``: float64, shape ``(B,)``."""
    d = _flat64(x) - _flat64(y).to(x.device)
    return torch.mean(d * d, dim=1)


def rms_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Root-mean-square difference over batch and coordinates."""
    return float(torch.sqrt(torch.mean(sample_squared_errors(x, y))))


def median_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median over the batch of the per-sample RMS difference over coordinates."""
    return float(torch.sqrt(sample_squared_errors(x, y)).median())


def max_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest absolute difference of any coordinate of any sample."""
    return float((_flat64(x) - _flat64(y).to(x.device)).abs().max())


def sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    s = 0.5 * (s + s.T)
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def gaussian_w2(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Exact W2 between ``N(mean(x), cov(x))`` (empirical, unbiased covariance) and ``N(mean, cov)``."""
    xf = _flat64(x).cpu()
    mean, cov = mean.to(torch.float64).cpu().reshape(-1), cov.to(torch.float64).cpu()
    m1 = xf.mean(0)
    s1 = torch.atleast_2d(torch.cov(xf.T))
    r = sqrtm_psd(cov)
    cross = sqrtm_psd(r @ s1 @ r)
    w2sq = torch.sum((m1 - mean) ** 2) + torch.trace(s1) + torch.trace(cov) - 2.0 * torch.trace(cross)
    return float(torch.sqrt(w2sq.clamp_min(0)))


def sliced_w2(x: torch.Tensor, y: torch.Tensor, *, projections: int = 256, seed: int = 0) -> float:
    """Sliced W2 between the empirical distributions of ``x`` and ``y`` (equal sample counts), over ``projections``
    random unit directions drawn from ``seed`` (the same directions for every call with the same seed)."""
    xf, yf = _flat64(x).cpu(), _flat64(y).cpu()
    if xf.shape != yf.shape:
        raise ValueError(
            f"sliced_w2 needs equal sample counts and dimensions, got {tuple(xf.shape)} and {tuple(yf.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(xf.shape[1], projections, generator=g, dtype=torch.float64)
    u = u / torch.linalg.vector_norm(u, dim=0, keepdim=True)
    px, _ = torch.sort(xf @ u, dim=0)
    py, _ = torch.sort(yf @ u, dim=0)
    return float(torch.sqrt(torch.mean((px - py) ** 2)))
