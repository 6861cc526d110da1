"""Ensemble skill and cost against the number of Heun sampler steps, GeoDiff's against EDM's.

    python benchmarks/sampling.py [results/default] [--members 8] [--samples 24]

Uses the trained models and test store of a finished run (default: results/default/ of
`make run`). For 8, 18, 32 and 64 steps it samples the same test times with the same
noise, in one process, with GeoDiff's sampler (Heun in the scaled variables, the
default) and with EDM's Algorithm 2 as published (Heun in x against σ), and prints the
ensemble-mean RMSE, the fair CRPS (K), the spread-skill ratio and the time per member
and sample (ms), with the ratio to GeoDiff at 18 steps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from geodiff.evaluate import metrics
from geodiff.data.store import read_field
from geodiff.evaluate.sampling import ensemble_prediction

STEPS = (8, 18, 32, 64)
NAMES = {"scaled": "GeoDiff", "edm": "EDM"}
"""Samplers (geodiff.model.edm.SAMPLERS: scaled_sampler, edm_sampler) and the names printed for them."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default="results/default")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--samples", type=int, default=24, help="first N test times")
    args = parser.parse_args()
    res = Path(args.results)
    store = str(res / "priors/test.h5")
    truth = read_field(store, "hr/t").isel(time=slice(0, args.samples))
    rows = []
    for sampler in NAMES:
        for steps in STEPS:
            start = time.perf_counter()
            ens = ensemble_prediction(store, str(res / "models/deterministic.pt"), str(res / "models/residual.pt"),
                                      args.members, steps=steps, seed=0, limit=args.samples, sampler=sampler)
            seconds = time.perf_counter() - start
            rmse = float(metrics.rmse(ens.mean("member"), truth, truth.dims))
            crps = float(metrics.crps_fair(ens, truth, truth.dims))
            ratio = float(metrics.spread_skill_ratio(ens, truth, truth.dims))
            rows.append((NAMES[sampler], steps, rmse, crps, ratio, 1000 * seconds / (args.members * args.samples)))
    base = rows[STEPS.index(18)][-1]
    print(f"{torch.get_num_threads()} threads, {args.members} members, {args.samples} test times")
    print(f"{'sampler':>8} {'steps':>5} {'RMSE(mean) K':>13} {'CRPS K':>8} {'spread/skill':>13} {'ms/member/sample':>17} {'vs GeoDiff 18':>14}")
    for name, steps, rmse, crps, ratio, ms in rows:
        print(f"{name:>8} {steps:5d} {rmse:13.4f} {crps:8.4f} {ratio:13.3f} {ms:17.1f} {ms / base:13.2f}x")


if __name__ == "__main__":
    main()
