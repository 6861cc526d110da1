"""Time the physics priors on one month of the default config, against MetPy and np.copy.

One month of the synthetic atmosphere of the config (124 times x L levels x H x W;
the first line printed gives the sizes) goes through `geodiff.physics.priors.compute_priors` for
θ, lapse rate, static stability and N² (heights from the hypsometric equation,
inside the timed call; with numba, its fused kernel, else the numpy path), through
the numpy path alone (what runs without numba), and through MetPy on the same
float32 arrays with units:
`potential_temperature` + `static_stability` + `brunt_vaisala_frequency_squared`
+ lapse rate from `first_derivative` (MetPy is handed the hypsometric heights,
computed outside its timing). The floor is `np.copy` of as many bytes as the
priors write (one float32 array per prior). Prints the median and best time of
each and the ratios; it never passes or fails. Compilation is not timed: the first
call of each path is made (and its time printed) before the timed rounds.

    python benchmarks/priors.py [--config config/config.yaml] [--repeat 7] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import yaml

from geodiff.constants import R_D
from geodiff.data.synthetic import synthetic_month
from geodiff.physics import priors as priors_module
from geodiff.physics.priors import compute_priors

NAMES = ["theta", "lapse_rate", "static_stability", "n2"]


def timings(repeat: int, fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Wall times (s) of `repeat` rounds of every function, interleaved so that load on the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, Any] = {}
    for name, fn in fns.items():  # warm-up (imports, caches, first-touch of memory)
        results[name] = fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return times, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="compute_priors threads (default: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", module="pyproj")

    import metpy.calc as mpcalc
    import metpy.constants as mpconsts
    from metpy.units import units

    config = yaml.safe_load(open(args.config))
    month = synthetic_month(config, 2001, 1)
    t = np.ascontiguousarray(month["t"].values, dtype=np.float32)
    levels = month["level"].values.astype(np.float64)
    start = time.perf_counter()
    compute_priors(t, levels, NAMES, threads=args.threads)  # numba compiles (or loads its cache) here
    first_call = time.perf_counter() - start
    heights = compute_priors(t, levels, ["height"])["height"]  # MetPy's heights, not timed
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"data: t {dict(month['t'].sizes)} float32 ({t.nbytes / 2**20:.1f} MiB), levels {levels.tolist()} hPa; "
        f"compute_priors threads: {args.threads or cores} of {cores} cores"
    )
    if priors_module._KERNEL is not None:
        import numba

        print(
            f"numba {numba.__version__}: first call {first_call:.2f} s (compile, or load of the on-disk cache), not timed"
        )
    else:
        print("numba is not installed: compute_priors runs its numpy path")

    pressure = units.Quantity(levels[None, :, None, None], "hPa")

    def metpy_priors() -> dict[str, np.ndarray]:
        temperature = units.Quantity(t, "K")
        height = units.Quantity(heights, "m")
        theta = mpcalc.potential_temperature(pressure, temperature)
        sigma = mpcalc.static_stability(pressure, temperature, vertical_dim=1)
        n2 = mpcalc.brunt_vaisala_frequency_squared(height, theta, vertical_dim=1)
        lapse = -mpcalc.first_derivative(temperature, x=height, axis=1)
        return {
            "theta": theta.m_as("K"),
            "static_stability": sigma.m_as("J kg^-1 Pa^-2"),
            "n2": n2.m_as("s^-2"),
            "lapse_rate": lapse.m_as("K/km"),
        }

    def numpy_path() -> dict[str, np.ndarray]:
        kernel, priors_module._KERNEL = priors_module._KERNEL, None
        try:
            return compute_priors(t, levels, NAMES, threads=args.threads)
        finally:
            priors_module._KERNEL = kernel

    floor_shape = (len(NAMES),) + t.shape
    floor_src = np.random.default_rng(0).random(floor_shape, dtype=np.float32)
    fns: dict[str, Callable[[], Any]] = {
        "geodiff compute_priors": lambda: compute_priors(t, levels, NAMES, threads=args.threads),
        "geodiff compute_priors, 1 thread": lambda: compute_priors(t, levels, NAMES, threads=1),
        "geodiff numpy path (no numba)": numpy_path,
        "MetPy (units, float32 in)": metpy_priors,
        f"np.copy of {len(NAMES)} x {t.nbytes / 2**20:.1f} MiB": lambda: np.copy(floor_src),
    }
    times, results = timings(args.repeat, fns)

    ours, metpy_name, floor_name = "geodiff compute_priors", "MetPy (units, float32 in)", list(fns)[-1]
    median = {name: statistics.median(v) for name, v in times.items()}
    print(f"{'path':36s} {'median ms':>10s} {'best ms':>9s} {'MetPy/this':>11s} {'this/copy':>10s}")
    for name, values in times.items():
        print(
            f"{name:36s} {1e3 * median[name]:10.2f} {1e3 * min(values):9.2f} "
            f"{median[metpy_name] / median[name]:10.1f}x {median[name] / median[floor_name]:9.1f}x"
        )
    print(
        f"compute_priors is {median[metpy_name] / median[ours]:.1f}x faster than MetPy "
        f"and {median[ours] / median[floor_name]:.1f}x the np.copy floor (medians)"
    )

    reference = results[metpy_name]
    reference["static_stability"] = reference["static_stability"] * (R_D / mpconsts.Rd.m_as("J kg^-1 K^-1"))
    for name in NAMES:  # MetPy uses Rd = 287.047..., geodiff 287.04: σ rescaled by the ratio
        ref = reference[name]
        err = np.abs(results[ours][name] - ref).max() / np.abs(ref).max()
        print(f"  {name:18s} max |geodiff - MetPy| / max |MetPy| = {err:.1e}")


if __name__ == "__main__":
    main()
