"""ERA5 from the Copernicus Climate Data Store (CDS) through cdsapi (DESIGN.md section 4).

One request per month to ``reanalysis-era5-pressure-levels`` (temperature and
geopotential on the config's levels, hours and box, on the fine grid's
resolution); statics from ``reanalysis-era5-single-levels`` (surface geopotential
and land-sea mask). GRIB by default, NetCDF with ``data.cds.format: netcdf``.

cdsapi >= 0.7 hands a key without ':' (what CDS issues today) to
ecmwf-datastores-client, which speaks OGC API - Processes: POST
``{url}/retrieve/v1/processes/{dataset}/execution``, then polls the job's
``monitor`` link until ``successful`` and downloads the asset of its ``results``
link; a legacy ``UID:KEY`` key takes cdsapi's old ``/resources`` + ``/tasks``
protocol. Either way HTTP 5xx answers and broken transfers are retried
(``data.cds.retries`` attempts, ``data.cds.retry_wait`` s apart).

Credentials come from ``CDSAPI_URL``/``CDSAPI_KEY`` or ``~/.cdsapirc`` (``CDSAPI_RC``
names another file). The key never reaches a log, an exception message or a file:
cdsapi's log lines go through `_KeyFilter`, and requests are stored without it.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geodiff.atomic import atomic_write
from geodiff.data.canonical import DataError, canonicalize, month_times
from geodiff.data.files import open_any
from geodiff.data.grid import Grid, grids_from_config

log = logging.getLogger(__name__)

DEFAULT_URL = "https://cds.climate.copernicus.eu/api"
DEFAULTS = {
    "format": "grib",
    "dataset": "reanalysis-era5-pressure-levels",
    "statics_dataset": "reanalysis-era5-single-levels",
    "retries": 3,
    "retry_wait": 60.0,
    "timeout": 120.0,
    "local_download": False,
}
"""Defaults of config ``data.cds``: retry_wait and timeout in s."""
VARIABLES = ["temperature", "geopotential"]
STATIC_VARIABLES = ["geopotential", "land_sea_mask"]
FORMATS = {"grib": "grib", "netcdf": "nc"}
KEY_HELP = (
    "CDS API key not found: put the two lines 'url: https://cds.climate.copernicus.eu/api' and "
    "'key: <your personal access token>' (from your CDS profile page) in ~/.cdsapirc, or set CDSAPI_URL "
    "and CDSAPI_KEY; see docs/getting-era5.md"
)


class CdsError(RuntimeError):
    """A CDS request that failed after its retries."""


class CdsCredentialsError(CdsError):
    """No CDS API key in the environment or in ~/.cdsapirc."""


def options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Config ``data.cds`` with its defaults filled in."""
    opts = DEFAULTS | dict(config["data"].get("cds") or {})
    if opts["format"] not in FORMATS:
        raise ValueError(f"data.cds.format is '{opts['format']}', expected one of {sorted(FORMATS)}")
    return opts


