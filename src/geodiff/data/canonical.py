"""The canonical form of atmospheric data, and the checks every input passes (DESIGN.md sections 3, 9).

Every source (CDS, ARCO-ERA5, the user's files, the synthetic generator) goes
through `canonicalize` on entry:

* dims ``time, level, lat, lon``; ERA5/GRIB/GFS names (``valid_time``,
  ``pressure_level``, ``isobaricInhPa``, ``isobaricInPa``, ``isobaric3``,
  ``latitude``, ``longitude``) are renamed;
* ``level`` in hPa (Pa input divided by 100, noted in the attributes), ordered
  from the surface upward (1000 -> 200 hPa);
* ``lat`` ascending (degrees north), ``lon`` in [-180, 180) ascending (degrees east);
* ``t`` air temperature (K) and ``z`` geopotential (m2 s-2; geopotential height
  in gpm is multiplied by g), float32, with CF attributes;
* statics (``orography`` in m, ``lsm`` in 0..1) on (lat, lon).

`validate` then refuses what GeoDiff cannot use with a `DataError` naming the
file, the variable and the problem; `open_any` reads NetCDF or GRIB and refuses
empty, truncated and corrupted files; `write_netcdf` writes atomically.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geodiff import __version__
from geodiff.constants import CF_ATTRS, DIMS, LAT, LEVEL, LON, STATICS, TIME, G
from geodiff.data.grid import Grid, grids_from_config
from geodiff.provenance import config_hash

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Input that GeoDiff refuses; the message names the file, the variable and the problem."""


TEMPERATURE_NAMES = ("t", "temperature", "Temperature_isobaric", "ta", "air_temperature")
GEOPOTENTIAL_NAMES = ("z", "geopotential", "Geopotential_height_isobaric", "gh", "zg", "geopotential_height")
HEIGHT_NAMES = ("Geopotential_height_isobaric", "gh", "zg", "geopotential_height")
"""Variables holding geopotential height (gpm) rather than geopotential, when units say nothing."""
OROGRAPHY_NAMES = ("orography", "orog")
SURFACE_GEOPOTENTIAL_NAMES = ("geopotential_at_surface", "z")
LSM_NAMES = ("lsm", "land_sea_mask")
LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
LEVEL_DIM = re.compile(r"^(level|pressure_level|isobaricInhPa|isobaricInPa|isobaric\d*|plev|lev)$")
"""Names of pressure coordinates: canonical, ERA5 NetCDF, cfgrib, GFS (THREDDS), CMIP."""
TIME_DIM = re.compile(r"^(time|valid_time|time\d+)$")

HPA_UNITS = {"hpa", "millibar", "millibars", "mbar", "mb", "hectopascal", "hectopascals"}
PA_UNITS = {"pa", "pascal", "pascals"}
KELVIN_UNITS = {"k", "kelvin", "kelvins", "degk", "deg_k", "degreek", "degrees_k"}
CELSIUS_UNITS = {
    "c",
    "degc",
    "deg_c",
    "degreec",
    "degree_c",
    "degreesc",
    "degrees_c",
    "celsius",
    "degcelsius",
    "degreecelsius",
    "degree_celsius",
    "degreescelsius",
    "degrees_celsius",
}
GEOPOTENTIAL_UNITS = {"m**2s**-2", "m2s-2", "m^2s^-2", "m^2/s^2", "m2/s2", "m**2/s**2", "j/kg", "jkg-1", "jkg**-1"}
HEIGHT_UNITS = {"gpm", "m", "metre", "metres", "meter", "meters"}
T_PLAUSIBLE_K = (100.0, 350.0)
"""Range of air temperature on pressure levels accepted as Kelvin, K."""
OROGRAPHY_PLAUSIBLE_M = (-1000.0, 9000.0)
"""Range of surface altitude accepted, m."""
SECRET_KEYS = re.compile(r"key|token|secret|password|auth", re.IGNORECASE)

GRIB_MAGIC = b"GRIB"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGIC = b"CDF"
ZIP_MAGIC = b"PK\x03\x04"


