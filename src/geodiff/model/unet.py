"""3D U-Net over (level, lat, lon) with a zero-convolution physics-prior branch.

Down- and up-sampling act on lat/lon only (stride (1, 2, 2)): pressure levels are few
and kept at every scale. The physics-prior branch is a small 3D conv encoder whose
features join each encoder scale through zero-initialised 1x1x1 convolutions
(ControlNet, Zhang et al. 2023), so at initialisation the priors change nothing.
With `noise_channels > 0` every block is modulated by an embedding of the EDM noise
level c_noise (scale and shift after the first convolution).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POSITION_CHANNELS = 6
"""sin/cos of the normalised lat index, lon index and level index."""


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def zero_conv(channels: int) -> nn.Conv3d:
    """A 1x1x1 convolution with weight and bias zero: outputs 0 until training moves it."""
    conv = nn.Conv3d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class NoiseEmbedding(nn.Module):
    """c_noise [B] -> [B, channels]: sinusoidal features followed by a two-layer MLP."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(channels // 2) / max(1, channels // 2)))
        self.mlp = nn.Sequential(nn.Linear(2 * (channels // 2), channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).float() * self.freqs
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with a residual path; optional noise scale/shift."""

    def __init__(self, cin: int, cout: int, emb_channels: int = 0) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv3d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv3d(cout, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * cout) if emb_channels else None
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.affine is not None and emb is not None:
            scale, shift = self.affine(emb)[:, :, None, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


def position_channels(like: torch.Tensor) -> torch.Tensor:
    """[B, 6, L, H, W] encodings of the level, lat and lon index (sin/cos over half a period)."""
    b, _, n_lev, h, w = like.shape
    axes = [torch.linspace(0, math.pi / 2, n, device=like.device, dtype=like.dtype) for n in (n_lev, h, w)]
    grids = torch.meshgrid(*axes, indexing="ij")
    feats = torch.stack([f(g) for g in grids for f in (torch.sin, torch.cos)])
    return feats.unsqueeze(0).expand(b, -1, -1, -1, -1)


class UNet3D(nn.Module):
    """U-Net over [B, C, L, H, W] with optional prior branch and noise conditioning."""

    def __init__(
        self,
        in_channels: int,  # input channels (fields), without the positional encodings
        out_channels: int,  # predicted channels
        prior_channels: int = 0,  # physics-prior channels; 0: no prior branch
        width: int = 32,  # channels at the finest scale (doubled per scale)
        depth: int = 2,  # lat/lon down-sampling steps
        noise_channels: int = 0,  # size of the noise-level embedding; 0: not a denoiser
    ) -> None:
        super().__init__()
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        emb = noise_channels
        self.embed = NoiseEmbedding(noise_channels) if noise_channels else None
        self.stem = nn.Conv3d(in_channels + POSITION_CHANNELS, width, 3, padding=1)
        self.enc = nn.ModuleList(ResBlock(chans[max(i - 1, 0)], c, emb) for i, c in enumerate(chans))
        self.down = nn.ModuleList(nn.Conv3d(c, c, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) for c in chans[:-1])
        self.mid = ResBlock(chans[-1], chans[-1], emb)
        self.up = nn.ModuleList(nn.Conv3d(c, chans[i], (1, 3, 3), padding=(0, 1, 1)) for i, c in enumerate(chans[1:]))
        self.dec = nn.ModuleList(ResBlock(2 * c, c, emb) for c in chans[:-1])
        self.head = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv3d(width, out_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        if prior_channels:
            self.prior_stem = nn.Conv3d(prior_channels, width, 3, padding=1)
            self.prior_enc = nn.ModuleList(ResBlock(chans[max(i - 1, 0)], c) for i, c in enumerate(chans))
            self.prior_down = nn.ModuleList(nn.Conv3d(c, c, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) for c in chans[:-1])
            self.zero_convs = nn.ModuleList(zero_conv(c) for c in chans)
        else:
            self.prior_stem = None

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        m = 2**self.depth
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
        return x, (h, w)

    def _prior_features(self, priors: torch.Tensor) -> list[torch.Tensor]:
        p = self.prior_stem(priors)
        feats = []
        for i, block in enumerate(self.prior_enc):
            p = block(p)
            feats.append(self.zero_convs[i](p))
            if i < self.depth:
                p = self.prior_down[i](p)
        return feats

    def forward(self, x: torch.Tensor, priors: torch.Tensor | None = None, noise_labels: torch.Tensor | None = None) -> torch.Tensor:
        x, (h, w) = self._pad(x)
        emb = self.embed(noise_labels) if self.embed is not None and noise_labels is not None else None
        prior_feats = None
        if self.prior_stem is not None and priors is not None:
            prior_feats = self._prior_features(self._pad(priors)[0])
        z = self.stem(torch.cat([x, position_channels(x)], dim=1))
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
