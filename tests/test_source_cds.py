"""The CDS source with the real cdsapi client against a local CDS (tests/cds_server.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from cds_server import SAMPLE_GRID, CDSServer, build_month_grib, build_statics_grib

from geodiff.constants import G
from geodiff.data.sources import download_month, download_statics
from geodiff.data.sources.cds import CdsCredentialsError, CdsError, build_request, build_statics_request

REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
SAMPLE = REAL / "era5" / "era5-levels-members.grib"
pytestmark = pytest.mark.skipif(
    not REAL.is_dir() and not os.environ.get("CI"), reason="real sample data ../shared/data/real not present"
)
KEY = "0123abcd-4567-89ef-fake-cdskey000000"
DAYS = [f"{d:02d}" for d in range(1, 29)]
REQUEST = {
    "product_type": ["reanalysis"],
    "variable": ["temperature", "geopotential"],
    "pressure_level": ["850", "500"],
    "year": ["2017"],
    "month": ["02"],
    "day": DAYS,
    "time": ["00:00", "12:00"],
    "area": [63.0, -9.0, 30.0, 24.0],
    "grid": [3.0, 3.0],
    "data_format": "grib",
    "download_format": "unarchived",
}
"""What CDS must receive for `config()` and February 2017."""


@pytest.fixture
def config(make_config: Callable[..., dict]) -> Callable[..., dict]:
    """Configs of the CDS source on `SAMPLE_GRID` (on ERA5's 3 degree lattice), 850/500 hPa, 00/12 UTC, February 2017.

    Keywords go into ``data.cds``.
    """

    def build(**cds: object) -> dict:
        options = {"format": "grib", "retries": 3, "retry_wait": 0.05, "timeout": 10, **cds}
        return make_config("cds", month="2017-02", grid=SAMPLE_GRID, levels=(850, 500), cds=options)

    return build


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """February 2017 as CDS would send it: GRIB, and NetCDF in the current CDS layout; statics GRIB."""
    folder = tmp_path_factory.mktemp("cds-payloads")
    grib = build_month_grib(SAMPLE, folder / "feb.grib", 2017, 2, [0, 12])
    with xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""}) as ds:
        nc = ds.swap_dims(time="valid_time").drop_vars(["time", "step"]).rename(isobaricInhPa="pressure_level")
        nc = nc.assign_coords(expver=("valid_time", np.array(["0001"] * nc.sizes["valid_time"])))
        nc.load().to_netcdf(folder / "feb.nc")
    return {"grib": grib, "netcdf": folder / "feb.nc", "statics": build_statics_grib(SAMPLE, folder / "statics.grib")}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CDS credentials anywhere (HOME and CDSAPI_RC point into tmp_path); returns that home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CDSAPI_RC", str(home / ".cdsapirc"))
    monkeypatch.delenv("CDSAPI_URL", raising=False)
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    return home


def use(server: CDSServer, monkeypatch: pytest.MonkeyPatch) -> CDSServer:
    monkeypatch.setenv("CDSAPI_URL", server.url)
    monkeypatch.setenv("CDSAPI_KEY", KEY)
    return server


def expected_t(day: int, hour: int, level: int, lat: float, lon_east: float) -> float:
    """t (K) that build_month_grib wrote: the sample's member 0 at 2017-01-01 00 UTC + 0.05 (day - 1) + 0.01 hour."""
    with xr.open_dataset(SAMPLE, engine="cfgrib", backend_kwargs={"indexpath": ""}) as ds:
        base = float(ds["t"].sel(number=0, isobaricInhPa=level, latitude=lat, longitude=lon_east % 360).isel(time=0))
    return base + 0.05 * (day - 1) + 0.01 * hour


def test_build_request_is_exact(config: Callable[..., dict]) -> None:
    assert build_request(config(), 2017, 2) == REQUEST
    assert build_request(config(format="netcdf"), 2016, 2)["day"][-1] == "29"  # leap year
    assert build_statics_request(config()) == {
        "product_type": ["reanalysis"],
        "variable": ["geopotential", "land_sea_mask"],
        "year": ["2017"],
        "month": ["02"],
        "day": ["01"],
        "time": ["00:00"],
        "area": [63.0, -9.0, 30.0, 24.0],
        "grid": [3.0, 3.0],
        "data_format": "grib",
        "download_format": "unarchived",
    }


def test_build_request_refuses_a_grid_off_the_era5_lattice(config: Callable[..., dict]) -> None:
    shifted = config()
    shifted["grid"]["hr"]["lat"] = [30.0, 66.0]  # centres 31.5, 34.5, ...: CDS would answer on 30, 33, ...
    with pytest.raises(ValueError, match=r"grid.hr: lat cell centres \(first 31.5\) are not on the 3 degree lattice"):
        build_request(shifted, 2017, 2)


def test_month_download_sends_exact_request_and_writes_canonical_data(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    """accepted -> running -> successful, then the GRIB is canonicalised, cut and written."""
    out = tmp_path / "raw" / "2017-02.nc"
    with use(CDSServer(payloads["grib"], KEY), monkeypatch) as server:
        download_month(config(), 2017, 2, str(out))
    assert server.requests == [{"dataset": "reanalysis-era5-pressure-levels", "inputs": REQUEST}]
    assert server.submissions == 1 and server.downloads == [None]
    assert set(server.tokens) == {KEY}
    assert [job.polls for job in server.jobs.values()] == [4]  # accepted, running, successful, + results link
    assert sorted(p.name for p in out.parent.iterdir()) == ["2017-02.nc"]  # raw GRIB and temporaries gone
    with xr.open_dataset(out) as ds:
        assert dict(ds.sizes) == {"time": 56, "level": 2, "lat": 12, "lon": 12}
        assert ds["lat"].values[[0, -1]].tolist() == [30.0, 63.0] and ds["lon"].values[[0, -1]].tolist() == [-9.0, 24.0]
        got = float(ds["t"].sel(time="2017-02-03T12", level=500, lat=45, lon=6))
        assert got == pytest.approx(expected_t(3, 12, 500, 45, 6), abs=5e-3)
        got = float(ds["t"].sel(time="2017-02-28T00", level=850, lat=30, lon=-9))
        assert got == pytest.approx(expected_t(28, 0, 850, 30, -9), abs=5e-3)
        assert ds.attrs["source"] == "cds"


def test_retry_after_server_errors(
    payloads: dict[str, Path],
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    config: Callable[..., dict],
) -> None:
    """Two HTTP 500 answers to the submission, then success on the third (of retries: 3) attempt."""
    out = tmp_path / "2017-02.nc"
    with use(CDSServer(payloads["grib"], KEY, fail_first=2, statuses=("successful",)), monkeypatch) as server:
        download_month(config(), 2017, 2, str(out))
    assert server.submissions == 3 and len(server.requests) == 1
    assert caplog.text.count("Recovering from HTTP error [500") == 2
    assert out.is_file()


def test_retries_exhausted_leave_no_file(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    out = tmp_path / "raw" / "2017-02.nc"
    with use(CDSServer(payloads["grib"], KEY, fail_first=3, statuses=("successful",)), monkeypatch) as server:
        with pytest.raises(
            CdsError,
            match=r"CDS request to reanalysis-era5-pressure-levels failed \(data.cds.retries: 3\): "
            r"HTTPError: 500 Server Error",
        ):
            download_month(config(), 2017, 2, str(out))
    assert server.submissions == 3
    assert list(out.parent.iterdir()) == []


def test_broken_transfer_is_resumed(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    out = tmp_path / "2017-02.nc"
    with use(CDSServer(payloads["grib"], KEY, cut_transfers=1, statuses=("successful",)), monkeypatch) as server:
        download_month(config(), 2017, 2, str(out))
    assert len(server.downloads) == 2 and server.downloads[0] is None
    assert server.downloads[1].startswith("bytes=")  # the second attempt continued where the first broke
    with xr.open_dataset(out) as ds:
        assert ds.sizes["time"] == 56
        assert float(ds["t"].sel(time="2017-02-03T12", level=500, lat=45, lon=6)) == pytest.approx(
            expected_t(3, 12, 500, 45, 6), abs=5e-3
        )


def test_transfer_broken_every_time_leaves_no_file(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    out = tmp_path / "raw" / "2017-02.nc"
    with use(CDSServer(payloads["grib"], KEY, cut_transfers=100, statuses=("successful",)), monkeypatch) as server:
        with pytest.raises(CdsError, match=r"failed \(data.cds.retries: 3\): ChunkedEncodingError"):
            download_month(config(), 2017, 2, str(out))
    assert len(server.downloads) == 3
    assert list(out.parent.iterdir()) == []  # neither the NetCDF, nor a partial GRIB, nor a temporary folder


def test_failed_job_reports_the_server_message(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    with use(CDSServer(payloads["grib"], KEY, statuses=("failed",)), monkeypatch):
        with pytest.raises(CdsError, match="400 Client Error.* / The job has failed / MARS returned no data$") as err:
            download_month(config(), 2017, 2, str(tmp_path / "2017-02.nc"))
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "home"]


def test_missing_key_gives_one_line_that_says_how_to_set_it(
    env: Path, tmp_path: Path, config: Callable[..., dict]
) -> None:
    with pytest.raises(CdsCredentialsError) as err:
        download_month(config(), 2017, 2, str(tmp_path / "raw" / "2017-02.nc"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("CDS API key not found")
    assert "~/.cdsapirc" in message and "CDSAPI_KEY" in message and "key: " in message
    assert list((tmp_path / "raw").iterdir()) == []


def test_credentials_from_cdsapirc(
    payloads: dict[str, Path], env: Path, tmp_path: Path, config: Callable[..., dict]
) -> None:
    with CDSServer(payloads["grib"], KEY, statuses=("successful",)) as server:
        (env / ".cdsapirc").write_text(f"url: {server.url}\nkey: {KEY}\n")
        download_month(config(), 2017, 2, str(tmp_path / "2017-02.nc"))
    assert set(server.tokens) == {KEY} and len(server.requests) == 1


def test_key_never_reaches_logs_or_outputs(
    payloads: dict[str, Path],
    env: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    config: Callable[..., dict],
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "raw" / "2017-02.nc"
    with use(CDSServer(payloads["grib"], KEY), monkeypatch) as server:
        download_month(config(), 2017, 2, str(out))
    assert set(server.tokens) == {KEY}  # the key was used ...
    assert "'key': '***'" in caplog.text  # ... cdsapi logged its settings, redacted ...
    assert "status has been updated to running" in caplog.text
    assert KEY not in caplog.text  # ... and it appears nowhere in the log
    assert all(KEY not in str(r.args) for r in caplog.records)
    with xr.open_dataset(out) as ds:
        assert all(KEY not in str(v) for v in ds.attrs.values())
        assert all(KEY not in str(v) for name in ds.variables for v in ds[name].attrs.values())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


def test_netcdf_format(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    """data.cds.format: netcdf asks CDS for NetCDF (valid_time, pressure_level, ...) and gives the same data."""
    out = tmp_path / "2017-02.nc"
    with use(CDSServer(payloads["netcdf"], KEY, statuses=("successful",)), monkeypatch) as server:
        download_month(config(format="netcdf"), 2017, 2, str(out))
    assert server.requests[0]["inputs"] == REQUEST | {"data_format": "netcdf"}
    with xr.open_dataset(out) as ds:
        assert float(ds["t"].sel(time="2017-02-03T12", level=500, lat=45, lon=6)) == pytest.approx(
            expected_t(3, 12, 500, 45, 6), abs=5e-3
        )


def test_statics_from_single_levels(
    payloads: dict[str, Path], env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, config: Callable[..., dict]
) -> None:
    """Orography = surface geopotential / g, land-sea mask as sent, on the fine grid."""
    out = tmp_path / "statics.nc"
    with use(CDSServer(payloads["statics"], KEY, statuses=("successful",)), monkeypatch) as server:
        download_statics(config(), str(out))
    assert server.requests[0]["dataset"] == "reanalysis-era5-single-levels"
    assert server.requests[0]["inputs"]["variable"] == ["geopotential", "land_sea_mask"]
    with xr.open_dataset(payloads["statics"], engine="cfgrib", backend_kwargs={"indexpath": ""}) as sent:
        z = sent["z"].sel(latitude=slice(63, 30)).sel(longitude=[351, 354, 357, *range(0, 25, 3)]).values[::-1]
        lsm = sent["lsm"].sel(latitude=slice(63, 30)).sel(longitude=[351, 354, 357, *range(0, 25, 3)]).values[::-1]
    with xr.open_dataset(out) as ds:
        assert set(ds.data_vars) == {"orography", "lsm"} and ds["orography"].shape == (12, 12)
        np.testing.assert_allclose(ds["orography"].values, z / G, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(ds["lsm"].values, lsm)
        assert ds["orography"].attrs["units"] == "m"
