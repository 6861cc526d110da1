"""The coarse (LR) view of each month and its interpolations back to the fine grid.

LR = conservative regrid of the fine truth (what a coarse model would see); the
model input and the interpolation baselines are LR brought back onto the fine
grid (DESIGN.md section 3).

Gaps (config ``data.allow_nans``): a coarse cell that covers a missing fine value is
missing too (the conservative mean propagates NaN). The coarse field is the model's
input, which must be complete, so each missing coarse cell is filled with the
cos(latitude)-weighted mean of the valid coarse cells of the same level and time
step (:func:`fill_gaps`), before it is interpolated back: the fine-grid inputs and
the priors computed from them then hold no NaN. The number of filled cells is logged
and kept in the attribute ``filled_cells`` of ``t_coarse``. The fine truth keeps its
gaps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from geodiff.constants import LAT, LON
from geodiff.data.canonical import DataError
from geodiff.data.files import write_netcdf
from geodiff.data.grid import area_weights, grid_pair
from geodiff.data.regrid import Regridder

log = logging.getLogger(__name__)

COARSE_DIMS = {LAT: "lat_coarse", LON: "lon_coarse"}
"""Dimension names of coarse-grid variables inside a lowres file."""


def make_regridder(grid_config: dict, method: str, backend: str = "auto") -> Regridder:
    """Fine -> coarse for `conservative`; coarse -> fine for `bicubic` and `bilinear` (`grid_config`: config `grid`)."""
    hr, lr = grid_pair(grid_config)
    if method == "conservative":
        return Regridder(hr, lr, method, backend)
    return Regridder(lr, hr, method, backend)


def fill_gaps(coarse: xr.DataArray, where: str) -> xr.DataArray:
    """`coarse` (dims (..., lat, lon)) with each NaN replaced by the cos(lat)-weighted
    horizontal mean of the valid cells of its level and time step.

    Raises DataError naming `where` (the input file) when a level has no valid cell at
    some time step (nothing to fill from).
    """
    missing = int(coarse.isnull().sum())
    if missing == 0:
        return coarse
    mean = coarse.weighted(area_weights(coarse[LAT])).mean((LAT, LON))  # skips NaN
    empty = mean.isnull()
    if bool(empty.any()):
        first = {dim: str(mean[dim].values[i]) for dim, i in zip(mean.dims, np.argwhere(empty.values)[0]) if dim in mean.coords}
        raise DataError(
            f"{where}: variable '{coarse.name}': every coarse cell of a level is missing ({int(empty.sum())} times, first at "
            f"{first}): nothing to fill the model input from"
        )
    log.warning(
        "%s: variable '%s': %d of %d coarse cells missing, filled with the level's cos(lat)-weighted mean at that time",
        where, coarse.name, missing, coarse.size,
    )
    return coarse.fillna(mean).assign_attrs(filled_cells=missing)


def lowres_dataset(raw: xr.Dataset, regridders: dict[str, Regridder]) -> xr.Dataset:
    """`t_coarse` on the coarse grid (gaps filled) plus `t_<method>` on the fine grid for each upsampler, K."""
    where = raw.encoding.get("source", "input")
    coarse = fill_gaps(regridders["conservative"](raw["t"]).persist(), where)  # persisted: counted, then interpolated
    out = {"t_coarse": coarse.rename(COARSE_DIMS).drop_vars(list(COARSE_DIMS.values()), errors="ignore")}
    for method, regridder in regridders.items():
        if method != "conservative":
            fine = regridder(coarse)
            out[f"t_{method}"] = fine.assign_attrs(raw["t"].attrs, regrid_method=method)
    ds = xr.Dataset(out).assign_coords(
        {
            "lat_coarse": ("lat_coarse", coarse[LAT].values, raw[LAT].attrs),
            "lon_coarse": ("lon_coarse", coarse[LON].values, raw[LON].attrs),
        }
    )
    ds["t_coarse"].attrs.update(raw["t"].attrs, regrid_method="conservative", cell_methods="area: mean")
    ds.attrs.update(raw.attrs, regrid_backend=regridders["conservative"].backend)
    return ds


def write_lowres(raw_path: str, weight_paths: dict[str, str], out_path: str, attrs: dict) -> None:
    """Regrid one month with cached weights and write it atomically, `attrs` (provenance, see
    :func:`geodiff.provenance.provenance_attrs`) added to the global attributes."""
    regridders = {m: Regridder.load(p) for m, p in weight_paths.items()}
    with xr.open_dataset(raw_path, engine="netcdf4", chunks={"time": 16}) as raw:
        ds = lowres_dataset(raw, regridders)
        ds.attrs.update(attrs)
        log.info("regrid %s -> %s (backend %s)", Path(raw_path).name, out_path, ds.attrs["regrid_backend"])
        write_netcdf(ds, out_path)
