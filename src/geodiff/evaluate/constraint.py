"""The additive hard constraint: a fine prediction corrected so that it coarsens exactly to its input.

After Harder, Hernandez-Garcia, Ramesh, Yang, Sattigeri, Szwarcman, Watson & Rolnick
(2023), "Hard-constrained deep learning for climate downscaling" (JMLR 24), additive
constraint layer. With C the conservative coarsening that made the coarse input x from
the fine truth (the area-weighted regridder of :mod:`geodiff.data.regrid`, read from
the run's weight file, not a second implementation) and U the copy of each coarse
value to the fine cells inside it,

    ŷ_c = ŷ + U(x − C(ŷ)),   so that   C(ŷ_c) = C(ŷ) + C(U(x − C(ŷ))) = x,

because C of a field that is constant on each coarse cell is that constant (the fine
cells nest in the coarse ones and C's weights per coarse cell sum to 1). For
temperature the additive form is the natural one: it moves each coarse cell's fine
values by the same number of kelvin, keeping every gradient inside the cell.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from geodiff.constants import LAT, LON
from geodiff.data.files import write_netcdf
from geodiff.data.grid import Grid
from geodiff.data.regrid import Regridder
from geodiff.data.store import read_field

log = logging.getLogger(__name__)

def parent_cells(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Index of the coarse cell holding each fine cell, from the cell edges along one axis (degrees).

    Raises ValueError when a fine cell straddles a coarse edge (grids that do not nest).
    """
    centres = 0.5 * (fine[:-1] + fine[1:])
    parent = np.searchsorted(coarse, centres, side="right") - 1
    inside = (parent >= 0) & (parent < coarse.size - 1)
    parent = np.clip(parent, 0, coarse.size - 2)
    tol = 1e-6 * (coarse[-1] - coarse[0])
    nested = inside & (fine[:-1] >= coarse[parent] - tol) & (fine[1:] <= coarse[parent + 1] + tol)
    if not nested.all():
        raise ValueError(f"the fine cells with edges {fine[:-1][~nested][:3].tolist()}... do not nest in the coarse cells")
    return parent


def conserve(fine: xr.DataArray, coarse: xr.DataArray, coarsen: Regridder) -> xr.DataArray:
    """`fine` (dims (..., lat, lon), K, any leading dims such as member) plus U(coarse − C(fine)).

    `coarse` holds the coarse input on the target grid of `coarsen` (a conservative
    Regridder from the fine grid), with the leading dims of `fine` other than member
    (matched by name and coordinate). Computed in float64, returned in `fine`'s dtype.
    """
    if coarsen.method != "conservative":
        raise ValueError(f"the constraint needs the conservative regridder, got {coarsen.method!r}")
    target: Grid = coarsen.target
    mismatch = _mismatch(fine, coarse, coarsen)
    lat_parent = parent_cells(coarsen.source.lat_bounds, target.lat_bounds)
    lon_parent = parent_cells(coarsen.source.lon_bounds, target.lon_bounds)
    spread = mismatch.isel({LAT: xr.DataArray(lat_parent, dims=LAT), LON: xr.DataArray(lon_parent, dims=LON)})
    out = fine.astype(np.float64) + spread.drop_vars([LAT, LON]).assign_coords({LAT: fine[LAT], LON: fine[LON]})
    return out.transpose(*fine.dims).astype(fine.dtype).assign_attrs(fine.attrs)


def _mismatch(fine: xr.DataArray, coarse: xr.DataArray, coarsen: Regridder) -> xr.DataArray:
    """coarse − C(fine) in float64 on the regridder's coarse grid; `coarse` must lie on that grid."""
    target = coarsen.target
    if not target.matches(coarse[LAT].values, coarse[LON].values):
        raise ValueError(f"coarse input on {coarse.sizes[LAT]}x{coarse.sizes[LON]} cells is not on the regridder's "
                         f"coarse grid {target.shape}")
    coarse = coarse.assign_coords({LAT: target.lat, LON: target.lon})
    return coarse.astype(np.float64) - coarsen(fine.astype(np.float64))


def write_constrained(prediction_path: str, store_path: str, weights_path: str, out_path: str) -> None:
    """Apply :func:`conserve` to the prediction file (a baseline or an ensemble) against the coarse
    input `lr/t` of its store, with the conservative weights of the run; written as `<method>_constrained`."""
    coarsen = Regridder.load(weights_path)
    with xr.open_dataset(prediction_path, engine="netcdf4") as ds:
        ds = ds.load()
    coarse = read_field(store_path, "lr/t").sel(time=ds["time"])
    t = conserve(ds["t"], coarse, coarsen)
    mismatch = float(np.abs(_mismatch(t, coarse, coarsen)).max())
    method = f"{ds.attrs['method']}_constrained"
    log.info("%s: additive constraint, largest |C(prediction) - input| after it %.2e K", method, mismatch)
    out = ds.assign(t=t).assign_attrs(method=method, constraint="additive (Harder et al. 2023)",
                                       constraint_max_mismatch_K=mismatch, constrained_from=Path(prediction_path).name)
    write_netcdf(out, out_path)
