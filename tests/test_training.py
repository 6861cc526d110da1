"""The training loop on real stores: a tiny U-Net beats bicubic, the residual model's scale, the ensemble."""

from __future__ import annotations

import copy
import math

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geodiff.data.loader import StoreDataset
from geodiff.evaluate.sampling import ensemble_prediction
from geodiff.model.networks import load_model
from geodiff.train.loop import train
from test_store import build, months  # noqa: F401 (months: the module fixture build() reads)


@pytest.fixture(scope="module")
def stores(months, tmp_path_factory):  # noqa: F811
    """Train (1 Jan - 15 Feb) and val (16 - 28 Feb) stores of the test config, and the config."""
    d = tmp_path_factory.mktemp("stores")
    build(months, d / "train.h5")
    build(months, d / "val.h5", "val", stats_from=str(d / "train.h5"))
    return months[0], d


def with_train(config: dict, **train_keys) -> dict:
    cfg = copy.deepcopy(config)
    cfg["train"].update(train_keys)
    return cfg


def bicubic_rmse(path) -> float:
    """RMSE of the bicubic input against the truth in a store, K."""
    with h5py.File(path) as f:
        return float(np.sqrt(np.mean((f["lr_up/t"][:].astype(np.float64) - f["hr/t"][:]) ** 2)))


@pytest.fixture(scope="module")
def unet(stores, tmp_path_factory):
    """A U-Net trained for 300 steps in bfloat16 autocast where the CPU has it: (path, validation metrics)."""
    config, d = stores
    out = tmp_path_factory.mktemp("models") / "deterministic.pt"
    val = train("deterministic", str(d / "train.h5"), str(d / "val.h5"), str(out), str(out.parent / "tb"),
                with_train(config, deterministic_steps=300, amp=True))
    return out, val


def test_trained_unet_beats_bicubic(stores, unet):
    _, d = stores
    path, val = unet
    assert val["rmse_K"] < 0.8 * bicubic_rmse(d / "val.h5")
    assert not path.with_name(path.name + ".ckpt").exists()  # the resumable checkpoint is cleaned up
    assert load_model(str(path)).prior_names == ["theta", "lapse_rate", "static_stability"]


def test_residual_model_is_scaled_per_level_and_samples(stores, unet, tmp_path):
    config, d = stores
    det_path, _ = unet
    out = tmp_path / "residual.pt"
    train("residual", str(d / "train.h5"), str(d / "val.h5"), str(out), str(tmp_path / "tb"),
          with_train(config, residual_steps=20), deterministic_path=str(det_path))
    residual, det = load_model(str(out)), load_model(str(det_path))
    first = next(iter(DataLoader(StoreDataset(str(d / "train.h5"), det.prior_names), batch_size=32)))
    with torch.no_grad():
        r = first["hr"] - det(first["lr_up"], first["static"], first["priors"])
    level_rms = r.square().mean(dim=(0, 1, 3, 4)).sqrt()
    assert float(level_rms.max() / level_rms.min()) > 1.5  # the residual really differs between levels
    torch.testing.assert_close(residual.r_scale, level_rms, rtol=0.1, atol=0)

    ens = ensemble_prediction(str(d / "val.h5"), str(det_path), str(out), members=3, steps=8, limit=4, device="cpu")
    assert ens.dims == ("member", "time", "level", "lat", "lon") and ens.shape == (3, 4, 5, 16, 16)
    spread = ens.std("member")
    assert np.isfinite(ens.values).all() and float(spread.min()) > 0
    assert math.isclose(float(ens.mean()), 250.0, abs_tol=30.0)  # kelvin, not normalised units
