"""The HDF5 store of one split: what training and evaluation read (DESIGN.md section 3).

Layout: `hr/t`, `hr/z`, `interp/<method>` (the coarse field interpolated back, one per
method), `lr_up/t` (a hard link to the model's input method) and `priors/<name>` shaped
[N, L, H, W] in physical units, `static/<name>` [H, W], coordinates `time` (seconds since 1970-01-01),
`level` (hPa), `lat`, `lon`, and `stats/<var>/{mean,std}` shaped [L] (for `t` and each
prior) or [1] (statics), always from the train split. One sample per chunk. The file is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd
import xarray as xr
from tqdm import tqdm

from geodiff import __version__
from geodiff.constants import CF_ATTRS, STATICS
from geodiff.physics.priors import PRIORS, compute_priors

log = logging.getLogger(__name__)


class RunningStats:
    """Per-level mean and standard deviation accumulated over [N, L, H, W] batches (float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.total: np.ndarray | float = 0.0
        self.total_sq: np.ndarray | float = 0.0

    def update(self, x: np.ndarray) -> None:
        axes = tuple(i for i in range(x.ndim) if i != 1)
        x = x.astype(np.float64)
        self.n += x.size // x.shape[1]
        self.total = self.total + x.sum(axis=axes)
        self.total_sq = self.total_sq + (x**2).sum(axis=axes)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n
        std = np.sqrt(np.maximum(self.total_sq / self.n - mean**2, 0.0))
        return mean.astype(np.float32), np.maximum(std, 1e-12).astype(np.float32)


@contextmanager
def atomic_h5(path: str) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name in the same folder, renamed on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _appendable(f: h5py.File, name: str, sample_shape: tuple[int, ...], attrs: dict) -> h5py.Dataset:
    d = f.create_dataset(
        name, shape=(0, *sample_shape), maxshape=(None, *sample_shape), dtype="f4", chunks=(1, *sample_shape)
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
    config_digest: str,
    scale_factor: int,
    stats_from: str | None = None,
) -> None:
    """Write the store of one split from its months.

    Priors are computed from the upsampled coarse input (never the fine truth).
    Normalisation stats are accumulated here for the train split, or copied from
    `stats_from` (the train store) for the others.
    """
    start, stop = pd.Timestamp(period["start"]), pd.Timestamp(period["end"]) + pd.Timedelta(days=1)
    statics = xr.open_dataset(statics_path, engine="netcdf4")
    stats = {v: RunningStats() for v in ["t", *prior_names]}
    with atomic_h5(out_path) as f:
        written = 0
        for raw_path, low_path in tqdm(list(zip(raw_paths, lowres_paths)), desc=f"store {Path(out_path).name}", unit="month"):
            with xr.open_dataset(raw_path, engine="netcdf4") as raw, xr.open_dataset(low_path, engine="netcdf4") as low:
                keep = (raw["time"].values >= np.datetime64(start)) & (raw["time"].values < np.datetime64(stop))
                raw, low = raw.isel(time=keep).load(), low.isel(time=keep).load()
                if raw.sizes["time"] == 0:
                    continue
                if written == 0:
                    shape = raw["t"].shape[1:]
                    _init_layout(f, raw, statics, prior_names, shape, upsamplers(low), upsample)
                levels = raw["level"].values
                fields = {"hr/t": raw["t"].values}
                fields.update({f"interp/{m}": low[f"t_{m}"].values for m in upsamplers(low)})
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
                written += raw.sizes["time"]
        if written == 0:
            raise ValueError(f"{out_path}: no time in {period['start']}..{period['end']} in {raw_paths}")
        _write_stats(f, stats, statics, stats_from)
        f.attrs.update(
            geodiff_version=__version__, config_hash=config_digest, upsample=upsample, n_samples=written,
            scale_factor=scale_factor,
            period=f"{period['start']}..{period['end']}",
        )
    log.info("wrote %s: %d samples", out_path, written)


def upsamplers(lowres: xr.Dataset) -> list[str]:
    """Interpolation methods present in a lowres file (variables `t_<method>` on the fine grid)."""
    return [str(v)[2:] for v in lowres.data_vars if str(v).startswith("t_") and v != "t_coarse"]


def _init_layout(
    f: h5py.File, raw: xr.Dataset, statics: xr.Dataset, prior_names: list[str], shape: tuple,
    methods: list[str], upsample: str,
) -> None:
    f.create_dataset("level", data=raw["level"].values.astype(np.float32)).attrs.update(CF_ATTRS["level"])
    f.create_dataset("lat", data=raw["lat"].values).attrs.update(CF_ATTRS["lat"])
    f.create_dataset("lon", data=raw["lon"].values).attrs.update(CF_ATTRS["lon"])
    time = f.create_dataset("time", shape=(0,), maxshape=(None,), dtype="i8", chunks=(1024,))
    time.attrs.update(units="seconds since 1970-01-01 00:00:00", standard_name="time", calendar="proleptic_gregorian")
    _appendable(f, "hr/t", shape, CF_ATTRS["t"])
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
        if not np.allclose(statics["lat"].values, raw["lat"].values) or not np.allclose(statics["lon"].values, raw["lon"].values):
            raise ValueError(f"statics grid does not match the data grid ({name})")
        f.create_dataset(f"static/{name}", data=statics[name].values.astype(np.float32)).attrs.update(CF_ATTRS[name])


def _write_stats(f: h5py.File, stats: dict[str, RunningStats], statics: xr.Dataset, stats_from: str | None) -> None:
    if stats_from is not None:
        with h5py.File(stats_from, "r") as src:
            src.copy(src["stats"], f, "stats")
        f["stats"].attrs["from"] = Path(stats_from).name
        return
    for name, s in stats.items():
        mean, std = s.result()
        f[f"stats/{name}/mean"] = mean
        f[f"stats/{name}/std"] = std
    for name in STATICS:
        x = statics[name].values.astype(np.float64)
        f[f"stats/{name}/mean"] = np.array([x.mean()], np.float32)
        f[f"stats/{name}/std"] = np.array([max(x.std(), 1e-6)], np.float32)
    f["stats"].attrs["from"] = "train split"
