"""The HDF5 store of one split: what training and evaluation read (DESIGN.md section 3).

This module both writes the store and reads it (every other module goes through the
readers below, never through ``h5py`` directly). The workflow writes a split's store in
two steps, so that no job grows with the length of the period: one job per month
(:func:`build_month`) writes that month's samples and the sums of its statistics to
`priors/{split}/{year}-{month}.h5`, then :func:`assemble_store` writes the small store
`priors/{split}.h5` whose sample datasets are HDF5 virtual datasets over the month files
(in time order, named relative to the store's folder, so the results folder can move as a
whole) and whose statistics are the months' sums merged (exactly: :class:`RunningStats`).
:func:`build_store` writes the same store as one file in one job (a few months, by hand).
The readers read both forms alike; a store whose month files are gone is refused, naming
them (HDF5 would read its fill value instead). A reader keeps one month file open per month
it has read (the open-file limit, ``ulimit -n``, must exceed the number of months).

Layout: `hr/t`, `hr/z`, `interp/<method>` (the coarse field interpolated back, one per
method), `lr_up/t` (a hard link to the model's input method) and `priors/<name>` shaped
[N, L, H, W] in physical units, `lr/t` (the coarse field itself, [N, L, h, w] on the coarse
grid: what a conservation constraint holds a prediction to), `static/<name>` [H, W],
coordinates `time` (seconds since 1970-01-01), `level` (hPa), `lat`, `lon`, `lat_coarse`,
`lon_coarse`, and `stats/<var>/{mean,std}` shaped [L] (for `t` and each
prior) or [1] (statics), always from the train split; a month file has
`sums/<var>/{n,total,total_sq}` (:meth:`RunningStats.save`) in their place. One sample per chunk, gzip level 1 after the
byte shuffle (two thirds of the size on the synthetic atmosphere; the loader still serves ~100x what training consumes,
`benchmarks/loader.py`); coordinates are HDF5 dimension scales, so netCDF readers see named dims. Global
attributes: `geodiff_version`, `config_hash`, `upsample`, `n_samples`, `scale_factor`,
`period`, `store_layout`. Every file is written under a temporary name and renamed when complete
(:func:`geodiff.atomic.atomic_write`).

Missing values (config ``data.allow_nans``): the truth `hr/t` (and `hr/z`) keeps its
NaNs, since missing truth stays missing; the statistics skip them (nan-aware mean and
std per level). The inputs never hold NaN: the coarse field is gap-filled when it is
made (:func:`geodiff.data.lowres.lowres_dataset`), so `interp/*`, `lr_up/t` and the
priors computed from them are complete, and :func:`build_store` refuses an input with
NaN. :class:`geodiff.data.loader.StoreDataset` turns the truth's gaps into a mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import xarray as xr
from tqdm import tqdm

from geodiff import __version__
from geodiff.atomic import atomic_write
from geodiff.constants import CF_ATTRS, LAT, LEVEL, LON, STATICS, STORE_LAYOUT, TIME
from geodiff.periods import period_bounds
from geodiff.physics.priors import PRIORS, compute_priors

log = logging.getLogger(__name__)

HDF5_DIMENSION_ATTRS = ("DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME")
"""Attributes HDF5 dimension scales put on datasets: bookkeeping, not metadata to carry on."""

COORDINATES = (LEVEL, LAT, LON, f"{LAT}_coarse", f"{LON}_coarse")
"""Coordinates other than time: the same in every month of a store."""
SAMPLE_GROUPS = ("hr", "lr", "interp", "priors")
"""Groups of the [N, ...] sample datasets (`lr_up` is a link into `interp`)."""
MONTH_ATTRS = ("store_layout", "upsample", "scale_factor", "period")
"""Global attributes that every month file of a store shares."""
TIME_ATTRS = {"units": "seconds since 1970-01-01 00:00:00", "standard_name": "time", "calendar": "proleptic_gregorian"}
"""Attributes of the `time` coordinate."""

Window = tuple[slice, slice]
"""A (lat, lon) window of the fine grid."""
FULL: Window = (slice(None), slice(None))


class RunningStats:
    """Per-level mean and standard deviation accumulated over [N, L, H, W] batches (float64).

    NaN-aware: missing values are skipped, so the result equals ``np.nanmean`` and
    ``np.nanstd`` (ddof 0) over every axis but the level axis.

    Held as float64 sums (count, sum, sum of squares) rather than a running mean and M2
    (Chan et al.): merging two sets of values is then the very addition :meth:`update`
    does, so the sums of months merged in time order (:meth:`merge`: a split's store from
    its month files) are bit for bit those of one job updating month by month, and so are
    the float32 statistics. The one-pass variance E[x²] - mean² loses log10(E[x²]/var) of
    float64's 16 digits to cancellation (about 2 for temperatures: 250 K, σ 20 K), and
    summing 1e11 values a few more: far from float32's 7.
    """

    def __init__(self) -> None:
        self.n: np.ndarray | int = 0  # valid values per level
        self.total: np.ndarray | float = 0.0
        self.total_sq: np.ndarray | float = 0.0

    def update(self, x: np.ndarray) -> None:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        x = x.astype(np.float64)
        valid = np.isfinite(x)
        x = np.where(valid, x, 0.0)
        self.n = self.n + valid.sum(axis=axes)
        self.total = self.total + x.sum(axis=axes)
        self.total_sq = self.total_sq + (x**2).sum(axis=axes)

    def merge(self, other: RunningStats) -> None:
        """Add the sums of `other`: these stats become those of both sets of values."""
        self.n = self.n + other.n
        self.total = self.total + other.total
        self.total_sq = self.total_sq + other.total_sq

    def save(self, group: h5py.Group) -> None:
        """The sums as datasets `n` (int64), `total` and `total_sq` (float64) of `group`, each [L]."""
        group["n"] = np.asarray(self.n, np.int64)
        group["total"] = np.asarray(self.total, np.float64)
        group["total_sq"] = np.asarray(self.total_sq, np.float64)

    @classmethod
    def load(cls, group: h5py.Group) -> RunningStats:
        """The stats whose sums :meth:`save` wrote into `group`."""
        stats = cls()
        stats.n, stats.total, stats.total_sq = (group[k][()] for k in ("n", "total", "total_sq"))
        return stats

    def result(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per level as float32; raises ValueError naming `name` when a level has no valid value."""
        n = np.asarray(self.n)
        if (n == 0).any():
            raise ValueError(f"stats of {name!r}: level(s) {np.flatnonzero(n == 0).tolist()} have no valid value")
        mean = self.total / n
        std = np.sqrt(np.maximum(self.total_sq / n - mean**2, 0.0))
        return mean.astype(np.float32), np.maximum(std, 1e-12).astype(np.float32)


