"""The HDF5 store: layout, stats from the train split, atomic writes, the readers, the Dataset, gaps."""

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
import xarray as xr
import yaml

from geodiff.constants import STORE_LAYOUT
from geodiff.data.loader import StoreDataset
from geodiff.data.lowres import make_regridder, write_lowres
from geodiff.data.store import build_store, read_field, read_stats, store_coords, store_info
from geodiff.data.synthetic import synthetic_month, synthetic_statics
from geodiff.provenance import provenance_attrs

ROOT = Path(__file__).resolve().parents[1]
PRIORS = ["theta", "lapse_rate", "static_stability"]
ATTRS = provenance_attrs("hash", "test")


@pytest.fixture(scope="module")
def months(tmp_path_factory):
    """Two months of the test config, regridded: (config, raw paths, lowres paths, statics path)."""
    d = tmp_path_factory.mktemp("months")
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    synthetic_statics(config).to_netcdf(d / "statics.nc")
    weights = {}
    for method in ("conservative", "bicubic", "bilinear"):
        make_regridder(config["grid"], method).save(d / f"w_{method}.nc", ATTRS)
        weights[method] = str(d / f"w_{method}.nc")
    raw, low = [], []
    for month in (1, 2):
        synthetic_month(config, 2001, month).to_netcdf(d / f"raw{month}.nc")
        write_lowres(str(d / f"raw{month}.nc"), weights, str(d / f"low{month}.nc"), ATTRS)
        raw.append(str(d / f"raw{month}.nc"))
        low.append(str(d / f"low{month}.nc"))
    return config, raw, low, str(d / "statics.nc")


def build(months, out, split="train", stats_from=None):
    config, raw, low, statics = months
    build_store(str(out), raw, low, statics, config["splits"][split], PRIORS, "bicubic", 4, ATTRS, stats_from)


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


def test_the_coarse_input_is_kept_and_netcdf_readers_see_named_dims(months, tmp_path):
    """`lr/t` is the regridded month's t_coarse; dimension scales give every field its dims by name."""
    build(months, tmp_path / "train.h5")
    low = months[2]
    with xr.open_dataset(low[0], engine="netcdf4") as first:
        coarse, coarse_lat = first["t_coarse"].values, first["lat_coarse"].values
    with h5py.File(tmp_path / "train.h5") as f:
        np.testing.assert_array_equal(f["lr/t"][: len(coarse)], coarse.astype(np.float32))
        assert f.attrs["store_layout"] == STORE_LAYOUT
    dims = {}
    for group in ["hr", "lr", "priors", "static"]:
        with xr.open_dataset(tmp_path / "train.h5", group=group, engine="h5netcdf", decode_times=False) as ds:
            dims.update({f"{group}/{name}": v.dims for name, v in ds.data_vars.items()})
    assert dims["hr/t"] == dims["priors/theta"] == ("time", "level", "lat", "lon")
    assert dims["lr/t"] == ("time", "level", "lat_coarse", "lon_coarse") and dims["static/lsm"] == ("lat", "lon")
    np.testing.assert_array_equal(read_field(tmp_path / "train.h5", "lr/t")["lat"].values, coarse_lat)
    field = read_field(tmp_path / "train.h5", "interp/bicubic")  # its attributes go on into NetCDF files
    assert field.attrs["units"] == "K" and "DIMENSION_LIST" not in field.attrs
    field.to_netcdf(tmp_path / "bicubic.nc")


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
        "{'start': '2001-01-01', 'end': '2001-12-31'}, " + repr(PRIORS) + f", 'bicubic', 4, {ATTRS!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".train.h5.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.glob(".train.h5.*.tmp")), "the writer never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    build(months, out)
    with h5py.File(out) as f:
        assert f["hr/t"].shape[0] == 92


def test_error_mid_write_leaves_nothing(months, tmp_path):
    config, raw, low, statics = months
    with pytest.raises(FileNotFoundError):
        build_store(str(tmp_path / "x.h5"), [raw[0], "missing.nc"], low, statics, config["splits"]["train"], PRIORS, "bicubic", 4, ATTRS)
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


def test_readers_give_the_stored_values_with_labels(months, tmp_path):
    build(months, tmp_path / "train.h5")
    path = str(tmp_path / "train.h5")
    info = store_info(path)
    assert info["n_samples"] == 92 and info["shape"] == (5, 16, 16) and info["has_z"]
    assert info["priors"] == sorted(PRIORS) and info["scale_factor"] == 4 and info["config_hash"] == "hash"
    coords = store_coords(path)
    assert str(coords["time"].values[0]) == "2001-01-01T00:00:00.000000000"
    assert str(coords["time"].values[-1]) == "2001-02-15T12:00:00.000000000"
    bicubic = read_field(path, "interp/bicubic")
    assert bicubic.dims == ("time", "level", "lat", "lon") and bicubic.attrs["units"] == "K"
    with h5py.File(path) as f:
        np.testing.assert_array_equal(bicubic.values, f["interp/bicubic"][:])
        np.testing.assert_array_equal(bicubic["lat"].values, f["lat"][:])
        np.testing.assert_array_equal(read_stats(path, ["theta"])["theta"][1], f["stats/theta/std"][:])
    with pytest.raises(KeyError, match="interp/cubic"):
        read_field(path, "interp/cubic")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        store_info(str(tmp_path / "nope.h5"))


