r"""Synthetic data sets generated on the fly from a seed (no downloads).

Two-dimensional sets (each ``fn(n, generator=None, *, dtype=None, device=None) -> (n, 2)``, scaled to order-one
coordinates):

* [`ring`][sde_diffusion.training.data.ring] -- a mixture of 8 narrow Gaussians on a circle (also available as an exact
  [`GaussianMixture`][sde_diffusion.analytic.GaussianMixture] through
  [`ring_distribution`][sde_diffusion.training.data.ring_distribution]);
* [`two_moons`][sde_diffusion.training.data.two_moons], [`swiss_roll`][sde_diffusion.training.data.swiss_roll],
  [`checkerboard`][sde_diffusion.training.data.checkerboard].

Images (``(n, 1, size, size)`` in ``[-1, 1]``, background ``-1``):

* [`shapes`][sde_diffusion.training.data.shapes] -- discs, squares, triangles, crosses and rings, anti-aliased, at
  random positions and sizes;
* [`digits`][sde_diffusion.training.data.digits] -- the digits 0-9 drawn as strokes on a seven-segment skeleton, with
  random slant, scale, position
  and thickness.

All randomness comes from the ``generator`` (a `torch.Generator`), so a seed reproduces a data set; samples
are drawn on the generator's device and cast to ``dtype`` / moved to ``device``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..analytic import GaussianMixture
from ._registry import lookup

__all__ = [
    "ring_distribution",
    "ring",
    "two_moons",
    "swiss_roll",
    "checkerboard",
    "shapes",
    "digits",
    "DATASETS",
    "get_dataset",
]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _finish(x: torch.Tensor, dtype, device) -> torch.Tensor:
    return x.to(dtype=dtype or torch.get_default_dtype(), device=device if device is not None else x.device)


def _rand(shape, generator):
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=_gen_device(generator))


def _randn(shape, generator):
    return torch.randn(shape, generator=generator, dtype=torch.float64, device=_gen_device(generator))


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return n


# ---------------------------------------------------------------------------------------------------------------------
# 2-D sets
# ---------------------------------------------------------------------------------------------------------------------


def ring_distribution(n_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    r"""The ring as an exact oracle: ``(1/K) sum_k N(radius (cos 2 pi k/K, sin 2 pi k/K), std^2 I)``."""
    ang = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return GaussianMixture(means, torch.full((n_modes,), float(std), dtype=torch.float64))


def ring(
    n: int,
    generator: torch.Generator | None = None,
    *,
    n_modes: int = 8,
    radius: float = 2.0,
    std: float = 0.05,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    r"""``n`` samples of the ring of ``n_modes`` Gaussians (radius 2, std 0.05 by default)."""
    _check_n(n)
    k = torch.randint(0, n_modes, (n,), generator=generator, device=_gen_device(generator))
    ang = 2 * math.pi * k.to(torch.float64) / n_modes
    centres = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return _finish(centres + std * _randn((n, 2), generator), dtype, device)


def two_moons(
    n: int,
    generator: torch.Generator | None = None,
    *,
    noise: float = 0.05,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    r"""Two interleaved half circles (upper: ``(cos u, sin u)``, lower: ``(1 - cos u, 1/2 - sin u)``,
    ``u ~ U[0, pi]``), plus ``N(0, noise^2)``, centred at the origin and scaled by 1.5."""
    _check_n(n)
    u = math.pi * _rand(n, generator)
    upper = _rand(n, generator) < 0.5
    x = torch.where(upper, torch.cos(u), 1.0 - torch.cos(u))
    y = torch.where(upper, torch.sin(u), 0.5 - torch.sin(u))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) + noise * _randn((n, 2), generator)
    return _finish(1.5 * pts, dtype, device)


def swiss_roll(
    n: int,
    generator: torch.Generator | None = None,
    *,
    noise: float = 0.05,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    r"""A 2-D Swiss roll: ``u ~ U[1.5 pi, 4.5 pi]``, ``(u cos u, u sin u)/5`` plus ``N(0, noise^2)``."""
    _check_n(n)
    u = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, generator))
    pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1) / 5.0
    return _finish(pts + noise * _randn((n, 2), generator), dtype, device)


def checkerboard(
    n: int,
    generator: torch.Generator | None = None,
    *,
    cells: int = 4,
    size: float = 4.0,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
    r"""Uniform on the "black" cells of a ``cells x cells`` board covering ``[-size/2, size/2]^2``: cell
    ``(i, j)`` is black when ``i + j`` is even."""
    _check_n(n)
    if cells < 1:
        raise ValueError("cells must be >= 1")
    i = torch.randint(0, cells, (n,), generator=generator, device=_gen_device(generator))
    j = torch.randint(0, cells, (n,), generator=generator, device=_gen_device(generator))
    j = torch.where((i + j) % 2 == 1, (j + 1) % cells, j) if cells > 1 else j
    cell = size / cells
    x = (i.to(torch.float64) + _rand(n, generator)) * cell - size / 2
    y = (j.to(torch.float64) + _rand(n, generator)) * cell - size / 2
    return _finish(torch.stack([x, y], dim=1), dtype, device)


# ---------------------------------------------------------------------------------------------------------------------
# procedural images
# ---------------------------------------------------------------------------------------------------------------------


def _grid(size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in ``[-1, 1]``: ``(yy, xx)`` of shape ``(size, size)``."""
    c = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return yy, xx


