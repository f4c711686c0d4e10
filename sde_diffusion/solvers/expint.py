r"""The one source of exponential-integrator coefficients (float64, host side, vectorised over a grid).

Variation of constants in the half log-SNR \(\lambda\) (\(h = \lambda_s - \lambda_t\), \(u = \lambda - \lambda_t\)):

* noise prediction: \(x_s = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s \int_0^h e^{h-u} \epsilon(u)\, \mathrm{d}u\)
* data prediction: \(x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \int_0^h e^{-(h-u)} x_0(u)\, \mathrm{d}u\)

Replacing the model output by its Lagrange interpolant through nodes \(u_j = r_j h\) gives the weights

\[W_j = \int_0^h e^{s (h-u)} L_j(u)\, \mathrm{d}u = h \sum_k a_{jk}\, k!\, \varphi_{k+1}(s h), \qquad
s = +1 \text{ (eps) or } -1 \text{ (x0)},\]

where \(a_{jk}\) are the monomial coefficients of the Lagrange basis in \(\theta = u/h\) and

\[\varphi_k(z) = \int_0^1 e^{(1-\theta) z} \frac{\theta^{k-1}}{(k-1)!}\, \mathrm{d}\theta \qquad
\big(\varphi_1(z) = \operatorname{expm1}(z)/z\big).\]

The \(\varphi_k\) are evaluated by their Taylor series for \(|z| < 1\) (no cancellation) and by the recurrence
\(\varphi_{k+1} = (\varphi_k - 1/k!)/z\) above. With one node the weight is \(\operatorname{expm1}(h)\) (eps) or
\(-\operatorname{expm1}(-h)\) (x0):
DDIM(eta=0) = DPM-Solver-1 = DPM-Solver++-1 = DEIS-1.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "LONG_STEP",
    "long_step_consistent",
    "phi",
    "phis",
    "lagrange_basis_coefficients",
    "lagrange_weights",
    "SERIES_THRESHOLD",
    "lagrange_poly_weights",
    "gauss_legendre",
    "exp_weighted_quadrature",
]

SERIES_THRESHOLD = 1.0
_SERIES_TERMS = 30


def phis(z: torch.Tensor, kmax: int) -> list[torch.Tensor]:
    r"""\([\varphi_1(z), \dots, \varphi_{k_{\max}}(z)]\) in float64, stable for tiny and large \(|z|\)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    small = z.abs() < SERIES_THRESHOLD
    zs = torch.where(small, z, torch.zeros_like(z))
    zl = torch.where(small, torch.ones_like(z), z)
    out = []
    # recurrence branch (|z| >= threshold)
    rec = torch.expm1(zl) / zl
    for k in range(1, kmax + 1):
        # series branch: phi_k(z) = sum_n z^n / (n+k)!  (Horner from the top)
        ser = torch.full_like(z, 1.0 / math.factorial(_SERIES_TERMS + k))
        for n in range(_SERIES_TERMS - 1, -1, -1):
            ser = ser * zs + 1.0 / math.factorial(n + k)
        out.append(torch.where(small, ser, rec))
        rec = (rec - 1.0 / math.factorial(k)) / zl
    return out


def phi(k: int, z: torch.Tensor) -> torch.Tensor:
    r"""\(\varphi_k(z)\) for \(k \ge 0\) (\(\varphi_0 = \exp\))."""
    if k == 0:
        return torch.exp(torch.as_tensor(z, dtype=torch.float64))
    return phis(z, k)[-1]


def lagrange_basis_coefficients(r: torch.Tensor) -> torch.Tensor:
    r"""Monomial coefficients of the Lagrange basis through nodes ``r`` (shape ``(..., m)``).

    Returns ``a`` of shape ``(..., m, m)`` with \(L_j(\theta) = \sum_k a_{jk} \theta^k\).
    """
    r = torch.as_tensor(r, dtype=torch.float64)
    m = r.shape[-1]
    rows = []
    for j in range(m):
        poly = torch.zeros(r.shape[:-1] + (m,), dtype=torch.float64)
        poly[..., 0] = 1.0
        for i in range(m):
            if i == j:
                continue
            denom = r[..., j] - r[..., i]
            shifted = torch.zeros_like(poly)
            shifted[..., 1:] = poly[..., :-1]  # theta * poly
            poly = (shifted - r[..., i : i + 1] * poly) / denom[..., None]
        rows.append(poly)
    return torch.stack(rows, dim=-2)


def lagrange_weights(r: torch.Tensor, h: torch.Tensor, sign: int) -> torch.Tensor:
    r"""Exponentially weighted Lagrange weights \(W_j = \int_0^h e^{\pm (h-u)} L_j(u)\, \mathrm{d}u\) (sign \(\pm\) =
    ``sign``).

    Args:
        r: node ratios ``u_j/h``, shape ``(..., m)`` (``0`` is the current point; negative for past points of a
            multistep method; in ``(0, 1]`` for intermediate stages).
        h: step in lambda, shape ``(...)``.
        sign: ``+1`` for noise prediction, ``-1`` for data prediction.

    Returns ``(..., m)``. One node gives \(\operatorname{expm1}(h)\) or \(-\operatorname{expm1}(-h)\).
    """
    if sign not in (1, -1):
        raise ValueError("sign must be +1 (eps) or -1 (x0)")
    r = torch.as_tensor(r, dtype=torch.float64)
    h = torch.as_tensor(h, dtype=torch.float64)
    m = r.shape[-1]
    a = lagrange_basis_coefficients(r)
    ph = phis(sign * h, m)
    # int_0^1 e^{s h (1-theta)} theta^k dtheta = k! phi_{k+1}(s h)
    moments = torch.stack([math.factorial(k) * ph[k] for k in range(m)], dim=-1)
    return h[..., None] * (a * moments[..., None, :]).sum(-1)


