"""The canonical form, its validation, file opening and atomic writing (geodiff.data.canonical, .validate, .files)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geodiff import __version__
from geodiff.constants import G
from geodiff.data.canonical import DataError, canonicalize, month_times
from geodiff.data.files import grib_inventory, open_any, write_netcdf
from geodiff.data.sources import download_month, download_statics
from geodiff.data.validate import validate
from geodiff.provenance import config_hash

REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(
    not REAL.is_dir() and not os.environ.get("CI"), reason="real sample data ../shared/data/real not present"
)


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


def canonical() -> xr.Dataset:
    """`era5_style` data canonicalised, as from a local file era5.nc."""
    return canonicalize(era5_style(), "local", "era5.nc")


# -- canonicalize ------------------------------------------------------------------------------


def test_canonicalize_era5_names_orientation_and_values() -> None:
    ds = canonicalize(era5_style(), "cds", "era5.nc", request={"variable": ["temperature"], "key": "SECRET"})
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


def test_validate_accepts_good_data(make_config: Callable[..., dict]) -> None:
    validate(canonical(), make_config(), "era5.nc", year=2021, month=2)


def test_validate_refuses_celsius_by_units(make_config: Callable[..., dict]) -> None:
    raw = era5_style()
    raw["t"] = (raw["t"] - 273.15).assign_attrs(units="°C")
    with pytest.raises(DataError, match=r"celsius.nc: .*variable 't' is in degrees Celsius \(units '°C'\)"):
        validate(canonicalize(raw, "local", "celsius.nc"), make_config(), "celsius.nc", year=2021, month=2)


def test_validate_refuses_celsius_by_values(make_config: Callable[..., dict]) -> None:
    raw = era5_style()
    raw["t"] = raw["t"] - 273.15
    raw["t"].attrs = {}
    with pytest.raises(DataError, match=r"c.nc: variable 't' ranges -29.1..-18.7, not air temperature in Kelvin"):
        validate(canonicalize(raw, "local", "c.nc"), make_config(), "c.nc", year=2021, month=2)


def test_validate_nans_refused_unless_allowed(make_config: Callable[..., dict]) -> None:
    ds = canonical().load()
    ds["t"][3, 1, 2, 0] = np.nan
    with pytest.raises(
        DataError,
        match=r"gap.nc: variable 't': 1 of 2688 values are missing \(NaN\), first at "
        r"time=2021-02-02T12, level=850.0, lat=43.0, lon=-2.0.*allow_nans",
    ):
        validate(ds, make_config(), "gap.nc", year=2021, month=2)
    validate(ds, make_config(allow_nans=True), "gap.nc", year=2021, month=2)
    ds["z"][:] = np.nan
    with pytest.raises(DataError, match=r"variable 'z': all 2688 values are missing"):
        validate(ds, make_config(allow_nans=True), "gap.nc", year=2021, month=2)


def test_validate_duplicated_and_missing_times(make_config: Callable[..., dict]) -> None:
    ds = canonical()
    doubled = xr.concat([ds.isel(time=slice(0, 5)), ds.isel(time=slice(4, None))], dim="time")
    with pytest.raises(DataError, match=r"dup.nc: duplicated times: 2021-02-03T00"):
        validate(doubled, make_config(), "dup.nc", year=2021, month=2)
    with pytest.raises(
        DataError,
        match=r"short.nc: missing 6 of 56 expected times: 2021-02-26T00, 2021-02-26T12, "
        r"2021-02-27T00, \.\.\. \(6 in all\)",
    ):
        validate(ds.isel(time=slice(0, 50)), make_config(), "short.nc", year=2021, month=2)
    with pytest.raises(DataError, match=r"hours.nc: times outside the month or data.hours \[0\]: 2021-02-01T12"):
        validate(ds, make_config(hours=[0]), "hours.nc", year=2021, month=2)


def test_validate_missing_levels_and_grid_mismatch(make_config: Callable[..., dict]) -> None:
    ds = canonical()
    config = make_config() | {"levels": [1000, 925, 850, 500]}
    with pytest.raises(DataError, match=r"lv.nc: missing levels 925 hPa \(file has 1000, 850, 500\)"):
        validate(ds, config, "lv.nc", year=2021, month=2)
    moved = make_config()
    moved["grid"]["hr"] = {"resolution": 0.5, "lat": [40.75, 44.75], "lon": [-2.25, 1.75]}
    with pytest.raises(
        DataError,
        match=r"grid.nc: grid does not match the config: file has 4x4 points, lat 41..44, "
        r"lon -2..1, spacing 1 deg; grid.hr wants cell centres 8x8 points",
    ):
        validate(ds, moved, "grid.nc", year=2021, month=2)


def test_validate_statics(make_config: Callable[..., dict]) -> None:
    config = make_config()
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
    ds = canonical()
    write_netcdf(ds, tmp_path / "out" / "2021-02.nc")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["2021-02.nc"]
    back = open_any(tmp_path / "out" / "2021-02.nc")
    history = back.attrs["history"]  # this write's line, then the history the data came with
    assert history.endswith("\n" + ds.attrs["history"]) and "written by geodiff" in history.splitlines()[0]
    expected = ds.assign_attrs(Conventions="CF-1.8", title="GeoDiff 2021-02", history=history)
    xr.testing.assert_identical(back.load(), expected.load())
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
def test_grib_inventory_counts_real_messages() -> None:
    members = grib_inventory(REAL / "era5" / "era5-levels-members.grib")
    assert members == {("t", "isobaricInhPa"): 80, ("z", "isobaricInhPa"): 80}  # 2 levels x 4 times x 10 members
    forecast = grib_inventory(REAL / "era5" / "pl_regular_ll.grib")
    assert forecast.total() == 240 and len(forecast) == 5  # 5 vars x 6 levels x 4 times x 2 steps


# -- the synthetic source through the same path -------------------------------------------------


def test_download_synthetic_month_and_statics_are_canonical(tmp_path: Path, make_config: Callable[..., dict]) -> None:
    config = make_config()
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


def test_download_refuses_unknown_source(tmp_path: Path, make_config: Callable[..., dict]) -> None:
    with pytest.raises(ValueError, match="data.source is 'era6'"):
        download_month(make_config(source="era6"), 2021, 2, str(tmp_path / "x.nc"))
    assert not (tmp_path / "x.nc").exists()


# -- files from other centres (issue 16 point 9) -------------------------------------------------


def cmip_style(t_name: str, z_name: str, z_units: str, standard_names: bool) -> xr.Dataset:
    """`era5_style` data under other names: levels on `plev` in Pa, z as geopotential or its height (gpm)."""
    era5 = era5_style()
    z = era5["z"] / G if z_units in ("m", "gpm") else era5["z"]
    t_attrs = {"units": "K"} | ({"standard_name": "air_temperature"} if standard_names else {})
    z_standard = "geopotential_height" if z_units in ("m", "gpm") else "geopotential"
    z_attrs = ({"units": z_units} if z_units else {}) | ({"standard_name": z_standard} if standard_names else {})
    plev = xr.DataArray(era5["pressure_level"].values * 100.0, dims="plev", attrs={"units": "Pa"})
    return (
        xr.Dataset({t_name: era5["t"].assign_attrs(t_attrs), z_name: z.assign_attrs(z_attrs)})
        .swap_dims(pressure_level="plev")
        .drop_vars("pressure_level")
        .assign_coords(plev=plev)
    )


SPELLINGS = [
    ("T", "Z", "m**2 s**-2", False),  # upper-case ERA5-like names
    ("ta", "zg", "m", True),  # CMIP: geopotential height in m on plev in Pa, CF standard names
    ("TMP", "HGT", "gpm", False),  # GFS GRIB2 abbreviations
    ("t", "gh", "gpm", False),  # cfgrib's GFS names
    ("T", "HGT", "", False),  # no units: HGT is a height by its name
    ("Z_T", "height", "m", True),  # unknown names: found by standard_name alone
    ("air", "phi", "m2 s-2", True),
]


@pytest.mark.parametrize(("t_name", "z_name", "z_units", "standard_names"), SPELLINGS)
def test_common_spellings_of_temperature_and_geopotential(
    t_name: str, z_name: str, z_units: str, standard_names: bool
) -> None:
    """Every spelling gives the same canonical t (K) and z (m2 s-2) as ERA5's own names, levels in hPa."""
    ds = canonicalize(cmip_style(t_name, z_name, z_units, standard_names), "local", "other.nc")
    reference = canonical()
    assert set(ds.data_vars) == {"t", "z"} and ds["level"].values.tolist() == [1000.0, 850.0, 500.0]
    np.testing.assert_array_equal(ds["t"].values, reference["t"].values)
    np.testing.assert_allclose(ds["z"].values, reference["z"].values, rtol=1e-6)
    assert ds["z"].attrs["units"] == "m2 s-2"
    assert "plev: converted from Pa to hPa" in ds.attrs["conversions"]


