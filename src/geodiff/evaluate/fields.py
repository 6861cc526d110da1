"""Fields of a split as labelled arrays, and CF NetCDF output of predictions."""

from __future__ import annotations

import h5py
import numpy as np
import xarray as xr

from geodiff import __version__
from geodiff.constants import CF_ATTRS, LAT, LEVEL, LON, TIME
from geodiff.data.canonical import write_netcdf


def store_coords(store_path: str) -> dict[str, xr.DataArray]:
    """Canonical coordinates (time, level, lat, lon) of a store."""
    with h5py.File(store_path, "r") as f:
        time = f["time"][()].astype("datetime64[s]").astype("datetime64[ns]")
        return {
            TIME: xr.DataArray(time, dims=TIME, attrs={"standard_name": "time", "axis": "T"}),
            LEVEL: xr.DataArray(f["level"][()].astype(np.float64), dims=LEVEL, attrs=CF_ATTRS[LEVEL]),
            LAT: xr.DataArray(f["lat"][()], dims=LAT, attrs=CF_ATTRS[LAT]),
            LON: xr.DataArray(f["lon"][()], dims=LON, attrs=CF_ATTRS[LON]),
        }


def read_field(store_path: str, name: str) -> xr.DataArray:
    """A [time, level, lat, lon] dataset of a store (e.g. `hr/t`, `interp/bicubic`) in its units."""
    with h5py.File(store_path, "r") as f:
        values, attrs = f[name][()], dict(f[name].attrs)
    return xr.DataArray(values, dims=(TIME, LEVEL, LAT, LON), coords=store_coords(store_path), attrs=attrs)


def temperature_dataset(t: xr.DataArray, method: str, store_path: str, **attrs) -> xr.Dataset:
    """A CF dataset holding temperature `t` (K) predicted by `method` on the split of a store."""
    with h5py.File(store_path, "r") as f:
        config_hash = str(f.attrs.get("config_hash", ""))
    ds = xr.Dataset({"t": t.astype(np.float32).assign_attrs(CF_ATTRS["t"])})
    ds.attrs.update(
        Conventions="CF-1.8", method=method, geodiff_version=__version__, config_hash=config_hash, source=store_path, **attrs
    )
    return ds


def write_prediction(t: xr.DataArray, method: str, store_path: str, out_path: str, **attrs) -> None:
    """Write a prediction atomically as CF NetCDF."""
    write_netcdf(temperature_dataset(t, method, store_path, **attrs), out_path)
