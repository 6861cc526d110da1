"""Verification metrics against brute-force references (explicit loops over points with
cos(lat) weights, pairwise CRPS sums, a direct DFT, MetPy's column physics) and edge
cases: missing truth, a NaN forecast, an ensemble of one, nothing to score."""

import cmath
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geodiff.constants import G, R_D
from geodiff.evaluate import metrics as m

with warnings.catch_warnings():  # metpy imports pyproj, which may warn about its PROJ database
    warnings.simplefilter("ignore")
    import metpy.calc as mpcalc  # a test dependency: never skipped
    from metpy.units import units

LEVELS = np.array([1000.0, 850.0, 700.0, 500.0, 300.0])
PROFILE = np.array([288.0, 277.0, 268.0, 250.0, 228.0])  # K, a mid-latitude column: θ grows by 2 to 17 K per layer


def field(values, member=False, levels=(1000.0, 500.0)):
    dims = (("member",) if member else ()) + ("time", "level", "lat", "lon")
    shape = values.shape
    coords = {"lat": np.linspace(-60, 70, shape[-2]), "lon": np.arange(shape[-1]) * 2.0, "level": list(levels)[: shape[-3]]}
    return xr.DataArray(values, dims=dims, coords=coords)


def with_gaps(truth, rng, n):
    """`truth` with `n` random points missing (NaN)."""
    values = truth.values.copy()
    values.ravel()[rng.choice(values.size, n, replace=False)] = np.nan
    return truth.copy(data=values)


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    truth = field(rng.normal(size=(4, 2, 5, 6)))
    ens = field(truth.values + rng.normal(size=(5, 4, 2, 5, 6)), member=True)
    return truth, ens


@pytest.fixture
def atmosphere():
    """A forecast and a truth with gaps in its first two times: 3 times × 5 levels × 6 lat × 7 lon, both with unstable layers."""
    rng = np.random.default_rng(11)
    base = PROFILE[None, :, None, None] + rng.normal(0.0, 3.0, (3, 5, 6, 7))
    truth = field(base, levels=LEVELS)
    forecast = field(base + rng.normal(0.0, 2.0, base.shape), levels=LEVELS)
    gappy = with_gaps(truth, rng, 12)
    return forecast, gappy.where(gappy["time"] < 2, truth)  # the last time is complete


def points(x):
    """Every (time, lat, lon) index of a [time, level, lat, lon] array."""
    return itertools.product(range(x.shape[0]), range(x.shape[2]), range(x.shape[3]))


def brute_mean(values, valid, lat, pooled=False):
    """Σ w v / Σ w over time, lat, lon (and levels when pooled), w = cos(lat) where valid, by loops."""
    n_levels = values.shape[1]
    num, den = np.zeros(n_levels), np.zeros(n_levels)
    for t, i, j in points(values):
        for k in range(n_levels):
            if valid[t, k, i, j]:
                w = math.cos(math.radians(lat[i]))
                num[k] += w * values[t, k, i, j]
                den[k] += w
    if pooled:
        return num.sum() / den.sum()
    with np.errstate(invalid="ignore"):
        return num / den


def test_rmse_mae_bias_match_brute_force_where_truth_is_present(data):
    truth, ens = data
    truth = with_gaps(truth, np.random.default_rng(0), 20)
    pred = ens.isel(member=0, drop=True)
    err, present, lat = pred.values - truth.values, ~np.isnan(truth.values), truth.lat.values
    np.testing.assert_allclose(m.rmse(pred, truth).values, np.sqrt(brute_mean(err**2, present, lat)), rtol=1e-12)
    np.testing.assert_allclose(m.mae(pred, truth).values, brute_mean(abs(err), present, lat), rtol=1e-12)
    np.testing.assert_allclose(m.bias(pred, truth).values, brute_mean(err, present, lat), rtol=1e-12)
    overall = m.rmse(pred, truth, dims=["time", "level", "lat", "lon"])
    assert float(overall) == pytest.approx(math.sqrt(brute_mean(err**2, present, lat, pooled=True)), rel=1e-12)


def test_a_nan_forecast_is_never_scored(data):
    """Missing truth is skipped; a NaN forecast where the truth exists makes its level's score NaN."""
    truth, ens = data
    pred = ens.isel(member=0, drop=True).copy()
    pred[0, 1, 2, 3] = np.nan
    for metric in (m.rmse, m.mae, m.bias):
        score = metric(pred, truth).values
        assert np.isfinite(score[0]) and np.isnan(score[1])
    assert np.isnan(m.crps_fair(ens.where(ens.member != 2, pred), truth).values[1])


