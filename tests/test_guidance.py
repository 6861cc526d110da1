"""Stability-aware sampling: guidance of the denoised state toward the coarse input's static stability.

The constructed case: a statically stable column (the standard atmosphere's 6.5 K/km
lapse rate) plus a residual drawn from N(0, (3 K)²) per point by the exact Gaussian
denoiser (tests/test_edm.py), so that many members are unstable between levels. The
spurious-instability rate is counted by the metrics' numpy path
(:func:`geodiff.evaluate.metrics.spurious_instability`), not by the torch penalty the
guidance descends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from geodiff.constants import G, LAT, LEVEL, LON, R_D, TIME
from geodiff.evaluate.metrics import MEMBER, spurious_instability
from geodiff.evaluate.sampling import stability_guide
from geodiff.model.losses import stability_of
from geodiff.model.edm import SAMPLERS, edm_time_steps
from test_edm import ExactGaussianDenoiser

LEVELS = torch.tensor([1000.0, 925.0, 850.0, 700.0, 500.0, 400.0, 300.0, 200.0], dtype=torch.float64)
MEMBERS, SIZE, NOISE_K, STEPS = 16, 6, 3.0, 18


def standard_column() -> torch.Tensor:
    """T(p) = 288 K (p/1000 hPa)^(R_d Γ/g) with Γ = 6.5 K/km, broadcast to [L, SIZE, SIZE]."""
    t = 288.0 * (LEVELS / 1000.0) ** (R_D * 0.0065 / G)
    return t[:, None, None].expand(-1, SIZE, SIZE).clone()


def sample(sampler: str, weight: float | None) -> torch.Tensor:
    """Members [M, L, H, W] in K: the column plus NOISE_K times a draw of the exact N(0, 1) denoiser."""
    column = standard_column()
    to_kelvin = lambda x: column + NOISE_K * x[:, 0]  # noqa: E731
    guide = None
    if weight is not None:
        below = float(edm_time_steps(STEPS)[STEPS - 4])
        guide = stability_guide(weight, below, to_kelvin, LEVELS, stability_of(column, LEVELS))
    cond = torch.zeros(MEMBERS, 1, len(LEVELS), SIZE, SIZE, dtype=torch.float64)
    x = SAMPLERS[sampler](ExactGaussianDenoiser(1.0), cond, num_steps=STEPS, generator=torch.Generator().manual_seed(3),
                          guide=guide)
    return to_kelvin(x)


def spurious_rate(members: torch.Tensor) -> float:
    """Spurious-instability rate of the members against the stable column, by the numpy metric."""
    coords = {TIME: [0], LEVEL: LEVELS.numpy(), LAT: np.arange(SIZE) + 45.0, LON: np.arange(SIZE) + 5.0}
    dims = (TIME, LEVEL, LAT, LON)
    truth = xr.DataArray(standard_column().numpy()[None], dims=dims, coords=coords)
    forecast = xr.DataArray(members.numpy()[:, None], dims=(MEMBER, *dims), coords=coords)
    return float(spurious_instability(forecast, truth, dims=[MEMBER, *dims]))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_weight_zero_reproduces_the_unguided_sampler_exactly(sampler):
    assert torch.equal(sample(sampler, 0.0), sample(sampler, None))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_guidance_lowers_the_spurious_instability_rate(sampler):
    plain, guided = spurious_rate(sample(sampler, None)), spurious_rate(sample(sampler, 2.0))
    assert plain > 0.05  # the case has instabilities to remove
    assert guided < 0.5 * plain
