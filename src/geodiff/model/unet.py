"""3D U-Net over (level, lat, lon) with a zero-convolution physics-prior branch.

Tensors are ``[B, C, L, H, W]``. Down- and up-sampling act on lat/lon only (stride
(1, 2, 2)); the few pressure levels are kept at every scale. Grids whose H or W is not
a multiple of 2^depth are padded (replicate) and the output is cropped back.

One extra input is added internally: an encoding of the level index (learned per
level when ``n_levels`` is given, sin/cos of the normalised index otherwise). Nothing
encodes the horizontal position: the network is a function of its input fields alone,
so a model trained on one box (or on patches of it) applies to any box at the same
resolution (where a model knows its position, it is from the inputs:
config ``model.position``).

Physics-prior branch (``prior_channels > 0``): a small 3D conv encoder over the
priors whose features are added to the U-Net encoder at every scale through
zero-initialised 1x1x1 convolutions, the "zero convolution" of ControlNet (Zhang,
Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models"): at initialisation the priors change the output by exactly 0.

Noise conditioning (``noise_channels > 0``, the EDM denoiser F): c_noise is embedded
with sinusoidal features and a two-layer MLP (Ho et al. 2020; Karras et al. 2022,
Appendix F.2), and modulates every residual block with a per-channel scale and shift
after its second normalisation.

The output convolution is zero-initialised, so an untrained network returns 0: the
deterministic model starts as the interpolated input and the EDM denoiser as
D(x; σ) = c_skip(σ) x.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LEVEL_CHANNELS = 4
"""Width of the learned level embedding (the sinusoidal level encoding has 2 channels)."""


NORM_WINDOW = 7
"""Side of the horizontal neighbourhood over which :class:`LocalGroupNorm` takes its statistics, cells of its scale."""


def _groups(channels: int) -> int:
    """Number of normalisation groups: up to 8, dividing `channels`."""
    return math.gcd(channels, 8)


def window_mean(v: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of `v` [..., H, W] over the `window` x `window` neighbourhood of each point that lies inside the
    field (fewer points at the edges)."""
    half = window // 2
    *lead, h, w = v.shape
    padded = F.pad(v.reshape(-1, 1, h, w), (half, half, half, half))  # zeros: they add nothing to the sums
    total = F.avg_pool2d(padded, window, stride=1).reshape(v.shape)  # the sum over the window / window²

    def inside(n: int) -> torch.Tensor:  # fraction of the window's cells along an axis that lie in the field
        i = torch.arange(n, device=v.device)
        return ((i + half).clamp(max=n - 1) - (i - half).clamp(min=0) + 1).to(v.dtype) / window

    return total / (inside(h)[:, None] * inside(w)[None, :])


class LocalGroupNorm(nn.Module):
    """GroupNorm whose statistics are those of a neighbourhood: at each point, the mean and variance of
    its group's channels over every level and the :data:`NORM_WINDOW` x :data:`NORM_WINDOW` horizontal
    neighbourhood (clipped at the field's edges), then a per-channel scale and shift.

    GroupNorm takes them over the whole field, which ties a network to the size of the fields it was
    trained on: a larger box, a training patch or an inference tile changes every output. Here a point
    depends on its surroundings only, so the network is one function on any box, patch or tile
    (tests/test_unet.py; tiled inference, geodiff.downscale.tiles): config ``model.norm: local``.
    On the default U-Net it trained better than GroupNorm (validation RMSE 0.47 K against 0.58 K at
    300 steps, 0.317 K against 0.332 K at 800), where per-point normalisations lost (over the
    channels, as ConvNeXt: 0.68 K; over channels and levels: 0.66 K) and none at all failed
    (0.95 K); but its training steps cost 1.5-3x GroupNorm's fused kernel on a CPU, which is why
    it is not the default. Statistics in float32, as autocast runs GroupNorm.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups, self.eps = _groups(channels), eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, levels, h, w = x.shape
        g = self.groups
        xg = x.reshape(b, g, c // g, levels, h, w)
        # the point's own E[x] and E[x²], [B, G, H, W], accumulated in float32 without a float32 copy of x
        # (torch.var_mean over these dims is 30x slower on CPU)
        n, acc = (c // g) * levels, torch.promote_types(x.dtype, torch.float32)
        moments = torch.stack([xg.mean((2, 3), dtype=acc), torch.linalg.vector_norm(xg, dim=(2, 3), dtype=acc).square() / n],
                              dim=2)
        both = window_mean(moments, NORM_WINDOW)  # [B, G, 2, H, W]
        mean, mean_sq = both[:, :, 0], both[:, :, 1]
        rstd = torch.rsqrt((mean_sq - mean.square()).clamp_min(0.0) + self.eps)
        weight = self.weight.reshape(1, g, c // g, 1, 1, 1)
        scale = rstd[:, :, None, None] * weight  # [B, G, C/G, 1, H, W]: one fused pass over x below
        shift = self.bias.reshape(1, g, c // g, 1, 1, 1) - mean[:, :, None, None] * scale
        return torch.addcmul(shift, xg, scale).reshape(x.shape)


def _index_angle(n: int, like: torch.Tensor) -> torch.Tensor:
    """Angles π i/(n − 1) for i = 0..n−1 (0 for n = 1): the normalised index on a half circle."""
    return torch.linspace(0.0, math.pi, n, dtype=like.dtype, device=like.device) if n > 1 else like.new_zeros(1)


def level_channels(like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal level encoding [B, 2, L, H, W]: (sin, cos) of π k/(L − 1) for level k."""
    b, _, n_lev, h, w = like.shape
    a = _index_angle(n_lev, like)
    feats = torch.stack([a.sin(), a.cos()])  # [2, L]
    return feats[None, :, :, None, None].expand(b, -1, -1, h, w)


