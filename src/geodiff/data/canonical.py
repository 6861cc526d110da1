"""The canonical form of atmospheric data (DESIGN.md section 3).

Every source (CDS, ARCO-ERA5, the user's files, the synthetic generator) goes
through `canonicalize` on entry:

* dims ``time, level, lat, lon``; ERA5/GRIB/GFS/CMIP names (``valid_time``,
  ``pressure_level``, ``isobaricInhPa``, ``isobaricInPa``, ``isobaric3``, ``plev``,
  ``latitude``, ``longitude``) are renamed;
* ``level`` in hPa (Pa input divided by 100, noted in the attributes), ordered
  from the surface upward (1000 -> 200 hPa);
* ``lat`` ascending (degrees north), ``lon`` in [-180, 180) ascending (degrees east);
* ``t`` air temperature (K) and ``z`` geopotential (m2 s-2; geopotential height
  in gpm is multiplied by g), float32, with CF attributes; each is found by its CF
  ``standard_name`` first, then by its name (ERA5, GRIB, GFS, CMIP spellings);
* statics (``orography`` in m, ``lsm`` in 0..1) on (lat, lon);
* global attributes: source, source file, request (without secrets), config hash,
  package version, the conversions made.

What GeoDiff cannot use is refused later by `geodiff.data.validate`; files are
opened and written by `geodiff.data.files`.
"""

from __future__ import annotations

import calendar
import json
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geodiff import __version__
from geodiff.constants import CF_ATTRS, DIMS, HPA_TO_PA, LAT, LEVEL, LON, TIME, G

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Input that GeoDiff refuses; the message names the file, the variable and the problem."""


TEMPERATURE_NAMES = ("t", "T", "ta", "TMP", "temperature", "Temperature_isobaric", "air_temperature")
"""Names of air temperature: ERA5/GRIB, WRF-like, CMIP, GFS (GRIB2 abbreviation, THREDDS), ARCO-ERA5, CF."""
GEOPOTENTIAL_NAMES = (
    "z",
    "Z",
    "geopotential",
    "gh",
    "zg",
    "HGT",
    "Geopotential_height_isobaric",
    "geopotential_height",
)
"""Names of geopotential or geopotential height: ERA5/GRIB, ARCO-ERA5, GFS, CMIP, CF."""
HEIGHT_NAMES = ("gh", "zg", "HGT", "Geopotential_height_isobaric", "geopotential_height")
"""Variables holding geopotential height (gpm) rather than geopotential, when units say nothing."""
TEMPERATURE_STANDARD_NAMES = ("air_temperature",)
GEOPOTENTIAL_STANDARD_NAMES = ("geopotential", "geopotential_height")
"""CF standard names, looked for before the names above (only among variables on pressure levels)."""
HEIGHT_STANDARD_NAME = "geopotential_height"
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
GEOPOTENTIAL_UNITS = {"m**2s**-2", "m2s-2", "m^2s^-2", "m^2/s^2", "m2/s2", "m**2/s**2", "j/kg", "jkg-1", "jkg**-1"}
HEIGHT_UNITS = {"gpm", "m", "metre", "metres", "meter", "meters"}
SECRET_KEYS = re.compile(r"key|token|secret|password|auth", re.IGNORECASE)


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
) -> xr.Dataset:
    """Convert a dataset from any supported source to the canonical form (DESIGN.md section 3).

    Args:
        ds: temperature / geopotential on pressure levels (ERA5 NetCDF or GRIB via
            cfgrib, ARCO-ERA5, GFS, or already canonical), or statics (surface
            geopotential or orography, land-sea mask).
        source: where it came from (``cds``, ``arco``, ``local``, ``synthetic``), stored as attribute.
        path: the file or store it was read from; named in errors and stored as ``source_file``.
        request: the request that produced it (e.g. the CDS request), stored as JSON without secrets.

    Returns:
        Pressure-level data: ``t`` (K) and, when present, ``z`` (m2 s-2), float32,
        dims (time, level, lat, lon), level in hPa from the surface upward. Statics:
        ``orography`` (m) and ``lsm`` (1), float32, dims (lat, lon). Temperature in
        degrees Celsius is *not* converted: its units are kept so that `geodiff.data.validate` refuses it.

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
    out.attrs = _provenance(ds.attrs, source, path, request, notes)
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


def _on_pressure_levels(da: xr.DataArray) -> bool:
    return any(LEVEL_DIM.match(str(d)) for d in da.dims) or any(
        LEVEL_DIM.match(str(c)) and da[c].ndim == 0 for c in da.coords
    )


