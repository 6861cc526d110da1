"""Ensemble skill and cost against the number of Heun sampler steps.

    python benchmarks/sampling.py [results] [--members 8] [--samples 24]

Uses the trained models and test store of a finished run (default: results/ of
`make run`). For 8, 18, 32 and 64 steps it samples the same test times, in one
process, and prints the ensemble-mean RMSE and fair CRPS (K) and the time per member
and sample (ms), with the ratio to the 18-step default.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from geodiff.evaluate import metrics
from geodiff.evaluate.fields import read_field
from geodiff.evaluate.sampling import ensemble_prediction

STEPS = (8, 18, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--samples", type=int, default=24, help="first N test times")
    args = parser.parse_args()
    res = Path(args.results)
    store = str(res / "priors/test.h5")
    truth = read_field(store, "hr/t").isel(time=slice(0, args.samples))
    rows = []
    for steps in STEPS:
        start = time.perf_counter()
        ens = ensemble_prediction(store, str(res / "models/deterministic.pt"), str(res / "models/residual.pt"),
                                  args.members, steps=steps, seed=0, limit=args.samples)
        seconds = time.perf_counter() - start
        rmse = float(np.sqrt((metrics.rmse(ens.mean("member"), truth) ** 2).mean()))
        crps = float(metrics.crps_fair(ens, truth).mean())
        rows.append((steps, rmse, crps, 1000 * seconds / (args.members * args.samples)))
    base = dict((r[0], r[3]) for r in rows)[18]
    print(f"{torch.get_num_threads()} threads, {args.members} members, {args.samples} test times")
    print(f"{'steps':>5} {'RMSE(mean) K':>13} {'CRPS K':>8} {'ms/member/sample':>17} {'vs 18 steps':>12}")
    for steps, rmse, crps, ms in rows:
        print(f"{steps:5d} {rmse:13.4f} {crps:8.4f} {ms:17.1f} {ms / base:11.2f}x")


if __name__ == "__main__":
    main()
