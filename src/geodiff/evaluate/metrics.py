"""Verification metrics over named dimensions with cos(latitude) area weights.

Every function takes forecasts and truth as xarray objects with canonical dims and
reduces over `dims` (default: every dim but `level`), weighting by cos(lat). Ensembles
carry a `member` dim. Reference: WeatherBench 2 (Rasp et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from geodiff.constants import LAT, LEVEL, LON
from geodiff.physics import thermo

MEMBER = "member"


def area_weights(lat: xr.DataArray) -> xr.DataArray:
    """cos(lat) normalised to mean 1 over the latitudes given."""
    w = np.cos(np.deg2rad(lat))
    return w / w.mean()


def _reduce_dims(x: xr.DataArray, dims: Sequence[str] | None) -> list[str]:
    return [d for d in x.dims if d not in (LEVEL, MEMBER)] if dims is None else list(dims)


def weighted_mean(x: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Area-weighted mean over `dims`: Σ w x / Σ w with w = cos(lat)."""
    return x.weighted(area_weights(x[LAT])).mean(_reduce_dims(x, dims))


def bias(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Mean error  E[ŷ − y], K."""
    return weighted_mean(forecast - truth, dims)


def mae(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Mean absolute error  E|ŷ − y|, K."""
    return weighted_mean(abs(forecast - truth), dims)


def rmse(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Root-mean-square error  √E[(ŷ − y)²], K."""
    return np.sqrt(weighted_mean((forecast - truth) ** 2, dims))


def crps_skill(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Skill part of the CRPS:  E[1/M Σᵢ |xᵢ − y|], K."""
    return weighted_mean(abs(ensemble - truth).mean(MEMBER), dims)


def crps_spread(ensemble: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Fair spread part:  E[1/(M(M−1)) Σᵢⱼ |xᵢ − xⱼ|], K.

    Computed in O(M log M) from the sorted members: Σᵢⱼ|xᵢ − xⱼ| = 2 Σₖ (2k − M + 1) x₍ₖ₎
    (k = 0..M−1 over the ascending order statistics).
    """
    m = ensemble.sizes[MEMBER]
    if m < 2:
        raise ValueError("the fair CRPS spread needs an ensemble of two or more members")
    axis = ensemble.get_axis_num(MEMBER)
    ranked = np.sort(ensemble.values, axis=axis)
    shape = [1] * ranked.ndim
    shape[axis] = m
    coef = (2 * np.arange(m) - m + 1).reshape(shape)
    pair_sum = 2 * (coef * ranked).sum(axis=axis)
    spread = xr.DataArray(pair_sum / (m * (m - 1)), dims=[d for d in ensemble.dims if d != MEMBER],
                          coords={k: v for k, v in ensemble.coords.items() if MEMBER not in v.dims})
    return weighted_mean(spread, dims)


def crps_fair(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Fair CRPS = skill − ½ spread = 1/M Σ|xᵢ − y| − 1/(2M(M−1)) Σᵢⱼ|xᵢ − xⱼ|, K (Ferro 2014)."""
    return crps_skill(ensemble, truth, dims) - 0.5 * crps_spread(ensemble, dims)


def spread_skill_ratio(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """√((M+1)/M) · spread / RMSE(mean), with spread = √(E[var_members]) (unbiased variance).

    1 for a statistically consistent ensemble (Fortin et al. 2014).
    """
    m = ensemble.sizes[MEMBER]
    spread = np.sqrt(weighted_mean(ensemble.var(MEMBER, ddof=1), dims))
    return np.sqrt((m + 1) / m) * spread / rmse(ensemble.mean(MEMBER), truth, dims)


def _levels_last3(t: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Values as [..., level, lat, lon] and the level pressures, hPa."""
    return t.transpose(..., LEVEL, LAT, LON).values, t[LEVEL].values


def _physics_field(t: xr.DataArray, values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims=t.transpose(..., LEVEL, LAT, LON).dims, coords=t.transpose(..., LEVEL, LAT, LON).coords)


def lapse_rate_field(t: xr.DataArray) -> xr.DataArray:
    """Γ = −∂T/∂Z, K km-1, heights from the hypsometric equation of `t` itself."""
    values, p = _levels_last3(t)
    return _physics_field(t, thermo.lapse_rate(values, thermo.hypsometric_height(values, p), axis=-3))


def lapse_rate_rmse(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """RMSE of the lapse rate Γ(ŷ) against Γ(y), K km-1."""
    return rmse(lapse_rate_field(forecast), lapse_rate_field(truth), dims)


def spurious_instability(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Fraction of points with σ(ŷ) < 0 where σ(y) ≥ 0 (static stability, MetPy's definition), 1."""
    (f, p), (y, _) = _levels_last3(forecast), _levels_last3(truth)
    spurious = (thermo.static_stability(f, p) < 0) & (thermo.static_stability(y, p) >= 0)
    return weighted_mean(_physics_field(forecast, spurious.astype(np.float64)), dims)


def thickness_error(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """RMSE of the 1000-to-top thickness from the hypsometric equation, m."""
    (f, p), (y, _) = _levels_last3(forecast), _levels_last3(truth)
    dims2 = [d for d in forecast.transpose(..., LEVEL, LAT, LON).dims if d != LEVEL]
    coords = {k: v for k, v in forecast.coords.items() if LEVEL not in v.dims}
    total = thermo.layer_thickness(f, p).sum(axis=-3) - thermo.layer_thickness(y, p).sum(axis=-3)
    err = xr.DataArray(total, dims=dims2, coords=coords)
    return np.sqrt(weighted_mean(err**2, dims))


def radial_power(x: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Mean 2-D power spectrum over lat/lon binned by integer radial wavenumber k (cycles per box).

    Returns (k, power[..., k]) with all non-horizontal dims kept but `time`/`member` averaged.
    """
    values = x.transpose(..., LAT, LON).values
    h, w = values.shape[-2:]
    spec = np.abs(np.fft.fft2(values - values.mean(axis=(-2, -1), keepdims=True))) ** 2
    k = np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij"))).astype(int)
    kmax = min(h, w) // 2
    flat = spec.reshape(-1, h * w)
    power = np.stack([flat[:, (k == i).ravel()].sum(axis=1) for i in range(1, kmax + 1)], axis=1)
    return np.arange(1, kmax + 1), power.mean(axis=0)


def small_scale_power_ratio(forecast: xr.DataArray, truth: xr.DataArray, scale_factor: int) -> float:
    """Predicted over true power at wavelengths shorter than the coarse grid length, 1.

    The coarse grid length is `scale_factor` fine cells: wavenumbers k > n / scale_factor.
    """
    k, pf = radial_power(forecast)
    _, py = radial_power(truth)
    n = min(truth.sizes[LAT], truth.sizes[LON])
    small = k > n / scale_factor
    return float(pf[small].sum() / py[small].sum())
