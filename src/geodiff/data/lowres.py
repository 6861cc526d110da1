"""The coarse (LR) view of each month and its interpolations back to the fine grid.

LR = conservative regrid of the fine truth (what a coarse model would see); the
model input and the interpolation baselines are LR brought back onto the fine
grid (DESIGN.md section 3).
"""

from __future__ import annotations

import logging
from pathlib import Path

import xarray as xr

from geodiff.constants import LAT, LON
from geodiff.data.grid import Grid
from geodiff.data.regrid import Regridder
from geodiff.data.canonical import write_netcdf

log = logging.getLogger(__name__)

COARSE_DIMS = {LAT: "lat_coarse", LON: "lon_coarse"}
"""Dimension names of coarse-grid variables inside a lowres file."""


def make_regridder(grid_config: dict, method: str, backend: str = "auto") -> Regridder:
    """Fine -> coarse for `conservative`; coarse -> fine for `bicubic` and `bilinear`."""
    hr = Grid.from_config(grid_config["hr"])
    lr = hr.coarsen(int(grid_config["scale_factor"]))
    if method == "conservative":
        return Regridder(hr, lr, method, backend)
    return Regridder(lr, hr, method, backend)


def lowres_dataset(raw: xr.Dataset, regridders: dict[str, Regridder]) -> xr.Dataset:
    """`t_coarse` on the coarse grid plus `t_<method>` on the fine grid for each upsampler, K."""
    coarse = regridders["conservative"](raw[["t"]])
    out = {"t_coarse": coarse["t"].rename(COARSE_DIMS).drop_vars(list(COARSE_DIMS.values()), errors="ignore")}
    for method, regridder in regridders.items():
        if method != "conservative":
            fine = regridder(coarse["t"])
            out[f"t_{method}"] = fine.assign_attrs(raw["t"].attrs, regrid_method=method)
    ds = xr.Dataset(out).assign_coords(
        {
            "lat_coarse": ("lat_coarse", coarse[LAT].values, raw[LAT].attrs),
            "lon_coarse": ("lon_coarse", coarse[LON].values, raw[LON].attrs),
        }
    )
    ds["t_coarse"].attrs.update(raw["t"].attrs, regrid_method="conservative")
    ds.attrs.update(raw.attrs, regrid_backend=regridders["conservative"].backend)
    return ds


def write_lowres(raw_path: str, weight_paths: dict[str, str], out_path: str) -> None:
    """Regrid one month with cached weights and write it atomically."""
    regridders = {m: Regridder.load(p) for m, p in weight_paths.items()}
    with xr.open_dataset(raw_path, engine="netcdf4", chunks={"time": 16}) as raw:
        ds = lowres_dataset(raw, regridders)
        log.info("regrid %s -> %s (backend %s)", Path(raw_path).name, out_path, ds.attrs["regrid_backend"])
        write_netcdf(ds, out_path)