def _find(ds: xr.Dataset, standard_names: Iterable[str], names: Iterable[str]) -> str | None:
    """The first variable on pressure levels with one of the CF `standard_names`, else the first of `names`."""
    for name, da in ds.data_vars.items():
        if da.attrs.get("standard_name") in standard_names and _on_pressure_levels(da):
            return str(name)
    return _first(ds, names)


def time_units_error(where: str, name: str, units: Any) -> DataError:
    """The refusal of a time axis whose units xarray cannot decode into dates (e.g. ``months since 1988-01``)."""
    return DataError(
        f"{where}: time axis '{name}' cannot be decoded into dates (units '{units}'): give it CF units that "
        "xarray decodes, e.g. 'hours since 1988-01-01 00:00' with the standard calendar"
    )


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
    if ds[TIME].dtype.kind in "iuf":  # numbers, not dates: the units could not be decoded
        time = ds[TIME]
        raise time_units_error(where, TIME, time.attrs.get("units", time.encoding.get("units", "none")))
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


def pressure_in_hpa(coord: xr.DataArray, where: str) -> tuple[np.ndarray, str | None]:
    """Pressure values in hPa, and a note when they were converted from Pa."""
    name = str(coord.name)
    values = np.asarray(coord.values, dtype=np.float64)
    units = str(coord.attrs.get("units", "")).strip()
    key = units.lower()
    if coord.attrs.get("geodiff_converted_from") == "Pa":
        return values, f"{name}: converted from Pa to hPa"
    if key in PA_UNITS or (not units and name == "isobaricInPa"):
        return values / HPA_TO_PA, f"{name}: converted from Pa to hPa (divided by {HPA_TO_PA:g})"
    if key in HPA_UNITS:
        return values, None
    if not units:
        if values.size and np.nanmax(values) > 1100.0:
            return (
                values / HPA_TO_PA,
                f"{name}: no units, values up to {np.nanmax(values):g} taken as Pa and divided by {HPA_TO_PA:g}",
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
    hpa, note = pressure_in_hpa(da[dims[0]], where)
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


def unit_key(units: Any) -> str:
    """Units in lower case without spaces, with a degree sign spelled 'deg': the key of the unit tables."""
    return str(units).strip().lower().replace(" ", "").replace("°", "deg").replace("º", "deg")


def _is_height(da: xr.DataArray, name: str) -> bool:
    """Whether a geopotential-like variable holds geopotential height (gpm) instead of geopotential."""
    key = unit_key(da.attrs.get("units", ""))
    if key in HEIGHT_UNITS:
        return True
    if key in GEOPOTENTIAL_UNITS:
        return False
    standard_name = da.attrs.get("standard_name")
    if standard_name in GEOPOTENTIAL_STANDARD_NAMES:
        return standard_name == HEIGHT_STANDARD_NAME
    return name in HEIGHT_NAMES


def _pressure_levels(ds: xr.Dataset, where: str, notes: list[str]) -> xr.Dataset:
    ds = _single_member(_time_axis(ds, where), where, notes)
    arrays = []
    for canon, standard_names, names in (
        ("t", TEMPERATURE_STANDARD_NAMES, TEMPERATURE_NAMES),
        ("z", GEOPOTENTIAL_STANDARD_NAMES, GEOPOTENTIAL_NAMES),
    ):
        name = _find(ds, standard_names, names)
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
            if units and unit_key(units) not in KELVIN_UNITS:
                attrs["units"] = units  # kept as found: validate refuses it, nothing converts it silently
        elif _is_height(da, name):
            factor = G
            notes.append(f"z: geopotential height '{name}' (gpm) multiplied by g = {G} m s-2")
            log.info("%s: %s", where, notes[-1])
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
            if unit_key(ds[geop].attrs.get("units", "m2 s-2")) in HEIGHT_UNITS:
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
    notes: list[str],
) -> dict[str, str]:
    """Global attributes: CF conventions, source, request, package version, conversions, history
    (the config hash is stamped by the download job, which knows the config)."""
    attrs = {k: str(previous[k]) for k in PROVENANCE_KEYS if k in previous}  # canonicalize is idempotent
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs.update(Conventions="CF-1.8", source=source, geodiff_version=__version__)
    if path is not None:
        attrs["source_file"] = str(path)
    if request is not None:
        attrs["source_request"] = json.dumps(_scrub(request), sort_keys=True, default=str)
    if notes:
        attrs["conversions"] = "; ".join(notes)
    history = str(previous.get("history", "")).strip()
    entry = f"{stamp} canonicalised by geodiff {__version__} from {source}"
    attrs["history"] = f"{history}\n{entry}" if history else entry
    return attrs