def _appendable(f: h5py.File, name: str, sample_shape: tuple[int, ...], attrs: dict) -> h5py.Dataset:
    d = f.create_dataset(
        name, shape=(0, *sample_shape), maxshape=(None, *sample_shape), dtype="f4", chunks=(1, *sample_shape),
        compression="gzip", compression_opts=1, shuffle=True,
    )
    d.attrs.update(attrs)
    return d


def _append(d: h5py.Dataset, x: np.ndarray) -> None:
    n = d.shape[0]
    d.resize(n + len(x), axis=0)
    d[n:] = x


def build_store(
    out_path: str,
    raw_paths: list[str],
    lowres_paths: list[str],
    statics_path: str,
    period: dict,
    prior_names: list[str],
    upsample: str,
    scale_factor: int,
    attrs: dict,
    stats_from: str | None = None,
) -> None:
    """Write the store of one split from its months, as one file in one job.

    Priors are computed from the upsampled coarse input (never the fine truth).
    Normalisation stats are accumulated here for the train split (skipping missing
    truth), or copied from `stats_from` (the train store) for the others. An
    interpolated input holding NaN is refused (the regrid stage fills gaps).
    `attrs` (provenance: ``geodiff_version``, ``config_hash``, ...; see
    :func:`geodiff.provenance.provenance_attrs`) join the global attributes.
    """
    with atomic_write(out_path) as tmp, h5py.File(tmp, "w") as f:
        stats = _write_samples(f, out_path, raw_paths, lowres_paths, statics_path, period, prior_names, upsample)
        try:
            _write_stats(f, stats, stats_from)
        except ValueError as err:
            raise ValueError(f"{out_path}: {err} in {raw_paths}") from None
        _write_attrs(f, attrs, upsample, scale_factor, f"{period['start']}..{period['end']}")
        log.info("%s: %d samples", out_path, f.attrs["n_samples"])


