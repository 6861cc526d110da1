"""The user's own files: NetCDF or GRIB, ERA5 or canonical naming (DESIGN.md section 4).

Config ``data.local.paths`` lists glob patterns (``~`` expanded, ``**`` recursive);
every matching file is opened lazily and canonicalised, and the ones with data in
the requested month are combined (different times and different variables, e.g. t
and z in separate files, are merged; overlapping data must agree). ``data.local.statics``
names one file with surface geopotential (or orography) and a land-sea mask.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geodiff.constants import STATICS, TIME
from geodiff.data.canonical import DataError, canonicalize
from geodiff.data.files import open_any

log = logging.getLogger(__name__)


def _local(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config["data"].get("local") or {})


def paths(config: Mapping[str, Any]) -> list[Path]:
    """The files matched by config ``data.local.paths``, sorted.

    Raises:
        ValueError: no patterns configured.
        DataError: the patterns match no file.
    """
    patterns = _local(config).get("paths") or []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError(
            "data.source is 'local' but data.local.paths is empty: list glob patterns of NetCDF/GRIB files"
        )
    found = {
        Path(match)
        for pattern in patterns
        for match in glob.glob(os.path.expanduser(str(pattern)), recursive=True)
        if Path(match).is_file() and not match.endswith(".idx")
    }
    if not found:
        raise DataError(f"data.local.paths {list(patterns)}: no file matches")
    return sorted(found)


def fetch_month(config: dict, year: int, month: int, workdir: Path | None = None) -> tuple[xr.Dataset, str]:
    """The data of `year`-`month` from the user's files, canonical and lazy.

    Raises:
        DataError: a file is unreadable, has duplicated times, no file covers the month,
            or files disagree where they overlap.
    """
    files = paths(config)
    pieces: list[xr.Dataset] = []
    used: list[str] = []
    for path in files:
        ds = canonicalize(open_any(path), "local", str(path))
        if set(STATICS) & set(map(str, ds.data_vars)):
            continue  # the statics file may match the same pattern
        times = pd.DatetimeIndex(ds[TIME].values)
        in_month = np.flatnonzero((times.year == year) & (times.month == month))
        if not in_month.size:
            ds.close()
            continue
        duplicated = times[in_month][times[in_month].duplicated()].unique()
        if len(duplicated):
            shown = ", ".join(t.strftime("%Y-%m-%dT%H") for t in duplicated[:3])
            raise DataError(f"{path}: duplicated times: {shown}{' ...' if len(duplicated) > 3 else ''}")
        pieces.append(ds.isel({TIME: in_month}))
        used.append(str(path))
    if not pieces:
        raise DataError(
            f"data.local.paths: none of {len(files)} files has data for {year:04d}-{month:02d} "
            f"({', '.join(map(str, files[:3]))}{' ...' if len(files) > 3 else ''})"
        )
    if len(pieces) > 1:
        log.info("local %d-%02d: combining %d files", year, month, len(pieces))
    return combine(pieces, used)


def combine(pieces: list[xr.Dataset], origins: list[str]) -> tuple[xr.Dataset, str]:
    """Canonical datasets read from the files `origins` as one (different times and different variables
    are merged; overlapping data must agree), and the files' names joined.

    Raises:
        DataError: the files disagree where they overlap.
    """
    if len(pieces) == 1:
        return pieces[0], origins[0]
    origin = ", ".join(origins)
    try:
        merged = xr.merge(pieces, join="outer", compat="no_conflicts", combine_attrs="drop_conflicts")
    except (ValueError, xr.MergeError) as err:
        raise DataError(f"{origin}: the files disagree where they overlap ({err})") from err
    merged.attrs["source_file"] = origin
    return merged, origin


def fetch_statics(config: dict, workdir: Path | None = None) -> tuple[xr.Dataset, str]:
    """Orography (m) and land-sea mask from config ``data.local.statics``, canonical.

    Raises:
        ValueError: ``data.local.statics`` is not set.
        DataError: the file is unreadable or holds no orography / land-sea mask.
    """
    path = _local(config).get("statics")
    if not path:
        raise ValueError(
            "data.source is 'local' but data.local.statics is not set: name a file with surface geopotential "
            "(or orography) and the land-sea mask on the fine grid"
        )
    path = os.path.expanduser(str(path))
    ds = canonicalize(open_any(path), "local", path)
    if not set(STATICS) & set(map(str, ds.data_vars)):
        raise DataError(f"{path}: no surface geopotential, orography or land-sea mask (have {sorted(ds.data_vars)})")
    return ds, path
