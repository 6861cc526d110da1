"""Does training on patches match training on whole fields? (issue 11)

    python benchmarks/crop_training.py [--config config/config.yaml] [--crops 16] [--positions none latlon]
                                       [--out results/crop_training]

Trains the deterministic U-Net of the config with `model.norm: local` (GroupNorm's statistics over
a whole patch are not those over a whole field; its stores results/<run_name>/priors/{train,val}.h5
must exist: build them with snakemake first) on whole fields and on random square patches of
each `--crops` size, for each `model.position` (none: the network sees its input fields only;
latlon: sin and cos of latitude and longitude as extra static channels), at the config's step
count and seed. Patches are trained twice: with the config's batch (fewer fine cells per step)
and with the batch that holds as many fine cells per step as whole fields do (batch x H W /
crop², e.g. 32 patches of 16 x 16 for 8 fields of 32 x 32). Two trainings run at a time, one
thread each. Prints the validation RMSE of each (the model file's `val.rmse_K`, whole fields of
the val split) and its ratio to whole-field training with the same position handling. A
trained model is read back, not trained again.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loss_study import resolved, train

from geodiff.checkpoint import load_checkpoint
from geodiff.data.grid import Grid


def run(path: str, position: str, crop: int | None, same_cells: bool, out: Path) -> dict:
    """Validation RMSE (K), batch and training time of one (position, crop, batch)."""
    config = resolved(path, {"model": {"position": position, "norm": "local"}, "train": {"crop": crop}})
    batch = config["train"]["batch_size"]
    if same_cells:
        hr = Grid.from_config(config["grid"]["hr"])
        batch = batch * hr.shape[0] * hr.shape[1] // crop**2
        config["train"]["batch_size"] = batch
    folder = out / config["run_name"] / f"{position}_{'whole' if crop is None else f'crop{crop}'}_batch{batch}"
    model = folder / "model.pt"
    seconds = float("nan") if model.exists() else train(config, Path(config["results"]) / config["run_name"] / "priors", folder)
    return {"position": position, "crop": crop, "batch": batch, "val_rmse": load_checkpoint(model)["val"]["rmse_K"],
            "train_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--crops", nargs="+", type=int, default=[16])
    parser.add_argument("--positions", nargs="+", default=["none", "latlon"], choices=["none", "latlon"])
    parser.add_argument("--out", type=Path, default=Path("results/crop_training"))
    args = parser.parse_args()
    cases = [(p, None, False) for p in args.positions]
    cases += [(p, c, same) for p in args.positions for c in args.crops for same in (True, False)]
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda case: run(args.config, *case, args.out), cases))
    whole = {r["position"]: r["val_rmse"] for r in rows if r["crop"] is None}
    print(f"{'position':<9} {'training':<10} {'batch':>6} {'val RMSE K':>10} {'/ whole':>8} {'train s':>8}")
    for r in rows:
        name = "whole" if r["crop"] is None else f"crop {r['crop']}"
        print(f"{r['position']:<9} {name:<10} {r['batch']:6d} {r['val_rmse']:10.4f} "
              f"{r['val_rmse'] / whole[r['position']]:8.3f} {r['train_s']:8.0f}")


if __name__ == "__main__":
    main()
