"""Verification metrics against brute-force references and edge cases."""

import itertools

import numpy as np
import pytest
import xarray as xr

from geodiff.evaluate import metrics as m


def field(values, member=False):
    dims = (("member",) if member else ()) + ("time", "level", "lat", "lon")
    shape = values.shape
    coords = {"lat": np.linspace(-60, 60, shape[-2]), "lon": np.arange(shape[-1]) * 2.0, "level": [1000.0, 500.0][: shape[-3]]}
    return xr.DataArray(values, dims=dims, coords=coords)


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    truth = field(rng.normal(size=(4, 2, 5, 6)))
    ens = field(truth.values + rng.normal(size=(5, 4, 2, 5, 6)), member=True)
    return truth, ens


def brute_weights(lat):
    w = np.cos(np.deg2rad(lat))
    return (w / w.mean())[None, None, :, None]


def test_rmse_mae_bias_match_brute_force(data):
    truth, ens = data
    pred = ens.isel(member=0, drop=True)
    w = brute_weights(truth.lat.values) * np.ones(truth.shape)
    err = pred.values - truth.values
    for lev in range(2):
        ww, ee = w[:, lev], err[:, lev]
        assert m.rmse(pred, truth).values[lev] == pytest.approx(np.sqrt((ww * ee**2).sum() / ww.sum()), rel=1e-12)
        assert m.mae(pred, truth).values[lev] == pytest.approx((ww * abs(ee)).sum() / ww.sum(), rel=1e-12)
        assert m.bias(pred, truth).values[lev] == pytest.approx((ww * ee).sum() / ww.sum(), rel=1e-12)


def test_fair_crps_matches_pairwise_definition(data):
    truth, ens = data
    x, y = ens.values, truth.values
    mm = x.shape[0]
    skill = np.abs(x - y).mean(0)
    pair = sum(np.abs(x[i] - x[j]) for i, j in itertools.product(range(mm), repeat=2))
    point = skill - pair / (2 * mm * (mm - 1))
    w = brute_weights(truth.lat.values) * np.ones(truth.shape)
    expected = (w * point).sum(axis=(0, 2, 3)) / w.sum(axis=(0, 2, 3))
    np.testing.assert_allclose(m.crps_fair(ens, truth).values, expected, rtol=1e-12)


def test_crps_of_identical_members_is_mae(data):
    truth, ens = data
    same = xr.concat([ens.isel(member=0)] * 3, "member")
    np.testing.assert_allclose(m.crps_fair(same, truth).values, m.mae(ens.isel(member=0), truth).values, rtol=1e-12)


def test_crps_needs_two_members(data):
    truth, ens = data
    with pytest.raises(ValueError, match="two or more"):
        m.crps_fair(ens.isel(member=[0]), truth)


def test_spread_skill_of_a_consistent_ensemble_is_one():
    """Truth drawn from the same distribution as the members: ratio → 1."""
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(9, 400, 1, 8, 8))
    truth, ens = field(draws[0][None][0]), field(draws[1:], member=True)
    truth = truth.assign_coords(level=[1000.0])
    ens = ens.assign_coords(level=[1000.0])
    assert m.spread_skill_ratio(ens, truth).item() == pytest.approx(1.0, abs=0.03)


def test_weights_ignore_a_zero_weight_row():
    """A pole row has weight cos(90°) = 0: errors there do not count."""
    lat = np.array([0.0, 30.0, 90.0])
    truth = xr.DataArray(np.zeros((1, 1, 3, 2)), dims=("time", "level", "lat", "lon"), coords={"lat": lat, "level": [500.0]})
    pred = truth.copy()
    pred[:, :, 2] = 100.0
    assert m.rmse(pred, truth).item() == pytest.approx(0.0, abs=1e-5)


def test_physics_metrics_zero_for_perfect_forecast():
    t = np.array([290.0, 282.0, 260.0, 235.0])  # stable: θ = 290, 295, 317, 330 K
    truth = xr.DataArray(np.broadcast_to(t[None, :, None, None], (2, 4, 3, 3)).copy(), dims=("time", "level", "lat", "lon"),
                         coords={"level": [1000.0, 850.0, 500.0, 300.0], "lat": [0.0, 1.0, 2.0], "lon": [0.0, 1.0, 2.0]})
    assert float(m.lapse_rate_rmse(truth, truth).max()) == 0.0
    assert float(m.thickness_error(truth, truth)) == 0.0
    assert float(m.spurious_instability(truth, truth).max()) == 0.0
    unstable = truth.copy()
    unstable[:, 1] = unstable[:, 0] - 40.0  # far colder aloft: super-adiabatic layer
    assert float(m.spurious_instability(unstable, truth).max()) > 0.0
    assert float(m.thickness_error(truth + 1.0, truth)) > 0.0


def test_small_scale_power_ratio():
    rng = np.random.default_rng(1)
    truth = field(rng.normal(size=(3, 1, 32, 32)))
    truth = truth.assign_coords(level=[1000.0])
    assert m.small_scale_power_ratio(truth, truth, 4) == pytest.approx(1.0)
    assert m.small_scale_power_ratio(0.5 * truth, truth, 4) == pytest.approx(0.25)


def test_point_forecasts_get_a_crps_equal_to_their_mae():
    """metrics.csv ranks every method on CRPS: a point forecast's is its MAE, per level and overall."""
    from geodiff.evaluate.tables import metric_table

    rng = np.random.default_rng(4)
    coords = {"level": [1000.0, 850.0, 700.0], "lat": np.linspace(40, 50, 8), "lon": np.linspace(0, 10, 8)}
    truth = xr.DataArray(260 + rng.normal(size=(3, 3, 8, 8)), dims=("time", "level", "lat", "lon"), coords=coords)
    ens = truth + xr.DataArray(rng.normal(size=(4, 3, 3, 8, 8)), dims=("member", *truth.dims))
    table = metric_table(truth, {"point": ens.isel(member=0, drop=True)}, ens, scale_factor=4)
    rows = table[table["method"] == "point"].pivot_table(index="level", columns="metric", values="value")
    np.testing.assert_allclose(rows["crps"].values, rows["mae"].values, rtol=1e-12)
    ensemble = table[(table["method"] == "geodiff") & (table["metric"] == "crps")].set_index("level")["value"]
    assert len(ensemble) == 4 and (ensemble < rows["crps"].reindex(ensemble.index)).all()