class ZeroConv(nn.Conv3d):
    """1x1x1 convolution with weight and bias initialised to 0 (ControlNet's zero convolution).

    Its output is exactly 0 until an optimiser step moves it; its weight gradient,
    ∂L/∂W = Σ (∂L/∂out) · in, is non-zero as soon as the downstream gradient is.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__(in_channels, out_channels or in_channels, kernel_size=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class NoiseEmbedding(nn.Module):
    """c_noise [B] -> [B, channels]: (cos, sin) of c_noise · f_k, f_k = 10000^(−k/(channels/2)), then an MLP."""

    def __init__(self, channels: int, max_positions: float = 10000.0) -> None:
        super().__init__()
        self.half, self.max_positions = channels // 2, max_positions
        self.mlp = nn.Sequential(nn.Linear(2 * self.half, channels), nn.SiLU(), nn.Linear(channels, channels), nn.SiLU())

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        k = torch.arange(self.half, dtype=torch.float32, device=c_noise.device)
        freqs = self.max_positions ** (-k / max(self.half, 1))
        angles = c_noise.float().reshape(-1, 1) * freqs
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


NORMS = {"group": lambda c: nn.GroupNorm(_groups(c), c), "local": lambda c: LocalGroupNorm(c)}
"""Feature normalisations by config ``model.norm``: GroupNorm over the whole field, or over a neighbourhood."""


class ResBlock(nn.Module):
    """x + Conv(SiLU(N(Conv(SiLU(N(x)))) · (1 + scale) + shift)) with N of :data:`NORMS` and (scale, shift) from the noise embedding."""

    def __init__(self, cin: int, cout: int, emb_channels: int = 0, norm: str = "group") -> None:
        super().__init__()
        self.norm1 = NORMS[norm](cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm2 = NORMS[norm](cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * cout) if emb_channels else None
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.affine is not None:
            scale, shift = self.affine(emb)[:, :, None, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


def _down(channels: int) -> nn.Conv3d:
    """Strided (1, 2, 2) convolution: halves lat and lon, keeps the levels."""
    return nn.Conv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


class UNet3D(nn.Module):
    """U-Net on [B, C, L, H, W] with an optional zero-conv prior branch and noise conditioning.

    forward(x [B, in_channels, L, H, W], priors [B, prior_channels, L, H, W] | None,
    noise_labels [B] | None) -> [B, out_channels, L, H, W].
    """

    def __init__(
        self,
        in_channels: int,  # input fields, without the internal level encoding
        out_channels: int,  # predicted fields
        prior_channels: int = 0,  # physics-prior fields; 0: no prior branch
        width: int = 32,  # channels at the finest scale, doubled at every coarser one
        depth: int = 2,  # number of (1, 2, 2) down-sampling steps
        noise_channels: int = 0,  # size of the c_noise embedding; 0: not a denoiser
        n_levels: int | None = None,  # levels, for a learned level embedding; None: sinusoidal
        norm: str = "group",  # feature normalisation, one of NORMS (config model.norm)
    ) -> None:
        super().__init__()
        self.depth, self.n_levels, self.prior_channels = depth, n_levels, prior_channels
        chans = [width * 2**i for i in range(depth + 1)]
        emb = noise_channels
        self.level_embed = nn.Embedding(n_levels, LEVEL_CHANNELS) if n_levels else None
        n_enc = LEVEL_CHANNELS if n_levels else 2
        self.embed = NoiseEmbedding(noise_channels) if noise_channels else None

        self.stem = nn.Conv3d(in_channels + n_enc, width, 3, padding=1)
        self.enc = nn.ModuleList(ResBlock(chans[max(i - 1, 0)], c, emb, norm) for i, c in enumerate(chans))
        self.down = nn.ModuleList(_down(c) for c in chans[:-1])
        self.mid = ResBlock(chans[-1], chans[-1], emb, norm)
        self.up = nn.ModuleList(nn.Conv3d(chans[i + 1], c, (1, 3, 3), padding=(0, 1, 1)) for i, c in enumerate(chans[:-1]))
        self.dec = nn.ModuleList(ResBlock(2 * c, c, emb, norm) for c in chans[:-1])
        self.head = nn.Sequential(NORMS[norm](width), nn.SiLU(), nn.Conv3d(width, out_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

        if prior_channels:
            self.prior_stem = nn.Conv3d(prior_channels, width, 3, padding=1)
            self.prior_enc = nn.ModuleList(
                nn.Sequential(nn.Conv3d(chans[max(i - 1, 0)], c, 3, padding=1), NORMS[norm](c), nn.SiLU())
                for i, c in enumerate(chans)
            )
            self.prior_down = nn.ModuleList(_down(c) for c in chans[:-1])
            self.zero_convs = nn.ModuleList(ZeroConv(c) for c in chans)
        log.debug("UNet3D: %d parameters, scales %s", sum(p.numel() for p in self.parameters()), chans)

    def encodings(self, x: torch.Tensor) -> torch.Tensor:
        """The internal input channels of `x`: the level encoding."""
        if self.level_embed is None:
            lev = level_channels(x)
        else:
            if x.shape[2] != self.n_levels:
                raise ValueError(f"UNet3D built for {self.n_levels} levels, got {x.shape[2]}")
            table = self.level_embed.weight.to(x.dtype).t()  # [LEVEL_CHANNELS, L]
            lev = table[None, :, :, None, None].expand(x.shape[0], -1, -1, *x.shape[-2:])
        return lev

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad lat/lon at the far edges up to multiples of 2^depth."""
        m = 2**self.depth
        ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
        return F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate") if ph or pw else x

    def _prior_features(self, priors: torch.Tensor) -> list[torch.Tensor]:
        """Zero-conv outputs of the prior encoder, one per scale (exactly 0 at initialisation)."""
        p = self.prior_stem(priors)
        feats = []
        for i, block in enumerate(self.prior_enc):
            p = block(p)
            feats.append(self.zero_convs[i](p))
            if i < self.depth:
                p = self.prior_down[i](p)
        return feats

    def forward(
        self, x: torch.Tensor, priors: torch.Tensor | None = None, noise_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        h, w = x.shape[-2:]
        emb = None
        if self.embed is not None:
            if noise_labels is None:
                raise ValueError("UNet3D with noise_channels > 0 needs noise_labels")
            emb = self.embed(noise_labels.reshape(-1).expand(x.shape[0]) if noise_labels.numel() == 1 else noise_labels)
        prior_feats = None
        if self.prior_channels and priors is not None:
            prior_feats = self._prior_features(self._pad(priors))

        z = self.stem(self._pad(torch.cat([x, self.encodings(x)], dim=1)))
        skips = []
        for i, block in enumerate(self.enc):
            z = block(z, emb)
            if prior_feats is not None:
                z = z + prior_feats[i]
            if i < self.depth:
                skips.append(z)
                z = self.down[i](z)
        z = self.mid(z, emb)
        for i in reversed(range(self.depth)):
            z = self.up[i](F.interpolate(z, scale_factor=(1, 2, 2), mode="nearest"))
            z = self.dec[i](torch.cat([z, skips[i]], dim=1), emb)
        return self.head(z)[..., :h, :w]