def build_month(
    out_path: str,
    raw_path: str,
    lowres_path: str,
    statics_path: str,
    period: dict,
    prior_names: list[str],
    upsample: str,
    scale_factor: int,
    attrs: dict,
) -> None:
    """Write one month file of a split: the month's samples within the split's `period`, as
    :func:`build_store` writes them, with the sums of their statistics (`sums/<var>`,
    :meth:`RunningStats.save`) in place of `stats/`, for :func:`assemble_store` to merge."""
    with atomic_write(out_path) as tmp, h5py.File(tmp, "w") as f:
        stats = _write_samples(f, out_path, [raw_path], [lowres_path], statics_path, period, prior_names, upsample)
        for name, s in stats.items():
            s.save(f.create_group(f"sums/{name}"))
        _write_attrs(f, attrs, upsample, scale_factor, f"{period['start']}..{period['end']}")
        log.info("%s: %d samples", out_path, f.attrs["n_samples"])


def _write_samples(
    f: h5py.File, out_path: str, raw_paths: list[str], lowres_paths: list[str], statics_path: str, period: dict,
    prior_names: list[str], upsample: str,
) -> dict[str, RunningStats]:
    """Append the months' samples within `period` (truth, inputs, priors) to the new store `f`, with its
    coordinates and statics; the running stats of `t` and of each prior over them."""
    start, stop = period_bounds(period)
    stats = {v: RunningStats() for v in ["t", *prior_names]}
    with xr.open_dataset(statics_path, engine="netcdf4") as statics:
        for raw_path, low_path in tqdm(list(zip(raw_paths, lowres_paths)), desc=f"store {Path(out_path).name}", unit="month"):
            with xr.open_dataset(raw_path, engine="netcdf4") as raw, xr.open_dataset(low_path, engine="netcdf4") as low:
                keep = (raw["time"].values >= start) & (raw["time"].values < stop)
                raw, low = raw.isel(time=keep).load(), low.isel(time=keep).load()
                if raw.sizes["time"] == 0:
                    continue
                if "time" not in f:
                    if not (np.allclose(statics["lat"].values, raw["lat"].values)
                            and np.allclose(statics["lon"].values, raw["lon"].values)):
                        raise ValueError(f"{statics_path}: the statics grid does not match the data grid of {raw_path}")
                    _init_layout(f, raw, low, statics, prior_names, raw["t"].shape[1:], upsample)
                levels = raw["level"].values
                fields = {"hr/t": raw["t"].values, "lr/t": low["t_coarse"].values}
                for m in upsamplers(low):
                    x = low[f"t_{m}"].values
                    if not np.isfinite(x).all():
                        raise ValueError(
                            f"{low_path}: variable 't_{m}' has {int((~np.isfinite(x)).sum())} missing values; "
                            "the model input must be complete (rerun the regrid rule, which fills gaps)"
                        )
                    fields[f"interp/{m}"] = x
                if "z" in raw:
                    fields["hr/z"] = raw["z"].values
                priors = compute_priors(fields[f"interp/{upsample}"], levels, prior_names)
                fields.update({f"priors/{k}": v for k, v in priors.items()})
                for name, x in fields.items():
                    _append(f[name], x.astype(np.float32))
                _append(f["time"], (raw["time"].values.astype("datetime64[s]").astype(np.int64)))
                stats["t"].update(fields["hr/t"])
                for k, v in priors.items():
                    stats[k].update(v)
    if "time" not in f:
        raise ValueError(f"{out_path}: no time in {period['start']}..{period['end']} in {raw_paths}")
    return stats


def _write_attrs(f: h5py.File, attrs: dict, upsample: str, scale_factor: int, period: str) -> None:
    """The global attributes of a store (or month file) whose samples are written; `period` is "start..end"."""
    f.attrs.update(geodiff_version=__version__, store_layout=STORE_LAYOUT, upsample=upsample, n_samples=f["time"].shape[0],
                   scale_factor=scale_factor, period=period)
    f.attrs.update(attrs)


def upsamplers(lowres: xr.Dataset) -> list[str]:
    """Interpolation methods present in a lowres file (variables `t_<method>` on the fine grid)."""
    return [str(v)[2:] for v in lowres.data_vars if str(v).startswith("t_") and v != "t_coarse"]


