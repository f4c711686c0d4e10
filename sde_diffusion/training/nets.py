r"""Score networks: an MLP for low-dimensional data and a small UNet for 16x16 to 32x32 images.

A network here is just ``fn(x, t) -> output`` with the shape of ``x``; what it predicts (``eps``, ``x0``, ``v`` or
``score``) is decided by wrapping it in [`Model`][sde_diffusion.models.Model]. ``t`` is the network's time input, shape
``(B,)`` (or a scalar): continuous time by default; use ``Model(..., time_input=...)`` to feed something else (the
discrete label, or ``lambda(t)`` for a schedule whose time spans several decades).

Both networks work on any device and in any floating dtype (the time features are computed in float32 or wider and
cast to the activations' dtype), and record the keyword arguments they were built with in ``.config`` so that a
checkpoint can rebuild them (see [`build_net`][sde_diffusion.training.nets.build_net]).

Time embeddings:

* Gaussian random Fourier features (Tancik et al. 2020, arXiv:2006.10739; used for scores by Song et al. 2021,
  arXiv:2011.13456): ``[sin(2 pi W t), cos(2 pi W t)]`` with fixed ``W ~ N(0, scale^2)`` drawn from a seeded generator;
* fixed geometric frequencies: ``W_i = f_min (f_max/f_min)^{i/(n-1)}`` -- the transformer embedding (Vaswani et al.
  2017, arXiv:1706.03762) for a time in ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FourierTimeEmbedding", "MLPScoreNet", "UNet", "NETS", "build_net"]


class FourierTimeEmbedding(nn.Module):
    r"""Features ``[sin(2 pi w_i t), cos(2 pi w_i t)]_{i=1..dim/2}`` of a scalar time.

    Args:
        dim: number of features (even).
        kind: ``"random"`` -- ``w_i ~ N(0, scale^2)`` from ``torch.Generator().manual_seed(seed)``; ``"fixed"`` --
            geometric ``w_i`` from ``min_freq`` to ``max_freq``.
        scale: standard deviation of the random frequencies.
        min_freq: lowest fixed frequency.
        max_freq: highest fixed frequency.
        seed: seed of the random frequencies (so a rebuilt network has the same ones; they are also a buffer).
    """

    freqs: torch.Tensor  # (a buffer)

    def __init__(
        self,
        dim: int = 64,
        kind: str = "random",
        *,
        scale: float = 16.0,
        min_freq: float = 0.1,
        max_freq: float = 100.0,
        seed: int = 0,
    ):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim!r}")
        half = dim // 2
        if kind == "random":
            w = torch.randn(half, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
        elif kind == "fixed":
            w = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half, dtype=torch.float64))
        else:
            raise ValueError(f"kind must be 'random' or 'fixed', got {kind!r}")
        self.dim = dim
        self.register_buffer("freqs", w.to(torch.float32))

    def forward(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.freqs.device)
        work = torch.promote_types(t.dtype if t.is_floating_point() else torch.float32, torch.float32)
        arg = 2.0 * math.pi * t.to(work).reshape(-1, 1) * self.freqs.to(work)
        out = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
        return out.to(dtype or self.freqs.dtype)


def _time_vector(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def _autocast_enabled(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4 has no device-type argument
        return torch.is_autocast_enabled() if x.device.type == "cuda" else False


def _compute_dtype(x: torch.Tensor, module: nn.Module) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``x``'s device, and the dtype the activations will have."""
    if _autocast_enabled(x):
        try:
            return True, torch.get_autocast_dtype(x.device.type)
        except AttributeError:  # torch < 2.4
            return True, torch.get_autocast_gpu_dtype()
    return False, next(module.parameters()).dtype


class _MLPBlock(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h, e):
        z = self.lin1(F.silu(self.norm(h))) + self.emb(e)
        return h + self.lin2(F.silu(z))


class MLPScoreNet(nn.Module):
    r"""Residual MLP ``fn(x, t)`` for low-dimensional data ``x`` of shape ``(B, *event_shape)``.

    ``h = W_in x``; ``depth`` blocks ``h <- h + W_2 silu(W_1 silu(LN(h)) + E_b(e(t)))``; output
    ``W_out silu(LN(h))``, where ``e(t)`` is an MLP of the Fourier features of ``t``
    ([`FourierTimeEmbedding`][sde_diffusion.training.nets.FourierTimeEmbedding]).

    Args:
        dim: data dimension (product of the event shape).
        hidden: width.
        depth: number of residual blocks.
        embed_dim: number of Fourier features (and width of the time MLP).
        fourier: ``"random"`` or ``"fixed"``.
        fourier_scale: std of the random frequencies (times in ``[0, 1]`` want ~4-30).
        seed: seed of the random frequencies.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 64,
        fourier: str = "random",
        fourier_scale: float = 16.0,
        seed: int = 0,
    ):
        super().__init__()
        self.config = dict(
            dim=dim,
            hidden=hidden,
            depth=depth,
            embed_dim=embed_dim,
            fourier=fourier,
            fourier_scale=fourier_scale,
            seed=seed,
        )
        self.dim = dim
        self.time = FourierTimeEmbedding(embed_dim, fourier, scale=fourier_scale, seed=seed)
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden, embed_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"x has {flat.shape[1]} features per sample, the network expects {self.dim}")
        autocast, dtype = _compute_dtype(x, self)
        e = self.time_mlp(self.time(_time_vector(t, x), dtype))
        h = self.inp(flat if autocast else flat.to(dtype))
        for block in self.blocks:
            h = block(h, e)
        return self.out(F.silu(self.out_norm(h))).reshape(x.shape).to(x.dtype)


def _groups(channels: int, groups: int) -> int:
    g = math.gcd(channels, groups)
    return max(g, 1)


class _ResBlock(nn.Module):
    """``x + conv(silu(GN(conv(silu(GN(x))) + E e))))`` (Ho et al. 2020, arXiv:2006.11239), 1x1 skip if needed."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        assert self.conv2.bias is not None
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions, pre-GroupNorm, residual."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        assert self.proj.bias is not None
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, hh, ww = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hh * ww).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, hh, ww))


