"""The local source on real files: ERA5 GRIB, GFS NetCDF, and the bad-input suite (../shared/data/real)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cds_server import SAMPLE_GRID, build_month_grib

from geodiff.constants import G
from geodiff.data.canonical import DataError, canonicalize, month_times
from geodiff.data.files import open_any
from geodiff.data.sources import download_month, download_statics

REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
pytestmark = pytest.mark.skipif(
    not REAL.is_dir() and not os.environ.get("CI"), reason="real sample data ../shared/data/real not present"
)
ERA5 = REAL / "era5" / "era5-levels-members.grib"


@pytest.fixture
def config(make_config: Callable[..., dict]) -> Callable[..., dict]:
    """Configs of the local source: `SAMPLE_GRID` unless `grid` is given, 850/500 hPa, 00/12 UTC, February 2017."""

    def build(paths: list[str], statics: str | None = None, grid: dict | None = None) -> dict:
        local = {"paths": paths, "statics": statics}
        return make_config("local", month="2017-02", grid=grid or SAMPLE_GRID, levels=(850, 500), local=local)

    return build


def raw_cfgrib(path: Path) -> xr.Dataset:
    return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})


def test_era5_grib_canonical_orientation_and_values() -> None:
    """cfgrib's ERA5 (north->south, 0..357 E, 10 members) -> canonical; values moved, not changed."""
    ds = canonicalize(open_any(ERA5), "local", str(ERA5))
    raw = raw_cfgrib(ERA5)
    assert ds["t"].dims == ("time", "level", "lat", "lon") and ds["t"].shape == (4, 2, 61, 120)
    assert ds["level"].values.tolist() == [850.0, 500.0]
    assert ds["lat"].values[0] == -90.0 and np.all(np.diff(ds["lat"].values) == 3.0)
    assert ds["lon"].values[0] == -180.0 and ds["lon"].values[-1] == 177.0
    assert "ensemble member 0 of 10 kept" in ds.attrs["conversions"]
    for time, level, lat, lon in [(0, 500, 45.0, -9.0), (3, 850, -60.0, 177.0), (2, 500, 90.0, -180.0)]:
        want = raw["t"].sel(number=0, isobaricInhPa=level, latitude=lat, longitude=lon % 360).isel(time=time)
        assert float(ds["t"].sel(level=level, lat=lat, lon=lon).isel(time=time)) == float(want)
    assert float(ds["t"].sel(level=500, lat=45.0, lon=-9.0).isel(time=2)) == pytest.approx(247.89874, abs=1e-4)
    np.testing.assert_array_equal(
        ds["z"].isel(time=1, level=0).values,
        raw["z"].isel(number=0, time=1, isobaricInhPa=0).values[::-1, np.r_[60:120, 0:60]],
    )


def test_forecast_steps_become_valid_times() -> None:
    """pl_regular_ll: 4 analysis times x 2 steps (0, 6 h) -> 8 valid times; 6 levels 1000..300 hPa."""
    path = REAL / "era5" / "pl_regular_ll.grib"
    ds = canonicalize(open_any(path), "local", str(path))
    raw = raw_cfgrib(path)
    times = pd.DatetimeIndex(ds["time"].values)
    assert times.is_unique and len(times) == 8
    assert times.equals(pd.DatetimeIndex(np.sort(raw["valid_time"].values.ravel())))
    assert ds["level"].values.tolist() == [1000.0, 850.0, 700.0, 500.0, 400.0, 300.0]
    want = raw["t"].isel(time=1, step=1).sel(isobaricInhPa=700, latitude=50.0, longitude=350.0)
    got = ds["t"].sel(time=raw["valid_time"].isel(time=1, step=1).values, level=700, lat=50.0, lon=-10.0)
    assert float(got) == float(want)


def test_gfs_netcdf_levels_in_pa_and_heights_in_gpm() -> None:
    path = REAL / "gfs" / "GFS_test.nc"
    ds = canonicalize(open_any(path), "local", str(path))
    raw = xr.open_dataset(path)
    assert ds["level"].values[0] == 1000.0 and ds["level"].values[-1] == 10.0 and ds.sizes["level"] == 26
    assert np.all(np.diff(ds["level"].values) < 0)
    assert ds["lat"].values[[0, -1]].tolist() == [20.0, 65.0] and ds["lon"].values[[0, -1]].tolist() == [-150.0, -50.0]
    gpm = float(raw["Geopotential_height_isobaric"].sel(isobaric3=50000.0, lat=45.0, lon=260.0).isel(time=0))
    assert float(ds["z"].sel(level=500, lat=45.0, lon=-100.0).isel(time=0)) == pytest.approx(G * gpm, rel=1e-6)
    assert 5000.0 < gpm < 6000.0
    t = float(raw["Temperature_isobaric"].sel(isobaric3=85000.0, lat=30.0, lon=280.0).isel(time=0))
    assert float(ds["t"].sel(level=850, lat=30.0, lon=-80.0).isel(time=0)) == t
    assert "isobaric3: converted from Pa to hPa" in ds.attrs["conversions"]
    assert "gpm" in ds.attrs["conversions"] and ds["z"].attrs["units"] == "m2 s-2"