def _init_layout(
    f: h5py.File, raw: xr.Dataset, low: xr.Dataset, statics: xr.Dataset, prior_names: list[str], shape: tuple,
    upsample: str,
) -> None:
    methods = upsamplers(low)
    f.create_dataset("level", data=raw["level"].values.astype(np.float32)).attrs.update(CF_ATTRS["level"])
    f.create_dataset("lat", data=raw["lat"].values).attrs.update(CF_ATTRS["lat"])
    f.create_dataset("lon", data=raw["lon"].values).attrs.update(CF_ATTRS["lon"])
    for axis in (LAT, LON):
        f.create_dataset(f"{axis}_coarse", data=low[f"{axis}_coarse"].values).attrs.update(CF_ATTRS[axis])
    f.create_dataset("time", shape=(0,), maxshape=(None,), dtype="i8", chunks=(1024,)).attrs.update(TIME_ATTRS)
    _appendable(f, "hr/t", shape, CF_ATTRS["t"])
    coarse_shape = (shape[0], low.sizes["lat_coarse"], low.sizes["lon_coarse"])
    _appendable(f, "lr/t", coarse_shape, {**CF_ATTRS["t"], "long_name": "Coarse temperature (the model's input)"})
    if upsample not in methods:
        raise ValueError(f"regrid.upsample {upsample!r} is not among the regridded methods {methods}")
    for m in methods:
        _appendable(f, f"interp/{m}", shape, {**CF_ATTRS["t"], "long_name": f"Coarse temperature, {m} to the fine grid"})
    f["lr_up/t"] = f[f"interp/{upsample}"]  # hard link: the model input
    if "z" in raw:
        _appendable(f, "hr/z", shape, CF_ATTRS["z"])
    for name in prior_names:
        units, long_name = PRIORS[name]
        _appendable(f, f"priors/{name}", shape, {"units": units, "long_name": long_name})
    for name in STATICS:
        f.create_dataset(f"static/{name}", data=statics[name].values.astype(np.float32)).attrs.update(CF_ATTRS[name])
    _attach_scales(f)


def _attach_scales(f: h5py.File) -> None:
    """HDF5 dimension scales: the coordinates become scales and every field names its dims by
    them, so netCDF readers (``xr.open_dataset(store, group="hr", engine="h5netcdf")``) see
    (time, level, lat, lon) instead of phony dims."""
    for name in (TIME, *COORDINATES):
        f[name].make_scale(name)
    for group in (*SAMPLE_GROUPS, "static"):
        for d in f[group].values():
            horizontal = (f"{LAT}_coarse", f"{LON}_coarse") if group == "lr" else (LAT, LON)
            for axis, scale in zip(d.dims, ((TIME, LEVEL) if d.ndim == 4 else ()) + horizontal):
                axis.attach_scale(f[scale])


def _write_stats(f: h5py.File, stats: dict[str, RunningStats], stats_from: str | None) -> None:
    """`stats/`: those of `stats` and of the store's statics (the train split), or the train store `stats_from`'s."""
    if stats_from is not None:
        with _open(stats_from) as src:
            src.copy(src["stats"], f, "stats")
        f["stats"].attrs["from"] = Path(stats_from).name
        return
    for name, s in stats.items():
        mean, std = s.result(name)
        f[f"stats/{name}/mean"] = mean
        f[f"stats/{name}/std"] = std
    for name in STATICS:
        x = f[f"static/{name}"][()].astype(np.float64)
        f[f"stats/{name}/mean"] = np.array([x.mean()], np.float32)
        f[f"stats/{name}/std"] = np.array([max(x.std(), 1e-6)], np.float32)
    f["stats"].attrs["from"] = "train split"


# --- a split's store over its month files ------------------------------------------------


def assemble_store(out_path: str, month_paths: Sequence[str], attrs: dict, stats_from: str | None = None) -> None:
    """Write the store of a split over its month files (:func:`build_month`), given in time order.

    Every sample dataset is a virtual dataset: the months' datasets one after another, each
    named by its path relative to the store's folder. Coordinates and statics (small) are
    written here: `time` joined, the others the first month's, once every month is checked
    to have the same ones, the same sample datasets and the same store attributes. Stats:
    the months' sums merged in time order (exact, :class:`RunningStats`), or those of the
    train store `stats_from`. `attrs` (provenance) join the global attributes.
    """
    if not month_paths:
        raise ValueError(f"{out_path}: a store needs at least one month file")
    folder = Path(out_path).parent
    with _open_month(month_paths[0]) as first, atomic_write(out_path) as tmp, h5py.File(tmp, "w") as f:
        counts, times, stats = [], [], {name: RunningStats() for name in first["sums"]}
        for path in month_paths:
            with _open_month(path) as month:
                _check_like(month, first)
                counts.append(month["time"].shape[0])
                times.append(month["time"][()])
                for name, s in stats.items():
                    s.merge(RunningStats.load(month[f"sums/{name}"]))
        _check_time_order(month_paths, times)
        f.create_dataset(TIME, data=np.concatenate(times)).attrs.update(TIME_ATTRS)
        for name in (*COORDINATES, *(f"static/{s}" for s in STATICS)):
            _copy_dataset(first[name], f, name)
        sources = [os.path.relpath(p, folder) for p in month_paths]
        for name in _sample_shapes(first):
            _virtual_dataset(f, name, first[name], sources, counts)
        f["lr_up/t"] = f[f"interp/{first.attrs['upsample']}"]  # hard link: the model input
        _attach_scales(f)
        try:
            _write_stats(f, stats, stats_from)
        except ValueError as err:
            raise ValueError(f"{out_path}: {err} in {list(month_paths)}") from None
        _write_attrs(f, attrs, *(first.attrs[k] for k in ("upsample", "scale_factor", "period")))
    log.info("wrote %s: %d samples over %d month files", out_path, sum(counts), len(month_paths))