def _area_and_grid(config: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """CDS ``area`` [north, west, south, east] of the fine grid's cell centres, and its ``grid`` step (degrees).

    CDS returns points on the global lattice of multiples of the grid step, so the
    fine grid's cell centres must lie on it (box edges at half-steps).
    """
    hr: Grid = grids_from_config(dict(config))[0]
    res = hr.resolution
    for name, centres, edges in (("lat", hr.lat, hr.lat_edges), ("lon", hr.lon, hr.lon_edges)):
        off = np.abs(centres / res - np.round(centres / res)).max()
        if off > 1e-6:
            raise ValueError(
                f"grid.hr: {name} cell centres (first {centres[0]:g}) are not on the {res:g} degree lattice that "
                f"CDS delivers; shift the {name} box edges by half a cell (e.g. to "
                f"[{edges[0] - res / 2:g}, {edges[1] - res / 2:g}])"
            )
    area = [float(hr.lat[-1]), float(hr.lon[0]), float(hr.lat[0]), float(hr.lon[-1])]
    return [round(a, 6) for a in area], [res, res]


def build_request(config: Mapping[str, Any], year: int, month: int) -> dict[str, Any]:
    """The CDS request of one month of temperature and geopotential on pressure levels (pure function)."""
    opts = options(config)
    area, grid = _area_and_grid(config)
    days = sorted({t.day for t in month_times(year, month, [0])})
    return {
        "product_type": ["reanalysis"],
        "variable": list(VARIABLES),
        "pressure_level": [f"{float(lvl):g}" for lvl in config["levels"]],
        "year": [f"{year:04d}"],
        "month": [f"{month:02d}"],
        "day": [f"{d:02d}" for d in days],
        "time": [f"{int(h):02d}:00" for h in sorted(config["data"]["hours"])],
        "area": area,
        "grid": grid,
        "data_format": opts["format"],
        "download_format": "unarchived",
    }


def build_statics_request(config: Mapping[str, Any]) -> dict[str, Any]:
    """The CDS request of surface geopotential and land-sea mask (invariant; the period's first hour)."""
    opts = options(config)
    area, grid = _area_and_grid(config)
    year, month = (int(x) for x in str(config["data"]["period"]["start"]).split("-")[:2])
    return {
        "product_type": ["reanalysis"],
        "variable": list(STATIC_VARIABLES),
        "year": [f"{year:04d}"],
        "month": [f"{month:02d}"],
        "day": ["01"],
        "time": [f"{min(int(h) for h in config['data']['hours']):02d}:00"],
        "area": area,
        "grid": grid,
        "data_format": opts["format"],
        "download_format": "unarchived",
    }


def credentials() -> tuple[str, str]:
    """(url, key) from CDSAPI_URL / CDSAPI_KEY, else from ~/.cdsapirc (or the file named by CDSAPI_RC).

    Raises:
        CdsCredentialsError: no key anywhere; its one-line message says how to set one.
    """
    url = os.environ.get("CDSAPI_URL") or None
    key = os.environ.get("CDSAPI_KEY") or None
    rc = Path(os.environ.get("CDSAPI_RC", "~/.cdsapirc")).expanduser()
    if (url is None or key is None) and rc.is_file():
        for line in rc.read_text().splitlines():
            name, sep, value = line.partition(":")
            if not sep:
                continue
            if name.strip() == "url" and url is None:
                url = value.strip() or None
            elif name.strip() == "key" and key is None:
                key = value.strip() or None
    if not key:
        raise CdsCredentialsError(KEY_HELP)
    return (url or DEFAULT_URL).rstrip("/"), key


class _KeyFilter:
    """Routes cdsapi's log callbacks to our logger with the key replaced by '***'."""

    def __init__(self, key: str) -> None:
        self.key = key

    def redact(self, text: str) -> str:
        return text.replace(self.key, "***")

    def callback(self, level: int) -> Callable[..., None]:
        def emit(*args: Any, **kwargs: Any) -> None:
            if not args:
                return
            try:
                message = str(args[0]) % args[1:] if len(args) > 1 else str(args[0])
            except (TypeError, ValueError):
                message = " ".join(map(str, args))
            log.log(level, "cdsapi: %s", self.redact(message))

        return emit


def retrieve(config: Mapping[str, Any], dataset: str, request: Mapping[str, Any], target: str | Path) -> Path:
    """Download one CDS request to `target`, atomically (`geodiff.atomic.atomic_write`).

    Raises:
        CdsCredentialsError: no key.
        CdsError: the request failed after ``data.cds.retries`` attempts; no file is left behind.
    """
    import cdsapi

    url, key = credentials()
    opts = options(config)
    target = Path(target)
    keyfilter = _KeyFilter(key)
    log.info("CDS %s: requesting %s", dataset, {k: v for k, v in request.items() if k != "day"})
    try:
        client = cdsapi.Client(
            url=url,
            key=key,
            quiet=False,
            debug=False,
            progress=False,
            delete=False,
            retry_max=int(opts["retries"]),
            sleep_max=float(opts["retry_wait"]),
            timeout=float(opts["timeout"]),
            info_callback=keyfilter.callback(logging.INFO),
            warning_callback=keyfilter.callback(logging.WARNING),
            error_callback=keyfilter.callback(logging.ERROR),
            debug_callback=keyfilter.callback(logging.DEBUG),
        )
        with atomic_write(target) as part:
            client.retrieve(dataset, dict(request), str(part))
    except Exception as err:
        message = " / ".join(line.strip() for line in f"{type(err).__name__}: {err}".splitlines() if line.strip())
        raise CdsError(
            f"CDS request to {dataset} failed (data.cds.retries: {opts['retries']}): {keyfilter.redact(message)}"
        ) from None
    log.info("CDS %s: downloaded %s (%d bytes)", dataset, target.name, target.stat().st_size)
    return target


def _open_download(path: Path) -> xr.Dataset:
    """Open what CDS delivered: one GRIB/NetCDF file, or a zip of several merged into one dataset."""
    if not zipfile.is_zipfile(path):
        return open_any(path)
    folder = path.with_suffix(".unzipped")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/") and Path(n).name == n]
        archive.extractall(folder, members=names)
    parts = [open_any(folder / n) for n in sorted(names)]
    if not parts:
        raise DataError(f"{path}: empty zip archive")
    return xr.merge(parts, compat="override", combine_attrs="drop_conflicts")


def _fetch(
    config: Mapping[str, Any], dataset: str, request: dict[str, Any], target: Path, what: str
) -> tuple[xr.Dataset, str]:
    retrieve(config, dataset, request, target)
    origin = f"{target.name} (CDS {dataset} {what})"
    return canonicalize(_open_download(target), "cds", origin, request=request), origin


def fetch_month(config: dict, year: int, month: int, workdir: Path) -> tuple[xr.Dataset, str]:
    """One month from CDS, downloaded into `workdir`, canonical (lazy, backed by the downloaded file)."""
    opts = options(config)
    target = Path(workdir) / f"era5-pl-{year:04d}-{month:02d}.{FORMATS[opts['format']]}"
    return _fetch(config, opts["dataset"], build_request(config, year, month), target, f"{year:04d}-{month:02d}")


def fetch_statics(config: dict, workdir: Path) -> tuple[xr.Dataset, str]:
    """Surface geopotential / g (orography, m) and land-sea mask from CDS, canonical."""
    opts = options(config)
    target = Path(workdir) / f"era5-statics.{FORMATS[opts['format']]}"
    return _fetch(config, opts["statics_dataset"], build_statics_request(config), target, "statics")
