"""ERA5 from ARCO-ERA5, Google's analysis-ready Zarr copy of ERA5 (DESIGN.md section 4).

The store (``data.arco.url``, by default the public
``gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3``: hourly,
37 pressure levels, 0.25 degree) holds ``temperature`` (K) and ``geopotential``
(m2 s-2) on (``time``, ``level`` in hPa, ``latitude`` 90..-90, ``longitude``
0..359.75), and the invariants ``geopotential_at_surface`` and ``land_sea_mask``.

It is opened lazily (no dask, consolidated metadata) and cut to the month's
times, the config's levels and the fine grid's box *before* anything is read, so
only the Zarr chunks that hold the subset are fetched. A ``gs://`` store is read
anonymously through gcsfs (``pip install gcsfs``); a local path or any
fsspec URL works too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geodiff.data.canonical import DataError, canonicalize, month_times
from geodiff.data.grid import Grid, grids_from_config
from geodiff.data.sources import inside

log = logging.getLogger(__name__)

DEFAULT_URL = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"
VARIABLES = ("temperature", "geopotential")
STATIC_VARIABLES = ("geopotential_at_surface", "land_sea_mask")


def store_url(config: Mapping[str, Any]) -> str:
    """Config ``data.arco.url``, or the public ARCO-ERA5 store."""
    return str((config["data"].get("arco") or {}).get("url") or DEFAULT_URL)


def open_store(store: Any) -> xr.Dataset:
    """Open an ARCO-ERA5-like Zarr store lazily: a URL, a local path or a zarr store object.

    Raises:
        ImportError: a ``gs://`` URL without gcsfs installed.
        DataError: the store cannot be opened.
    """
    kwargs: dict[str, Any] = {}
    if isinstance(store, str) and store.startswith(("gs://", "gcs://")):
        try:
            import gcsfs  # noqa: F401  (fsspec's gs:// implementation)
        except ImportError as err:
            raise ImportError("reading ARCO-ERA5 from gs:// needs gcsfs: pip install gcsfs") from err
        kwargs["storage_options"] = {"token": "anon"}
    try:
        return xr.open_zarr(store, chunks=None, consolidated=None, decode_timedelta=False, **kwargs)
    except Exception as err:
        raise DataError(f"{store}: cannot open the ARCO-ERA5 Zarr store ({type(err).__name__}: {err})") from err


def _matching(values: np.ndarray, wanted: Sequence[float]) -> np.ndarray:
    """Indices of `values` equal (to 1e-6) to any of `wanted`, in the order of `values`."""
    wanted = np.asarray(wanted, dtype=np.float64)
    return np.flatnonzero([np.isclose(wanted, v, atol=1e-6).any() for v in np.asarray(values, np.float64)])


def select(
    ds: xr.Dataset,
    grid: Grid,
    variables: Sequence[str],
    levels: Sequence[float] | None = None,
    times: pd.DatetimeIndex | None = None,
) -> xr.Dataset:
    """Lazy subset of an ARCO-ERA5 dataset in its own coordinates: variables, times, levels, box.

    Longitudes 0..360 are compared after wrapping into [-180, 180), so a box across
    the prime meridian takes columns from both ends of the store.
    """
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise DataError(f"ARCO-ERA5 store: variables {missing} not found (have {sorted(map(str, ds.data_vars))})")
    ds = ds[list(variables)]
    index: dict[str, Any] = {
        "latitude": inside(ds["latitude"].values, grid.lat_edges),
        "longitude": inside(((ds["longitude"].values + 180.0) % 360.0) - 180.0, grid.lon_edges),
    }
    if times is not None and "time" in ds.dims:
        positions = ds.indexes["time"].get_indexer(times)
        index["time"] = positions[positions >= 0]
    if levels is not None and "level" in ds.dims:
        index["level"] = _matching(ds["level"].values, levels)
    return ds.isel(index)


def fetch_month(
    config: dict, year: int, month: int, workdir: Path | None = None, store: Any = None
) -> tuple[xr.Dataset, str]:
    """One month of temperature and geopotential, canonical and still lazy; `store` overrides the URL."""
    url = store if store is not None else store_url(config)
    hr = grids_from_config(config)[0]
    times = month_times(year, month, config["data"]["hours"])
    sub = select(open_store(url), hr, VARIABLES, config["levels"], times)
    log.info("ARCO-ERA5 %s %d-%02d: selecting %s before reading", url, year, month, dict(sub.sizes))
    origin = f"{url} ({year:04d}-{month:02d})"
    return canonicalize(sub, "arco", str(url), request={"url": str(url), "year": year, "month": month}), origin


def fetch_statics(config: dict, workdir: Path | None = None, store: Any = None) -> tuple[xr.Dataset, str]:
    """Surface geopotential / g (orography, m) and land-sea mask of the store's first time, canonical."""
    url = store if store is not None else store_url(config)
    hr = grids_from_config(config)[0]
    sub = select(open_store(url), hr, STATIC_VARIABLES)
    if "time" in sub.dims:  # invariants stored hourly: one time is enough
        sub = sub.isel(time=[0])
    return canonicalize(sub, "arco", str(url), request={"url": str(url)}), f"{url} (statics)"
