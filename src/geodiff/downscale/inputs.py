"""Coarse input of any origin, brought onto a model's coarse grid for a box, and the box's statics.

Files go through the same opening (:func:`geodiff.data.files.open_any`: NetCDF or GRIB),
canonicalisation (ERA5/CDS, GFS and CMIP-style names, levels in Pa or hPa) and field
validation as the `local` source. The fine grid of a box is the model's resolution over the
box's cell edges; its coarse grid is that coarsened by the model's scale factor. The input
is used as it is when it lies on that coarse grid; otherwise (finer, or cells not aligned
with the box) it is regridded conservatively, which is logged. An input coarser than the
model's coarse grid by more than :data:`MAX_COARSENING` is refused: the model never saw
fields that smooth.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from geodiff.constants import LAT, LEVEL, LON, STATICS, TIME
from geodiff.data.canonical import DataError, canonicalize
from geodiff.data.files import load, open_any
from geodiff.data.grid import Grid
from geodiff.data.regrid import Regridder
from geodiff.data.sources import download_statics, inside
from geodiff.data.sources.local import combine
from geodiff.data.validate import check_fields

log = logging.getLogger(__name__)

MAX_COARSENING = 2.0
"""Coarsest input accepted, in units of the model's coarse cell size."""


def read_input(paths: list[str], levels: np.ndarray) -> tuple[xr.Dataset, str]:
    """Temperature of the files `paths` on the `levels` (hPa) only, canonical and validated; the files' names.

    Raises:
        DataError: a file cannot be read, holds statics, lacks a level (named) or temperature, or holds
            values that are not temperatures in Kelvin or are missing.
    """
    pieces = []
    for path in paths:
        ds = canonicalize(open_any(path), "local", path)
        if "t" not in ds.data_vars:
            kind = "statics (pass them with --statics)" if set(STATICS) & set(map(str, ds.data_vars)) else "no temperature"
            raise DataError(f"{path}: {kind}; the input must hold air temperature on pressure levels")
        pieces.append(ds[["t"]])
    ds, origin = combine(pieces, list(paths))
    problems = check_fields(ds, levels, allow_nans=False)
    if problems:
        raise DataError(f"{origin}: " + "; ".join(problems))
    keep = [int(np.flatnonzero(np.isclose(ds[LEVEL].values, lvl))[0]) for lvl in levels]
    return load(ds.isel({LEVEL: keep}), origin), origin


def grid_of(ds: xr.Dataset, where: str) -> Grid:
    """The regular grid whose cell centres are the data's coordinates (cells as wide as the spacing)."""
    steps = {axis: np.diff(ds[axis].values) for axis in (LAT, LON)}
    for axis, d in steps.items():
        if d.size == 0 or not np.allclose(d, d[0], rtol=1e-4):
            raise DataError(f"{where}: the {axis} coordinate is not evenly spaced (at least 2 points needed)")
    res_lat, res_lon = float(steps[LAT][0]), float(steps[LON][0])
    if not np.isclose(res_lat, res_lon, rtol=1e-4):
        raise DataError(f"{where}: grid spacing {res_lat:g}° in latitude and {res_lon:g}° in longitude: "
                        "GeoDiff reads square grid cells; regrid the input first")
    lat = ds[LAT].values
    whole = (lat - res_lat / 2 >= -90) & (lat + res_lat / 2 <= 90)  # cells cut at a pole are left out
    return Grid.from_centres(res_lat, lat[whole], ds[LON].values)


def model_grids(resolution: float, scale_factor: int, box: list[float] | None, source: Grid) -> tuple[Grid, Grid]:
    """The (fine, coarse) grids of the model at `resolution` with `scale_factor` over `box`
    ([south, north, west, east] cell edges, degrees), by default the largest box of whole coarse cells
    aligned with the input grid `source` inside it."""
    coarse_res = resolution * scale_factor
    if box is None:
        (s, n), (w, e) = source.lat_edges, source.lon_edges
        n = s + coarse_res * np.floor((n - s) / coarse_res + 1e-6)
        e = w + coarse_res * np.floor((e - w) / coarse_res + 1e-6)
        box = [s, float(n), w, float(e)]
        if n <= s or e <= w:
            raise DataError(f"the input covers less than one coarse cell of the model ({coarse_res:g}°)")
    try:
        hr = Grid(resolution, (float(box[0]), float(box[1])), (float(box[2]), float(box[3])))
        return hr, hr.coarsen(scale_factor)
    except ValueError as err:
        raise ValueError(f"--box {box}: {err} (the box must be whole coarse cells of {coarse_res:g}°)") from None