class UNet(nn.Module):
    r"""A small UNet ``fn(x, t)`` for images ``x`` of shape ``(B, C, H, W)`` (Ronneberger et al. 2015,
    arXiv:1505.04597, in the DDPM form of Ho et al. 2020, arXiv:2006.11239).

    Levels ``i = 0..L-1`` with ``base_channels * channel_mults[i]`` channels; ``num_res_blocks`` residual blocks per
    level (GroupNorm, SiLU, time embedding added between the two convolutions), a stride-2 convolution between
    levels, a middle block ``ResBlock -> self-attention -> ResBlock`` at the lowest resolution, and a mirrored
    decoder with skip connections (nearest upsampling + convolution). ``H`` and ``W`` must be divisible by
    ``2^(L-1)``. The last convolution of every residual branch and the output convolution start at zero, so the
    initial network is the zero function (standard for denoisers).

    Args:
        in_channels: image channels ``C``.
        base_channels: channels at the first level.
        channel_mults: channel multiplier per level (its length is the number of levels).
        num_res_blocks: residual blocks per level.
        attn_heads: heads of the middle self-attention.
        groups: GroupNorm groups (reduced to a divisor of the channel count where needed).
        embed_dim: time-embedding width (default ``4 * base_channels``).
        fourier: time features, ``"fixed"`` or ``"random"`` (see
            [`FourierTimeEmbedding`][sde_diffusion.training.nets.FourierTimeEmbedding]).
        fourier_scale: std of random frequencies.
        dropout: dropout in the residual blocks.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attn_heads: int = 1,
        groups: int = 8,
        embed_dim: int | None = None,
        fourier: str = "fixed",
        fourier_scale: float = 16.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        if not channel_mults or num_res_blocks < 1:
            raise ValueError("channel_mults must be non-empty and num_res_blocks >= 1")
        emb = embed_dim or 4 * base_channels
        self.config = dict(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks,
            attn_heads=attn_heads,
            groups=groups,
            embed_dim=emb,
            fourier=fourier,
            fourier_scale=fourier_scale,
            dropout=dropout,
        )
        self.levels = len(channel_mults)
        self.time = FourierTimeEmbedding(
            base_channels if base_channels % 2 == 0 else base_channels + 1, fourier, scale=fourier_scale
        )
        self.time_mlp = nn.Sequential(nn.Linear(self.time.dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        chans = [base_channels]
        c = base_channels
        self.down = nn.ModuleList()
        for i, m in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(_ResBlock(c, base_channels * m, emb, groups, dropout))
                c = base_channels * m
                chans.append(c)
            down = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < self.levels - 1 else None
            if down is not None:
                chans.append(c)
            self.down.append(nn.ModuleDict({"blocks": blocks, **({"down": down} if down is not None else {})}))

        self.mid1 = _ResBlock(c, c, emb, groups, dropout)
        self.attn = _Attention(c, attn_heads, groups)
        self.mid2 = _ResBlock(c, c, emb, groups, dropout)

        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(_ResBlock(c + chans.pop(), base_channels * m, emb, groups, dropout))
                c = base_channels * m
            up = nn.Conv2d(c, c, 3, padding=1) if i > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, **({"up": up} if up is not None else {})}))

        self.norm_out = nn.GroupNorm(_groups(c, groups), c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape (B, C, H, W), got {tuple(x.shape)}")
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        autocast, dtype = _compute_dtype(x, self)
        e = self.time_mlp(self.time(_time_vector(t, x), dtype))
        h = self.conv_in(x if autocast else x.to(dtype))
        skips = [h]
        for level in self.down:
            level = cast(nn.ModuleDict, level)
            for block in cast(nn.ModuleList, level["blocks"]):
                h = block(h, e)
                skips.append(h)
            if "down" in level:
                h = level["down"](h)
                skips.append(h)
        h = self.mid2(self.attn(self.mid1(h, e)), e)
        for level in self.up:
            level = cast(nn.ModuleDict, level)
            for block in cast(nn.ModuleList, level["blocks"]):
                h = block(torch.cat([h, skips.pop()], dim=1), e)
            if "up" in level:
                h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h))).to(x.dtype)


NETS: dict[str, type[nn.Module]] = {"MLPScoreNet": MLPScoreNet, "UNet": UNet}
"""The networks [`build_net`][sde_diffusion.training.nets.build_net] can rebuild from a checkpoint."""


def build_net(name: str, config: dict) -> nn.Module:
    """Rebuild a network of [`NETS`][sde_diffusion.training.nets.NETS] from its class name and recorded ``config``."""
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; known: {sorted(NETS)}")
    return NETS[name](**config)
