"""Validation: refusing canonical data that GeoDiff cannot use (DESIGN.md section 9).

`validate` checks data already in the canonical form (`geodiff.data.canonical`)
against the config and raises one `DataError` naming the file and every problem
with its variable: missing values, temperature not in Kelvin, missing or
duplicated levels, missing, duplicated or foreign times, a grid that is not the
config's fine grid, implausible statics. Empty, truncated and corrupted files are
refused earlier, when they are opened (`geodiff.data.files`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geodiff.constants import LAT, LEVEL, LON, STATICS, TIME
from geodiff.data.canonical import KELVIN_UNITS, DataError, month_times, unit_key
from geodiff.data.grid import Grid, grids_from_config

log = logging.getLogger(__name__)

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
"""Spellings of degrees Celsius, as `unit_key` writes them."""
T_PLAUSIBLE_K = (100.0, 350.0)
"""Range of air temperature on pressure levels accepted as Kelvin, K."""
OROGRAPHY_PLAUSIBLE_M = (-1000.0, 9000.0)
"""Range of surface altitude accepted, m."""



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
    """Temperature must be in Kelvin by its units and by its values; where the two disagree, say so."""
    units = str(t.attrs.get("units", "")).strip()
    key = unit_key(units)
    if units and key not in KELVIN_UNITS | CELSIUS_UNITS:
        return [f"variable 't' has units '{units}', expected K"]
    if not bool(t.notnull().any()):
        return []  # refused as all missing
    lo, hi = float(t.min()), float(t.max())
    kelvin_values = T_PLAUSIBLE_K[0] <= lo and hi <= T_PLAUSIBLE_K[1]
    if key in CELSIUS_UNITS and kelvin_values:
        return [
            f"variable 't': units say {units} but the values look like K ({lo:.1f}..{hi:.1f}): "
            "fix the units attribute"
        ]
    if key in CELSIUS_UNITS:
        return [
            f"variable 't' is in degrees Celsius (units '{units}'): GeoDiff needs Kelvin and never converts silently"
        ]
    if not kelvin_values:
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


def check_fields(ds: xr.Dataset, levels: Iterable[float], allow_nans: bool) -> list[str]:
    """The problems of canonical pressure-level data with its fields: `t` present, in Kelvin, complete
    (unless `allow_nans`; `z` too), on every one of `levels` (hPa) without duplicates."""
    empty = any(n == 0 for n in ds.sizes.values())
    problems = []
    for name in ("t", "z"):
        if name in ds.data_vars and not empty:
            problems += _check_missing_values(ds, name, allow_nans)
    if "t" not in ds.data_vars:
        problems.append(f"variable 't' (air temperature) is missing (have {sorted(map(str, ds.data_vars))})")
    elif not empty:
        problems += _check_temperature(ds["t"])
    return problems + _check_levels(ds, levels)


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
        problems += check_fields(ds, config["levels"], allow_nans)
        problems += check_times(ds, config["data"]["hours"], year, month)
    problems += _check_grid(ds, hr)
    if empty and not problems:
        problems.append(f"empty: dimensions of size 0: {empty}")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
