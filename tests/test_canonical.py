"""The canonical form, its validation, file opening and atomic writing (geodiff.data.canonical)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geodiff import __version__
from geodiff.constants import G
from geodiff.data.canonical import (
    DataError,
    canonicalize,
    check_grib,
    month_times,
    open_any,
    validate,
    write_netcdf,
)
from geodiff.data.sources import download_month, download_statics
from geodiff.provenance import config_hash

REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(
    not REAL.is_dir() and not os.environ.get("CI"), reason="real sample data ../shared/data/real not present"
)


def small_config(**data: object) -> dict:
    """A 4x4 one-degree grid (centres 41..44 N, -2..1 E), three levels, two hours a day."""
    return {
        "seed": 3,
        "data": {
            "source": "synthetic",
            "period": {"start": "2021-02", "end": "2021-02"},
            "hours": [0, 12],
            "allow_nans": False,
            **data,
        },
        "grid": {"hr": {"resolution": 1.0, "lat": [40.5, 44.5], "lon": [-2.5, 1.5]}, "scale_factor": 2},
        "levels": [1000, 850, 500],
    }


def t_formula(time_index: np.ndarray, level: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """A temperature (K) that encodes its coordinates: lon in degrees east within [-180, 180)."""
    return 230.0 + 0.1 * lat + 0.01 * lon + level / 50.0 + 0.001 * time_index


def era5_style(year: int = 2021, month: int = 2, hours: tuple[int, ...] = (0, 12)) -> xr.Dataset:
    """Like a CDS NetCDF: valid_time, pressure_level (ascending), latitude north->south, longitude 0..360."""
    times = month_times(year, month, hours)
    levels = np.array([500.0, 850.0, 1000.0])
    lat = np.array([44.0, 43.0, 42.0, 41.0])
    lon = np.array([0.0, 1.0, 358.0, 359.0])
    i, p, la, lo = np.meshgrid(np.arange(len(times)), levels, lat, np.where(lon >= 180, lon - 360, lon), indexing="ij")
    t = t_formula(i, p, la, lo)
    z = G * (100.0 + 8.0 * (1000.0 - p)) + 0 * t
    dims = ("valid_time", "pressure_level", "latitude", "longitude")
    return xr.Dataset(
        {"t": (dims, t.astype("float32"), {"units": "K"}), "z": (dims, z.astype("float32"), {"units": "m**2 s**-2"})},
        coords={
            "valid_time": times,
            "pressure_level": ("pressure_level", levels, {"units": "hPa"}),
            "latitude": lat,
            "longitude": lon,
            "number": 0,
            "expver": ("valid_time", np.array(["0001"] * len(times))),
        },
        attrs={"GRIB_centre": "ecmf", "Conventions": "CF-1.7"},
    )


def canonical(config: dict | None = None) -> xr.Dataset:
    """`era5_style` data canonicalised, as from a local file era5.nc."""
    return canonicalize(era5_style(), "local", "era5.nc", config=config)


# -- canonicalize ------------------------------------------------------------------------------


def test_canonicalize_era5_names_orientation_and_values() -> None:
    config = small_config()
    ds = canonicalize(
        era5_style(), "cds", "era5.nc", request={"variable": ["temperature"], "key": "SECRET"}, config=config
    )
    assert ds["t"].dims == ("time", "level", "lat", "lon")
    assert ds["lat"].values.tolist() == [41.0, 42.0, 43.0, 44.0]
    assert ds["lon"].values.tolist() == [-2.0, -1.0, 0.0, 1.0]  # 358, 359 rolled to the west
    assert ds["level"].values.tolist() == [1000.0, 850.0, 500.0]  # surface upward
    assert ds["t"].dtype == np.float32 and ds["z"].dtype == np.float32
    i, p, la, lo = np.meshgrid(np.arange(ds.sizes["time"]), ds["level"], ds["lat"], ds["lon"], indexing="ij")
    np.testing.assert_allclose(ds["t"].values, t_formula(i, p, la, lo), atol=1e-4)
    np.testing.assert_allclose(
        ds["z"].isel(time=0, lat=0, lon=0).values, G * np.array([100.0, 1300.0, 4100.0]), rtol=1e-6
    )
    assert ds["t"].attrs["units"] == "K" and ds["t"].attrs["standard_name"] == "air_temperature"
    assert ds["z"].attrs["units"] == "m2 s-2" and ds["level"].attrs["units"] == "hPa"
    assert set(ds.coords) == {"time", "level", "lat", "lon"}  # number, expver dropped
    assert ds.attrs["source"] == "cds" and ds.attrs["geodiff_version"] == __version__
    assert ds.attrs["config_hash"] == config_hash(config)
    assert json.loads(ds.attrs["source_request"]) == {"variable": ["temperature"]}  # the key is scrubbed
    assert "SECRET" not in json.dumps(ds.attrs)


def test_canonicalize_gfs_style_pa_levels_and_geopotential_height() -> None:
    """Levels in Pa become hPa; geopotential height (gpm) becomes geopotential (m2 s-2); both noted."""
    height = np.array([5574.0, 1457.0, 110.0])  # gpm at 500, 850, 1000 hPa, in the file's order
    raw = xr.Dataset(
        {
            "Temperature_isobaric": (
                ("time", "isobaric3", "lat", "lon"),
                np.full((1, 3, 2, 2), 270.0, "float32"),
                {"units": "K"},
            ),
            "Geopotential_height_isobaric": (
                ("time", "isobaric3", "lat", "lon"),
                np.broadcast_to(height[None, :, None, None], (1, 3, 2, 2)).astype("float32"),
                {"units": "gpm"},
            ),
        },
        coords={
            "time": [np.datetime64("2010-10-26T12")],
            "isobaric3": ("isobaric3", [50000.0, 85000.0, 100000.0], {"units": "Pa"}),
            "lat": [65.0, 64.0],
            "lon": [250.0, 251.0],
        },
    )
    ds = canonicalize(raw, "local", "gfs.nc")
    assert ds["level"].values.tolist() == [1000.0, 850.0, 500.0]
    np.testing.assert_allclose(ds["z"].values[0, :, 0, 0], G * height[::-1], rtol=1e-6)
    assert ds["lon"].values.tolist() == [-110.0, -109.0] and ds["lat"].values.tolist() == [64.0, 65.0]
    assert "Pa to hPa" in ds.attrs["conversions"] and "gpm" in ds.attrs["conversions"]
    assert ds["level"].attrs["comment"] == "converted from Pa"


def test_canonicalize_is_idempotent() -> None:
    once = canonical()
    twice = canonicalize(once, "local")
    xr.testing.assert_identical(once.drop_attrs(), twice.drop_attrs())
    assert twice.attrs["source_file"] == "era5.nc"


def test_canonicalize_keeps_celsius_units_for_validate_to_refuse() -> None:
    raw = era5_style()
    raw["t"] = (raw["t"] - 273.15).assign_attrs(units="degC")
    ds = canonicalize(raw, "local", "celsius.nc")
    assert ds["t"].attrs["units"] == "degC"
    assert float(ds["t"].max()) < 60.0  # not converted


def test_canonicalize_refuses_files_without_temperature_or_grid() -> None:
    raw = era5_style().drop_vars(["t", "z"]).assign(u=era5_style()["t"])
    with pytest.raises(DataError, match=r"wind.nc: variable 't' \(air temperature\) is missing"):
        canonicalize(raw, "local", "wind.nc")
    with pytest.raises(DataError, match="nolat.nc: no latitude coordinate"):
        canonicalize(era5_style().rename(latitude="y"), "local", "nolat.nc")


def test_canonicalize_statics_from_surface_geopotential() -> None:
    lat, lon = [44.0, 43.0, 42.0, 41.0], [0.0, 1.0, 358.0, 359.0]
    z = np.arange(16.0).reshape(4, 4) * 100.0 * G
    raw = xr.Dataset(
        {
            "z": (("valid_time", "latitude", "longitude"), z[None], {"units": "m**2 s**-2"}),
            "lsm": (("valid_time", "latitude", "longitude"), np.ones((1, 4, 4))),
        },
        coords={"valid_time": [np.datetime64("2021-02-01")], "latitude": lat, "longitude": lon},
    )
    ds = canonicalize(raw, "cds")
    assert set(ds.data_vars) == {"orography", "lsm"} and ds["orography"].dims == ("lat", "lon")
    # orography = z / g, rows flipped to south->north, columns rolled to -2, -1, 0, 1
    np.testing.assert_allclose(ds["orography"].values[0], [1400.0, 1500.0, 1200.0, 1300.0], rtol=1e-6)
    assert ds["orography"].attrs["units"] == "m"


# -- validate --------------------------------------------------------------------------------


def test_validate_accepts_good_data() -> None:
    validate(canonical(), small_config(), "era5.nc", year=2021, month=2)


def test_validate_refuses_celsius_by_units() -> None:
    raw = era5_style()
    raw["t"] = (raw["t"] - 273.15).assign_attrs(units="°C")
    with pytest.raises(DataError, match=r"celsius.nc: .*variable 't' is in degrees Celsius \(units '°C'\)"):
        validate(canonicalize(raw, "local", "celsius.nc"), small_config(), "celsius.nc", year=2021, month=2)


def test_validate_refuses_celsius_by_values() -> None:
    raw = era5_style()
    raw["t"] = raw["t"] - 273.15
    raw["t"].attrs = {}
    with pytest.raises(DataError, match=r"c.nc: variable 't' ranges -29.1..-18.7, not air temperature in Kelvin"):
        validate(canonicalize(raw, "local", "c.nc"), small_config(), "c.nc", year=2021, month=2)


def test_validate_nans_refused_unless_allowed() -> None:
    ds = canonical().load()
    ds["t"][3, 1, 2, 0] = np.nan
    with pytest.raises(
        DataError,
        match=r"gap.nc: variable 't': 1 of 2688 values are missing \(NaN\), first at "
        r"time=2021-02-02T12, level=850.0, lat=43.0, lon=-2.0.*allow_nans",
    ):
        validate(ds, small_config(), "gap.nc", year=2021, month=2)
    validate(ds, small_config(allow_nans=True), "gap.nc", year=2021, month=2)
    ds["z"][:] = np.nan
    with pytest.raises(DataError, match=r"variable 'z': all 2688 values are missing"):
        validate(ds, small_config(allow_nans=True), "gap.nc", year=2021, month=2)


def test_validate_duplicated_and_missing_times() -> None:
    ds = canonical()
    doubled = xr.concat([ds.isel(time=slice(0, 5)), ds.isel(time=slice(4, None))], dim="time")
    with pytest.raises(DataError, match=r"dup.nc: duplicated times: 2021-02-03T00"):
        validate(doubled, small_config(), "dup.nc", year=2021, month=2)
    with pytest.raises(
        DataError,
        match=r"short.nc: missing 6 of 56 expected times: 2021-02-26T00, 2021-02-26T12, "
        r"2021-02-27T00, \.\.\. \(6 in all\)",
    ):
        validate(ds.isel(time=slice(0, 50)), small_config(), "short.nc", year=2021, month=2)
    with pytest.raises(DataError, match=r"hours.nc: times outside the month or data.hours \[0\]: 2021-02-01T12"):
        validate(ds, small_config(hours=[0]), "hours.nc", year=2021, month=2)


def test_validate_missing_levels_and_grid_mismatch() -> None:
    ds = canonical()
    config = small_config() | {"levels": [1000, 925, 850, 500]}
    with pytest.raises(DataError, match=r"lv.nc: missing levels 925 hPa \(file has 1000, 850, 500\)"):
        validate(ds, config, "lv.nc", year=2021, month=2)
    moved = small_config()
    moved["grid"]["hr"] = {"resolution": 0.5, "lat": [40.75, 44.75], "lon": [-2.25, 1.75]}
    with pytest.raises(
        DataError,
        match=r"grid.nc: grid does not match the config: file has 4x4 points, lat 41..44, "
        r"lon -2..1, spacing 1 deg; grid.hr wants cell centres 8x8 points",
    ):
        validate(ds, moved, "grid.nc", year=2021, month=2)


def test_validate_statics() -> None:
    config = small_config()
    lat, lon = np.arange(41.0, 45.0), np.arange(-2.0, 2.0)
    good = xr.Dataset(
        {
            "orography": (("lat", "lon"), np.full((4, 4), 300.0, "float32")),
            "lsm": (("lat", "lon"), np.full((4, 4), 0.5, "float32")),
        },
        coords={"lat": lat, "lon": lon},
    )
    validate(good, config, "statics.nc")
    bad = good.assign(lsm=good["lsm"] * 100.0)
    with pytest.raises(DataError, match=r"statics.nc: variable 'lsm' ranges 50..50, expected a land fraction in 0..1"):
        validate(bad, config, "statics.nc")


# -- files -----------------------------------------------------------------------------------


def test_write_netcdf_round_trip_leaves_no_temporary(tmp_path: Path) -> None:
    ds = canonical(small_config())
    write_netcdf(ds, tmp_path / "out" / "2021-02.nc")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["2021-02.nc"]
    back = open_any(tmp_path / "out" / "2021-02.nc")
    xr.testing.assert_identical(back.load(), ds.load())
    back.close()


def test_write_netcdf_failure_leaves_old_file_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "2021-02.nc"
    write_netcdf(canonical(), target)
    before = target.read_bytes()
    broken = canonical().assign_attrs(unwritable={"a": 1})  # a dict attribute: netCDF cannot store it
    with pytest.raises(TypeError):
        write_netcdf(broken, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["2021-02.nc"]


def test_open_any_refuses_empty_truncated_and_unknown_files(tmp_path: Path) -> None:
    (tmp_path / "empty.nc").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.nc: empty file \(0 bytes\)"):
        open_any(tmp_path / "empty.nc")
    write_netcdf(canonical(), tmp_path / "whole.nc")
    data = (tmp_path / "whole.nc").read_bytes()
    (tmp_path / "cut.nc").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.nc: cannot open NetCDF, truncated or corrupted"):
        open_any(tmp_path / "cut.nc")
    (tmp_path / "notes.txt").write_text("temperature, K\n")
    with pytest.raises(DataError, match=r"notes.txt: neither GRIB nor NetCDF"):
        open_any(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"absent.grib: file not found"):
        open_any(tmp_path / "absent.grib")


@needs_real
def test_truncated_real_grib_is_refused(tmp_path: Path) -> None:
    """cfgrib alone would return the first 66 fields; the ecCodes scan refuses the file."""
    data = (REAL / "era5" / "era5-levels-members.grib").read_bytes()
    (tmp_path / "cut.grib").write_bytes(data[:1_000_000])
    with pytest.raises(DataError, match=r"cut.grib: corrupted or truncated GRIB: message 68 at byte 988912 of 1000000"):
        open_any(tmp_path / "cut.grib")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.grib"]  # no index file


@needs_real
def test_check_grib_counts_real_messages() -> None:
    assert check_grib(REAL / "era5" / "era5-levels-members.grib") == 160  # 2 vars x 2 levels x 4 times x 10 members
    assert check_grib(REAL / "era5" / "pl_regular_ll.grib") == 240  # 5 vars x 6 levels x 4 times x 2 steps


# -- the synthetic source through the same path -------------------------------------------------


def test_download_synthetic_month_and_statics_are_canonical(tmp_path: Path) -> None:
    config = small_config()
    download_month(config, 2021, 2, str(tmp_path / "raw" / "2021-02.nc"))
    download_statics(config, str(tmp_path / "raw" / "statics.nc"))
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["2021-02.nc", "statics.nc"]
    with xr.open_dataset(tmp_path / "raw" / "2021-02.nc") as ds:
        assert ds["t"].dims == ("time", "level", "lat", "lon") and ds.sizes["time"] == 56
        assert ds["level"].values.tolist() == [1000.0, 850.0, 500.0]
        assert pd.DatetimeIndex(ds["time"].values).equals(month_times(2021, 2, [0, 12]))
        assert ds.attrs["source"] == "synthetic" and ds.attrs["config_hash"] == config_hash(config)
        assert 180.0 < float(ds["t"].min()) and float(ds["t"].max()) < 330.0
    with xr.open_dataset(tmp_path / "raw" / "statics.nc") as st:
        assert set(st.data_vars) == {"orography", "lsm"} and st["orography"].dims == ("lat", "lon")


def test_download_refuses_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.source is 'era6'"):
        download_month(small_config(source="era6"), 2021, 2, str(tmp_path / "x.nc"))
    assert not (tmp_path / "x.nc").exists()
