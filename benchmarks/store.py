"""Time a split's store built one job per month, against the same months in one job.

    python benchmarks/store.py [--config config/config.yaml] [--months 1 2 4 8] [--reads 2000]

Makes the config's synthetic atmosphere for the most months asked (raw and regridded
files of 2001, untimed) in a temporary folder. Then, for each number of months n:

- each of the first n months goes through `build_month` in a process of its own, one
  after the other, as the workflow's `priors_month` jobs (which a cluster runs side by
  side). Printed: the mean and largest time of the `build_month` call, the mean time of
  the whole process (imports and loading the compiled priors included), and the largest
  peak resident memory of a month's process (`resource.getrusage(RUSAGE_SELF).ru_maxrss`
  read in that process at its end: imports included). Both should stay flat as n grows;
- `assemble_store` over the n month files, in this process (the `priors` job): its time;
- for comparison, `build_store` of the same n months in one process (the store as one
  job writes it): its time, per month, and its peak memory;
- random single-sample reads (`SampleReader`, `hr/t` and the priors of one index) of
  both stores: samples per second through the virtual datasets and from the one file.

A first month job, untimed, fills the compiler's disk cache of the priors, so that every
timed job loads it as the workflow's jobs after the first do. Each process pays that load
once, in its first `compute_priors` call: the line before the table times the first and
the second call on January's input in a fresh process. Prints; never asserts.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import yaml
from snakemake.utils import validate

from geodiff.data.lowres import make_regridder, write_lowres
from geodiff.data.store import SampleReader, assemble_store, build_month, build_store, store_info
from geodiff.data.synthetic import synthetic_month, synthetic_statics
from geodiff.physics.priors import compute_priors
from geodiff.provenance import provenance_attrs

ATTRS = provenance_attrs("bench", "bench")
YEAR = 2001


def make_months(config: dict, folder: Path, n: int) -> tuple[list[str], list[str], str]:
    """Raw and regridded files of the first `n` months of YEAR, and the statics file: their paths."""
    synthetic_statics(config).to_netcdf(folder / "statics.nc")
    weights = {}
    for method in ("conservative", "bicubic", "bilinear"):
        make_regridder(config["grid"], method).save(folder / f"{method}.nc", ATTRS)
        weights[method] = str(folder / f"{method}.nc")
    raw, low = [], []
    for month in range(1, n + 1):
        raw.append(str(folder / f"raw_{month:02d}.nc"))
        low.append(str(folder / f"low_{month:02d}.nc"))
        synthetic_month(config, YEAR, month).to_netcdf(raw[-1])
        write_lowres(raw[-1], weights, low[-1], ATTRS)
    return raw, low, str(folder / "statics.nc")


def in_own_process(fn: Any, *args: Any) -> tuple[float, float, float]:
    """`fn(*args)` in a fresh process: (seconds of the call, seconds of the process, peak RSS in MB)."""
    start = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        call_s, peak_mb = pool.submit(_timed, fn, *args).result()
    return call_s, time.perf_counter() - start, peak_mb


def _timed(fn: Any, *args: Any) -> tuple[float, float]:
    """In the child: seconds of `fn(*args)` and the process's peak RSS (MB; Linux gives kB)."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def priors_calls(low_path: str, levels: list[float], priors: list[str], upsample: str) -> tuple[float, float]:
    """Seconds of the first and of the second `compute_priors` call on a month's input, in this process."""
    with xr.open_dataset(low_path, engine="netcdf4") as low:
        t_up = low[f"t_{upsample}"].values
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        compute_priors(t_up, np.asarray(levels, float), priors)
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def read_rate(store: str, priors: list[str], reads: int) -> float:
    """Samples per second of random single-sample reads of `hr/t` and the priors."""
    reader = SampleReader(store)
    names = ["hr/t", *(f"priors/{p}" for p in priors)]
    order = np.random.default_rng(0).integers(0, store_info(store)["n_samples"], reads)
    reader.read("hr/t", 0)  # opens the file
    start = time.perf_counter()
    for i in order:
        for name in names:
            reader.read(name, int(i))
    return reads / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--months", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of months (at most 12)")
    parser.add_argument("--reads", type=int, default=2000, help="random samples read from each store")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    validate(config, "workflow/schemas/config.schema.yaml", set_default=True)  # the schema's defaults, as the workflow
    priors, upsample, factor = config["priors"]["names"], config["regrid"]["upsample"], config["grid"]["scale_factor"]
    year = {"start": f"{YEAR}-01-01", "end": f"{YEAR}-12-31"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw, low, statics = make_months(config, folder, max(args.months))
        shape = synthetic_month(config, YEAR, 1)["t"].shape
        print(f"config {args.config}: a month is {shape[0]} times x {shape[1]} levels x {shape[2]} x {shape[3]}, "
              f"priors {priors}")
        in_own_process(build_month, str(folder / "warm.h5"), raw[0], low[0], statics, year, priors, upsample, factor, ATTRS)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            first, second = pool.submit(priors_calls, low[0], config["levels"], priors, upsample).result()
        print(f"compute_priors on a month in a fresh process: first call {first:.2f} s (loads the compiled code), "
              f"second {second:.2f} s")
        print("months | month job: build_month mean/max s, process s, peak RSS MB | assemble s"
              " | one job: s, s/month, peak RSS MB | reads/s: virtual, one file")
        for n in args.months:
            out = folder / f"n{n}"
            month_paths = [str(out / f"train/{YEAR}-{m:02d}.h5") for m in range(1, n + 1)]
            jobs = [in_own_process(build_month, path, raw[m], low[m], statics, year, priors, upsample, factor, ATTRS)
                    for m, path in enumerate(month_paths)]
            call_s, process_s, peak_mb = (np.array(column) for column in zip(*jobs))
            start = time.perf_counter()
            assemble_store(str(out / "train.h5"), month_paths, ATTRS)
            assemble_s = time.perf_counter() - start
            one_s, _, one_mb = in_own_process(build_store, str(out / "one.h5"), raw[:n], low[:n], statics, year, priors,
                                              upsample, factor, ATTRS)
            virtual, single = (read_rate(str(out / name), priors, args.reads) for name in ("train.h5", "one.h5"))
            print(f"{n:6d} | {call_s.mean():6.2f} {call_s.max():6.2f} {process_s.mean():6.2f} {peak_mb.max():7.0f}"
                  f" | {assemble_s:6.3f} | {one_s:6.2f} {one_s / n:6.2f} {one_mb:7.0f} | {virtual:7.0f} {single:7.0f}")


if __name__ == "__main__":
    main()
