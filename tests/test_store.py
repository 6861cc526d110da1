"""The HDF5 store: layout, stats from the train split, atomic writes, the readers, the Dataset, gaps,
and the store of virtual datasets over month files."""

import os
import shutil
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
from geodiff.data.store import (
    SampleReader,
    assemble_store,
    build_month,
    build_store,
    read_field,
    read_statics,
    read_stats,
    store_coords,
    store_info,
)
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


def build_months(months, folder, split="train", which=(0, 1), prior_names=PRIORS):
    """The month files of a split (January, February), as the priors_month jobs write them: their paths."""
    config, raw, low, statics = months
    paths = []
    for i in which:
        path = str(folder / split / f"2001-{i + 1:02d}.h5")
        build_month(path, raw[i], low[i], statics, config["splits"][split], prior_names, "bicubic", 4, ATTRS)
        paths.append(path)
    return paths


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


def test_crops_are_whole_coarse_cells_and_reach_the_field_edges(months, tmp_path):
    """A crop holds whole coarse cells (the store's scale factor is 4) and its centre is a coarse cell drawn
    uniformly from the field, the window kept inside it: a crop of 8 fine cells (2 coarse) in 16 (4
    coarse) starts at coarse cell max(c - 1, 0) clipped to 2 for centre c in 0..3, so at fine cell 0 in
    half of the draws, at 4 and at 8 in a quarter each."""
    build(months, tmp_path / "train.h5")
    full = StoreDataset(str(tmp_path / "train.h5"), [])
    cropped = StoreDataset(str(tmp_path / "train.h5"), [], crop=8)
    starts = []
    for index in range(4):
        hr = full[index]["hr"][0, 0].numpy()
        for epoch in range(80):
            crop = cropped[(index, epoch)]["hr"][0, 0].numpy()
            found = [(y, x) for y in range(9) for x in range(9) if np.array_equal(hr[y:y + 8, x:x + 8], crop)]
            assert len(found) == 1
            starts.append(found[0])
    starts = np.array(starts)
    assert set(starts.ravel()) <= {0, 4, 8}
    for axis in (0, 1):  # 320 draws: binomial standard deviation 0.028 at most
        assert abs(np.mean(starts[:, axis] == 0) - 1 / 2) < 0.09 and abs(np.mean(starts[:, axis] == 8) - 1 / 4) < 0.08


def test_a_crop_of_part_of_a_coarse_cell_is_refused(months, tmp_path):
    build(months, tmp_path / "train.h5")
    with pytest.raises(ValueError, match=r"train\.h5: train\.crop 6 is not a multiple of the store's scale factor 4"):
        StoreDataset(str(tmp_path / "train.h5"), [], crop=6)


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


# --- a split's store as virtual datasets over its month files ---------------------------------

SAMPLES = ["hr/t", "hr/z", "lr/t", "lr_up/t", "interp/bicubic", "interp/bilinear", *(f"priors/{p}" for p in PRIORS)]
STATS = ["t", *PRIORS, "orography", "lsm"]


@pytest.fixture(scope="module")
def split_stores(months, tmp_path_factory):
    """The train and val stores of the two months, once over month files and once as single files:
    (folder of the month-file stores, folder of the single files)."""
    monthly, single = tmp_path_factory.mktemp("monthly"), tmp_path_factory.mktemp("single")
    assemble_store(str(monthly / "train.h5"), build_months(months, monthly), ATTRS)
    assemble_store(str(monthly / "val.h5"), build_months(months, monthly, "val", which=(1,)), ATTRS,
                   stats_from=str(monthly / "train.h5"))
    build(months, single / "train.h5")
    build(months, single / "val.h5", "val", stats_from=str(single / "train.h5"))
    return monthly, single


