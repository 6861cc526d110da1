"""The shifted test split (splits.test_shift): the synthetic atmosphere there differs from the unshifted one
by exactly the configured warming profile, lapse-rate change and more frequent low-level inversions, and
nowhere else; the split is refused where it overlaps another or leaves data.period."""

import copy

import numpy as np
import pytest
import yaml
from snakemake.utils import validate as validate_schema

from geodiff.constants import G
from geodiff.data.synthetic import EPOCH, _large_scale, in_test_shift, synthetic_month, synthetic_statics
from geodiff.workflow import ConfigError, check_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
MONTH = (2001, 3)
"""The month of config/test.yaml's test_shift split (2001-03-11..20), which also holds unshifted days."""

NO_SHIFT = {"surface_warming": 0.0, "aloft_warming": 0.0, "lapse_rate_change": 0.0, "inversion_offset": 0.0}
SHIFTS = {
    "defaults": {},
    "warming_only": {"surface_warming": 1.5, "aloft_warming": 5.0, "lapse_rate_change": 0.0, "inversion_offset": 0.0},
    "lapse_rate_only": {**NO_SHIFT, "lapse_rate_change": -0.5},
    "inversions_only": {**NO_SHIFT, "inversion_offset": 0.3},
}
"""data.synthetic_shift of each case: the schema's defaults, and each part of the shift on its own."""


def resolved(shift: dict) -> dict:
    """config/test.yaml with `shift` as data.synthetic_shift and the schema's defaults filled in."""
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    config["data"].pop("synthetic_shift", None)
    validate_schema(config, str(ROOT / "workflow/schemas/config.schema.yaml"), set_default=True)
    config["data"]["synthetic_shift"].update(shift)
    return config


@pytest.fixture(scope="module")
def unshifted():
    """The month without a test_shift split, and the mask of the times the shifted config shifts."""
    config = resolved({})
    month = synthetic_month({**config, "splits": {k: v for k, v in config["splits"].items() if k != "test_shift"}}, *MONTH)
    return month, in_test_shift(config, month["time"].values)


@pytest.fixture(scope="module", params=sorted(SHIFTS))
def case(request):
    """(name, data.synthetic_shift, the shifted month)."""
    config = resolved(SHIFTS[request.param])
    return request.param, config["data"]["synthetic_shift"], synthetic_month(config, *MONTH)


def at_heights(t: np.ndarray, z: np.ndarray, z_new: np.ndarray) -> np.ndarray:
    """Each column's profile t(z) (levels along axis 1, heights increasing) linearly interpolated to the
    heights `z_new` (same shape), extended along the end layers."""
    below = (z[:, None] <= z_new[:, :, None]).sum(axis=2) - 1  # levels of z at or under each new height
    j = np.clip(below, 0, z.shape[1] - 2)
    z0, z1 = np.take_along_axis(z, j, 1), np.take_along_axis(z, j + 1, 1)
    t0, t1 = np.take_along_axis(t, j, 1), np.take_along_axis(t, j + 1, 1)
    return t0 + (t1 - t0) * (z_new - z0) / (z1 - z0)


def expected_shift(shift: dict, z: np.ndarray, z_tp: np.ndarray) -> np.ndarray:
    """The configured change of T (K) at height z (m above sea level) under the tropopause height z_tp:
    surface_warming at sea level rising linearly to aloft_warming at z_tp and constant above, plus the
    lapse-rate change, -lapse_rate_change (K/km) x height, up to z_tp."""
    warming = shift["surface_warming"] + (shift["aloft_warming"] - shift["surface_warming"]) * np.clip(z / z_tp, 0, 1)
    return warming - 1e-3 * shift["lapse_rate_change"] * np.minimum(z, z_tp)