def on_coarse_grid(ds: xr.Dataset, source: Grid, lr: Grid, where: str) -> tuple[xr.DataArray, str]:
    """The input's temperature on the coarse grid `lr` and how it got there (logged).

    Raises:
        DataError: the input is coarser than :data:`MAX_COARSENING` coarse cells, or does not cover the box.
    """
    if source.resolution > MAX_COARSENING * lr.resolution + 1e-9:
        raise DataError(f"{where}: grid spacing {source.resolution:g}° is coarser than {MAX_COARSENING:g}x the model's "
                        f"coarse grid ({lr.resolution:g}°): the model downscales from {lr.resolution:g}°")
    t = ds["t"]
    lat, lon = inside(t[LAT].values, lr.lat_edges), inside(t[LON].values, lr.lon_edges)
    if lr.matches(t[LAT].values[lat], t[LON].values[lon]):
        return t.isel({LAT: lat, LON: lon}).assign_coords({LAT: lr.lat, LON: lr.lon}), "none (on the model's coarse grid)"
    (s, n), (w, e) = lr.lat_edges, lr.lon_edges
    if source.lat_edges[0] > s + 1e-6 or source.lat_edges[1] < n - 1e-6 or source.lon_edges[0] > w + 1e-6 \
            or source.lon_edges[1] < e - 1e-6:
        raise DataError(f"{where}: covers lat {source.lat_edges}, lon {source.lon_edges}, not the box lat {lr.lat_edges}, "
                        f"lon {lr.lon_edges}")
    # the input cells touching the box, as a grid of their own
    rows = np.flatnonzero((t[LAT].values + source.resolution / 2 > s) & (t[LAT].values - source.resolution / 2 < n))
    cols = np.flatnonzero((t[LON].values + source.resolution / 2 > w) & (t[LON].values - source.resolution / 2 < e))
    part = t.isel({LAT: rows, LON: cols})
    grid = Grid.from_centres(source.resolution, part[LAT].values, part[LON].values)
    how = f"conservative from {source.resolution:g}° (input {'finer than' if source.resolution < lr.resolution else 'not aligned with'} the model's coarse grid)"
    log.info("%s: regridding %s to the model's %g° coarse grid", where, how, lr.resolution)
    return _covering(grid, lr, part), how


def _covering(source: Grid, target: Grid, t: xr.DataArray) -> xr.DataArray:
    """Conservative regrid of `t` from `source` onto the part of `target` it covers (all of it, checked)."""
    out = Regridder(source, target, "conservative")(t.astype(np.float64))
    if bool(out.isnull().any()):
        raise DataError(f"the input does not cover every cell of the box lat {target.lat_edges}, lon {target.lon_edges}")
    return out.astype(np.float32)


def box_statics(statics_path: str | None, source_config: dict, hr: Grid, work: Path) -> xr.Dataset:
    """Orography and land-sea mask on the fine grid `hr`: from `statics_path` (any file the `local`
    source reads; regridded conservatively when not on `hr`), else from the statics source the model
    was trained with (`source_config`: its seed and data settings; the built-in generator for the
    synthetic atmosphere, the ERA5 invariants for ERA5), for this box."""
    box = {"resolution": hr.resolution, "lat": list(hr.lat_edges), "lon": list(hr.lon_edges)}
    if statics_path is None:
        config = {**source_config, "grid": {"hr": box, "scale_factor": 1}, "levels": []}
        with tempfile.TemporaryDirectory(dir=work, prefix=".statics.") as tmp:
            out = Path(tmp) / "statics.nc"
            download_statics(config, str(out))
            with xr.open_dataset(out, engine="netcdf4") as ds:
                return ds.load()
    ds = canonicalize(open_any(statics_path), "local", statics_path)
    missing = [n for n in STATICS if n not in ds.data_vars]
    if missing:
        raise DataError(f"{statics_path}: no {', '.join(missing)} (have {sorted(map(str, ds.data_vars))})")
    ds = ds[list(STATICS)]
    if TIME in ds.dims:
        ds = ds.isel({TIME: 0}, drop=True)
    lat, lon = inside(ds[LAT].values, hr.lat_edges), inside(ds[LON].values, hr.lon_edges)
    if hr.matches(ds[LAT].values[lat], ds[LON].values[lon]):
        return load(ds.isel({LAT: lat, LON: lon}), statics_path).assign_coords({LAT: hr.lat, LON: hr.lon})
    source = grid_of(ds, statics_path)
    log.info("%s: statics regridded conservatively from %g° to the %g° fine grid", statics_path, source.resolution,
             hr.resolution)
    return xr.Dataset({n: _covering(source, hr, load(ds[n], statics_path)) for n in STATICS})
