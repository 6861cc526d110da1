"""The built-in synthetic atmosphere: reproducible, physically consistent, hard to downscale."""

import numpy as np
import pytest
import yaml

from geodiff.constants import G
from geodiff.data.lowres import lowres_dataset, make_regridder
from geodiff.data.synthetic import fractal_field, synthetic_month, synthetic_statics
from geodiff.physics.thermo import hypsometric_height, lapse_rate

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    with open(ROOT / "config/config.yaml") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def july(config):
    return synthetic_month(config, 2001, 7)


def test_same_seed_same_atmosphere(config, july):
    again = synthetic_month(config, 2001, 7)
    np.testing.assert_array_equal(july["t"].values, again["t"].values)
    np.testing.assert_array_equal(july["z"].values, again["z"].values)
    other = synthetic_month({**config, "seed": config["seed"] + 1}, 2001, 7)
    assert np.abs(other["t"].values - july["t"].values).max() > 0.5


def test_canonical_form(config, july):
    assert july["t"].dims == ("time", "level", "lat", "lon")
    assert july["t"].dtype == np.float32 and july["t"].attrs["units"] == "K"
    assert list(july["level"].values) == config["levels"]
    assert np.all(np.diff(july["lat"].values) > 0) and np.all(np.diff(july["lon"].values) > 0)
    assert july.sizes["time"] == 31 * len(config["data"]["hours"])
    assert 190 < float(july["t"].min()) and float(july["t"].max()) < 330


def test_free_troposphere_lapse_rate_in_range(july):
    """At 500 hPa (above the boundary layer, below the tropopause) 98 % of Γ lies in 3.5-10 K/km.

    The base profile's Γ is held within 4-9.8 K/km; fronts and perturbations may locally exceed it."""
    t = july["t"].values.astype(np.float64)
    gamma = lapse_rate(t, july["z"].values / G, axis=1)
    free = gamma[:, list(july["level"].values).index(500)]
    assert np.quantile(free, 0.01) > 3.5 and np.quantile(free, 0.99) < 10.0
    assert 5.5 < free.mean() < 8.5


def test_geopotential_is_hypsometric(july):
    """z/g equals the hypsometric heights of T from the 1000 hPa height, to float32 rounding (< 0.05 m)."""
    t = july["t"].values.astype(np.float64)
    height = july["z"].values.astype(np.float64) / G
    rebuilt = hypsometric_height(t, july["level"].values, axis=1, z_bottom=height[:, 0])
    assert np.abs(rebuilt - height).max() < 0.05


def test_perturbation_spectrum_slope():
    """The fine-scale perturbations have an energy spectrum E(k) ~ k^-5/3: fitted slope in [-2.0, -1.4]."""
    field = fractal_field(np.random.default_rng(0), (64, 128, 128), slope=5 / 3)
    power = np.abs(np.fft.fft2(field)) ** 2
    k = np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(128) * 128, np.fft.fftfreq(128) * 128, indexing="ij")))
    ks = np.arange(2, 60)
    energy = np.array([power[:, k == i].sum(axis=1).mean() for i in ks])
    slope = np.polyfit(np.log(ks), np.log(energy), 1)[0]
    assert -2.0 < slope < -1.4


def test_statics(config):
    statics = synthetic_statics(config)
    assert statics["orography"].attrs["units"] == "m"
    assert float(statics["orography"].min()) == 0.0 and 1000 < float(statics["orography"].max()) < 5000
    assert set(np.unique(statics["lsm"].values)) <= {0.0, 1.0}
    assert float(statics["orography"].where(statics["lsm"] == 0).max()) == 0.0


def test_coarse_grid_loses_information(config, july):
    """Bicubic from the conservative coarse field misses more than 0.5 K RMSE on the default config."""
    regridders = {m: make_regridder(config["grid"], m) for m in ("conservative", "bicubic")}
    low = lowres_dataset(july, regridders)
    rmse = float(np.sqrt(((low["t_bicubic"] - july["t"]) ** 2).mean()))
    assert rmse > 0.5