# missing truth (data.allow_nans): (time, level, lat, lon) of the NaNs put into one month
T_GAPS = [(3, 2, 5, 7), (3, 2, 5, 6), (3, 2, 4, 7), (10, 0, 0, 0), (10, 4, 15, 15), (40, 1, 8, 8),
          (40, 1, 8, 9), (41, 3, 2, 12), (61, 0, 11, 3)]
Z_GAPS = [(20, 4, 15, 0)]


@pytest.fixture(scope="module")
def gappy(months, tmp_path_factory):
    """January with 9 missing temperatures and 1 missing geopotential: (clean lowres, gappy lowres, store)."""
    config, raw, low, statics = months
    d = tmp_path_factory.mktemp("gappy")
    weights = {m: str(Path(raw[0]).parent / f"w_{m}.nc") for m in ("conservative", "bicubic", "bilinear")}
    month = synthetic_month(config, 2001, 1)
    for index in T_GAPS:
        month["t"].values[index] = np.nan
    for index in Z_GAPS:
        month["z"].values[index] = np.nan
    month.to_netcdf(d / "raw.nc")
    write_lowres(str(d / "raw.nc"), weights, str(d / "low.nc"), ATTRS)
    build_store(str(d / "train.h5"), [str(d / "raw.nc")], [str(d / "low.nc")], statics,
                {"start": "2001-01-01", "end": "2001-01-31"}, PRIORS, "bicubic", 4, ATTRS)
    return low[0], str(d / "low.nc"), str(d / "train.h5")


def test_gaps_stay_in_the_truth_and_the_stats_skip_them(gappy):
    _, _, path = gappy
    with h5py.File(path) as f:
        hr = f["hr/t"][:]
        assert sorted(map(tuple, np.argwhere(np.isnan(hr)))) == sorted(T_GAPS)  # missing truth stays missing
        assert sorted(map(tuple, np.argwhere(np.isnan(f["hr/z"][:])))) == Z_GAPS
        hr = hr.astype(np.float64).transpose(1, 0, 2, 3).reshape(5, -1)  # brute force per level
        np.testing.assert_allclose(f["stats/t/mean"][:], [np.nanmean(level) for level in hr], rtol=1e-6)
        np.testing.assert_allclose(f["stats/t/std"][:], [np.nanstd(level) for level in hr], rtol=1e-4)
        for name in ["lr_up/t", "interp/bilinear", *(f"priors/{p}" for p in PRIORS)]:
            assert np.isfinite(f[name][:]).all(), name
        for p in PRIORS:
            assert np.isfinite(f[f"stats/{p}/mean"][:]).all() and np.isfinite(f[f"stats/{p}/std"][:]).all()


def test_coarse_gaps_are_filled_with_the_level_mean_of_that_time(gappy):
    clean_path, gappy_path, _ = gappy
    with xr.open_dataset(clean_path) as clean, xr.open_dataset(gappy_path) as gappy_low:
        clean, gap, lat = clean["t_coarse"].values, gappy_low["t_coarse"].values, gappy_low["lat_coarse"].values
        assert gappy_low["t_coarse"].attrs["filled_cells"] == 6
    filled = {(t, k, i // 4, j // 4) for t, k, i, j in T_GAPS}  # a coarse cell is 4 x 4 fine cells
    assert len(filled) == 6 and np.isfinite(gap).all()
    for t, k, i, j in np.ndindex(*gap.shape):
        if (t, k, i, j) not in filled:
            assert gap[t, k, i, j] == clean[t, k, i, j]
    for t, k, i, j in filled:
        valid = [(a, b) for a in range(gap.shape[2]) for b in range(gap.shape[3]) if (t, k, a, b) not in filled]
        w = np.array([np.cos(np.deg2rad(lat[a])) for a, _ in valid])
        expected = sum(wi * gap[t, k, a, b] for wi, (a, b) in zip(w, valid)) / w.sum()
        np.testing.assert_allclose(gap[t, k, i, j], expected, rtol=1e-6)


def test_dataset_masks_missing_truth_and_fills_it_with_the_input(gappy):
    _, _, path = gappy
    dataset = StoreDataset(path, PRIORS)
    missing = {}
    for t, k, i, j in T_GAPS + Z_GAPS:
        missing.setdefault(t, set()).add((k, i, j))
    with h5py.File(path) as f:
        lr_up = f["lr_up/t"][:]
    for t in [*missing, 0]:
        item = dataset[t]
        mask = item["hr_mask"]
        assert mask.shape == item["hr"].shape and mask.dtype == torch.float32
        assert {tuple(ix) for ix in np.argwhere(mask[0].numpy() == 0)} == missing.get(t, set())
        assert torch.isfinite(item["hr"]).all() and torch.isfinite(item["z"]).all()
        hr_kelvin = item["hr"][0].numpy() * dataset.t_std + dataset.t_mean
        for k, i, j in missing.get(t, ()):
            if (t, k, i, j) in T_GAPS:
                np.testing.assert_allclose(hr_kelvin[k, i, j], lr_up[t, k, i, j], rtol=1e-6)
