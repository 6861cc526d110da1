"""The ARCO-ERA5 source on a local Zarr store laid out like the public one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from zarr.storage import LocalStore, WrapperStore

from geodiff.constants import G
from geodiff.data.canonical import month_times
from geodiff.data.sources import download_month, download_statics
from geodiff.data.sources.arco import fetch_month

CHUNKS = (48, 1, 11, 11)
"""Store chunks along (time, level, latitude, longitude): two days, one level, 11 x 11 points."""
LEVELS = np.array([200, 500, 850, 1000])  # ascending, as in ARCO-ERA5
LAT = np.linspace(52.0, 44.0, 33)  # 0.25 degree, north to south
LON = np.concatenate([np.arange(0.0, 4.01, 0.25), np.arange(356.0, 359.9, 0.25)])  # both sides of 0 E, in 0..360
TIMES = pd.date_range("2021-01-28", "2021-03-03T23:00", freq="h")  # hourly, around February


GRID = {"resolution": 0.25, "lat": [45.875, 47.875], "lon": [-1.125, 0.875]}
"""8 x 8 cells of 0.25 degree across the prime meridian (centres 46..47.75 N, -1..0.75 E)."""


@pytest.fixture
def config(make_config: Callable[..., dict]) -> Callable[..., dict]:
    """Configs of the ARCO-ERA5 source at `url` on `GRID` coarsened by 4, 1000/850/500 hPa, 00/12 UTC, February 2021."""

    def build(url: str = "") -> dict:
        return make_config("arco", grid=GRID, scale_factor=4, arco={"url": url})

    return build


def field(seed: int, offset: float, scale: float) -> np.ndarray:
    return (
        offset + scale * np.random.default_rng(seed).standard_normal((len(TIMES), len(LEVELS), len(LAT), len(LON)))
    ).astype("float32")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    """A Zarr v2 store with consolidated metadata, ARCO-ERA5's names, orientation and units; and its content."""
    dims = ("time", "level", "latitude", "longitude")
    surface = np.linspace(0.0, 2000.0, len(LAT) * len(LON)).reshape(len(LAT), len(LON)).astype("float32")
    ds = xr.Dataset(
        {
            "temperature": (dims, field(1, 260.0, 10.0), {"units": "K", "long_name": "Temperature"}),
            "geopotential": (dims, field(2, 3e4, 300.0), {"units": "m**2 s**-2", "long_name": "Geopotential"}),
            "geopotential_at_surface": (("latitude", "longitude"), G * surface, {"units": "m**2 s**-2"}),
            "land_sea_mask": (
                ("time", "latitude", "longitude"),
                np.broadcast_to((surface > 500)[None], (len(TIMES), len(LAT), len(LON))).astype("float32"),
            ),
        },
        coords={"time": TIMES, "level": LEVELS, "latitude": LAT, "longitude": LON},
    )
    path = tmp_path_factory.mktemp("arco") / "full_37-1h-0p25deg-chunk-1.zarr-v3"
    encoding = {v: {"chunks": CHUNKS} for v in ("temperature", "geopotential")}
    encoding["land_sea_mask"] = {"chunks": (48, 11, 11)}
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True, encoding=encoding)
    return path, ds