def test_fair_crps_matches_pairwise_definition_where_truth_is_present(data):
    truth, ens = data
    truth = with_gaps(truth, np.random.default_rng(1), 20)
    x, y = ens.values, truth.values
    mm = x.shape[0]
    skill = np.abs(x - y).mean(0)
    pair = sum(np.abs(x[i] - x[j]) for i, j in itertools.product(range(mm), repeat=2))
    point = skill - pair / (2 * mm * (mm - 1))
    np.testing.assert_allclose(m.crps_fair(ens, truth).values, brute_mean(point, ~np.isnan(y), truth.lat.values), rtol=1e-12)


def test_spread_skill_matches_brute_force_where_truth_is_present(data):
    truth, ens = data
    truth = with_gaps(truth, np.random.default_rng(2), 20)
    x, present, lat = ens.values, ~np.isnan(truth.values), truth.lat.values
    mm = x.shape[0]
    variance = sum((x[i] - x.mean(0)) ** 2 for i in range(mm)) / (mm - 1)
    mse = brute_mean((x.mean(0) - truth.values) ** 2, present, lat)
    expected = math.sqrt((mm + 1) / mm) * np.sqrt(brute_mean(variance, present, lat) / mse)
    np.testing.assert_allclose(m.spread_skill_ratio(ens, truth).values, expected, rtol=1e-12)


def test_crps_of_identical_members_is_mae(data):
    truth, ens = data
    same = xr.concat([ens.isel(member=0)] * 3, "member")
    np.testing.assert_allclose(m.crps_fair(same, truth).values, m.mae(ens.isel(member=0), truth).values, rtol=1e-12)


def test_an_ensemble_of_one(data):
    """One member has no pair: its CRPS is its MAE, and a spread-skill ratio does not exist."""
    truth, ens = data
    one = ens.isel(member=[0])
    np.testing.assert_allclose(m.crps_fair(one, truth).values, m.mae(ens.isel(member=0), truth).values, rtol=1e-12)
    with pytest.raises(ValueError, match="two or more members, got 1"):
        m.spread_skill_ratio(one, truth)


def test_spread_skill_of_a_consistent_ensemble_is_one():
    """Truth drawn from the same distribution as the members: ratio → 1."""
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(9, 400, 1, 8, 8))
    truth, ens = field(draws[0]), field(draws[1:], member=True)
    assert m.spread_skill_ratio(ens, truth).item() == pytest.approx(1.0, abs=0.03)


def test_weights_ignore_a_zero_weight_row():
    """A pole row has weight cos(90°) = 0: errors there do not count."""
    lat = np.array([0.0, 30.0, 90.0])
    truth = xr.DataArray(np.zeros((1, 1, 3, 2)), dims=("time", "level", "lat", "lon"), coords={"lat": lat, "level": [500.0]})
    pred = truth.copy()
    pred[:, :, 2] = 100.0
    assert m.rmse(pred, truth).item() == pytest.approx(0.0, abs=1e-5)