def test_standard_name_comes_before_the_variable_name() -> None:
    """A `temperature` that is the dew point loses to the variable whose standard_name is air_temperature."""
    raw = era5_style()
    raw = raw.rename(t="air_t").assign(temperature=raw["t"] - 20.0)
    raw["air_t"].attrs["standard_name"] = "air_temperature"
    raw["temperature"].attrs = {"units": "K", "standard_name": "dew_point_temperature"}
    ds = canonicalize(raw, "local", "dew.nc")
    np.testing.assert_array_equal(ds["t"].values, canonical()["t"].values)


def test_geopotential_height_is_multiplied_by_g_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="geodiff.data.canonical")
    ds = canonicalize(cmip_style("ta", "zg", "m", True), "local", "cmip.nc")
    np.testing.assert_allclose(ds["z"].values[0, :, 0, 0], G * np.array([100.0, 1300.0, 4100.0]), rtol=1e-6)
    assert f"cmip.nc: z: geopotential height 'zg' (gpm) multiplied by g = {G} m s-2" in caplog.text


@pytest.mark.parametrize("units", ["C", "degC", "°C", "Celsius"])
def test_units_celsius_with_kelvin_values_say_the_label_is_wrong(
    units: str, make_config: Callable[..., dict]
) -> None:
    """Labelled C but 190..311 K: the message says the units attribute is wrong, not that the data is in C."""
    raw = era5_style()
    raw["t"] = xr.DataArray(np.linspace(190.0, 311.0, raw["t"].size).reshape(raw["t"].shape), dims=raw["t"].dims)
    raw["t"].attrs["units"] = units
    with pytest.raises(DataError) as err:
        validate(canonicalize(raw, "local", "mislabelled.nc"), make_config(), "mislabelled.nc", year=2021, month=2)
    assert str(err.value) == (
        f"mislabelled.nc: variable 't': units say {units} but the values look like K (190.0..311.0): "
        "fix the units attribute"
    )