def _segment_distance(px, py, ax, ay, bx, by):
    """Distance from points ``(px, py)`` to segments ``a-b`` (broadcasting)."""
    dx, dy = bx - ax, by - ay
    L2 = dx * dx + dy * dy
    u = ((px - ax) * dx + (py - ay) * dy) / torch.clamp(L2, min=1e-12)
    u = u.clamp(0.0, 1.0)
    qx, qy = ax + u * dx - px, ay + u * dy - py
    return torch.sqrt(qx * qx + qy * qy)


def _coverage(dist_inside: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance (negative inside), ramp one pixel wide."""
    return (0.5 - dist_inside / pixel).clamp(0.0, 1.0)


def shapes(
    n: int, generator: torch.Generator | None = None, *, size: int = 16, dtype: torch.dtype | None = None, device=None
) -> torch.Tensor:
    r"""``n`` images ``(n, 1, size, size)`` in ``[-1, 1]``, one white shape each on a black background: a disc,
    square (rotated), triangle, cross or ring, with random centre, size and rotation, drawn from signed distance
    functions with a one-pixel anti-aliasing ramp."""
    _check_n(n)
    dev = _gen_device(generator)
    yy, xx = _grid(size, dev)
    kind = torch.randint(0, 5, (n,), generator=generator, device=dev)
    r = 0.3 + 0.3 * _rand(n, generator)
    cx, cy = (_rand((2, n), generator) * 2 - 1) * (0.85 - r)
    rot = 2 * math.pi * _rand(n, generator)
    b = (slice(None), None, None)
    px, py = xx[None] - cx[b], yy[None] - cy[b]
    c, s = torch.cos(rot)[b], torch.sin(rot)[b]
    u, v = c * px + s * py, -s * px + c * py  # rotated coordinates
    rr = r[b]
    disc = torch.sqrt(px * px + py * py) - rr
    square = torch.maximum(u.abs(), v.abs()) - 0.8 * rr
    # equilateral triangle via the max of three half-plane distances
    tri = (
        torch.stack(
            [(u * math.cos(a) + v * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)], 0
        ).amax(0)
        - 0.5 * rr
    )
    bar = 0.25 * rr
    cross = torch.minimum(torch.maximum(u.abs() - rr, v.abs() - bar), torch.maximum(v.abs() - rr, u.abs() - bar))
    ring_ = (torch.sqrt(px * px + py * py) - 0.75 * rr).abs() - 0.22 * rr
    sdf = torch.stack([disc, square, tri, cross, ring_], 0)
    chosen = sdf.gather(0, kind.reshape(1, n, 1, 1).expand(1, n, size, size))[0]
    img = 2.0 * _coverage(chosen, 2.0 / size) - 1.0
    return _finish(img[:, None], dtype, device)


# seven-segment skeleton in a unit box [-1/2, 1/2] x [-1, 1] (y up): segment end points
_SEGMENTS = {
    "a": ((-0.5, 1.0), (0.5, 1.0)),
    "b": ((0.5, 1.0), (0.5, 0.0)),
    "c": ((0.5, 0.0), (0.5, -1.0)),
    "d": ((-0.5, -1.0), (0.5, -1.0)),
    "e": ((-0.5, 0.0), (-0.5, -1.0)),
    "f": ((-0.5, 1.0), (-0.5, 0.0)),
    "g": ((-0.5, 0.0), (0.5, 0.0)),
}
_DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]
_SEG_NAMES = "abcdefg"
_DIGIT_MASK = torch.tensor([[name in segs for name in _SEG_NAMES] for segs in _DIGIT_SEGMENTS])


def digits(
    n: int,
    generator: torch.Generator | None = None,
    *,
    size: int = 16,
    labels: torch.Tensor | None = None,
    return_labels: bool = False,
    dtype: torch.dtype | None = None,
    device=None,
):
    r"""``n`` digit images ``(n, 1, size, size)`` in ``[-1, 1]``: the seven-segment strokes of a random digit
    (or of ``labels``), slanted, scaled, shifted and of random thickness, anti-aliased.

    Returns the images, or ``(images, labels)`` with ``return_labels=True``.
    """
    _check_n(n)
    dev = _gen_device(generator)
    if labels is None:
        labels = torch.randint(0, 10, (n,), generator=generator, device=dev)
    else:
        labels = torch.as_tensor(labels, device=dev).to(torch.long)
        if labels.shape != (n,) or bool(((labels < 0) | (labels > 9)).any()):
            raise ValueError("labels must have shape (n,) with values in 0..9")
    yy, xx = _grid(size, dev)
    scale = 0.45 + 0.15 * _rand(n, generator)  # half height of the digit
    aspect = 0.9 + 0.4 * _rand(n, generator)
    slant = 0.25 * (_rand(n, generator) - 0.5)
    thick = 0.07 + 0.06 * _rand(n, generator)
    cx = (_rand(n, generator) - 0.5) * 0.3
    cy = (_rand(n, generator) - 0.5) * 0.3
    ends = torch.tensor([_SEGMENTS[k] for k in _SEG_NAMES], dtype=torch.float64, device=dev)  # (7, 2, 2)
    b = (slice(None), None, None, None)
    px = xx[None, None] - cx[b]
    py = -(yy[None, None]) - cy[b]  # y up
    sx, sy = ends[None, :, :, 0], ends[None, :, :, 1]  # (1, 7, 2)
    hx = (sx * aspect[:, None, None] * 0.55 + slant[:, None, None] * sy) * scale[:, None, None]
    hy = sy * scale[:, None, None]
    dist = _segment_distance(
        px, py, hx[..., 0, None, None], hy[..., 0, None, None], hx[..., 1, None, None], hy[..., 1, None, None]
    )  # (n, 7, size, size)
    mask = _DIGIT_MASK.to(dev)[labels]  # (n, 7)
    dist = torch.where(mask[:, :, None, None], dist, torch.full_like(dist, math.inf)).amin(1)
    img = 2.0 * _coverage(dist - thick[:, None, None], 2.0 / size) - 1.0
    img = _finish(img[:, None], dtype, device)
    return (img, labels.to(img.device)) if return_labels else img


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------

DATASETS: dict[str, Callable] = {
    "ring": ring,
    "moons": two_moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
    "shapes": shapes,
    "digits": digits,
}
"""Data sets by name; each is ``fn(n, generator=None, *, dtype=None, device=None, **options)``."""


def get_dataset(name: str | Callable, **options) -> Callable:
    """A sampler ``fn(n, generator) -> tensor`` by name (see [`DATASETS`][sde_diffusion.training.data.DATASETS]) with
    its options bound."""
    fn = lookup(DATASETS, name, "data set")

    def sample(n: int, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
        return fn(n, generator, **options, **kwargs)

    return sample