def test_gfs_month_is_refused_with_its_missing_times(tmp_path: Path, config: Callable[..., dict]) -> None:
    """One GFS time is not a month: the error names the file and what is missing; nothing is written."""
    path = REAL / "gfs" / "GFS_test.nc"
    cfg = config([str(path)], grid={"resolution": 1.0, "lat": [20.5, 64.5], "lon": [-149.5, -51.5]})
    cfg["data"]["hours"] = [12]
    with pytest.raises(DataError, match=rf"{path}: missing 30 of 31 expected times: 2010-10-01T12"):
        download_month(cfg, 2010, 10, str(tmp_path / "2010-10.nc"))
    assert list(tmp_path.iterdir()) == []


def test_month_from_several_local_grib_files(tmp_path: Path, config: Callable[..., dict]) -> None:
    """Files of different months behind one glob: the month's file is picked, cut to the box, and written."""
    (tmp_path / "era5").mkdir()
    build_month_grib(ERA5, tmp_path / "era5" / "era5_2017_02.grib", 2017, 2, [0, 12])
    build_month_grib(ERA5, tmp_path / "era5" / "era5_2017_03.grib", 2017, 3, [0, 12])
    out = tmp_path / "raw" / "2017-03.nc"
    download_month(config([str(tmp_path / "era5" / "*.grib")]), 2017, 3, str(out))
    raw = raw_cfgrib(ERA5)
    base = float(raw["t"].sel(number=0, isobaricInhPa=500, latitude=45, longitude=6).isel(time=0))
    with xr.open_dataset(out) as ds:
        assert pd.DatetimeIndex(ds["time"].values).equals(month_times(2017, 3, [0, 12]))
        assert dict(ds.sizes) == {"time": 62, "level": 2, "lat": 12, "lon": 12}
        assert float(ds["t"].sel(time="2017-03-10T12", level=500, lat=45, lon=6)) == pytest.approx(
            base + 0.05 * 9 + 0.12, abs=5e-3
        )
        assert ds.attrs["source_file"] == str(tmp_path / "era5" / "era5_2017_03.grib")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["2017-03.nc"]
    assert not list((tmp_path / "era5").glob("*.idx"))


def test_variables_split_across_files_are_merged(tmp_path: Path, config: Callable[..., dict]) -> None:
    """t in one NetCDF, z in another (ERA5 names): one month with both."""
    build_month_grib(ERA5, tmp_path / "feb.grib", 2017, 2, [0, 12])
    with raw_cfgrib(tmp_path / "feb.grib") as ds:
        ds[["t"]].load().to_netcdf(tmp_path / "t.nc")
        ds[["z"]].load().to_netcdf(tmp_path / "z.nc")
    out = tmp_path / "2017-02.nc"
    download_month(config([str(tmp_path / "?.nc")]), 2017, 2, str(out))
    with xr.open_dataset(out) as ds:
        assert set(ds.data_vars) == {"t", "z"} and ds.sizes["time"] == 56
        assert ds.attrs["source_file"] == f"{tmp_path / 't.nc'}, {tmp_path / 'z.nc'}"


def test_duplicated_times_in_a_file_are_refused(tmp_path: Path, config: Callable[..., dict]) -> None:
    build_month_grib(ERA5, tmp_path / "feb.grib", 2017, 2, [0, 12])
    with raw_cfgrib(tmp_path / "feb.grib") as ds:
        doubled = xr.concat([ds.isel(time=slice(0, 10)), ds.isel(time=slice(9, None))], dim="time").load()
    doubled.to_netcdf(tmp_path / "doubled.nc")
    with pytest.raises(DataError, match=rf"{tmp_path / 'doubled.nc'}: duplicated times: 2017-02-05T12"):
        download_month(config([str(tmp_path / "doubled.nc")]), 2017, 2, str(tmp_path / "out.nc"))
    assert not (tmp_path / "out.nc").exists()