def lagrange_poly_weights(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    r"""Unweighted Lagrange weights \(W_j = \int_0^h L_j(u)\, \mathrm{d}u\) for nodes \(u_j = r_j h\) (shapes as in
    [`lagrange_weights`][sde_diffusion.solvers.expint.lagrange_weights]): the \(z \to 0\) limit of the exponential
    weights, \(k!\, \varphi_{k+1}(0) = 1/(k+1)\).
    Adams--Bashforth weights in a variable where the integrand carries no exponential (DEIS rhoAB)."""
    r = torch.as_tensor(r, dtype=torch.float64)
    h = torch.as_tensor(h, dtype=torch.float64)
    m = r.shape[-1]
    a = lagrange_basis_coefficients(r)
    moments = torch.tensor([1.0 / (k + 1) for k in range(m)], dtype=torch.float64)
    return h[..., None] * (a * moments).sum(-1)


_GL_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``n``-point Gauss--Legendre nodes and weights on \([0, 1]\) (float64; exact for polynomials of degree
    \(2n - 1\))."""
    if n not in _GL_CACHE:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(n)
        _GL_CACHE[n] = (torch.from_numpy(0.5 * (x + 1.0)), torch.from_numpy(0.5 * w))
    return _GL_CACHE[n]


def exp_weighted_quadrature(g, h: torch.Tensor, sign: int, n: int = 32) -> torch.Tensor:
    r"""\(\int_0^h e^{\pm (h-u)} g(u)\, \mathrm{d}u\) (sign \(\pm\) = ``sign``) by ``n``-point Gauss--Legendre in \(u\)
    (float64).

    For weights whose interpolant is not a polynomial in ``lambda`` (DEIS tAB: Lagrange in ``t``). ``g`` is called
    with ``u`` of shape ``h.shape + (n,)`` and returns ``(..., m, n)`` (``m`` functions at once); the result has shape
    ``(..., m)``. For smooth \(g\) the error falls like \((|h|/2)^{2n}/(2n)!\) times the size of the derivatives.
    """
    if sign not in (1, -1):
        raise ValueError("sign must be +1 (eps) or -1 (x0)")
    h = torch.as_tensor(h, dtype=torch.float64)
    theta, w = gauss_legendre(n)
    u = h[..., None] * theta
    kernel = w * torch.exp(sign * (h[..., None] - u))
    return h[..., None] * (g(u) * kernel[..., None, :]).sum(-1)


#: above this ``|h|`` the weights of an update are made to sum to the frame's own ``end - ratio * start``
#: ([`long_step_consistent`][sde_diffusion.solvers.expint.long_step_consistent])
LONG_STEP = math.log(2.0)


def long_step_consistent(
    weights: torch.Tensor, h: torch.Tensor, ratio: torch.Tensor, start: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    r"""The weights \(c_j\) of an update \(x_b = \mathrm{ratio}\, x_a + \sum_j c_j m_j\), with \(c_0\) replaced on long
    steps (\(|h| > \log 2\)) so that \(\sum_j c_j = \mathrm{end} - \mathrm{ratio} \cdot \mathrm{start}\) holds for the
    *same* floats the update uses.

    Every exponential integrator in this package has this frame: noise prediction
    \(\mathrm{ratio} = \alpha_b/\alpha_a\), \((\mathrm{start}, \mathrm{end}) = (\sigma_a, \sigma_b)\); data prediction
    \(\mathrm{ratio} = \sigma_b/\sigma_a\), \((\mathrm{start}, \mathrm{end}) = (\alpha_a, \alpha_b)\); and its weights
    sum, in exact arithmetic, to \(\mathrm{end} - \mathrm{ratio} \cdot \mathrm{start}\)
    (\(-\sigma_b \operatorname{expm1}(h)\) or \(-\alpha_b \operatorname{expm1}(-h)\)). With a constant model output
    (point-mass data, \(x_a = \alpha_a x_0 + \sigma_a \epsilon\)) the update is exact iff that sum holds. For a long
    step the update cancels two terms of size \(\mathrm{ratio}\, |x_a|\) (about \(150 |x|\) for one VP-linear
    noise-prediction step over the whole range); forming the sum from the frame's own floats (instead of ``expm1`` of a
    difference of two rounded half log-SNRs, each off by an ulp of \(|\lambda|\)) keeps that cancellation exact (the
    effect on point-mass round-off is measured in docs/theory/exponential_integrators.md). For short steps the
    difference \(\mathrm{end} - \mathrm{ratio} \cdot \mathrm{start}\) would cancel instead, so the ``expm1``-based
    weights are kept there.

    Args:
        weights: ``(..., m)``, \(m \ge 1\) (not modified).
        h, ratio, start, end: ``(...)``.
    """
    total = end - ratio * start
    first = torch.where(h.abs() > LONG_STEP, total - weights[..., 1:].sum(-1), weights[..., 0])
    return torch.cat([first[..., None], weights[..., 1:]], dim=-1)
