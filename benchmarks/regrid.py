"""Time one month of the default config through the regridding path, against plain xarray.

Fine -> coarse conservative, then coarse -> fine with `regrid.upsample` (bicubic by
default), through geodiff.data.regrid (the backend `regrid.backend` resolves to),
against xarray's own tools: `coarsen(...).mean()` (an unweighted block mean) and
`interp(method="cubic")` (scipy splines through interpn, extrapolating at the edges). Prints
times and ratios; it never passes or fails.

    python benchmarks/regrid.py [--config config/config.yaml] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import numpy as np
import xarray as xr
import yaml

from geodiff.constants import LAT, LON, TIME
from geodiff.data.grid import grids_from_config
from geodiff.data.regrid import Regridder, resolve_backend
from geodiff.data.synthetic import synthetic_month


def best_of(repeat: int, fn: Callable[[], xr.DataArray]) -> tuple[float, xr.DataArray]:
    """Shortest wall time of `repeat` calls of `fn` (s), and its last result (computed)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn().compute()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = yaml.safe_load(open(args.config))
    hr, lr = grids_from_config(config)
    factor = int(config["grid"]["scale_factor"])
    upsample = config["regrid"]["upsample"]
    backend = resolve_backend(config["regrid"]["backend"])
    t = synthetic_month(config, 2001, 1)["t"].load()
    print(f"data: t {dict(t.sizes)} {t.dtype} ({t.nbytes / 2**20:.1f} MiB), {hr.shape} -> {lr.shape} -> {hr.shape}")

    start = time.perf_counter()
    down = Regridder(hr, lr, "conservative", backend)
    up = Regridder(lr, hr, upsample, backend)
    build = time.perf_counter() - start

    def geodiff(x: xr.DataArray) -> xr.DataArray:
        return up(down(x))

    def plain(x: xr.DataArray) -> xr.DataArray:
        coarse = x.coarsen({LAT: factor, LON: factor}).mean()
        method = "cubic" if upsample == "bicubic" else "linear"
        return coarse.interp(
            {LAT: hr.lat, LON: hr.lon}, method=method, kwargs={"fill_value": None}
        )  # None: extrapolate

    rows = [
        (f"geodiff ({backend}), in memory", *best_of(args.repeat, lambda: geodiff(t))),
        (f"geodiff ({backend}), dask time=16", *best_of(args.repeat, lambda: geodiff(t.chunk({TIME: 16})))),
        ("xarray coarsen.mean + interp", *best_of(args.repeat, lambda: plain(t))),
    ]
    reference = rows[-1][1]
    print(f"weights (conservative + {upsample}): {build:.3f} s, once per run")
    print(f"{'path':40s} {'time s':>9s} {'vs xarray':>10s}")
    for name, seconds, _ in rows:
        print(f"{name:40s} {seconds:9.3f} {reference / seconds:9.1f}x")
    truth = t.values
    for name, _, out in (rows[0], rows[-1]):
        err = out.values - truth
        print(f"{name:40s} rmse vs fine truth {np.sqrt(np.mean(err**2)):.3f} K, max |err| {np.abs(err).max():.2f} K")


if __name__ == "__main__":
    main()
