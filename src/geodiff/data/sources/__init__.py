"""ERA5 acquisition: one canonical NetCDF per month, and the fine-grid statics (DESIGN.md section 4).

`config["data"]["source"]` picks where the data comes from:

* ``synthetic``: the built-in generator (`geodiff.data.synthetic`), the default;
* ``cds``: the Copernicus Climate Data Store through cdsapi (`.cds`);
* ``arco``: the ARCO-ERA5 Zarr store, read lazily (`.arco`);
* ``local``: the user's NetCDF or GRIB files (`.local`).

Whatever the source, the data is canonicalised, cut to the config's levels, fine
grid (``grid.hr``) and the month's times (config ``data.hours``), validated (a
`DataError` names the file and the problem), and written atomically: a failed or
killed job never leaves a file that Snakemake would take as done.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geodiff.constants import LAT, LEVEL, LON, TIME
from geodiff.data.canonical import DataError, canonicalize, month_times
from geodiff.data.files import load, write_netcdf
from geodiff.data.grid import Grid, grids_from_config
from geodiff.data.validate import validate
from geodiff.provenance import config_hash, provenance_attrs

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "cds", "arco", "local")
Fetched = tuple[xr.Dataset, str]
"""A canonical dataset and a description of where it came from (a file, store or request), for messages."""


def _source(config: Mapping[str, Any]) -> str:
    source = config["data"].get("source", "synthetic")
    if source not in SOURCES:
        raise ValueError(f"data.source is '{source}', expected one of {', '.join(SOURCES)}")
    return source


def _synthetic_month(config: dict, year: int, month: int, workdir: Path) -> Fetched:
    from geodiff.data.synthetic import synthetic_month

    return canonicalize(synthetic_month(config, year, month), "synthetic"), "synthetic atmosphere"


def _synthetic_statics(config: dict, workdir: Path) -> Fetched:
    from geodiff.data.synthetic import synthetic_statics

    return canonicalize(synthetic_statics(config), "synthetic"), "synthetic statics"


def _month_fetcher(source: str) -> Callable[[dict, int, int, Path], Fetched]:
    if source == "cds":
        from geodiff.data.sources.cds import fetch_month
    elif source == "arco":
        from geodiff.data.sources.arco import fetch_month
    elif source == "local":
        from geodiff.data.sources.local import fetch_month
    else:
        fetch_month = _synthetic_month
    return fetch_month


def _statics_fetcher(source: str) -> Callable[[dict, Path], Fetched]:
    if source == "cds":
        from geodiff.data.sources.cds import fetch_statics
    elif source == "arco":
        from geodiff.data.sources.arco import fetch_statics
    elif source == "local":
        from geodiff.data.sources.local import fetch_statics
    else:
        fetch_statics = _synthetic_statics
    return fetch_statics


def inside(values: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    """Indices of the coordinate values (degrees) strictly between two cell edges."""
    tolerance = 1e-6
    return np.flatnonzero((values > edges[0] + tolerance) & (values < edges[1] - tolerance))


def subset(ds: xr.Dataset, config: Mapping[str, Any], times: Any = None) -> xr.Dataset:
    """Cut canonical data to the fine grid's box, the config's levels and `times`; lazily.

    Grid points and times the data lacks are simply absent from the result, for
    `validate` to report; nothing is interpolated. When a config level is missing,
    every level is kept, so that the report lists what the data has.
    """
    hr: Grid = grids_from_config(dict(config))[0]
    ds = ds.isel({LAT: inside(ds[LAT].values, hr.lat_edges), LON: inside(ds[LON].values, hr.lon_edges)})
    if LEVEL in ds.dims:
        wanted = np.asarray(config["levels"], dtype=np.float64)
        have = ds[LEVEL].values
        keep = [i for i, lvl in enumerate(have) if np.isclose(wanted, lvl).any()]
        if len(keep) >= len(wanted):
            ds = ds.isel({LEVEL: keep})
    if times is not None and TIME in ds.dims:
        ds = ds.isel({TIME: np.flatnonzero(ds[TIME].isin(times).values)})
    return ds


def _finish(ds: xr.Dataset, origin: str, config: dict, out_path: str, attrs: Mapping[str, str] | None, **when: int) -> None:
    ds = load(ds, origin)
    validate(ds, config, origin, **when)
    ds.attrs.update(attrs or provenance_attrs(config_hash(config)))
    write_netcdf(ds, out_path)


def download_month(config: dict, year: int, month: int, out_path: str, attrs: Mapping[str, str] | None = None) -> None:
    """Fetch one month of temperature (K) and geopotential (m2 s-2) on pressure levels (hPa).

    Writes `out_path` as canonical NetCDF on the fine grid, with the config's
    levels and every ``data.hours`` (UTC) of the month; raw downloads live in a
    temporary folder beside `out_path` and are removed. `attrs` (provenance, see
    `geodiff.provenance.provenance_attrs`; by default the hash of `config`) join the global attributes.

    Raises:
        DataError: the source's data is unusable (named file, variable and problem).
    """
    source = _source(config)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    times = month_times(year, month, config["data"]["hours"])
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        fetched, origin = _month_fetcher(source)(config, year, month, Path(work))
        try:
            ds = subset(fetched, config, times)
            log.info("%s %d-%02d: %s", source, year, month, dict(ds.sizes))
            _finish(ds, origin, config, str(out), attrs, year=year, month=month)
        finally:
            fetched.close()


def download_statics(config: dict, out_path: str, attrs: Mapping[str, str] | None = None) -> None:
    """Fetch orography (m) and land-sea mask (0..1) on the fine grid into `out_path` (NetCDF, atomic)."""
    source = _source(config)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        fetched, origin = _statics_fetcher(source)(config, Path(work))
        try:
            _finish(subset(fetched, config), origin, config, str(out), attrs)
        finally:
            fetched.close()


__all__ = ["SOURCES", "DataError", "download_month", "download_statics", "inside", "subset"]
