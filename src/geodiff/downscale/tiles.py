"""Tiled inference: a large domain cut into overlapping tiles whose outputs are blended back.

A tile is `tile` × `tile` fine cells (or the whole axis when it is shorter); neighbours
overlap by `overlap` cells. Each tile's output is weighted by a taper over the `overlap`
cells of each side shared with a neighbour: 0 on the outer quarter, where the network sees
the tile's zero padding within its receptive field, then rising as sin² to 1, and 1 elsewhere
(also at the domain's own edges). The weighted outputs are divided by the sum of the
weights: a partition of unity, smooth across tile borders. With one tile (the domain fits)
the weight is exactly 1 and the output is the untiled one, bit for bit. A network reaches
beyond a cell by its receptive field and its normalisation windows
(:class:`geodiff.model.unet.LocalGroupNorm`), so the overlap must cover that reach: on the U-Net
of config/test.yaml (depth 1) over 100 x 120 cells, 80-cell tiles overlapping by 32 give the
untiled field within 0.01 K, by 16 within 0.1 K (tests/test_downscale.py).

As CorrDiff's patched generation does, the diffusion sampler calls the blended denoiser
(:class:`TiledDenoiser`) at every step, so each step sees one seamless state of the whole
domain. Tiles (all the same size) run :data:`TILES_PER_CALL` at a time, stacked along
the batch: activations, the bulk of the memory, scale with the tile, not with the domain.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

TILES_PER_CALL = 4
"""Tiles stacked into one network call: fewer, larger calls, with memory still bounded by the tile."""

def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """First cells of the tiles along an axis of `n` cells: stride `tile` − `overlap`, the last tile flush with the end."""
    if tile >= n:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    return [*starts, n - tile]


def taper(size: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """Blending weights [size] of one tile along one axis over `overlap` cells at the start (`rise`) and at
    the end (`fall`), where the tile overlaps a neighbour: 0 on the outer quarter, then a sin² ramp to 1;
    1 elsewhere."""
    w = torch.ones(size, dtype=torch.float64)
    margin = overlap // 4
    cells = torch.arange(overlap, dtype=torch.float64) + 0.5
    ramp = torch.sin(0.5 * math.pi * ((cells - margin) / (overlap - margin)).clamp(0.0, 1.0)) ** 2
    if rise:
        w[:overlap] = ramp
    if fall:
        w[size - overlap:] = torch.minimum(w[size - overlap:], ramp.flip(0))
    return w


class Tiling:
    """The tiles of an (H, W) domain and their blending weights.

    `tile` None (or not smaller than the domain) gives one tile: the untiled computation.
    """

    def __init__(self, shape: tuple[int, int], tile: int | None, overlap: int) -> None:
        if tile is not None and not 0 <= 2 * overlap <= tile:
            raise ValueError(f"downscale: overlap {overlap} must be between 0 and half the tile ({tile})")
        self.shape = shape
        self.windows: list[tuple[slice, slice]] = []
        self.weights: list[torch.Tensor] = []
        axes = []
        for n in shape:
            size = n if tile is None else min(tile, n)
            starts = tile_starts(n, size, overlap)
            axes.append([(s, size, s > 0, s + size < n) for s in starts])
        for y0, h, up, down in axes[0]:
            for x0, w, left, right in axes[1]:
                self.windows.append((slice(y0, y0 + h), slice(x0, x0 + w)))
                self.weights.append(taper(h, overlap, up, down)[:, None] * taper(w, overlap, left, right)[None, :])
        total = torch.zeros(shape, dtype=torch.float64)
        for (ys, xs), w in zip(self.windows, self.weights):
            total[ys, xs] += w
        self.total = total

    def __len__(self) -> int:
        return len(self.windows)

    def blend(self, fn: Callable[..., torch.Tensor], *fields: torch.Tensor | None) -> torch.Tensor:
        """Σ_tiles w · fn(fields over the tile) / Σ_tiles w, for `fields` shaped [..., H, W] (None passes
        through) and `fn` giving [..., h, w] for each tile; one tile gives fn(fields) itself."""
        if len(self.windows) == 1:
            return fn(*fields)
        out = None
        for first in range(0, len(self.windows), TILES_PER_CALL):
            windows = self.windows[first : first + TILES_PER_CALL]
            stacked = (None if f is None else torch.cat([f[..., ys, xs] for ys, xs in windows]) for f in fields)
            parts = fn(*stacked).chunk(len(windows))  # tile k of the batch is rows k·B ... (k + 1)·B − 1
            if out is None:
                out = parts[0].new_zeros((*parts[0].shape[:-2], *self.shape), dtype=torch.float64)
            for (ys, xs), w, part in zip(windows, self.weights[first:], parts):
                out[..., ys, xs] += w.to(part.device) * part.double()
        return (out / self.total.to(out.device)).to(parts[0].dtype)


class TiledDenoiser:
    """The EDM denoiser D(x; σ, cond, priors) of a :class:`geodiff.model.networks.ResidualModel`,
    evaluated tile by tile over the whole domain and blended (:meth:`Tiling.blend`); what the
    samplers of :mod:`geodiff.model.edm` take in its place."""

    def __init__(self, model: torch.nn.Module, tiling: Tiling) -> None:
        self.model, self.tiling = model, tiling
        self.sigma_min, self.sigma_max, self.sigma_data = model.sigma_min, model.sigma_max, model.sigma_data

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                 priors: torch.Tensor | None = None) -> torch.Tensor:
        return self.tiling.blend(lambda xt, ct, pt: self.model(xt, sigma, ct, pt), x, cond, priors)