def test_no_file_for_the_month(tmp_path: Path, config: Callable[..., dict]) -> None:
    with pytest.raises(DataError, match=r"none of 1 files has data for 2017-05"):
        download_month(config([str(ERA5)]), 2017, 5, str(tmp_path / "out.nc"))
    with pytest.raises(DataError, match=r"no file matches"):
        download_month(config([str(tmp_path / "nothing*.grib")]), 2017, 5, str(tmp_path / "out.nc"))


def test_statics_from_an_era5_style_netcdf(tmp_path: Path, config: Callable[..., dict]) -> None:
    """Surface geopotential z (m2 s-2) and lsm, ERA5 names, north->south, 0..360 -> orography (m), lsm."""
    lat = np.arange(90.0, -90.1, -3.0)
    lon = np.arange(0.0, 360.0, 3.0)
    height = np.abs(lat)[:, None] * 10.0 + 0.0 * lon[None, :]  # m, by latitude
    xr.Dataset(
        {
            "z": (
                ("valid_time", "latitude", "longitude"),
                (G * height)[None].astype("float32"),
                {"units": "m**2 s**-2"},
            ),
            "lsm": (("valid_time", "latitude", "longitude"), (height > 400)[None].astype("float32")),
        },
        coords={"valid_time": [np.datetime64("2017-02-01")], "latitude": lat, "longitude": lon},
    ).to_netcdf(tmp_path / "invariants.nc")
    out = tmp_path / "statics.nc"
    download_statics(config([], statics=str(tmp_path / "invariants.nc")), str(out))
    with xr.open_dataset(out) as ds:
        assert ds["orography"].dims == ("lat", "lon") and ds["orography"].shape == (12, 12)
        np.testing.assert_allclose(ds["orography"].values[:, 0], np.arange(30.0, 64.0, 3.0) * 10.0, rtol=1e-5)
        assert ds["lsm"].values[:, 0].tolist() == [0.0] * 4 + [1.0] * 8  # 30..39 N: h <= 390 m


BAD = [
    ("empty_file.grib", 2017, 1, [r"empty file \(0 bytes\)"]),
    (
        "era5-levels-corrupted.grib",
        2017,
        1,
        [r"corrupted or truncated GRIB: message 1 at byte 0 of 44136 cannot be read \(Wrong message length\)"],
    ),
    (
        "all_missing_vals.grib",
        2017,
        7,
        [r"variable 'z': all 2304 values are missing \(NaN\)", r"variable 't' \(air temperature\) is missing"],
    ),
    ("t_with_missing.grib", 2018, 8, [r"variable 't': \d+ of 2304 values are missing \(NaN\)"]),
    ("regular_gg_wrong_increment.grib", 2017, 1, [r"cannot decode GRIB: WrongGridError: Grid description is wrong"]),
    ("hpa_and_pa.grib", 2017, 9, [r"missing levels 850, 500 hPa \(file has 1, 0.1, 0.01\)"]),
]


@pytest.mark.parametrize(("name", "year", "month", "problems"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_refused_naming_file_and_problem(
    name: str, year: int, month: int, problems: list[str], tmp_path: Path, config: Callable[..., dict]
) -> None:
    """Each real bad file through the whole local path: a DataError naming it and its problem, no output."""
    path = REAL / "bad" / name
    cfg = config([str(path)], grid={"resolution": 5.0, "lat": [-77.5, 82.5], "lon": [-182.5, 177.5]})  # the files' grid
    before = sorted(p.name for p in (REAL / "bad").iterdir())
    with pytest.raises(DataError) as err:
        download_month(cfg, year, month, str(tmp_path / "raw" / f"{year}-{month:02d}.nc"))
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for problem in problems:
        assert re.search(problem, message), message
    assert list((tmp_path / "raw").iterdir()) == []
    assert sorted(p.name for p in (REAL / "bad").iterdir()) == before  # no index file left beside the data


def test_mixed_hpa_and_pa_levels_are_converted() -> None:
    """hpa_and_pa.grib holds t at 1 hPa (isobaricInhPa) and at 10 and 1 Pa (isobaricInPa): all in hPa."""
    path = REAL / "bad" / "hpa_and_pa.grib"
    ds = canonicalize(open_any(path), "local", str(path))
    assert ds["level"].values.tolist() == [1.0, 0.1, 0.01]
    assert "converted from Pa to hPa" in ds.attrs["conversions"]
    assert float(ds["t"].sel(level=1.0).mean()) == pytest.approx(258.9978, abs=1e-3)