# ---------------------------------------------------------------------------------------------
# canonical form


def month_times(year: int, month: int, hours: Iterable[int]) -> pd.DatetimeIndex:
    """Every one of `hours` (UTC) on every day of a month, ascending."""
    days = pd.date_range(f"{year:04d}-{month:02d}-01", periods=calendar.monthrange(year, month)[1], freq="D")
    return pd.DatetimeIndex([d + pd.Timedelta(hours=int(h)) for d in days for h in sorted(hours)])


def canonicalize(
    ds: xr.Dataset,
    source: str,
    path: str | None = None,
    *,
    request: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Convert a dataset from any supported source to the canonical form (DESIGN.md section 3).

    Args:
        ds: temperature / geopotential on pressure levels (ERA5 NetCDF or GRIB via
            cfgrib, ARCO-ERA5, GFS, or already canonical), or statics (surface
            geopotential or orography, land-sea mask).
        source: where it came from (``cds``, ``arco``, ``local``, ``synthetic``), stored as attribute.
        path: the file or store it was read from; named in errors and stored as ``source_file``.
        request: the request that produced it (e.g. the CDS request), stored as JSON without secrets.
        config: the GeoDiff config; its hash is stored as ``config_hash``.

    Returns:
        Pressure-level data: ``t`` (K) and, when present, ``z`` (m2 s-2), float32,
        dims (time, level, lat, lon), level in hPa from the surface upward. Statics:
        ``orography`` (m) and ``lsm`` (1), float32, dims (lat, lon). Temperature in
        degrees Celsius is *not* converted: its units are kept so that `validate` refuses it.

    Raises:
        DataError: no usable variable or coordinate.
    """
    where = str(path) if path is not None else f"<{source} data>"
    notes: list[str] = []
    ds = _horizontal(ds, where)
    if _is_statics(ds):
        out = _statics(ds, where, notes)
    else:
        out = _pressure_levels(ds, where, notes)
    out = _sort_horizontal(out, where)
    for name, coord in ((LAT, out[LAT]), (LON, out[LON])):
        out = out.assign_coords({name: coord.astype(np.float64).assign_attrs(CF_ATTRS[name])})
    out.attrs = _provenance(ds.attrs, source, path, request, config, notes)
    return out


def _horizontal(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Rename latitude/longitude to lat/lon; refuse non-rectilinear grids."""
    renames = {}
    for canon, names in ((LAT, LAT_NAMES), (LON, LON_NAMES)):
        found = next((n for n in names if n in ds.variables), None)
        if found is None:
            raise DataError(f"{where}: no {names[1]} coordinate (have {sorted(map(str, ds.variables))})")
        if ds[found].ndim != 1:
            raise DataError(f"{where}: '{found}' is {ds[found].ndim}-D: not a regular latitude-longitude grid")
        if found != canon:
            renames[found] = canon
    ds = ds.rename(renames)
    for name in (LAT, LON):
        if name not in ds.dims:  # a coordinate along some other dim (e.g. 'values'): not rectilinear
            raise DataError(f"{where}: '{name}' is not a dimension: not a regular latitude-longitude grid")
    return ds


def _is_statics(ds: xr.Dataset) -> bool:
    names = set(map(str, ds.data_vars))
    if names & set(OROGRAPHY_NAMES + LSM_NAMES + ("geopotential_at_surface",)):
        return True
    return "z" in names and ds["z"].attrs.get("GRIB_typeOfLevel") == "surface"


def _first(ds: xr.Dataset, names: Iterable[str]) -> str | None:
    return next((n for n in names if n in ds.data_vars), None)


def _time_axis(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Make `time` the (valid) time dimension: cfgrib's time x step, ERA5's valid_time, GFS's time1."""
    if "step" in ds.dims and ds.sizes["step"] > 1 and "time" in ds.dims and "valid_time" in ds.coords:
        # forecasts: valid time = reference time + step, flattened into one axis
        stacked = ds.stack(_valid=("time", "step"))
        valid = stacked["valid_time"].values
        stacked = stacked.drop_vars(["_valid", "time", "step", "valid_time"])
        ds = stacked.assign_coords(_valid=valid).rename({"_valid": "valid_time"})
    elif "step" in ds.dims:
        if ds.sizes["step"] != 1 or "valid_time" not in ds.coords:
            raise DataError(f"{where}: forecast steps without valid_time cannot be placed in time")
        ds = ds.isel(step=0)
    if "valid_time" in ds.coords:
        valid = ds["valid_time"]
        if valid.ndim == 1 and valid.dims[0] != "valid_time":
            ds = ds.swap_dims({valid.dims[0]: "valid_time"})
        drop = [n for n in ("time", "step") if n in ds.coords and n not in ds.dims]
        ds = ds.drop_vars(drop).rename({"valid_time": TIME})
    elif TIME not in ds.variables:
        others = [str(d) for d in ds.dims if TIME_DIM.match(str(d))]
        if len(others) == 1:
            ds = ds.rename({others[0]: TIME})
    if TIME not in ds.variables:
        raise DataError(f"{where}: no time coordinate (have {sorted(map(str, ds.variables))})")
    if TIME not in ds.dims:
        ds = ds.expand_dims(TIME)
    return ds


def _single_member(ds: xr.Dataset, where: str, notes: list[str]) -> xr.Dataset:
    """Keep one ensemble member (ERA5 EDA files) and merge ERA5/ERA5T experiment versions."""
    if "number" in ds.dims:
        if ds.sizes["number"] > 1:
            member = int(ds["number"].values[0]) if "number" in ds.coords else 0
            log.warning("%s: %d ensemble members; keeping member %d", where, ds.sizes["number"], member)
            notes.append(f"ensemble member {member} of {ds.sizes['number']} kept")
        ds = ds.isel(number=0)
    if "expver" in ds.dims:  # old CDS NetCDF: ERA5 (0001) and ERA5T (0005) side by side, NaN where absent
        merged = ds.isel(expver=0)
        for i in range(1, ds.sizes["expver"]):
            merged = merged.combine_first(ds.isel(expver=i))
        ds = merged
        notes.append("ERA5 and ERA5T experiment versions merged")
    return ds


def _pressure_in_hpa(coord: xr.DataArray, where: str) -> tuple[np.ndarray, str | None]:
    """Pressure values in hPa, and a note when they were converted from Pa."""
    name = str(coord.name)
    values = np.asarray(coord.values, dtype=np.float64)
    units = str(coord.attrs.get("units", "")).strip()
    key = units.lower()
    if coord.attrs.get("geodiff_converted_from") == "Pa":
        return values, f"{name}: converted from Pa to hPa"
    if key in PA_UNITS or (not units and name == "isobaricInPa"):
        return values / 100.0, f"{name}: converted from Pa to hPa (divided by 100)"
    if key in HPA_UNITS:
        return values, None
    if not units:
        if values.size and np.nanmax(values) > 1100.0:
            return (
                values / 100.0,
                f"{name}: no units, values up to {np.nanmax(values):g} taken as Pa and divided by 100",
            )
        return values, None
    raise DataError(f"{where}: pressure coordinate '{name}' has units '{units}'; expected hPa or Pa")


def _vertical(da: xr.DataArray, name: str, where: str, notes: list[str]) -> xr.DataArray:
    """`da` with its pressure coordinate as dimension `level` in hPa."""
    dims = [str(d) for d in da.dims if LEVEL_DIM.match(str(d))]
    if len(dims) > 1:
        raise DataError(f"{where}: variable '{name}' has several pressure dimensions {dims}")
    if not dims:
        scalars = [str(c) for c in da.coords if LEVEL_DIM.match(str(c)) and da[c].ndim == 0]
        if not scalars:
            raise DataError(f"{where}: variable '{name}' is not on pressure levels (dims {tuple(map(str, da.dims))})")
        da = da.expand_dims(scalars[0])
        dims = scalars[:1]
    hpa, note = _pressure_in_hpa(da[dims[0]], where)
    if note and note not in notes:
        notes.append(note)
    da = da.drop_vars([c for c in da.coords if c not in da.dims])
    return da.rename({dims[0]: LEVEL}).assign_coords({LEVEL: hpa})


def _float32(da: xr.DataArray, factor: float = 1.0) -> xr.DataArray:
    """`da` times `factor` as float32, without reading file-backed data (it goes through dask if work is needed)."""
    if da.dtype == np.float32 and factor == 1.0:
        return da
    lazy = da.chunk() if da.chunks is None else da  # arithmetic on a lazily opened file would read all of it
    return (lazy * factor if factor != 1.0 else lazy).astype(np.float32).assign_attrs(da.attrs)


def _unit_key(units: Any) -> str:
    return str(units).strip().lower().replace(" ", "").replace("°", "deg").replace("º", "deg")


def _is_height(da: xr.DataArray, name: str) -> bool:
    """Whether a geopotential-like variable holds geopotential height (gpm) instead of geopotential."""
    key = _unit_key(da.attrs.get("units", ""))
    if key in HEIGHT_UNITS:
        return True
    if key in GEOPOTENTIAL_UNITS:
        return False
    return name in HEIGHT_NAMES


def _pressure_levels(ds: xr.Dataset, where: str, notes: list[str]) -> xr.Dataset:
    ds = _single_member(_time_axis(ds, where), where, notes)
    arrays = []
    for canon, names in (("t", TEMPERATURE_NAMES), ("z", GEOPOTENTIAL_NAMES)):
        name = _first(ds, names)
        if name is None:
            continue
        da = _vertical(ds[name], name, where, notes)
        extra = [str(d) for d in da.dims if d not in DIMS]
        if extra:
            raise DataError(f"{where}: variable '{name}' has unexpected dimensions {extra}")
        attrs = dict(CF_ATTRS[canon])
        factor = 1.0
        if canon == "t":
            units = str(da.attrs.get("units", "")).strip()
            if units and _unit_key(units) not in KELVIN_UNITS:
                attrs["units"] = units  # kept as found: validate refuses it, nothing converts it silently
        elif _is_height(da, name):
            factor = G
            notes.append(f"z: geopotential height '{name}' (gpm) multiplied by g = {G} m s-2")
        converted = _float32(da, factor).rename(canon)
        converted.attrs = attrs
        arrays.append(converted)
    if not arrays:
        raise DataError(
            f"{where}: variable 't' (air temperature) is missing: no temperature or geopotential on pressure "
            f"levels among {sorted(map(str, ds.data_vars))}"
        )
    try:
        out = xr.merge(arrays, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    except (ValueError, xr.MergeError) as err:
        raise DataError(f"{where}: t and z cannot be combined on one grid: {err}") from err
    for var in out.data_vars:
        out[var].attrs = next(a.attrs for a in arrays if a.name == var)
    out = out.sortby(LEVEL, ascending=False).sortby(TIME)
    time = out[TIME].astype("datetime64[ns]").assign_attrs(standard_name="time", long_name="Time", axis="T")
    out = out.assign_coords({TIME: time, LEVEL: out[LEVEL].assign_attrs(CF_ATTRS[LEVEL])})
    if any("Pa to hPa" in n or "taken as Pa" in n for n in notes):
        out[LEVEL].attrs["comment"] = "converted from Pa"
    return out.transpose(TIME, LEVEL, LAT, LON)


def _statics(ds: xr.Dataset, where: str, notes: list[str]) -> xr.Dataset:
    """Orography (m) and land-sea mask (0..1) on (lat, lon)."""
    fields = {}
    orog = _first(ds, OROGRAPHY_NAMES)
    if orog is not None:
        fields["orography"] = _float32(ds[orog])
    else:
        geop = _first(ds, SURFACE_GEOPOTENTIAL_NAMES)
        if geop is not None:
            if _unit_key(ds[geop].attrs.get("units", "m2 s-2")) in HEIGHT_UNITS:
                fields["orography"] = _float32(ds[geop])
            else:
                fields["orography"] = _float32(ds[geop], 1.0 / G)
                notes.append(f"orography: surface geopotential '{geop}' divided by g = {G} m s-2")
    lsm = _first(ds, LSM_NAMES)
    if lsm is not None:
        fields["lsm"] = _float32(ds[lsm])
    out = {}
    for canon, da in fields.items():
        for dim in [d for d in da.dims if d not in (LAT, LON)]:
            if da.sizes[dim] > 1 and not TIME_DIM.match(str(dim)):
                raise DataError(f"{where}: static field '{canon}' varies along '{dim}'")
            da = da.isel({dim: 0})  # invariants: the first time is as good as any
        da = da.drop_vars([c for c in da.coords if c not in da.dims])
        out[canon] = da.transpose(LAT, LON).assign_attrs(CF_ATTRS[canon])
    return xr.Dataset(out)


def _sort_horizontal(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Latitude ascending; longitude wrapped into [-180, 180) and ascending (a roll for global grids)."""
    lon = ((ds[LON].values.astype(np.float64) + 180.0) % 360.0) - 180.0
    ds = ds.assign_coords({LON: lon})
    duplicated = pd.Index(lon).duplicated()
    if duplicated.any():  # e.g. both 0 and 360 present
        ds = ds.isel({LON: np.flatnonzero(~duplicated)})
    return ds.sortby(LAT).sortby(LON)


def _scrub(value: Any) -> Any:
    """A copy of a request without anything that looks like a credential."""
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not SECRET_KEYS.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


PROVENANCE_KEYS = ("source_file", "source_request", "config_hash", "conversions")


def _provenance(
    previous: Mapping[str, Any],
    source: str,
    path: str | None,
    request: Mapping[str, Any] | None,
    config: Mapping[str, Any] | None,
    notes: list[str],
) -> dict[str, str]:
    """Global attributes: CF conventions, source, request, config hash, package version, conversions."""
    attrs = {k: str(previous[k]) for k in PROVENANCE_KEYS if k in previous}  # canonicalize is idempotent
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs.update(Conventions="CF-1.8", source=source, geodiff_version=__version__)
    if path is not None:
        attrs["source_file"] = str(path)
    if request is not None:
        attrs["source_request"] = json.dumps(_scrub(request), sort_keys=True, default=str)
    if config is not None:
        attrs["config_hash"] = config_hash(dict(config))
    if notes:
        attrs["conversions"] = "; ".join(notes)
    history = str(previous.get("history", "")).strip()
    entry = f"{stamp} canonicalised by geodiff {__version__} from {source}"
    attrs["history"] = f"{history}\n{entry}" if history and "geodiff" in history else entry
    return attrs


# ---------------------------------------------------------------------------------------------
# validation


def _is_statics_canonical(ds: xr.Dataset) -> bool:
    return "t" not in ds.data_vars and bool(set(STATICS) & set(map(str, ds.data_vars)))


def _describe_times(times: pd.DatetimeIndex, limit: int = 3) -> str:
    shown = ", ".join(t.strftime("%Y-%m-%dT%H") for t in times[:limit])
    return shown + (f", ... ({len(times)} in all)" if len(times) > limit else "")


def check_times(ds: xr.Dataset, hours: Iterable[int], year: int | None = None, month: int | None = None) -> list[str]:
    """Problems with the time axis: duplicated times, and times missing from or foreign to the months.

    The expected times are every one of `hours` (UTC) of every day of `year`-`month`,
    or, without them, of every month the data touches.
    """
    times = pd.DatetimeIndex(ds[TIME].values)
    problems = []
    duplicated = times[times.duplicated()].unique()
    if len(duplicated):
        problems.append(f"duplicated times: {_describe_times(duplicated)}")
    if year is not None and month is not None:
        months = [(year, month)]
    else:
        months = sorted({(t.year, t.month) for t in times})
    expected = pd.DatetimeIndex([]) if not months else month_times(*months[0], hours)
    for y, m in months[1:]:
        expected = expected.append(month_times(y, m, hours))
    missing = expected.difference(times)
    if len(missing):
        problems.append(f"missing {len(missing)} of {len(expected)} expected times: {_describe_times(missing)}")
    foreign = times.unique().difference(expected)
    if len(foreign):
        problems.append(f"times outside the month or data.hours {sorted(hours)}: {_describe_times(foreign)}")
    return problems


def _check_grid(ds: xr.Dataset, grid: Grid) -> list[str]:
    lat, lon = ds[LAT].values, ds[LON].values
    if grid.matches(lat, lon):
        return []

    def describe(la: np.ndarray, lo: np.ndarray) -> str:
        if not la.size or not lo.size:
            return f"{la.size}x{lo.size} points"
        step = f", spacing {abs(la[1] - la[0]):g} deg" if la.size > 1 else ""
        return f"{la.size}x{lo.size} points, lat {la.min():g}..{la.max():g}, lon {lo.min():g}..{lo.max():g}{step}"

    return [
        f"grid does not match the config: file has {describe(lat, lon)}; grid.hr wants cell centres "
        f"{describe(grid.lat, grid.lon)}"
    ]


def _check_missing_values(ds: xr.Dataset, name: str, allow_nans: bool) -> list[str]:
    da = ds[name]
    missing = int(da.isnull().sum())
    if not missing:
        return []
    if missing == da.size:
        return [f"variable '{name}': all {da.size} values are missing (NaN)"]
    if allow_nans:
        log.warning("variable '%s': %d of %d values missing (NaN), accepted (data.allow_nans)", name, missing, da.size)
        return []
    position = np.argwhere(da.isnull().values)[0]
    first = {dim: da[dim].values[int(i)] for dim, i in zip(da.dims, position, strict=True) if dim in da.coords}
    at = ", ".join(f"{k}={pd.Timestamp(v).strftime('%Y-%m-%dT%H') if k == TIME else v}" for k, v in first.items())
    return [
        f"variable '{name}': {missing} of {da.size} values are missing (NaN), first at {at}; "
        "set data.allow_nans: true to accept gaps"
    ]


def _check_temperature(t: xr.DataArray) -> list[str]:
    units = str(t.attrs.get("units", "")).strip()
    key = _unit_key(units)
    if key in CELSIUS_UNITS:
        return [
            f"variable 't' is in degrees Celsius (units '{units}'): GeoDiff needs Kelvin and never converts silently"
        ]
    if units and key not in KELVIN_UNITS:
        return [f"variable 't' has units '{units}', expected K"]
    if not bool(t.notnull().any()):
        return []
    lo, hi = float(t.min()), float(t.max())
    if lo < T_PLAUSIBLE_K[0] or hi > T_PLAUSIBLE_K[1]:
        return [
            f"variable 't' ranges {lo:.1f}..{hi:.1f}, not air temperature in Kelvin "
            f"(expected within {T_PLAUSIBLE_K[0]:g}..{T_PLAUSIBLE_K[1]:g} K; degrees Celsius?)"
        ]
    return []


def _check_levels(ds: xr.Dataset, levels: Iterable[float]) -> list[str]:
    have = np.asarray(ds[LEVEL].values, dtype=np.float64)
    problems = []
    duplicated = pd.Index(have)[pd.Index(have).duplicated()]
    if len(duplicated):
        problems.append(f"duplicated levels {sorted(duplicated.unique().tolist())} hPa")
    missing = [float(lvl) for lvl in levels if not np.any(np.isclose(have, float(lvl)))]
    if missing:
        listed = ", ".join(f"{h:g}" for h in have) or "none"
        problems.append(f"missing levels {', '.join(f'{m:g}' for m in missing)} hPa (file has {listed})")
    return problems


def _check_statics(ds: xr.Dataset) -> list[str]:
    problems = []
    for name in STATICS:
        if name not in ds.data_vars:
            problems.append(f"variable '{name}' is missing (have {sorted(map(str, ds.data_vars))})")
            continue
        problems += _check_missing_values(ds, name, allow_nans=False)
    if "lsm" in ds.data_vars and bool(ds["lsm"].notnull().any()):
        lo, hi = float(ds["lsm"].min()), float(ds["lsm"].max())
        if lo < 0.0 or hi > 1.0:
            problems.append(f"variable 'lsm' ranges {lo:g}..{hi:g}, expected a land fraction in 0..1")
    if "orography" in ds.data_vars and bool(ds["orography"].notnull().any()):
        lo, hi = float(ds["orography"].min()), float(ds["orography"].max())
        if lo < OROGRAPHY_PLAUSIBLE_M[0] or hi > OROGRAPHY_PLAUSIBLE_M[1]:
            problems.append(f"variable 'orography' ranges {lo:g}..{hi:g}, not a surface altitude in m")
    return problems


def validate(
    ds: xr.Dataset,
    config: Mapping[str, Any],
    path: str | os.PathLike[str] | None,
    *,
    year: int | None = None,
    month: int | None = None,
) -> None:
    """Refuse canonical data that GeoDiff cannot use (DESIGN.md section 9).

    Checks: empty data; missing ``t``; missing values (NaN) unless config
    ``data.allow_nans`` (a field with every value missing is always refused);
    temperature not in Kelvin, by its units (degC, Celsius, ...) or by its values
    (outside 100..350 K); duplicated or missing levels against config ``levels``;
    duplicated, missing or foreign times against config ``data.hours`` for
    `year`-`month` (or the months the data touches); a grid that is not the
    config's fine grid ``grid.hr``. Statics: ``orography`` (m) and ``lsm`` (0..1)
    present, complete and plausible, on the fine grid. Empty, truncated and
    corrupted files are refused earlier, by `open_any`.

    Raises:
        DataError: naming `path`, and every problem found with its variable.
    """
    where = str(path) if path is not None else "<data>"
    if not ds.data_vars:
        raise DataError(f"{where}: empty: no variables")
    empty = sorted(str(d) for d, n in ds.sizes.items() if n == 0)
    problems: list[str] = []
    hr, _ = grids_from_config(dict(config))
    if _is_statics_canonical(ds):
        problems += [] if empty else _check_statics(ds)
    else:
        allow_nans = bool(config.get("data", {}).get("allow_nans", False))
        for name in ("t", "z"):
            if name in ds.data_vars and not empty:
                problems += _check_missing_values(ds, name, allow_nans)
        if "t" not in ds.data_vars:
            problems.append(f"variable 't' (air temperature) is missing (have {sorted(map(str, ds.data_vars))})")
        elif not empty:
            problems += _check_temperature(ds["t"])
        problems += _check_levels(ds, config["levels"])
        problems += check_times(ds, config["data"]["hours"], year, month)
    problems += _check_grid(ds, hr)
    if empty and not problems:
        problems.append(f"empty: dimensions of size 0: {empty}")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# files


def check_grib(path: str | os.PathLike[str]) -> int:
    """Number of GRIB messages in a file, reading only their headers; refuse broken messages.

    cfgrib skips a corrupted or truncated message with nothing but a log line, and
    would hand back a dataset with fields missing; ecCodes' message reader raises
    on it, which is what this uses.

    Raises:
        DataError: a message that ecCodes cannot read (wrong length, truncated file), or no message.
    """
    import eccodes

    size = os.path.getsize(path)
    count = 0
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            try:
                handle = eccodes.codes_grib_new_from_file(f, headers_only=True)
            except eccodes.GribInternalError as err:
                raise DataError(
                    f"{path}: corrupted or truncated GRIB: message {count + 1} at byte {offset} of {size} "
                    f"cannot be read ({err}); cfgrib would skip it silently. Download the file again"
                ) from err
            if handle is None:
                break
            eccodes.codes_release(handle)
            count += 1
    if count == 0:
        raise DataError(f"{path}: no GRIB message in {size} bytes")
    return count


def _fields_decoded(ds: xr.Dataset) -> int:
    """Number of 2-D fields (GRIB messages) behind a cfgrib dataset."""
    horizontal = {"latitude", "longitude", "values", "x", "y"}
    return sum(
        int(np.prod([n for d, n in da.sizes.items() if d not in horizontal], dtype=np.int64))
        for da in ds.data_vars.values()
    )


def _as_hpa_piece(piece: xr.Dataset, where: str) -> xr.Dataset:
    """A cfgrib dataset with its pressure coordinate (Pa or hPa) as `pressure_level` in hPa."""
    for name in ("isobaricInhPa", "isobaricInPa"):
        if name in piece.coords:
            values, note = _pressure_in_hpa(piece[name], where)
            attrs = {"units": "hPa"} | ({"geodiff_converted_from": "Pa"} if note else {})
            if piece[name].ndim == 0:
                piece = piece.expand_dims(name)
            return piece.rename({name: "pressure_level"}).assign_coords(
                pressure_level=("pressure_level", np.atleast_1d(values), attrs)
            )
    return piece


def _open_grib(path: Path) -> xr.Dataset:
    from cfgrib.dataset import DatasetBuildError

    messages = check_grib(path)
    kwargs = {"indexpath": ""}
    try:
        try:
            ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs=kwargs, decode_timedelta=True)
        except DatasetBuildError as err:
            # several hypercubes in one file, e.g. levels in hPa (isobaricInhPa) and Pa (isobaricInPa)
            import cfgrib

            log.warning(
                "%s: several hypercubes in one file (%s); opening its parts separately",
                path,
                str(err).splitlines()[0].rstrip(":, "),
            )
            pieces = cfgrib.open_datasets(str(path), backend_kwargs=kwargs, decode_timedelta=True)
            pieces = [_as_hpa_piece(p, str(path)) for p in pieces]
            ds = xr.merge(pieces, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    except DataError:
        raise
    except Exception as err:  # ecCodes and cfgrib raise many types for undecodable input
        raise DataError(f"{path}: cannot decode GRIB: {type(err).__name__}: {err}") from err
    decoded = _fields_decoded(ds)
    if decoded != messages:
        raise DataError(
            f"{path}: corrupted GRIB: {messages} messages but cfgrib decoded {decoded} fields "
            "(messages skipped or duplicated)"
        )
    return ds


def open_any(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a NetCDF (3 or 4/HDF5) or GRIB file lazily, telling them apart by their first bytes.

    GRIB goes through cfgrib without writing an index file next to the data, after
    every message has been checked with ecCodes (`check_grib`).

    Raises:
        DataError: missing, empty, truncated, corrupted or unrecognised file, naming it.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"{p}: empty file (0 bytes)")
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(GRIB_MAGIC):
        return _open_grib(p)
    if head.startswith(HDF5_MAGIC) or head.startswith(NETCDF3_MAGIC):
        try:
            return xr.open_dataset(p, engine="netcdf4", decode_timedelta=True)
        except Exception as err:
            raise DataError(f"{p}: cannot open NetCDF, truncated or corrupted ({type(err).__name__}: {err})") from err
    if head.startswith(ZIP_MAGIC):
        raise DataError(f"{p}: a zip archive, not NetCDF or GRIB: unpack it first")
    raise DataError(f"{p}: neither GRIB nor NetCDF (starts with {head!r})")


def load(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Read a lazily opened dataset into memory; a read error (e.g. truncated data) names `where`."""
    try:
        return ds.load()
    except Exception as err:
        raise DataError(
            f"{where}: cannot read the data, truncated or corrupted? ({type(err).__name__}: {err})"
        ) from err


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Write NetCDF-4 atomically: to a temporary name in the same folder, renamed when complete.

    A failure (or a killed job) leaves no file at `path` and no temporary file behind
    (except after SIGKILL, which leaves only a hidden ``.name.*.tmp``, never `path`).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")  # created with the umask's permissions
    encoding = {
        str(name): {"zlib": True, "complevel": 1}
        for name, da in ds.data_vars.items()
        if np.issubdtype(da.dtype, np.floating)
    }
    try:
        ds.to_netcdf(tmp, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s", final)
