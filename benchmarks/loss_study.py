"""What each physics-loss term of the deterministic U-Net costs and buys (issue 14).

    python benchmarks/loss_study.py [--configs config/config.yaml config/alpine.yaml]
                                    [--variants full no_physics ...] [--out results/loss_study]

For each config (its stores results/<run_name>/priors/{train,test}.h5 must exist: build
them with snakemake first) and each loss variant, trains the deterministic U-Net with
`python -m geodiff train` on the config validated against the schema (defaults filled in,
as the workflow passes it) with the variant's `loss.*` settings, same seed for all,
predicts the test split and scores it against the store's truth with the project's
metrics: RMSE (K), CRPS (K; of a point forecast, its MAE, as in metrics.csv), lapse-rate
RMSE (K km-1) and the spurious-instability fraction, each area-weighted over every point.
Prints one row per (config, variant) with the wall time of the training. A trained model
(model.pt and its scores.json under --out) is not trained again, only scored.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from snakemake.utils import validate

from geodiff.data.store import read_field
from geodiff.evaluate import metrics
from geodiff.evaluate.baselines import deterministic_prediction

SCHEMA = "workflow/schemas/config.schema.yaml"
PHYSICS = ("stability", "gradient", "coupling")
NO_RAMP = {"ramp": [0.0, 0.0]}
VARIANTS = {  # name -> overrides of loss.<key> (merged into the config's loss section)
    "full": NO_RAMP,  # the config's weights from the first step (the default before loss.ramp)
    "no_physics": {**NO_RAMP, **{term: {"weight": 0.0} for term in PHYSICS}},  # the no_physics_loss ablation
    "no_stability": {**NO_RAMP, "stability": {"weight": 0.0}},
    "no_gradient": {**NO_RAMP, "gradient": {"weight": 0.0}},
    "with_coupling": {**NO_RAMP, "coupling": {"weight": 0.1}},  # the config's coupling weight is 0
    "ramp": {"ramp": [0.5, 0.75]},  # physics weights 0 for the first half, full from 3/4 of the steps
}


def resolved(path: str, overrides: dict) -> dict:
    """The config at `path` with each section of `overrides` ({"loss": {...}, ...}) merged into its own,
    validated with the schema's defaults."""
    config = yaml.safe_load(Path(path).read_text())
    for section, values in overrides.items():
        config.setdefault(section, {}).update(copy.deepcopy(values))
    validate(config, SCHEMA, set_default=True)
    return config


def train(config: dict, stores: Path, folder: Path) -> float:
    """Train the deterministic U-Net into folder/model.pt; returns the wall time, s."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "geodiff", "train", "--stage", "deterministic",
           "--train", str(stores / "train.h5"), "--val", str(stores / "val.h5"), "--out", str(folder / "model.pt"),
           "--config-json", json.dumps(config), "--device", "cpu", "--checkpoint-every", "100000",
           "--keep-checkpoints", "1"]
    start = time.perf_counter()
    with open(folder / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def score(model: Path, store: Path) -> dict:
    """RMSE, CRPS, lapse-rate RMSE and spurious-instability fraction of the model on the store, over every point."""
    forecast = deterministic_prediction(str(model), str(store), "cpu")
    truth = read_field(str(store), "hr/t")
    dims = list(truth.dims)
    return {"rmse": float(metrics.rmse(forecast, truth, dims)),
            "crps": float(metrics.crps_fair(forecast.expand_dims({metrics.MEMBER: 1}), truth, dims)),
            "lapse_rate_rmse": float(metrics.lapse_rate_rmse(forecast, truth, dims)),
            "spurious_instability": float(metrics.spurious_instability(forecast, truth, dims))}


def run(path: str, variant: str, out: Path) -> dict:
    """Scores and training time of one (config, variant), read back when already measured."""
    config = resolved(path, {"loss": VARIANTS[variant]})
    stores = Path(config["results"]) / config["run_name"] / "priors"
    folder = out / config["run_name"] / variant
    done = folder / "scores.json"
    trained = done.exists() and (folder / "model.pt").exists()
    seconds = json.loads(done.read_text())["train_s"] if trained else train(config, stores, folder)
    row = {"config": config["run_name"], "variant": variant, **score(folder / "model.pt", stores / "test.h5"),
           "train_s": seconds, "loss": config["loss"]}
    done.write_text(json.dumps(row, indent=1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["config/config.yaml", "config/alpine.yaml"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("results/loss_study"))
    args = parser.parse_args()
    print(f"{'config':<10} {'variant':<20} {'RMSE K':>8} {'CRPS K':>8} {'lapse K/km':>10} {'spurious':>9} {'train s':>8}")
    for path in args.configs:
        for variant in args.variants:
            r = run(path, variant, args.out)
            print(f"{r['config']:<10} {variant:<20} {r['rmse']:8.4f} {r['crps']:8.4f} {r['lapse_rate_rmse']:10.4f} "
                  f"{r['spurious_instability']:9.5f} {r['train_s']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
