"""Does training on patches match training on whole fields? (issue 11)

    python benchmarks/crop_training.py [--config config/config.yaml] [--box S N W E] [--crops 16 24]
                                       [--positions none latlon] [--out results/crop_training]

Trains the deterministic U-Net of the config with `model.norm: local` (GroupNorm's statistics over
a whole patch are not those over a whole field) on whole fields and on random square patches of
each `--crops` size (`train.crop`: whole coarse cells, the centre a coarse cell drawn uniformly
over the field, see geodiff.data.loader), for each `model.position` (none: the network sees its input fields only;
latlon: sin and cos of latitude and longitude as extra static channels), at the config's step
count and seed. Every training sees as many fine cells per step as the config's batch of whole
fields of the config's box: 32 patches of 16 x 16 or 14 of 24 x 24 for 8 fields of 32 x 32.

`--box` trains on another fine box than the config's (cell edges, degrees; e.g. `44 60 2 18`,
64 x 64 cells at 0.25°): its stores (run name `crop_box_S_N_W_E`, the config otherwise) are built
with snakemake first where missing; without it the config's stores must exist (`snakemake
results/<run_name>/priors/val.h5`). Two trainings run at a time, one thread each. Prints the
validation RMSE of each (the model file's `val.rmse_K`, whole fields of the val split) and its
ratio to whole-field training with the same position handling. A trained model is read back,
not trained again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from loss_study import resolved, train

from geodiff.checkpoint import load_checkpoint
from geodiff.data.grid import Grid


def stores(config: dict, out: Path, path: str) -> Path:
    """The priors folder of `config`'s run, its train and val stores built with snakemake when missing."""
    folder = Path(config["results"]) / config["run_name"] / "priors"
    targets = [str(folder / f"{split}.h5") for split in ("train", "val")]
    if not all(Path(t).exists() for t in targets):
        overlay = out / config["run_name"] / "config.yaml"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay.write_text(yaml.safe_dump({"run_name": config["run_name"], "grid": config["grid"]}))
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *targets, "--configfile", path,
                        str(overlay)], check=True, env=env)
    return folder


def run(config: dict, priors: Path, folder: Path, position: str, crop: int | None, cells: int) -> dict:
    """Validation RMSE (K), batch and training time of one (position, crop) with `cells` fine cells a step."""
    config = {**config, "model": {**config["model"], "position": position, "norm": "local"}}
    hr = Grid.from_config(config["grid"]["hr"])
    batch = cells // (crop**2 if crop else hr.shape[0] * hr.shape[1])
    config["train"] = {**config["train"], "crop": crop, "batch_size": batch}
    model = folder / f"{position}_{'whole' if crop is None else f'crop{crop}'}_batch{batch}" / "model.pt"
    seconds = float("nan") if model.exists() else train(config, priors, model.parent)
    return {"position": position, "crop": crop, "batch": batch, "val_rmse": load_checkpoint(model)["val"]["rmse_K"],
            "train_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--box", nargs=4, type=float, metavar=("S", "N", "W", "E"))
    parser.add_argument("--crops", nargs="+", type=int, default=[16, 24])
    parser.add_argument("--positions", nargs="+", default=["none", "latlon"], choices=["none", "latlon"])
    parser.add_argument("--out", type=Path, default=Path("results/crop_training"))
    args = parser.parse_args()
    config = resolved(args.config, {})
    hr = Grid.from_config(config["grid"]["hr"])
    cells = config["train"]["batch_size"] * hr.shape[0] * hr.shape[1]
    if args.box:
        s, n, w, e = args.box
        config["grid"] = {**config["grid"], "hr": {**config["grid"]["hr"], "lat": [s, n], "lon": [w, e]}}
        config["run_name"] = "crop_box_" + "_".join(f"{v:g}" for v in args.box)
    priors = stores(config, args.out, args.config)
    folder = args.out / config["run_name"]
    cases = [(p, c) for p in args.positions for c in [None, *args.crops]]
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda case: run(config, priors, folder, *case, cells), cases))
    whole = {r["position"]: r["val_rmse"] for r in rows if r["crop"] is None}
    print(f"box {config['grid']['hr']['lat']} x {config['grid']['hr']['lon']}, {cells} fine cells a step")
    print(f"{'position':<9} {'training':<10} {'batch':>6} {'val RMSE K':>10} {'/ whole':>8} {'train s':>8}")
    for r in rows:
        name = "whole" if r["crop"] is None else f"crop {r['crop']}"
        print(f"{r['position']:<9} {name:<10} {r['batch']:6d} {r['val_rmse']:10.4f} "
              f"{r['val_rmse'] / whole[r['position']]:8.3f} {r['train_s']:8.0f}")


if __name__ == "__main__":
    main()