def test_undecodable_time_in_memory_is_refused() -> None:
    """Integers with units xarray could not decode are not nanoseconds since 1970."""
    raw = era5_style().isel(valid_time=slice(0, 3)).drop_vars("expver")
    raw = raw.assign_coords(valid_time=("valid_time", [0, 1, 2], {"units": "months since 1988-01"}))
    with pytest.raises(
        DataError, match=r"^months.nc: time axis 'time' cannot be decoded into dates \(units 'months since 1988-01'\)"
    ):
        canonicalize(raw, "local", "months.nc")


def test_undecodable_time_in_a_file_is_refused_by_the_local_source(
    tmp_path: Path, make_config: Callable[..., dict]
) -> None:
    """A NetCDF with `months since 1988-01`: refused naming the file and the units; nothing is written."""
    import netCDF4

    path = tmp_path / "monthly.nc"
    era5 = canonical()
    with netCDF4.Dataset(path, "w") as nc:
        for dim in ("time", "level", "lat", "lon"):
            nc.createDimension(dim, 3 if dim == "time" else era5.sizes[dim])
        nc.createVariable("time", "i4", ("time",))[:] = [0, 1, 2]
        nc["time"].units = "months since 1988-01"
        for name in ("level", "lat", "lon"):
            nc.createVariable(name, "f8", (name,))[:] = era5[name].values
            nc[name].units = era5[name].attrs["units"]
        nc.createVariable("t", "f4", ("time", "level", "lat", "lon"))[:] = era5["t"].values[:3]
        nc["t"].units = "K"
    config = make_config("local", month="1988-02", local={"paths": [str(tmp_path / "*.nc")]})
    out = tmp_path / "raw" / "1988-02.nc"
    with pytest.raises(
        DataError,
        match=rf"^{path}: time axis 'time' cannot be decoded into dates \(units 'months since 1988-01'\)",
    ):
        download_month(config, 1988, 2, str(out))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


GRID_POINTS = {"Ni": 4, "Nj": 4, "lat_first": 44.0, "lon_first": 0.0}
"""The test GRIB2 fields: 4 x 4 points, 1 degree, from 44 N 0 E, scanning north to south."""


def field_values(name: str, level: float, hour: int) -> np.ndarray:
    """What the GRIB2 test file holds: a field (4 x 4, rows north to south) that encodes its name, level and hour."""
    lat = GRID_POINTS["lat_first"] - np.arange(GRID_POINTS["Nj"])
    lon = GRID_POINTS["lon_first"] + np.arange(GRID_POINTS["Ni"])
    code = sum(map(ord, name))
    return 200.0 + 0.1 * code + level / 100.0 + hour + lat[:, None] + 0.1 * lon[None, :]