def _open_month(path: str) -> h5py.File:
    """A month file, read-only; a missing one raises naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such month file (the priors_month rule writes it)")
    return _open(path)


def _sample_shapes(f: h5py.File) -> dict[str, tuple[int, ...]]:
    """{name: shape of one sample} of the sample datasets of a store or month file."""
    return {f"{group}/{name}": d.shape[1:] for group in SAMPLE_GROUPS if group in f for name, d in f[group].items()}


def _check_like(month: h5py.File, first: h5py.File) -> None:
    """Refuse a month file whose coordinates, sample datasets or store attributes differ from the first month's."""
    where = f"{month.filename}: differs from {first.filename} in"
    for name in COORDINATES:
        mine, theirs = (np.array2string(f[name][()], threshold=8) for f in (month, first))
        if not np.array_equal(month[name][()], first[name][()]):
            raise ValueError(f"{where} {name}: {mine} against {theirs}")
    mine, theirs = _sample_shapes(month), _sample_shapes(first)
    differ = [f"{k} {mine.get(k, 'absent')} against {theirs.get(k, 'absent')}"
              for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k)]
    if differ:
        raise ValueError(f"{where} its sample datasets: {'; '.join(differ)}")
    for key in MONTH_ATTRS:
        if month.attrs[key] != first.attrs[key]:
            raise ValueError(f"{where} attribute {key}: {month.attrs[key]} against {first.attrs[key]}")


def _check_time_order(month_paths: Sequence[str], times: list[np.ndarray]) -> None:
    """Refuse month files out of time order or overlapping."""
    for (before, t0), (after, t1) in zip(zip(month_paths, times), zip(month_paths[1:], times[1:])):
        if t1[0] <= t0[-1]:
            raise ValueError(f"{after}: its first time is not after the last one of {before} (month files go in time order)")


def _copy_dataset(src: h5py.Dataset, f: h5py.File, name: str) -> None:
    """A small dataset copied with its attributes (not the dimension-scale ones, which name objects of its file)."""
    f.create_dataset(name, data=src[()]).attrs.update(_plain_attrs(src))


def _virtual_dataset(f: h5py.File, name: str, like: h5py.Dataset, sources: list[str], counts: list[int]) -> None:
    """Dataset `name` of `f` as the datasets `name` of the `sources`, `counts` samples each, one after another
    (`like`: the first one, for the sample shape, type and attributes). Where a source cannot be read HDF5
    gives the fill value: NaN, never a plausible number."""
    sample = like.shape[1:]
    layout = h5py.VirtualLayout(shape=(sum(counts), *sample), dtype=like.dtype)
    start = 0
    for source, n in zip(sources, counts):
        layout[start : start + n] = h5py.VirtualSource(source, name, shape=(n, *sample))
        start += n
    f.create_virtual_dataset(name, layout, fillvalue=np.nan).attrs.update(_plain_attrs(like))


def _plain_attrs(d: h5py.Dataset) -> dict:
    """A dataset's attributes without the HDF5 dimension-scale bookkeeping."""
    return {k: v for k, v in d.attrs.items() if k not in HDF5_DIMENSION_ATTRS}


# --- reading ---------------------------------------------------------------------------