def subset_chunks(cfg: dict, year: int, month: int) -> set[str]:
    """Keys of the temperature/geopotential chunks that hold the subset of `year`-`month` for config `cfg`."""
    t = TIMES.get_indexer(month_times(year, month, cfg["data"]["hours"]))
    lv = [int(np.flatnonzero(LEVELS == lvl)[0]) for lvl in cfg["levels"]]
    la = np.flatnonzero((LAT > 45.875) & (LAT < 47.875))
    lo = np.flatnonzero((((LON + 180) % 360) - 180 > -1.125) & (((LON + 180) % 360) - 180 < 0.875))
    blocks = [sorted({int(i) // c for i in idx}) for idx, c in zip((t, lv, la, lo), CHUNKS, strict=True)]
    return {f"{v}/{'.'.join(map(str, b))}" for v in ("temperature", "geopotential") for b in product(*blocks)}


class CountingStore(WrapperStore):
    """A read-only Zarr store that records every key it is asked for."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.keys: list[str] = []

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        self.keys += [key for key, _ in key_ranges]
        return await self._store.get_partial_values(prototype, key_ranges)

    def chunks_read(self) -> set[str]:
        return {
            k
            for k in self.keys
            if k.startswith(("temperature/", "geopotential/")) and not k.split("/")[-1].startswith(".")
        }


def test_only_the_subset_chunks_are_read(store: tuple[Path, xr.Dataset], config: Callable[..., dict]) -> None:
    path, _ = store
    counting = CountingStore(LocalStore(path, read_only=True))
    ds, origin = fetch_month(config(), 2021, 2, store=counting)
    assert counting.chunks_read() == set()  # opening, cutting and canonicalising read no data
    assert dict(ds.sizes) == {"time": 56, "level": 3, "lat": 8, "lon": 8}
    ds.load()
    wanted = subset_chunks(config(), 2021, 2)
    assert counting.chunks_read() == wanted
    total = 2 * int(
        np.prod([-(-n // c) for n, c in zip((len(TIMES), len(LEVELS), len(LAT), len(LON)), CHUNKS, strict=True)])
    )
    assert len(wanted) == 2 * 14 * 3 * 2 * 2 and total == 2 * 18 * 4 * 3 * 3  # 336 of 1296 chunks


def test_download_month_reads_nothing_outside_the_subset(
    store: tuple[Path, xr.Dataset], tmp_path: Path, config: Callable[..., dict]
) -> None:
    """With every other chunk deleted, the month still comes out complete and exact (a read outside would be NaN)."""
    path, content = store
    copy = tmp_path / "store.zarr"
    shutil.copytree(path, copy)
    keep = subset_chunks(config(), 2021, 2)
    removed = 0
    for var in ("temperature", "geopotential"):
        for chunk in (copy / var).iterdir():
            if not chunk.name.startswith(".") and f"{var}/{chunk.name}" not in keep:
                chunk.unlink()
                removed += 1
    assert removed == 1296 - 336
    out = tmp_path / "raw" / "2021-02.nc"
    download_month(config(str(copy)), 2021, 2, str(out))
    expected = content.sel(time=month_times(2021, 2, [0, 12]), level=[1000, 850, 500])
    expected = expected.isel(latitude=slice(17, 25)).isel(latitude=slice(None, None, -1))  # 46.0 .. 47.75 ascending
    columns = [29, 30, 31, 32, 0, 1, 2, 3]  # 359.0 .. 359.75 (= -1 .. -0.25), then 0 .. 0.75
    with xr.open_dataset(out) as ds:
        assert ds["lat"].values.tolist() == [46.0 + 0.25 * i for i in range(8)]
        assert ds["lon"].values.tolist() == [-1.0 + 0.25 * i for i in range(8)]
        np.testing.assert_array_equal(ds["t"].values, expected["temperature"].isel(longitude=columns).values)
        np.testing.assert_array_equal(ds["z"].values, expected["geopotential"].isel(longitude=columns).values)
        assert ds.attrs["source"] == "arco" and ds.attrs["source_file"] == str(copy)


def test_statics_from_the_store(store: tuple[Path, xr.Dataset], tmp_path: Path, config: Callable[..., dict]) -> None:
    path, content = store
    out = tmp_path / "statics.nc"
    download_statics(config(str(path)), str(out))
    columns = [29, 30, 31, 32, 0, 1, 2, 3]
    surface = content["geopotential_at_surface"].isel(latitude=slice(24, 16, -1), longitude=columns).values
    with xr.open_dataset(out) as ds:
        np.testing.assert_allclose(ds["orography"].values, surface / G, rtol=1e-6)
        np.testing.assert_array_equal(ds["lsm"].values, (surface / G > 500).astype("float32"))


def test_missing_month_is_reported_with_the_store(
    store: tuple[Path, xr.Dataset], tmp_path: Path, config: Callable[..., dict]
) -> None:
    path, _ = store
    out = tmp_path / "2021-04.nc"
    with pytest.raises(ValueError, match=rf"{path.name} \(2021-04\): .*missing 60 of 60 expected times"):
        download_month(config(str(path)), 2021, 4, str(out))
    assert list(tmp_path.iterdir()) == []