def test_the_store_over_month_files_reads_as_the_single_file_store(split_stores):
    """Every reader gives the same numbers (array-equal) from both, statistics included (one job's
    running sums are the months' sums merged in the same order); the samples stay in the month files."""
    monthly, single = split_stores
    for split in ["train", "val"]:
        a, b = str(monthly / f"{split}.h5"), str(single / f"{split}.h5")
        info_a, info_b = store_info(a), store_info(b)
        np.testing.assert_array_equal(info_a.pop("levels"), info_b.pop("levels"))
        assert info_a == info_b and info_a["n_samples"] == {"train": 92, "val": 26}[split]
        for name in SAMPLES:
            field = read_field(a, name)
            xr.testing.assert_identical(field, read_field(b, name))
        for name, (mean, std) in read_stats(a, STATS).items():
            np.testing.assert_array_equal(mean, read_stats(b, [name])[name][0])
            np.testing.assert_array_equal(std, read_stats(b, [name])[name][1])
        for name, x in read_statics(a, ["orography", "lsm"]).items():
            np.testing.assert_array_equal(x, read_statics(b, [name])[name])
        for name, coord in store_coords(a).items():
            xr.testing.assert_identical(coord, store_coords(b)[name])
        reader_a, reader_b, n = SampleReader(a), SampleReader(b), info_a["n_samples"]
        for i in [0, n // 2, n - 1]:  # train: January, February, the last
            np.testing.assert_array_equal(reader_a.read("priors/theta", i, (slice(2, 9), slice(0, 5))),
                                          reader_b.read("priors/theta", i, (slice(2, 9), slice(0, 5))))
        items_a, items_b = StoreDataset(a, PRIORS)[n - 2], StoreDataset(b, PRIORS)[n - 2]
        assert all(torch.equal(items_a[k], items_b[k]) for k in items_b)
        with h5py.File(a) as f:
            assert f["hr/t"].is_virtual and f.attrs["store_layout"] == STORE_LAYOUT and f.attrs["config_hash"] == "hash"
            assert f["stats"].attrs["from"] == {"train": "train split", "val": "train.h5"}[split]
        assert os.path.getsize(a) < os.path.getsize(b) / 10  # the samples stay in the month files
    with xr.open_dataset(monthly / "train.h5", group="lr", engine="h5netcdf", decode_times=False) as lr:
        assert lr["t"].dims == ("time", "level", "lat_coarse", "lon_coarse")  # dimension scales on virtual datasets


def test_merged_stats_equal_brute_force_over_all_months(split_stores):
    """The train stats from the merged month sums, against float64 numpy over the months' samples
    concatenated (read from the month files themselves): equal to float32 rounding."""
    monthly, _ = split_stores
    files = [h5py.File(monthly / f"train/2001-{m:02d}.h5") for m in (1, 2)]
    stats = read_stats(monthly / "train.h5", ["t", *PRIORS])
    for name, dataset in [("t", "hr/t"), *((p, f"priors/{p}") for p in PRIORS)]:
        x = np.concatenate([f[dataset][:] for f in files]).astype(np.float64)
        assert len(x) == 92
        np.testing.assert_allclose(stats[name][0], x.mean(axis=(0, 2, 3)), rtol=2**-23, atol=0)
        np.testing.assert_allclose(stats[name][1], x.std(axis=(0, 2, 3)), rtol=2**-23, atol=0)
    for f in files:
        f.close()


def test_the_store_moves_with_its_month_files(months, tmp_path, monkeypatch):
    """Month files are named relative to the store: the folder moves as a whole, and reads work
    from any working directory, by absolute or relative path."""
    store = tmp_path / "run/priors/train.h5"
    assemble_store(str(store), build_months(months, tmp_path / "run/priors"), ATTRS)
    expected = read_field(store, "hr/t")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved/priors/train")
    xr.testing.assert_identical(read_field(tmp_path / "moved/priors/train.h5", "hr/t"), expected)
    monkeypatch.chdir(tmp_path)
    xr.testing.assert_identical(read_field("moved/priors/train.h5", "hr/t"), expected)
    assert StoreDataset("moved/priors/train.h5", PRIORS)[91]["hr"].shape == (1, 5, 16, 16)


def test_a_missing_month_file_is_named(months, tmp_path):
    paths = build_months(months, tmp_path)
    store = tmp_path / "train.h5"
    with pytest.raises(FileNotFoundError, match="train/2001-03.h5: no such month file"):
        assemble_store(str(store), [*paths, str(tmp_path / "train/2001-03.h5")], ATTRS)
    assert not store.exists() and not list(tmp_path.glob(".train.h5*"))  # nothing half-written
    assemble_store(str(store), paths, ATTRS)
    os.remove(paths[1])
    for read in [store_info, lambda path: read_field(path, "hr/t"), lambda path: StoreDataset(path, PRIORS)]:
        with pytest.raises(FileNotFoundError, match=r"train.h5: its month file\(s\) \[.*train/2001-02.h5'\] are missing"):
            read(store)


def test_a_month_unlike_the_others_is_named(months, tmp_path):
    """A month with other priors, other levels or another grid, or months out of order, stop the store."""
    config, raw, low, statics = months
    january, february = build_months(months, tmp_path)
    other_priors = build_months(months, tmp_path / "other_priors", which=(1,), prior_names=PRIORS[:2])[0]
    higher = {**config, "levels": [1000, 850, 700, 500, 250]}
    synthetic_month(higher, 2001, 2).to_netcdf(tmp_path / "raw_250.nc")
    weights = {m: str(Path(raw[0]).parent / f"w_{m}.nc") for m in ("conservative", "bicubic", "bilinear")}
    write_lowres(str(tmp_path / "raw_250.nc"), weights, str(tmp_path / "low_250.nc"), ATTRS)
    other_levels = str(tmp_path / "other_levels/2001-02.h5")
    build_month(other_levels, str(tmp_path / "raw_250.nc"), str(tmp_path / "low_250.nc"), statics,
                config["splits"]["train"], PRIORS, "bicubic", 4, ATTRS)
    other_grid = str(tmp_path / "other_grid/2001-02.h5")
    Path(other_grid).parent.mkdir()
    shutil.copy(february, other_grid)
    with h5py.File(other_grid, "r+") as f:
        f["lon"][:] = f["lon"][:] + 0.25
    cases = [
        ([january, other_priors], r"other_priors/train/2001-02.h5: differs from .*2001-01.h5 in its sample datasets: "
                                       r"priors/static_stability absent against \(5, 16, 16\)$"),
        ([january, other_levels], r"other_levels/2001-02.h5: differs from .*2001-01.h5 in level: \[1000. .* 250.\]"),
        ([january, other_grid], r"other_grid/2001-02.h5: differs from .*2001-01.h5 in lon"),
        ([february, january], r"train/2001-01.h5: its first time is not after the last one of .*train/2001-02.h5"),
    ]
    for paths, message in cases:
        with pytest.raises(ValueError, match=message):
            assemble_store(str(tmp_path / "train.h5"), paths, ATTRS)
        assert not (tmp_path / "train.h5").exists()
