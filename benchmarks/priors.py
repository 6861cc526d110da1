"""Time the physics priors on one month of the default config, against MetPy and np.copy.

One month of the synthetic atmosphere of the config (124 times x L levels x H x W;
the first line printed gives the sizes) goes through
`geodiff.physics.priors.compute_priors` for θ, lapse rate, static stability and N²
(heights from the hypsometric equation, inside the timed call): the thermo
formulas in float32, compiled by torch.compile, on torch's threads. Beside it, the
same thermo functions run the other ways one could run them: compiled on one
thread, eager torch in float32 (the fallback without a C++ compiler), and numpy in
float64. MetPy gets the same float32 arrays with units:
`potential_temperature` + `static_stability` + `brunt_vaisala_frequency_squared`
+ lapse rate from `first_derivative` (MetPy is handed the hypsometric heights,
computed outside its timing). The floor is `np.copy` of as many bytes as the priors
write (one float32 array per prior). Prints the median and best time of each, the
ratios, and each way's largest difference from MetPy; it never passes or fails.
Compilation is not timed: the first call is made (and its time printed) before
the timed rounds. The last line times all five priors on the month (the pipeline's
call; a test once asserted it under 0.5 s).

    python benchmarks/priors.py [--config config/config.yaml] [--repeat 7]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import yaml

from geodiff.constants import R_D
from geodiff.data.synthetic import synthetic_month
from geodiff.physics import priors as priors_module
from geodiff.physics import thermo
from geodiff.physics.priors import PRIORS, compute_priors

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


def thermo_priors(t: Any, p: Any) -> dict[str, Any]:
    """The four priors from the thermo functions, in the namespace and dtype of `t` ([N, L, H, W])."""
    z = thermo.hypsometric_height(t, p)
    theta = thermo.potential_temperature(t, p)
    return {
        "theta": theta,
        "lapse_rate": thermo.lapse_rate(t, z),
        "static_stability": thermo.static_stability(t, theta, p),
        "n2": thermo.brunt_vaisala_frequency_squared(theta, z),
    }


def on_one_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` run with torch limited to one intra-op thread."""

    def run() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", module="pyproj")

    import metpy.calc as mpcalc
    import metpy.constants as mpconsts
    from metpy.units import units

    with open(args.config, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    month = synthetic_month(config, 2001, 1)
    t = np.ascontiguousarray(month["t"].values, dtype=np.float32)
    levels = month["level"].values.astype(np.float64)
    start = time.perf_counter()
    compute_priors(t, levels, NAMES)  # inductor compiles (or loads its on-disk cache) here
    first_call = time.perf_counter() - start
    heights = compute_priors(t, levels, ["height"])["height"]  # MetPy's heights, not timed
    print(
        f"data: t {dict(month['t'].sizes)} float32 ({t.nbytes / 2**20:.1f} MiB), levels {levels.tolist()} hPa; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"compute_priors first call {first_call:.1f} s (torch.compile, or load of inductor's on-disk cache), not timed")

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

    t3 = torch.from_numpy(t).reshape(t.shape[0], t.shape[1], -1)
    p = torch.from_numpy(levels)

    def eager() -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = priors_module._priors(t3, p, tuple(NAMES))
        return {name: v.numpy().reshape(t.shape) for name, v in zip(NAMES, out)}

    floor_src = np.random.default_rng(0).random((len(NAMES),) + t.shape, dtype=np.float32)
    ours, metpy_name = "compute_priors (compiled, float32)", "MetPy (units, float32 in)"
    fns: dict[str, Callable[[], Any]] = {
        ours: lambda: compute_priors(t, levels, NAMES),
        "compute_priors, 1 thread": on_one_thread(lambda: compute_priors(t, levels, NAMES)),
        "eager torch float32 (fallback)": eager,
        "numpy float64": lambda: thermo_priors(t.astype(np.float64), levels),
        metpy_name: metpy_priors,
        f"np.copy of {len(NAMES)} x {t.nbytes / 2**20:.1f} MiB": lambda: np.copy(floor_src),
    }
    times, results = timings(args.repeat, fns)

    floor_name = list(fns)[-1]
    reference = results[metpy_name]
    reference["static_stability"] = reference["static_stability"] * (R_D / mpconsts.Rd.m_as("J kg^-1 K^-1"))
    median = {name: statistics.median(v) for name, v in times.items()}
    print(f"{'path':36s} {'median ms':>10s} {'best ms':>9s} {'MetPy/this':>11s} {'this/copy':>10s}  max |this - MetPy| / max |MetPy|")
    for name, values in times.items():
        line = (
            f"{name:36s} {1e3 * median[name]:10.2f} {1e3 * min(values):9.2f} "
            f"{median[metpy_name] / median[name]:10.1f}x {median[name] / median[floor_name]:9.1f}x"
        )
        if name not in (metpy_name, floor_name):  # MetPy's R_d is 287.047..., geodiff's 287.04: σ rescaled
            errors = {k: np.abs(np.asarray(results[name][k]) - ref).max() / np.abs(ref).max() for k, ref in reference.items()}
            line += "  " + " ".join(f"{k} {e:.0e}" for k, e in errors.items())
        print(line)
    print(
        f"compute_priors is {median[metpy_name] / median[ours]:.1f}x faster than MetPy "
        f"and {median[ours] / median[floor_name]:.1f}x the np.copy floor (medians)"
    )
    compute_priors(t, levels, list(PRIORS))  # compile for the five names
    five, _ = timings(args.repeat, {"all": lambda: compute_priors(t, levels, list(PRIORS))})
    print(f"all {len(PRIORS)} priors on the month: {1e3 * statistics.median(five['all']):.1f} ms (median)")


if __name__ == "__main__":
    main()
