"""Throughput and peak memory of `geodiff downscale`, whole domain against tiles (issue 11).

    python benchmarks/downscale.py [results/default/models] [--members 8] [--steps 18]

Applies a trained bundle (default: the models of `make run`) to a Europe-sized box, 152 x 280
fine cells (35-73N, 15W-55E at 0.25°, the model's levels), and to the box twice as wide
(152 x 560), one time step of a coarse temperature field (a standard-atmosphere profile with
smooth waves, written here), 8 members. Each case runs `geodiff downscale` in its own process,
one after another, so the peak resident memory (RSS) of each is its own. Prints fine fields
(members x time steps) per second of the run and the peak RSS, and the ratio of peak RSS of
the doubled box to the box when tiled: flat within 20 % when memory depends on the tile only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from geodiff.constants import CF_ATTRS

BOXES = {"Europe": (35.0, 73.0, -15.0, 55.0), "Europe x2": (35.0, 73.0, -15.0, 125.0)}
CASES = [("Europe", 0), ("Europe", 128), ("Europe x2", 128), ("Europe x2", 0)]
RUN = """
import resource, sys, time
from geodiff.downscale.generate import downscale
start = time.perf_counter()
downscale(sys.argv[1], [sys.argv[2]], sys.argv[3], members=int(sys.argv[4]), box={box}, steps=int(sys.argv[5]), tile={tile}, device="cpu")
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def coarse_input(path: Path, levels: list[float], resolution: float) -> None:
    """One time step of temperature on `levels` (hPa) over all boxes at `resolution`: T(p) of a 6.5 K/km
    troposphere under an isothermal stratosphere, plus waves of a few hundred km, K."""
    lat = np.arange(30.0 + resolution / 2, 80.0, resolution)
    lon = np.arange(-20.0 + resolution / 2, 130.0, resolution)
    p = np.asarray(levels)
    height = 44330.8 * (1 - (p / 1013.25) ** 0.190263)  # standard atmosphere, m
    profile = np.maximum(288.15 - 0.0065 * height, 216.65)
    waves = 4.0 * np.sin(np.deg2rad(lat)[:, None] * 9) * np.cos(np.deg2rad(lon)[None, :] * 7)
    t = profile[:, None, None] - 0.6 * (lat[None, :, None] - 50.0) + waves[None] * (p[:, None, None] / 1000.0)
    ds = xr.Dataset({"t": (("time", "level", "lat", "lon"), t[None].astype(np.float32), CF_ATTRS["t"])},
                    coords={"time": [np.datetime64("2020-01-15T12:00")], "level": ("level", p, CF_ATTRS["level"]),
                            "lat": ("lat", lat, CF_ATTRS["lat"]), "lon": ("lon", lon, CF_ATTRS["lon"])})
    ds.to_netcdf(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="?", default="results/default/models")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=18)
    args = parser.parse_args()
    bundle = json.loads((Path(args.models) / "bundle.json").read_text())
    print(f"bundle {args.models}: {len(bundle['levels'])} levels, {bundle['resolution']}° from "
          f"{bundle['resolution'] * bundle['scale_factor']}°; {args.members} members, {args.steps} sampler steps")
    print(f"{'box':<10} {'fine cells':>11} {'tiles':>12} {'fields/s':>9} {'seconds':>8} {'peak RSS MB':>12}")
    rss = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "coarse.nc"
        coarse_input(source, bundle["levels"], bundle["resolution"] * bundle["scale_factor"])
        for name, tile in CASES:
            box = BOXES[name]
            code = RUN.format(box=list(box), tile=tile or None)
            out = subprocess.run([sys.executable, "-c", code, args.models, str(source), str(Path(tmp) / "out.nc"),
                                  str(args.members), str(args.steps)], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            seconds, peak = map(float, out.stdout.split()[-2:])
            cells = round((box[1] - box[0]) / bundle["resolution"]) * round((box[3] - box[2]) / bundle["resolution"])
            rss[(name, tile)] = peak
            print(f"{name:<10} {cells:>11} {f'{tile} (48 over)' if tile else 'whole':>12} "
                  f"{args.members / seconds:9.3f} {seconds:8.1f} {peak:12.0f}", flush=True)
    print(f"peak RSS, tiled, doubled box / box: {rss[('Europe x2', 128)] / rss[('Europe', 128)]:.3f} "
          f"(whole domain: {rss[('Europe x2', 0)] / rss[('Europe', 0)]:.3f})")


if __name__ == "__main__":
    main()
