"""The HDF5 store: layout, stats from the train split, atomic writes, the Dataset."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from geodiff.data.loader import StoreDataset
from geodiff.data.lowres import make_regridder, write_lowres
from geodiff.data.store import build_store
from geodiff.data.synthetic import synthetic_month, synthetic_statics

ROOT = Path(__file__).resolve().parents[1]
PRIORS = ["theta", "lapse_rate", "static_stability"]


@pytest.fixture(scope="module")
def months(tmp_path_factory):
    """Two months of the test config, regridded: (config, raw paths, lowres paths, statics path)."""
    d = tmp_path_factory.mktemp("months")
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    synthetic_statics(config).to_netcdf(d / "statics.nc")
    weights = {}
    for method in ("conservative", "bicubic", "bilinear"):
        make_regridder(config["grid"], method).save(d / f"w_{method}.nc")
        weights[method] = str(d / f"w_{method}.nc")
    raw, low = [], []
    for month in (1, 2):
        synthetic_month(config, 2001, month).to_netcdf(d / f"raw{month}.nc")
        write_lowres(str(d / f"raw{month}.nc"), weights, str(d / f"low{month}.nc"))
        raw.append(str(d / f"raw{month}.nc"))
        low.append(str(d / f"low{month}.nc"))
    return config, raw, low, str(d / "statics.nc")


def build(months, out, split="train", stats_from=None):
    config, raw, low, statics = months
    build_store(str(out), raw, low, statics, config["splits"][split], PRIORS, "bicubic", "hash", 4, stats_from)


def test_layout_and_stats(months, tmp_path):
    build(months, tmp_path / "train.h5")
    build(months, tmp_path / "val.h5", "val", stats_from=str(tmp_path / "train.h5"))
    with h5py.File(tmp_path / "train.h5") as f, h5py.File(tmp_path / "val.h5") as g:
        n, L, H, W = f["hr/t"].shape
        assert (L, H, W) == (5, 16, 16) and n == 46 * 2  # 1 Jan .. 15 Feb, two times a day
        assert g["hr/t"].shape[0] == 13 * 2
        for name in ["lr_up/t", "interp/bilinear", *(f"priors/{p}" for p in PRIORS), "hr/z"]:
            assert f[name].shape == (n, L, H, W) and f[name].chunks == (1, L, H, W)
        assert f["static/orography"].shape == (H, W)
        np.testing.assert_array_equal(f["lr_up/t"][:], f["interp/bicubic"][:])
        hr = f["hr/t"][:].astype(np.float64)
        np.testing.assert_allclose(f["stats/t/mean"][:], hr.mean(axis=(0, 2, 3)), rtol=1e-5)
        np.testing.assert_allclose(f["stats/t/std"][:], hr.std(axis=(0, 2, 3)), rtol=1e-4)
        np.testing.assert_array_equal(g["stats/t/mean"][:], f["stats/t/mean"][:])  # val uses train stats
        assert f["hr/t"].attrs["units"] == "K" and f.attrs["config_hash"] == "hash"
        assert list(f["level"][:]) == [1000, 850, 700, 500, 300]


def test_priors_come_from_the_input_not_the_truth(months, tmp_path):
    from geodiff.physics.priors import compute_priors

    build(months, tmp_path / "train.h5")
    with h5py.File(tmp_path / "train.h5") as f:
        expected = compute_priors(f["lr_up/t"][:4], f["level"][:].astype(float), ["theta"])["theta"]
        np.testing.assert_allclose(f["priors/theta"][:4], expected, rtol=1e-6)


def test_killed_write_leaves_no_store_and_rerun_completes(months, tmp_path):
    config, raw, low, statics = months
    out = tmp_path / "train.h5"
    script = (
        "import sys; from geodiff.data.store import build_store\n"
        f"build_store({str(out)!r}, {raw * 40!r}, {low * 40!r}, {statics!r}, "
        "{'start': '2001-01-01', 'end': '2001-12-31'}, " + repr(PRIORS) + ", 'bicubic', 'h', 4)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".train.h5.tmp-*")) and time.time() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.glob(".train.h5.tmp-*")), "the writer never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    build(months, out)
    with h5py.File(out) as f:
        assert f["hr/t"].shape[0] == 92


def test_error_mid_write_leaves_nothing(months, tmp_path):
    config, raw, low, statics = months
    with pytest.raises(FileNotFoundError):
        build_store(str(tmp_path / "x.h5"), [raw[0], "missing.nc"], low, statics, config["splits"]["train"], PRIORS, "bicubic", "h", 4)
    assert list(tmp_path.iterdir()) == []


def test_dataset_items_and_crops(months, tmp_path):
    build(months, tmp_path / "train.h5")
    full = StoreDataset(str(tmp_path / "train.h5"), PRIORS)
    item = full[5]
    assert item["hr"].shape == (1, 5, 16, 16) and item["priors"].shape == (3, 5, 16, 16)
    assert item["static"].shape == (2, 16, 16) and item["z"].shape == (5, 16, 16)
    hr = torch.stack([full[i]["hr"] for i in range(len(full))])
    assert abs(float(hr.mean())) < 0.05 and abs(float(hr.std()) - 1) < 0.05  # train stats normalise the train split
    cropped = StoreDataset(str(tmp_path / "train.h5"), PRIORS[:1], crop=8)
    assert cropped[0]["hr"].shape == (1, 5, 8, 8) and cropped[0]["priors"].shape == (1, 5, 8, 8)
    with pytest.raises(KeyError, match="n2"):
        StoreDataset(str(tmp_path / "train.h5"), ["n2"])
