"""The additive hard constraint: the coarsening of a constrained prediction is its coarse input.

The coarsening that checks it is a brute-force block mean over the fine cells with
spherical band areas (tests/test_regrid.py's `band_area`), independent of the
regridder the constraint uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from geodiff.data.grid import Grid
from geodiff.data.regrid import Regridder
from geodiff.evaluate.constraint import conserve, parent_cells
from test_regrid import HR, LR, band_area, field

FACTOR = 4


def block_mean(fine: np.ndarray, grid: Grid, factor: int = FACTOR) -> np.ndarray:
    """Area-weighted mean of each factor x factor block of `fine` [..., lat, lon], float64, by brute force."""
    w = band_area(grid)
    out = np.empty(fine.shape[:-2] + (grid.shape[0] // factor, grid.shape[1] // factor))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            block = (slice(i * factor, (i + 1) * factor), slice(j * factor, (j + 1) * factor))
            out[..., i, j] = (fine[(..., *block)].astype(np.float64) * w[block]).sum((-2, -1)) / w[block].sum()
    return out


def front(grid: Grid, jump: float = 20.0, width: float = 0.1) -> np.ndarray:
    """A field [lat, lon] with a front of `jump` K across a tilted line, `width` degrees wide, K."""
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    return 270.0 + jump * np.tanh((lat - 46.0 - 0.5 * (lon - 6.0)) / width)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constrained_members_coarsen_to_the_input_across_a_strong_front(dtype):
    coarsen = Regridder(HR, LR, "conservative", "xarray-regrid")
    truth = field(HR, front(HR), times=3, dtype=dtype)
    coarse = coarsen(truth)
    rng = np.random.default_rng(1)
    members = xr.concat([truth + rng.normal(0.0, 2.0, truth.shape) + m for m in range(4)], dim="member")
    members = members.astype(dtype)  # noise, and a bias of m K in member m
    constrained = conserve(members, coarse, coarsen)
    assert constrained.dims == members.dims and constrained.dtype == dtype
    error = np.abs(block_mean(constrained.values, HR) - coarse.values[None]).max()
    assert error <= 1e-4, error
    before = np.abs(block_mean(members.values, HR) - coarse.values[None]).max()
    assert before > 1.0  # the constraint had work to do


def test_the_correction_is_one_number_per_coarse_cell_and_none_for_a_conserving_field():
    coarsen = Regridder(HR, LR, "conservative", "xarray-regrid")
    truth = field(HR, front(HR), times=2)
    coarse = coarsen(truth)
    np.testing.assert_allclose(conserve(truth, coarse, coarsen).values, truth.values, atol=1e-10)
    pred = truth + np.random.default_rng(2).normal(0.0, 1.0, truth.shape)
    shift = (conserve(pred, coarse, coarsen) - pred).values
    blocks = shift.reshape(*shift.shape[:2], LR.shape[0], FACTOR, LR.shape[1], FACTOR)
    np.testing.assert_allclose(blocks, blocks[:, :, :, :1, :, :1] * np.ones_like(blocks), atol=1e-12)
    expected = coarse.values - block_mean(pred.values, HR)
    np.testing.assert_allclose(blocks[:, :, :, 0, :, 0], expected, atol=1e-8)


def test_grids_that_do_not_nest_are_refused():
    with pytest.raises(ValueError, match="do not nest"):
        parent_cells(np.arange(0.0, 2.01, 0.25), np.array([0.0, 0.6, 1.2, 1.8, 2.4]))
    np.testing.assert_array_equal(parent_cells(np.arange(0.0, 2.01, 0.5), np.array([0.0, 1.0, 2.0])), [0, 0, 1, 1])


def test_a_coarse_field_on_another_grid_is_refused():
    coarsen = Regridder(HR, LR, "conservative", "xarray-regrid")
    other = field(Grid(1.0, (40.0, 51.0), (0.0, 12.0)))
    with pytest.raises(ValueError, match="not on the regridder's coarse grid"):
        conserve(field(HR), other, coarsen)
    with pytest.raises(ValueError, match="conservative regridder"):
        conserve(field(LR), field(HR), Regridder(LR, HR, "bilinear", "xarray-regrid"))