def test_nothing_to_score_gives_nan_not_an_error(data, atmosphere):
    """A level whose truth is all missing scores NaN; the other level is unaffected."""
    truth, ens = data
    truth = truth.copy()
    truth[:, 1] = np.nan
    pred = ens.isel(member=0, drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for score in (m.rmse(pred, truth), m.mae(pred, truth), m.bias(pred, truth), m.crps_fair(ens, truth),
                      m.crps_fair(ens.isel(member=[0]), truth), m.spread_skill_ratio(ens, truth)):
            assert np.isfinite(score.values[0]) and np.isnan(score.values[1])
        forecast, column = atmosphere
        gone = xr.full_like(column, np.nan)
        assert np.isnan(m.lapse_rate_rmse(forecast, gone).values).all()
        assert np.isnan(m.spurious_instability(forecast, gone).values).all()
        assert np.isnan(float(m.thickness_error(forecast, gone)))
        assert np.isnan(m.small_scale_power_ratio(forecast, gone, 3))


def metpy_sigma(column):
    """Static stability of one column from MetPy, J kg-1 Pa-2 (NaN where it touches a missing level)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mpcalc.static_stability(units.Quantity(LEVELS, "hPa"), units.Quantity(column, "K")).m_as("J kg^-1 Pa^-2")


def brute_heights(column):
    """Z₀ = 0, Z_{k+1} = Z_k + (R_d/g) (T_k + T_{k+1})/2 ln(p_k/p_{k+1}), level by level, m."""
    z = [0.0]
    for k in range(len(LEVELS) - 1):
        z.append(z[-1] + R_D / G * 0.5 * (column[k] + column[k + 1]) * math.log(LEVELS[k] / LEVELS[k + 1]))
    return np.array(z)


def metpy_lapse_rate(column):
    """−∂T/∂Z of one column from MetPy's first_derivative on the brute-force heights, K km-1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return -mpcalc.first_derivative(units.Quantity(column, "K"), x=units.Quantity(brute_heights(column), "m")).m_as("K/km")


def brute_spurious(forecast, truth):
    """Per level: cos(lat)-weighted counts of (unstable forecast ∧ stable truth) and of stable truth points."""
    f, y, lat = forecast.values, truth.values, truth.lat.values
    n_levels = len(LEVELS)
    num, den = np.zeros(n_levels), np.zeros(n_levels)
    for t, i, j in points(y):
        sigma_hat, sigma = metpy_sigma(f[t, :, i, j]), metpy_sigma(y[t, :, i, j])
        for k in range(n_levels):
            if sigma[k] >= 0:
                w = math.cos(math.radians(lat[i]))
                den[k] += w
                num[k] += w * (sigma_hat[k] < 0)
    return num, den


def test_spurious_instability_counts_only_stable_truth_points(atmosphere):
    """F = (# unstable forecast points among stable truth points) / (# stable truth points), cos(lat)-weighted."""
    forecast, truth = atmosphere
    num, den = brute_spurious(forecast, truth)
    assert num.sum() > 0 and (m.stability_field(truth) < 0).any()  # the data has spurious points and unstable truth
    np.testing.assert_allclose(m.spurious_instability(forecast, truth).values, num / den, rtol=1e-12)
    pooled = m.spurious_instability(forecast, truth, dims=["time", "level", "lat", "lon"])
    assert float(pooled) == pytest.approx(num.sum() / den.sum(), rel=1e-12)


def test_lapse_rate_rmse_matches_brute_force(atmosphere):
    """Levels whose lapse rate touches a missing truth level (its stencil, or a height above the gap) are skipped."""
    forecast, truth = atmosphere
    f, y = forecast.values, truth.values
    gamma_hat, gamma = np.empty_like(f), np.empty_like(y)
    for t, i, j in points(y):
        gamma_hat[t, :, i, j], gamma[t, :, i, j] = metpy_lapse_rate(f[t, :, i, j]), metpy_lapse_rate(y[t, :, i, j])
    present = ~np.isnan(gamma)
    assert present.mean() < 0.95  # the gaps matter
    expected = np.sqrt(brute_mean((gamma_hat - gamma) ** 2, present, truth.lat.values))
    np.testing.assert_allclose(m.lapse_rate_rmse(forecast, truth).values, expected, rtol=1e-6)


def test_thickness_error_matches_brute_force(atmosphere):
    """RMSE of the 1000-300 hPa thickness over the complete truth columns, cos(lat)-weighted."""
    forecast, truth = atmosphere
    f, y, lat = forecast.values, truth.values, truth.lat.values
    num = den = 0.0
    for t, i, j in points(y):
        if not np.isnan(y[t, :, i, j]).any():
            w = math.cos(math.radians(lat[i]))
            num += w * (brute_heights(f[t, :, i, j])[-1] - brute_heights(y[t, :, i, j])[-1]) ** 2
            den += w
    assert float(m.thickness_error(forecast, truth)) == pytest.approx(math.sqrt(num / den), rel=1e-12)


def test_physics_metrics_follow_dimension_names(atmosphere):
    """The level axis is found by name: any dim order gives the same scores."""
    forecast, truth = atmosphere
    order = ("lon", "level", "time", "lat")
    for metric in (m.lapse_rate_rmse, m.spurious_instability, m.thickness_error):
        xr.testing.assert_allclose(metric(forecast.transpose(*order), truth.transpose(*order)), metric(forecast, truth))


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


def brute_power(f2d):
    """Radially binned |DFT|²/(n_lat n_lon)² of one field from the DFT sum itself, k = 1..min(h, w)//2."""
    h, w = f2d.shape
    power = np.zeros(min(h, w) // 2 + 1)
    for a, b in itertools.product(range(h), range(w)):
        coefficient = sum(f2d[y, x] * cmath.exp(-2j * math.pi * (a * y / h + b * x / w)) for y in range(h) for x in range(w))
        k = round(math.hypot(min(a, h - a), min(b, w - b)))  # |signed frequency| in cycles per box
        if 1 <= k < power.size:
            power[k] += abs(coefficient) ** 2 / (h * w) ** 2
    return power[1:]


def test_radial_power_matches_a_direct_dft_per_field():
    """Every non-horizontal dim is kept: one spectrum per (time, level) field."""
    rng = np.random.default_rng(5)
    x = field(rng.normal(size=(2, 2, 6, 8)))
    power = m.radial_power(x)
    assert power.dims == ("time", "level", "wavenumber") and list(power.wavenumber.values) == [1, 2, 3]
    for t, k in itertools.product(range(2), range(2)):
        np.testing.assert_allclose(power.values[t, k], brute_power(x.values[t, k]), rtol=1e-10)


def test_small_scale_power_ratio_skips_fields_with_missing_truth():
    rng = np.random.default_rng(6)
    truth = field(rng.normal(size=(3, 2, 8, 8)))
    forecast = truth + 0.5 * field(rng.normal(size=(3, 2, 8, 8)))
    truth[1, 0, 4, 4] = np.nan
    num = den = 0.0
    for t, k in itertools.product(range(3), range(2)):
        if not np.isnan(truth.values[t, k]).any():
            num += brute_power(forecast.values[t, k])[2:].sum()  # k = 3, 4 > 8 / 4 cells
            den += brute_power(truth.values[t, k])[2:].sum()
    assert m.small_scale_power_ratio(forecast, truth, 4) == pytest.approx(num / den, rel=1e-10)


def test_small_scale_power_ratio():
    rng = np.random.default_rng(1)
    truth = field(rng.normal(size=(3, 1, 32, 32)), levels=[1000.0])
    assert m.small_scale_power_ratio(truth, truth, 4) == pytest.approx(1.0)
    assert m.small_scale_power_ratio(0.5 * truth, truth, 4) == pytest.approx(0.25)


def test_point_forecasts_get_a_crps_equal_to_their_mae():
    """metrics.csv ranks every method on CRPS: a point forecast's is its MAE, per level and overall."""
    from geodiff.evaluate.tables import metric_table

    rng = np.random.default_rng(4)
    coords = {"level": [1000.0, 850.0, 700.0], "lat": np.linspace(40, 50, 8), "lon": np.linspace(0, 10, 8)}
    truth = xr.DataArray(260 + rng.normal(size=(3, 3, 8, 8)), dims=("time", "level", "lat", "lon"), coords=coords)
    ens = truth + xr.DataArray(rng.normal(size=(4, 3, 3, 8, 8)), dims=("member", *truth.dims))
    table = metric_table(truth, {"point": ens.isel(member=0, drop=True)}, {"geodiff": ens}, scale_factor=4)
    rows = table[table["method"] == "point"].pivot_table(index="level", columns="metric", values="value")
    np.testing.assert_allclose(rows["crps"].values, rows["mae"].values, rtol=1e-12)
    ensemble = table[(table["method"] == "geodiff") & (table["metric"] == "crps")].set_index("level")["value"]
    assert len(ensemble) == 4 and (ensemble < rows["crps"].reindex(ensemble.index)).all()


def test_metric_table_with_missing_truth_pools_the_points_present(atmosphere):
    """Every row is finite with gaps in the truth; "all" is the metric over every point present, not a mean of levels."""
    from geodiff.evaluate.tables import metric_table

    forecast, truth = atmosphere
    rng = np.random.default_rng(7)
    ens = forecast + xr.DataArray(rng.normal(size=(4, *truth.shape)), dims=("member", *truth.dims))
    table = metric_table(truth, {"point": forecast}, {"geodiff": ens}, scale_factor=3)
    assert np.isfinite(table["value"]).all()
    overall = table[(table["method"] == "point") & (table["level"] == "all")].set_index("metric")["value"]
    err, present = forecast.values - truth.values, ~np.isnan(truth.values)
    assert overall["rmse"] == pytest.approx(math.sqrt(brute_mean(err**2, present, truth.lat.values, pooled=True)), rel=1e-12)
    num, den = brute_spurious(forecast, truth)
    assert overall["spurious_instability"] == pytest.approx(num.sum() / den.sum(), rel=1e-12)


def test_fair_crps_equals_scoringrules_per_point():
    """The fair CRPS of every point (no weights: one latitude) equals scoringrules' fair estimator to 1e-6."""
    import scoringrules as sr

    rng = np.random.default_rng(21)
    truth = field(rng.normal(size=(3, 2, 1, 7)))
    ens = field(truth.values + rng.normal(0.3, 1.2, size=(6, 3, 2, 1, 7)), member=True)
    ours = m.crps_fair(ens, truth, dims=[])  # per point: nothing reduced
    reference = sr.crps_ensemble(truth.values, np.moveaxis(ens.values, 0, -1), estimator="fair", backend="numpy")
    np.testing.assert_allclose(ours.transpose(*truth.dims).values, reference, atol=1e-6, rtol=0)


def test_rank_histogram_matches_brute_force_and_is_flat_for_a_calibrated_ensemble():
    rng = np.random.default_rng(22)
    truth = field(rng.normal(size=(4, 2, 5, 6)))
    ens = field(rng.normal(size=(4, 4, 2, 5, 6)), member=True)  # truth and members from one distribution
    hist = m.rank_histogram(ens, truth)
    lat = truth.lat.values
    for k in range(2):
        counts, total = np.zeros(5), 0.0
        for t, i, j in points(truth.values):
            w = math.cos(math.radians(lat[i]))
            counts[int((ens.values[:, t, k, i, j] < truth.values[t, k, i, j]).sum())] += w
            total += w
        np.testing.assert_allclose(hist.sel(level=truth.level.values[k]).values, counts / total, rtol=1e-12)
    big_truth = field(rng.normal(size=(40, 1, 50, 50)))
    big_ens = field(rng.normal(size=(9, 40, 1, 50, 50)), member=True)
    flat = m.rank_histogram(big_ens, big_truth, dims=["time", "lat", "lon"])
    n = 40 * 50 * 50  # each frequency ~ binomial(n, 1/10)/n, sd 0.0019: flat within 4 sd
    np.testing.assert_allclose(flat.values.ravel(), 0.1, atol=4 * math.sqrt(0.1 * 0.9 / n))
    assert float(m.rank_flatness(flat).squeeze()) < 10 * 4 * math.sqrt(0.09 / n)
    under = m.rank_histogram(0.3 * big_ens, big_truth)  # under-dispersed: a U shape
    assert float(under.isel(rank=0).squeeze()) > 0.25 and float(m.rank_flatness(under).squeeze()) > 0.5


def test_spread_skill_bins_match_brute_force_binning():
    rng = np.random.default_rng(23)
    truth = field(rng.normal(size=(3, 2, 5, 6)))
    scale = field(np.exp(rng.normal(size=(3, 2, 5, 6))))
    ens = field(truth.values + scale.values * rng.normal(size=(4, 3, 2, 5, 6)), member=True)
    bins = m.spread_skill_bins(ens, truth, bins=3)
    var = ens.values.var(axis=0, ddof=1) * 5 / 4
    err2 = (ens.values.mean(axis=0) - truth.values) ** 2
    w = np.broadcast_to(np.cos(np.radians(truth.lat.values))[:, None], truth.shape[2:])
    w = np.broadcast_to(w, truth.shape)
    order = sorted(range(var.size), key=lambda i: var.ravel()[i])
    edges, acc, groups = w.sum() / 3, 0.0, [[], [], []]
    for i in order:  # a point goes to the group its cumulative weight ends in
        acc += w.ravel()[i]
        groups[min(int(acc / edges - 1e-12), 2)].append(i)
    for b, idx in enumerate(groups):
        wb = w.ravel()[idx]
        assert float(bins["spread"][b]) == pytest.approx(math.sqrt((wb * var.ravel()[idx]).sum() / wb.sum()), rel=1e-10)
        assert float(bins["rmse"][b]) == pytest.approx(math.sqrt((wb * err2.ravel()[idx]).sum() / wb.sum()), rel=1e-10)
    assert np.all(np.diff(bins["spread"].values) > 0)


def test_layer_thickness_error_matches_brute_force(atmosphere):
    forecast, truth = atmosphere
    f, y, lat = forecast.values, truth.values, truth.lat.values
    num, den = np.zeros(4), np.zeros(4)
    for t, i, j in points(y):
        dz_f, dz_y = np.diff(brute_heights(f[t, :, i, j])), np.diff(brute_heights(y[t, :, i, j]))
        for k in range(4):
            if not np.isnan(dz_y[k]):
                w = math.cos(math.radians(lat[i]))
                num[k] += w * (dz_f[k] - dz_y[k]) ** 2
                den[k] += w
    error = m.layer_thickness_error(forecast, truth)
    assert list(error.level.values) == list(LEVELS[:-1])
    np.testing.assert_allclose(error.values, np.sqrt(num / den), rtol=1e-10)


def test_power_ratio_by_band_matches_brute_force():
    rng = np.random.default_rng(24)
    truth = field(rng.normal(size=(3, 2, 16, 16)))
    forecast = truth + 0.5 * field(rng.normal(size=(3, 2, 16, 16)))
    truth[1, 1, 3, 3] = np.nan  # that field leaves level 500's sums
    ratio = m.power_ratio_by_band(forecast, truth, 4)
    assert ratio.dims == ("level", "band") and list(ratio.band.values) == ["coarse", "transition", "fine"]
    for k in range(2):
        sums = {band: [0.0, 0.0] for band in ratio.band.values}
        for t in range(3):
            if np.isnan(truth.values[t, k]).any():
                continue
            p_hat, p = brute_power(forecast.values[t, k]), brute_power(truth.values[t, k])
            for wavenumber in range(1, 9):  # n = 16, s = 4: coarse k <= 2, transition 3..4, fine 5..8
                band = "coarse" if wavenumber <= 2 else "transition" if wavenumber <= 4 else "fine"
                sums[band][0] += p_hat[wavenumber - 1]
                sums[band][1] += p[wavenumber - 1]
        for band, (top, bottom) in sums.items():
            assert float(ratio.isel(level=k).sel(band=band)) == pytest.approx(top / bottom, rel=1e-10)


def test_change_signal_against_brute_force():
    """The change rows of tables.change_rows: the true change per level is the cos-lat weighted mean difference
    (loops); a method that takes half the warming has change ratio 0.5 at every level and overall, one equal
    to the truth 1 for temperature and lapse rate, one that does not move 0."""
    from geodiff.evaluate.tables import TRUTH, change_rows

    rng = np.random.default_rng(5)
    before = PROFILE[None, :, None, None] + rng.normal(0.0, 1.0, (3, 5, 6, 7))
    warming = np.array([1.0, 1.5, 2.0, 3.0, 4.0])[None, :, None, None]  # more aloft: the lapse rate falls
    after = PROFILE[None, :, None, None] + rng.normal(0.0, 1.0, (3, 5, 6, 7)) + warming
    model = before + rng.normal(0.0, 0.5, before.shape)
    fields_before = {TRUTH: field(before, levels=LEVELS), "half": field(model, levels=LEVELS),
                     "perfect": field(before, levels=LEVELS), "static": field(model, levels=LEVELS)}
    fields_after = {TRUTH: field(after, levels=LEVELS), "half": field(model + (after - before) / 2, levels=LEVELS),
                    "perfect": field(after, levels=LEVELS), "static": field(model, levels=LEVELS)}
    rows = pd.DataFrame(change_rows(fields_before, fields_after))
    value = rows.set_index(["method", "metric", "level"])["value"]
    lat, valid = fields_before[TRUTH].lat.values, np.ones(before.shape, bool)
    true = brute_mean(after, valid, lat) - brute_mean(before, valid, lat)
    for k, level in enumerate(LEVELS):
        assert value[TRUTH, "change", str(int(level))] == pytest.approx(true[k], rel=1e-12)
        assert value["half", "change_ratio", str(int(level))] == pytest.approx(0.5, rel=1e-9)
    pooled = brute_mean(after, valid, lat, pooled=True) - brute_mean(before, valid, lat, pooled=True)
    assert value[TRUTH, "change", "all"] == pytest.approx(pooled, rel=1e-12)
    assert value["half", "change_ratio", "all"] == pytest.approx(0.5, rel=1e-9)
    assert value[TRUTH, "lapse_rate_change", "all"] < 0  # warmer aloft than below: a smaller lapse rate
    for level in ["all", *(str(int(v)) for v in LEVELS)]:
        assert value["perfect", "change_ratio", level] == pytest.approx(1.0, rel=1e-12)
        assert value["perfect", "lapse_rate_change_ratio", level] == pytest.approx(1.0, rel=1e-12)
        assert value["static", "change_ratio", level] == 0.0 and value["static", "lapse_rate_change_ratio", level] == 0.0
    assert not any(rows["metric"].str.endswith("_ratio") & (rows["method"] == TRUTH))