def _open(path: str | os.PathLike[str]) -> h5py.File:
    """The store at `path`, read-only; a missing or unreadable file, or missing month files, raise naming them."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such store (the priors rule writes it)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 store ({err})") from err
    missing = _missing_months(f, Path(path).parent)
    if missing:
        f.close()
        raise FileNotFoundError(f"{path}: its month file(s) {missing} are missing (the priors_month rule writes them)")
    return f


def _missing_months(f: h5py.File, folder: Path) -> list[str]:
    """The month files (:func:`assemble_store`) of a store in `folder` that are not there."""
    d = f.get("hr/t")
    if d is None or not d.is_virtual:
        return []
    return sorted({str(folder / s.file_name) for s in d.virtual_sources() if not (folder / s.file_name).is_file()})


def _dataset(f: h5py.File, name: str) -> h5py.Dataset:
    if name not in f:
        raise KeyError(f"{f.filename}: the store has no dataset {name!r}")
    return f[name]


def store_info(path: str | os.PathLike[str]) -> dict:
    """What a store holds: `levels` (hPa, float64), `priors` (names), `n_samples`, `shape` (L, H, W),
    `has_z`, and the global attributes `config_hash`, `scale_factor`, `upsample`."""
    with _open(path) as f:
        hr = _dataset(f, "hr/t")
        return {
            "levels": _dataset(f, "level")[()].astype(np.float64),
            "priors": sorted(f["priors"].keys()) if "priors" in f else [],
            "n_samples": hr.shape[0],
            "shape": hr.shape[1:],
            "has_z": "hr/z" in f,
            "config_hash": str(f.attrs.get("config_hash", "")),
            "scale_factor": int(f.attrs["scale_factor"]),
            "upsample": str(f.attrs["upsample"]),
        }


def read_stats(path: str | os.PathLike[str], names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (mean, std)} from a store's `stats/` group, each shaped [L] (statics: [1])."""
    with _open(path) as f:
        return {n: (_dataset(f, f"stats/{n}/mean")[()], _dataset(f, f"stats/{n}/std")[()]) for n in names}


def read_statics(path: str | os.PathLike[str], names: list[str]) -> dict[str, np.ndarray]:
    """{name: field [H, W]} of `static/<name>` in physical units."""
    with _open(path) as f:
        return {n: _dataset(f, f"static/{n}")[()] for n in names}


def store_coords(path: str | os.PathLike[str]) -> dict[str, xr.DataArray]:
    """Canonical coordinates (time, level in hPa, lat, lon in degrees) of a store, with CF attributes."""
    with _open(path) as f:
        time = _dataset(f, "time")[()].astype("datetime64[s]").astype("datetime64[ns]")
        return {
            TIME: xr.DataArray(time, dims=TIME, attrs={"standard_name": "time", "axis": "T"}),
            LEVEL: xr.DataArray(_dataset(f, "level")[()].astype(np.float64), dims=LEVEL, attrs=CF_ATTRS[LEVEL]),
            LAT: xr.DataArray(_dataset(f, "lat")[()], dims=LAT, attrs=CF_ATTRS[LAT]),
            LON: xr.DataArray(_dataset(f, "lon")[()], dims=LON, attrs=CF_ATTRS[LON]),
        }


def read_field(path: str | os.PathLike[str], name: str) -> xr.DataArray:
    """A whole [time, level, lat, lon] dataset of a store (e.g. `hr/t`, `interp/bicubic`) in its units;
    `lr/t` comes on the coarse grid's `lat`/`lon`."""
    coords = store_coords(path)
    with _open(path) as f:
        d = _dataset(f, name)
        values = d[()]
        attrs = _plain_attrs(d)
        if name == "lr/t":
            coords.update({axis: xr.DataArray(f[f"{axis}_coarse"][()], dims=axis, attrs=CF_ATTRS[axis]) for axis in (LAT, LON)})
    return xr.DataArray(values, dims=(TIME, LEVEL, LAT, LON), coords=coords, attrs=attrs)


class SampleReader:
    """Reads single samples of a store; the file opens lazily, once per process.

    Pickling drops the open handle, so DataLoader workers and DDP ranks each open
    their own.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)  # the store file
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # handles of this process, by name

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_datasets": {}}

    def read(self, name: str, index: int, window: Window = FULL) -> np.ndarray:
        """Sample `index` of dataset `name` (e.g. `hr/t`), [L, h, w] over the (lat, lon) `window`, float32."""
        if name not in self._datasets:
            if self._file is None:
                self._file = _open(self.path)
            self._datasets[name] = _dataset(self._file, name)
        return self._datasets[name][(index, slice(None), *window)].astype(np.float32)