def write_grib2(path: Path, fields: list[tuple[str, str, float, int]]) -> None:
    """GRIB2 messages (shortName, typeOfLevel, level, hour) on 2021-02-01, built from ecCodes' GRIB2 sample."""
    import eccodes

    with open(path, "wb") as out:
        for name, level_type, level, hour in fields:
            handle = eccodes.codes_grib_new_from_samples("GRIB2")
            keys = {
                "gridType": "regular_ll",
                "Ni": GRID_POINTS["Ni"],
                "Nj": GRID_POINTS["Nj"],
                "latitudeOfFirstGridPointInDegrees": GRID_POINTS["lat_first"],
                "longitudeOfFirstGridPointInDegrees": GRID_POINTS["lon_first"],
                "latitudeOfLastGridPointInDegrees": GRID_POINTS["lat_first"] - GRID_POINTS["Nj"] + 1,
                "longitudeOfLastGridPointInDegrees": GRID_POINTS["lon_first"] + GRID_POINTS["Ni"] - 1,
                "iDirectionIncrementInDegrees": 1.0,
                "jDirectionIncrementInDegrees": 1.0,
                "dataDate": 20210201,
                "dataTime": hour * 100,
                "typeOfLevel": level_type,
                "level": level,
                "shortName": name,
            }
            for key, value in keys.items():
                eccodes.codes_set(handle, key, value)
            eccodes.codes_set_values(handle, field_values(name, level, hour).ravel())
            assert (eccodes.codes_get(handle, "shortName"), eccodes.codes_get(handle, "typeOfLevel")) == (
                name,
                level_type,
            )
            eccodes.codes_write(handle, out)
            eccodes.codes_release(handle)


def test_full_forecast_grib2_reads_only_temperature_and_geopotential_height(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A GFS-like pgrb2 file: t and gh on isobaric levels among r (two level types), 2 m and surface fields, winds.

    cfgrib cannot merge such a file into one dataset (``MergeError: conflicting values``); only the
    fields GeoDiff needs are read, and gh (gpm) becomes z = g gh (m2 s-2).
    """
    levels, hours = (500, 850, 1000), (0, 12)
    fields = [(name, "isobaricInhPa", lvl, h) for h in hours for lvl in levels for name in ("t", "gh", "u")]
    fields += [("r", "isobaricInhPa", lvl, h) for h in hours for lvl in (700, 925)]  # other levels than t's
    fields += [("r", "sigma", 9950, h) for h in hours]
    fields += [(name, "heightAboveGround", 2, h) for h in hours for name in ("2t", "2r")]
    fields += [(name, "surface", 0, h) for h in hours for name in ("t", "sp", "orog")]
    path = tmp_path / "gfs.t00z.pgrb2.1p00.f000"
    write_grib2(path, fields)
    caplog.set_level("INFO", logger="geodiff.data")
    ds = canonicalize(open_any(path), "local", str(path))
    assert set(ds.data_vars) == {"t", "z"}
    assert ds["level"].values.tolist() == [1000.0, 850.0, 500.0]
    assert ds["lat"].values.tolist() == [41.0, 42.0, 43.0, 44.0] and ds["lon"].values.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert pd.DatetimeIndex(ds["time"].values).equals(pd.DatetimeIndex(["2021-02-01T00", "2021-02-01T12"]))
    for i, hour in enumerate(hours):
        for k, level in enumerate((1000, 850, 500)):
            want_t = field_values("t", level, hour)[::-1]  # canonical rows run south to north
            np.testing.assert_allclose(ds["t"].values[i, k], want_t, atol=2e-3)
            np.testing.assert_allclose(ds["z"].values[i, k], G * field_values("gh", level, hour)[::-1], rtol=1e-5)
    assert f"{path}: reading gh on isobaricInhPa, t on isobaricInhPa; 22 other GRIB messages" in caplog.text
    assert "gpm" in ds.attrs["conversions"]
    assert list(tmp_path.iterdir()) == [path]  # no index file


def test_grib2_without_temperature_on_pressure_levels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "winds.grib2"
    write_grib2(path, [("u", "isobaricInhPa", 500, 0), ("t", "surface", 0, 0)])
    with pytest.raises(
        DataError,
        match=rf"^{path}: variable 't' \(air temperature\) is missing: no temperature or geopotential on pressure "
        r"levels among the GRIB messages \(t on surface, u on isobaricInhPa\)",
    ):
        open_any(path)
