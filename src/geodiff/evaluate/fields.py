"""CF NetCDF output of predictions on the split of a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from geodiff import __version__
from geodiff.constants import CF_ATTRS
from geodiff.data.files import write_netcdf
from geodiff.data.store import store_info
from geodiff.evaluate.metrics import MEMBER


def temperature_dataset(t: xr.DataArray, method: str, store_path: str, **attrs) -> xr.Dataset:
    """A CF dataset holding temperature `t` (K) predicted by `method` on the split of a store.

    Global attributes (`write_netcdf` adds the CF ones): `method`, `geodiff_version`, the store's
    `config_hash`, `source` (what made the data) and the store's file name as
    `input_store`, then `attrs` (a caller's `config_hash` replaces the store's). An
    ensemble's member dimension is a CF `realization` coordinate.
    """
    t = t.astype(np.float32).assign_attrs(CF_ATTRS["t"])
    if MEMBER in t.dims:
        t = t.assign_coords({MEMBER: (MEMBER, t[MEMBER].values, {"standard_name": "realization", "long_name": "ensemble member", "units": "1"})})
    ds = xr.Dataset({"t": t})
    ds.attrs.update(
        method=method, geodiff_version=__version__,
        config_hash=store_info(store_path)["config_hash"], source=f"GeoDiff {__version__}: {method}",
        input_store=Path(store_path).name,
    )
    ds.attrs.update(attrs)
    return ds


def write_prediction(t: xr.DataArray, method: str, store_path: str, out_path: str, **attrs) -> None:
    """Write a prediction atomically as CF NetCDF (attributes: see :func:`temperature_dataset`)."""
    write_netcdf(temperature_dataset(t, method, store_path, **attrs), out_path)