def fields(month, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T (K) and height (m) at `times`, float64, [time, level, lat, lon]."""
    return month["t"].values[times].astype(np.float64), month["z"].values[times].astype(np.float64) / G


def tropopause_height(month, times: np.ndarray) -> np.ndarray:
    """The generator's tropopause height z_tp (m), an input of the shift, [time, 1, lat, lon]."""
    days = (month["time"].values[times] - EPOCH) / np.timedelta64(1, "D")
    return _large_scale(np.asarray(days, float), month["lat"].values, month["lon"].values)["z_tp"][:, None]


def sea(config: dict) -> np.ndarray:
    """Sea points of the fine grid: no boundary-layer term, so the inversion setting changes nothing there."""
    return synthetic_statics(config)["lsm"].values == 0


def tropospheric_sea(base, inside: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Sea columns whose levels (heights `z`) all lie 1 km or more below the tropopause, [time, 1, lat, lon]:
    there the profile is linear in height between levels, apart from fronts and perturbations (across the
    tropopause's kink, linear interpolation in height is no reference)."""
    return sea(resolved({}))[None, None] & (z[:, -1:] < tropopause_height(base, inside) - 1000.0)


def test_times_outside_test_shift_are_bit_identical(unshifted, case):
    base, inside = unshifted
    _, _, month = case
    assert 0 < inside.sum() < len(inside)
    for name in ("t", "z"):
        np.testing.assert_array_equal(month[name].values[~inside], base[name].values[~inside])
        assert np.abs(month[name].values[inside] - base[name].values[inside]).max() > 0.1


def test_warming_per_level_matches_the_configured_profile(unshifted, case):
    """Over sea below the tropopause at the shifted times: the shifted T minus the unshifted T at the same
    heights (linear in height between levels), per level, equals the configured profile at the shifted
    heights, on average to 0.03 K."""
    base, inside = unshifted
    name, shift, month = case
    t0, z0 = fields(base, inside)
    t1, z1 = fields(month, inside)
    chosen = tropospheric_sea(base, inside, z1) & np.ones(t0.shape, bool)
    assert chosen[:, 0].mean() > 0.2
    measured = np.where(chosen, t1 - at_heights(t0, z0, z1), np.nan)
    expected = np.where(chosen, expected_shift(shift, z1, tropopause_height(base, inside)), np.nan)
    np.testing.assert_allclose(np.nanmean(measured, axis=(0, 2, 3)), np.nanmean(expected, axis=(0, 2, 3)), atol=0.03)
    if name == "defaults":  # the schema's defaults: 2 K near the surface, more aloft
        profile = np.nanmean(expected, axis=(0, 2, 3))
        assert abs(profile[0] - 2.0) < 0.1 and np.all(np.diff(profile) > 0) and profile[-1] > 4.0


def test_lapse_rate_changes_by_the_configured_amount(unshifted, case):
    """Over sea below the tropopause at the shifted times, the mean layer lapse rate -ΔT/ΔZ (brute force between
    levels) changes by lapse_rate_change plus the slope of the warming profile, -(aloft - surface)/z_tp, to
    0.02 K/km."""
    base, inside = unshifted
    name, shift, month = case
    t0, z0 = fields(base, inside)
    t1, z1 = fields(month, inside)
    ocean = tropospheric_sea(base, inside, z1) & np.ones(t0[:, 1:].shape, bool)
    layer_rate = lambda t, z: -1e3 * np.diff(t, axis=1) / np.diff(z, axis=1)  # noqa: E731, K/km
    measured = np.where(ocean, layer_rate(t1, z1) - layer_rate(t0, z0), np.nan)
    expected = np.where(ocean, layer_rate(expected_shift(shift, z1, tropopause_height(base, inside)), z1), np.nan)
    np.testing.assert_allclose(np.nanmean(measured, axis=(0, 2, 3)), np.nanmean(expected, axis=(0, 2, 3)), atol=0.02)
    if name == "lapse_rate_only":  # below the tropopause, exactly the configured change
        np.testing.assert_allclose(np.nanmean(measured, axis=(0, 2, 3)), shift["lapse_rate_change"], atol=0.02)


def test_low_level_inversions_become_more_frequent(unshifted, case):
    """Over land at the shifted times, T rises from 1000 to 850 hPa at least twice as often (inversion_offset > 0)."""
    base, inside = unshifted
    name, shift, month = case
    land = ~sea(resolved({}))
    before = float((np.diff(fields(base, inside)[0][:, :2], axis=1)[:, 0] > 0)[:, land].mean())
    after = float((np.diff(fields(month, inside)[0][:, :2], axis=1)[:, 0] > 0)[:, land].mean())
    if shift["inversion_offset"] > 0:
        assert after > 2 * before and after - before > 0.01, (before, after)
    else:
        assert after >= before, (before, after)


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ({"start": "2001-03-10", "end": "2001-03-20"}, "splits.test and splits.test_shift overlap"),
        ({"start": "2001-02-20", "end": "2001-03-05"}, "overlap"),
        ({"start": "2001-03-11", "end": "2001-04-02"}, "splits.test_shift lies outside data.period 2001-01..2001-03"),
        ({"start": "2001-03-20", "end": "2001-03-11"}, "splits.test_shift: end is before start"),
    ],
)
def test_a_bad_test_shift_is_refused_naming_it(period, expected):
    config = copy.deepcopy(resolved({}))
    config["splits"]["test_shift"] = period
    with pytest.raises(ConfigError, match="splits.test_shift") as err:
        check_config(config)
    assert expected in str(err.value)


def test_the_shipped_configs_have_a_test_shift_after_their_test_split():
    for name in ("config.yaml", "test.yaml", "era5.yaml"):
        splits = yaml.safe_load((ROOT / "config" / name).read_text())["splits"]
        assert splits["test_shift"]["start"] > splits["test"]["end"], name
