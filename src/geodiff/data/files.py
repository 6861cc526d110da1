"""Opening and writing data files: NetCDF or GRIB in, NetCDF out (DESIGN.md section 9).

`open_any` tells NetCDF from GRIB by the first bytes and refuses missing,
empty, truncated, corrupted and unrecognised files with a `DataError` naming
the file. From a GRIB file with pressure levels it reads only temperature and
geopotential (or geopotential height) on those levels, one variable and level
type at a time, so the other messages of a full forecast file (humidity, winds,
2 m fields, surface fields...) never matter. `write_netcdf` writes atomically.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from geodiff import __version__
from geodiff.atomic import atomic_write
from geodiff.data.canonical import DataError, pressure_in_hpa, time_units_error

log = logging.getLogger(__name__)

GRIB_MAGIC = b"GRIB"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGIC = b"CDF"
ZIP_MAGIC = b"PK\x03\x04"

GRIB_PRESSURE_LEVELS = ("isobaricInhPa", "isobaricInPa")
"""ecCodes ``typeOfLevel`` of fields on pressure levels."""
GRIB_VARIABLES = ("t", "z", "gh")
"""ecCodes ``shortName`` of what GeoDiff reads from pressure levels: temperature, geopotential, geopotential height."""


def grib_inventory(path: str | os.PathLike[str]) -> Counter[tuple[str, str]]:
    """Number of GRIB messages per (``shortName``, ``typeOfLevel``), reading only their headers.

    cfgrib skips a corrupted or truncated message with nothing but a log line, and
    would hand back a dataset with fields missing; ecCodes' message reader raises
    on it, which is what this uses.

    Raises:
        DataError: a message that ecCodes cannot read (wrong length, truncated file), or no message.
    """
    import eccodes

    size = os.path.getsize(path)
    inventory: Counter[tuple[str, str]] = Counter()
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            try:
                handle = eccodes.codes_grib_new_from_file(f, headers_only=True)
            except eccodes.GribInternalError as err:
                raise DataError(
                    f"{path}: corrupted or truncated GRIB: message {inventory.total() + 1} at byte {offset} of {size} "
                    f"cannot be read ({err}); cfgrib would skip it silently. Download the file again"
                ) from err
            if handle is None:
                break
            try:
                inventory[(eccodes.codes_get(handle, "shortName"), eccodes.codes_get(handle, "typeOfLevel"))] += 1
            finally:
                eccodes.codes_release(handle)
    if not inventory:
        raise DataError(f"{path}: no GRIB message in {size} bytes")
    return inventory


def _fields_decoded(ds: xr.Dataset) -> int:
    """Number of 2-D fields (GRIB messages) behind a cfgrib dataset."""
    horizontal = {"latitude", "longitude", "values", "x", "y"}
    return sum(
        int(np.prod([n for d, n in da.sizes.items() if d not in horizontal], dtype=np.int64))
        for da in ds.data_vars.values()
    )


def _as_hpa_piece(piece: xr.Dataset, where: str) -> xr.Dataset:
    """A cfgrib dataset with its pressure coordinate (Pa or hPa) as `pressure_level` in hPa."""
    for name in GRIB_PRESSURE_LEVELS:
        if name in piece.coords:
            values, note = pressure_in_hpa(piece[name], where)
            attrs = {"units": "hPa"} | ({"geodiff_converted_from": "Pa"} if note else {})
            if piece[name].ndim == 0:
                piece = piece.expand_dims(name)
            return piece.rename({name: "pressure_level"}).assign_coords(
                pressure_level=("pressure_level", np.atleast_1d(values), attrs)
            )
    return piece


def _open_pressure_levels(path: Path, wanted: list[tuple[str, str]]) -> xr.Dataset:
    """The `wanted` (shortName, typeOfLevel) fields of a GRIB file, each opened alone, on `pressure_level` in hPa."""
    pieces = []
    for short_name, level_type in wanted:
        keys = {"shortName": short_name, "typeOfLevel": level_type}
        piece = xr.open_dataset(
            path, engine="cfgrib", backend_kwargs={"indexpath": "", "filter_by_keys": keys}, decode_timedelta=True
        )
        pieces.append(_as_hpa_piece(piece, str(path)))
    return xr.merge(pieces, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")


def _open_grib(path: Path) -> xr.Dataset:
    """Temperature and geopotential (height) on pressure levels, or, without pressure levels, the whole file."""
    inventory = grib_inventory(path)
    on_levels = [key for key in inventory if key[1] in GRIB_PRESSURE_LEVELS]
    wanted = sorted(key for key in on_levels if key[0] in GRIB_VARIABLES)
    if on_levels and not wanted:
        found = ", ".join(f"{name} on {level}" for name, level in sorted(inventory))
        raise DataError(
            f"{path}: variable 't' (air temperature) is missing: no temperature or geopotential on pressure levels "
            f"among the GRIB messages ({found})"
        )
    messages = sum(inventory[key] for key in wanted) if wanted else inventory.total()
    if messages < inventory.total():
        reading = ", ".join(f"{name} on {level}" for name, level in wanted)
        log.info("%s: reading %s; %d other GRIB messages left aside", path, reading, inventory.total() - messages)
    try:
        if wanted:
            ds = _open_pressure_levels(path, wanted)
        else:  # no pressure levels: statics (surface geopotential, land-sea mask), or data canonicalize refuses
            ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""}, decode_timedelta=True)
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


def _refuse_undecodable_times(path: Path) -> None:
    """Raise `time_units_error` when a NetCDF that xarray refused opens without decoding times."""
    try:
        with xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_timedelta=False) as raw:
            for name, var in raw.variables.items():
                units = str(var.attrs.get("units", ""))
                if " since " in units:
                    try:
                        xr.decode_cf(raw[[name]])
                    except Exception:
                        raise time_units_error(str(path), str(name), units) from None
    except DataError:
        raise
    except Exception:  # not a time problem: the caller reports the file as unreadable
        return


def open_any(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a NetCDF (3 or 4/HDF5) or GRIB file lazily, telling them apart by their first bytes.

    GRIB goes through cfgrib without writing an index file next to the data, after
    every message has been checked with ecCodes (`grib_inventory`); from a file with
    pressure levels only temperature and geopotential (height) on them are read.

    Raises:
        DataError: missing, empty, truncated, corrupted or unrecognised file, or a NetCDF time
            axis whose units cannot be decoded into dates, naming the file.
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
            _refuse_undecodable_times(p)
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


def cf_global_attrs(attrs: dict, title: str) -> dict:
    """The CF global attributes a GeoDiff file gets on top of `attrs`: `Conventions`, a `title`
    (`title` unless `attrs` has one) and a `history` line of this write (UTC) before the old history."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = f"{stamp}: written by geodiff {__version__}" + (f"\n{attrs['history']}" if "history" in attrs else "")
    return {"Conventions": "CF-1.8", "title": attrs.get("title", title), "history": history}


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike[str], chunks: dict[str, int] | None = None) -> None:
    """Write CF-1.8 NetCDF-4 (floating-point variables zlib-compressed) atomically, with `geodiff.atomic.atomic_write`.

    What the IOOS compliance checker asks of CF 1.8 is settled here for every file: coordinate
    variables carry no `_FillValue`, time is stored as float64 hours since 1970 (not int64),
    an integer coordinate (the ensemble member) as int32, and the global attributes get
    `Conventions`, a `title` (unless one is set) and a `history` line. `chunks` ({dim: size})
    chunks the floating-point variables along those dims (whole along the others). A failure (or a killed
    job) leaves no file at `path`: the old one, if any, stays as it was.
    """
    encoding: dict[str, dict] = {
        str(name): {"zlib": True, "complevel": 1,
                    **({"chunksizes": tuple(chunks.get(d, n) for d, n in zip(da.dims, da.shape))} if chunks else {})}
        for name, da in ds.data_vars.items()
        if np.issubdtype(da.dtype, np.floating)
    }
    for name, coord in ds.coords.items():
        encoding[str(name)] = {"_FillValue": None}
        if np.issubdtype(coord.dtype, np.datetime64):
            encoding[str(name)].update(units="hours since 1970-01-01 00:00:00", dtype="float64")
        elif np.issubdtype(coord.dtype, np.integer):
            encoding[str(name)]["dtype"] = "int32"
    ds = ds.assign_attrs(cf_global_attrs(ds.attrs, f"GeoDiff {ds.attrs.get('method', Path(path).stem)}"))
    with atomic_write(path) as tmp:
        ds.to_netcdf(tmp, mode="w", format="NETCDF4", engine="netcdf4", encoding=encoding)
    log.info("wrote %s", path)
