"""Data-loader throughput against what a training step of the default model consumes.

    python benchmarks/loader.py [config/config.yaml]

Builds a one-month store of the config's synthetic atmosphere in a temporary folder,
then times, in one process: StoreDataset reads (samples/s, one reader as in training)
and deterministic training steps of the configured model (samples/s). Prints the ratio
(goal: the loader is 5x or more faster than training consumes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from snakemake.utils import validate
from torch.utils.data import DataLoader

from geodiff.data.loader import StoreDataset
from geodiff.data.lowres import make_regridder, write_lowres
from geodiff.data.store import build_store
from geodiff.data.synthetic import synthetic_month, synthetic_statics
from geodiff.model.losses import PhysicsLoss
from geodiff.model.networks import build_model
from geodiff.provenance import provenance_attrs
from geodiff.train.config import TrainConfig


def make_store(config: dict, folder: Path) -> str:
    attrs = provenance_attrs("bench", "bench")
    synthetic_statics(config).to_netcdf(folder / "statics.nc")
    synthetic_month(config, 2001, 1).to_netcdf(folder / "raw.nc")
    weights = {}
    for method in ("conservative", "bicubic", "bilinear"):
        make_regridder(config["grid"], method).save(folder / f"{method}.nc", attrs)
        weights[method] = str(folder / f"{method}.nc")
    write_lowres(str(folder / "raw.nc"), weights, str(folder / "low.nc"), attrs)
    out = str(folder / "store.h5")
    build_store(out, [str(folder / "raw.nc")], [str(folder / "low.nc")], str(folder / "statics.nc"),
                {"start": "2001-01-01", "end": "2001-01-31"}, config["priors"]["names"], "bicubic", 4, attrs)
    return out


def loader_rate(store: str, priors: list[str], batch_size: int, batches: int) -> float:
    loader = DataLoader(StoreDataset(store, priors), batch_size=batch_size, shuffle=True, num_workers=0)
    n, start = 0, time.perf_counter()
    while n < batches * batch_size:
        for batch in loader:
            n += batch["hr"].shape[0]
            if n >= batches * batch_size:
                break
    return n / (time.perf_counter() - start)


def training_rate(store: str, config: dict, batch_size: int, steps: int) -> float:
    dataset = StoreDataset(store, config["priors"]["names"])
    cfg = TrainConfig.from_config(config, "deterministic")
    model = build_model("deterministic", len(config["levels"]), len(cfg.prior_names), cfg.width, cfg.depth, cfg.position, cfg.norm)
    physics = PhysicsLoss(cfg.loss_weights, cfg.charbonnier_eps, config["levels"], torch.from_numpy(dataset.t_mean.ravel()), torch.from_numpy(dataset.t_std.ravel()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = next(iter(DataLoader(dataset, batch_size=batch_size)))
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            start = time.perf_counter()
        loss, _ = physics(model(batch["lr_up"], batch["static"], batch["priors"])[:, 0], batch["hr"][:, 0], batch.get("z"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    config = yaml.safe_load(Path(sys.argv[1] if len(sys.argv) > 1 else "config/config.yaml").read_text())
    validate(config, "workflow/schemas/config.schema.yaml", set_default=True)  # the schema's defaults, as the workflow
    batch_size = int(config["train"]["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(config, Path(tmp))
        read = loader_rate(store, config["priors"]["names"], batch_size, batches=60)
        train = training_rate(store, config, batch_size, steps=10)
    print(f"StoreDataset (1 reader)           {read:9.1f} samples/s")
    print(f"training step ({config['model']['width']}x{config['model']['depth']} U-Net, {torch.get_num_threads()} threads) {train:9.1f} samples/s")
    print(f"loader / training = {read / train:.1f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
