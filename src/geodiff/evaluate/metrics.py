"""Verification metrics over named dimensions with cos(latitude) area weights.

Every metric takes a forecast (an ensemble carries a `member` dim) and the truth as
xarray objects with canonical dims, and reduces over `dims` (default: every dim but
`level` and `member`), weighting each point by cos(lat). Where the truth is missing
(NaN, `data.allow_nans`) a point gets weight zero and the mean is normalised by the
weights of the points present; with no point present the metric is NaN. A NaN of the
forecast where the truth is present propagates, so a broken forecast never scores well.
Definitions and style follow WeatherBench 2 (Rasp et al. 2024, JAMES 16, e2023MS004019).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import xarray as xr

from geodiff.constants import LAT, LEVEL, LON
from geodiff.data.grid import area_weights
from geodiff.physics import thermo

MEMBER = "member"
"""Ensemble member dimension."""
WAVENUMBER = "wavenumber"
"""Radial wavenumber dimension of spectra, cycles per box."""


def _reduce_dims(x: xr.DataArray, dims: Sequence[str] | None) -> list[str]:
    return [d for d in x.dims if d not in (LEVEL, MEMBER)] if dims is None else list(dims)


def weighted_mean(x: xr.DataArray, valid: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Area-weighted mean of `x` over `dims` and the points where `valid`, in the units of `x`.

    x̄ = Σ w x / Σ w with w = cos(lat) · 1[valid]; NaN where no point is valid. A NaN of
    `x` at a valid point propagates.
    """
    w = (area_weights(x[LAT]) * valid).broadcast_like(x)
    dims = _reduce_dims(x, dims)
    total = (w * x.where(valid, 0.0)).sum(dims, skipna=False)
    weight = w.sum(dims)
    return total / weight.where(weight > 0)


def bias(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Mean error  Σ w (ŷ − y) / Σ w, K."""
    return weighted_mean(forecast - truth, truth.notnull(), dims)


def mae(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Mean absolute error  Σ w |ŷ − y| / Σ w, K."""
    return weighted_mean(abs(forecast - truth), truth.notnull(), dims)


def rmse(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Root-mean-square error  √(Σ w (ŷ − y)² / Σ w), in the units of the fields."""
    return np.sqrt(weighted_mean((forecast - truth) ** 2, truth.notnull(), dims))


def crps_skill(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Skill part of the CRPS  E[1/M Σᵢ |xᵢ − y|], K."""
    return weighted_mean(abs(ensemble - truth).mean(MEMBER, skipna=False), truth.notnull(), dims)


def _pair_spread(x: np.ndarray) -> np.ndarray:
    """1/(M(M−1)) Σᵢⱼ |xᵢ − xⱼ| over the last axis of `x` (M ≥ 2 members).

    From the ascending order statistics: Σᵢⱼ |xᵢ − xⱼ| = 2 Σₖ (2k − M + 1) x₍ₖ₎, k = 0..M−1,
    in O(M log M) instead of O(M²).
    """
    m = x.shape[-1]
    return 2 * (np.sort(x, axis=-1) * (2 * np.arange(m) - m + 1)).sum(axis=-1) / (m * (m - 1))


def crps_spread(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Fair spread part  E[1/(M(M−1)) Σᵢⱼ |xᵢ − xⱼ|] over the points where the truth is present, K.

    An ensemble of one member has no pair: its spread is 0, so its CRPS is its MAE, the
    CRPS of a point forecast (as in WeatherBench 2).
    """
    if ensemble.sizes[MEMBER] < 2:
        spread = xr.zeros_like(ensemble.isel({MEMBER: 0}, drop=True))
    else:
        spread = xr.apply_ufunc(_pair_spread, ensemble, input_core_dims=[[MEMBER]])
    return weighted_mean(spread, truth.notnull(), dims)


def crps_fair(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Fair CRPS = skill − ½ spread = 1/M Σ|xᵢ − y| − 1/(2M(M−1)) Σᵢⱼ|xᵢ − xⱼ|, K (Ferro 2014)."""
    return crps_skill(ensemble, truth, dims) - 0.5 * crps_spread(ensemble, truth, dims)


def spread_skill_ratio(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """√((M+1)/M) · spread / RMSE(ensemble mean), 1, with spread = √(E[s²]), s² the unbiased member variance.

    1 for a statistically consistent ensemble (Fortin et al. 2014); needs M ≥ 2.
    """
    m = ensemble.sizes[MEMBER]
    if m < 2:
        raise ValueError(f"the spread-skill ratio needs an ensemble of two or more members, got {m}")
    spread = np.sqrt(weighted_mean(ensemble.var(MEMBER, ddof=1, skipna=False), truth.notnull(), dims))
    return np.sqrt((m + 1) / m) * spread / rmse(ensemble.mean(MEMBER, skipna=False), truth, dims)


RANK = "rank"
"""Rank dimension of rank histograms: the truth's rank among the members, 0..M."""
BIN = "spread_bin"
"""Spread-bin dimension of binned spread-skill."""


def rank_histogram(ensemble: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Area-weighted frequency of the truth's rank among the M members, over `dims` (Hamill 2001), 1.

    The rank is the number of members strictly below the truth, 0..M (a member equal to
    the truth, which continuous fields do not have, counts as above); frequencies sum to 1 over `rank` and are 1/(M+1)
    each for a calibrated ensemble. Points without truth are left out.
    """
    rank = (ensemble < truth).sum(MEMBER)
    m = ensemble.sizes[MEMBER]
    counts = [weighted_mean((rank == r).astype(np.float64), truth.notnull(), dims) for r in range(m + 1)]
    return xr.concat(counts, dim=RANK).assign_coords({RANK: np.arange(m + 1)})


def rank_flatness(histogram: xr.DataArray) -> xr.DataArray:
    """Reliability index Δ = Σ_r |f_r − 1/(M+1)| of a rank histogram (Delle Monache et al. 2006), 1:
    0 for a flat histogram, 2 (1 − 1/(M+1)) when every truth falls in one bin."""
    return abs(histogram - 1.0 / histogram.sizes[RANK]).sum(RANK)


def spread_skill_bins(ensemble: xr.DataArray, truth: xr.DataArray, bins: int = 5) -> xr.Dataset:
    """Binned spread-skill: points pooled over every dim and split into `bins` groups of equal area
    weight by ensemble spread; per group the mean spread √(E[s²]·(M+1)/M) and the RMSE of the
    ensemble mean, K (equal for a consistent ensemble; s² the unbiased member variance)."""
    m = ensemble.sizes[MEMBER]
    variance = ensemble.var(MEMBER, ddof=1) * (m + 1) / m
    error2 = (ensemble.mean(MEMBER) - truth) ** 2
    w = area_weights(truth[LAT]).broadcast_like(truth).where(truth.notnull(), 0.0)
    order = np.argsort(variance.values.ravel(), kind="stable")
    cumulative = np.cumsum(w.values.ravel()[order]) / w.values.sum()
    group = np.minimum((cumulative * bins - 1e-12).astype(int), bins - 1)
    spread, rmse_mean = [], []
    for b in range(bins):
        idx = order[group == b]
        wb = w.values.ravel()[idx]
        spread.append(np.sqrt((wb * variance.values.ravel()[idx]).sum() / wb.sum()))
        rmse_mean.append(np.sqrt((wb * np.nan_to_num(error2.values.ravel()[idx])).sum() / wb.sum()))
    coords = {BIN: np.arange(bins)}
    return xr.Dataset({"spread": (BIN, spread), "rmse": (BIN, rmse_mean)}, coords=coords)


def _along_levels(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], t: xr.DataArray) -> xr.DataArray:
    """`fn(values, p)` applied to every column of `t` (levels last, p in hPa), dims in the order of `t`.

    A missing level makes NaN every value computed from it, so the points it touches drop
    out of the metrics below.
    """
    return xr.apply_ufunc(fn, t, t[LEVEL], input_core_dims=[[LEVEL], [LEVEL]], output_core_dims=[[LEVEL]]).transpose(*t.dims)


def height_field(t: xr.DataArray) -> xr.DataArray:
    """Heights Z of the levels above the first one, m, from the hypsometric equation of `t` itself.

    Z₀ = 0, Z_{k+1} = Z_k + (R_d T̄_k / g) ln(p_k / p_{k+1}) (DESIGN.md section 5).
    """
    return _along_levels(lambda v, p: thermo.hypsometric_height(v, p, axis=-1), t)


def lapse_rate_field(t: xr.DataArray) -> xr.DataArray:
    """Lapse rate Γ = −∂T/∂Z, K km-1, heights Z from `height_field`."""
    return _along_levels(lambda v, p: thermo.lapse_rate(v, thermo.hypsometric_height(v, p, axis=-1), axis=-1), t)


def stability_field(t: xr.DataArray) -> xr.DataArray:
    """Static stability σ = −(R_d T / p) ∂ln θ/∂p, J kg-1 Pa-2 (MetPy's definition, Bluestein 1992, eq. 4.3.6)."""
    return _along_levels(lambda v, p: thermo.static_stability(v, thermo.potential_temperature(v, p, axis=-1), p, axis=-1), t)


def lapse_rate_rmse(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """RMSE of the lapse rate  √(Σ w (Γ(ŷ) − Γ(y))² / Σ w), K km-1."""
    return rmse(lapse_rate_field(forecast), lapse_rate_field(truth), dims)


def spurious_instability(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """Fraction of the statically stable truth points where the forecast is unstable, 1.

    F = Σ w 1[σ(ŷ) < 0] 1[σ(y) ≥ 0] / Σ w 1[σ(y) ≥ 0], σ from `stability_field`; NaN
    where σ(y) ≥ 0 nowhere.
    """
    sigma_hat, sigma = stability_field(forecast), stability_field(truth)
    return weighted_mean((sigma_hat < 0).where(sigma_hat.notnull()), sigma >= 0, dims)


def thickness_error(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """RMSE of the thickness between the first and the last level, m.

    ΔZ = Σ_k (R_d T̄_k / g) ln(p_k / p_{k+1}) (hypsometric equation), the top of `height_field`;
    a column with a missing truth level is left out.
    """
    top = {LEVEL: -1}
    return rmse(height_field(forecast).isel(top, drop=True), height_field(truth).isel(top, drop=True), dims)


def layer_thickness_error(forecast: xr.DataArray, truth: xr.DataArray, dims: Sequence[str] | None = None) -> xr.DataArray:
    """RMSE of each layer's thickness ΔZ_k = Z_{k+1} − Z_k (hypsometric, `height_field`), m, on the
    `level` of the layer's lower (higher-pressure) bound; L − 1 layers."""
    def layers(t: xr.DataArray) -> xr.DataArray:
        return height_field(t).diff(LEVEL, label="lower")

    return rmse(layers(forecast), layers(truth), dims)


def radial_power(x: xr.DataArray) -> xr.DataArray:
    """Power spectrum of every lat-lon field of `x`, binned by radial wavenumber, in the units of `x` squared.

    P(k) = Σ |X̂(k_y, k_x)|² / (n_lat n_lon)² over the modes with round(√(k_y² + k_x²)) = k,
    X̂ the 2-D DFT, wavenumbers in cycles per box, k = 1..min(n_lat, n_lon) // 2 (Parseval:
    the sum over all modes is the mean of x²). `lat` and `lon` become `wavenumber`, every
    other dim is kept; a field with a NaN has NaN power.
    """
    h, w = x.sizes[LAT], x.sizes[LON]
    k_y, k_x = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    wavenumber = np.arange(1, min(h, w) // 2 + 1)
    bins = (np.rint(np.hypot(k_y, k_x)).reshape(-1, 1) == wavenumber).astype(np.float64)  # [mode, k]

    def power(values: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.fft2(values)) ** 2 / (h * w) ** 2
        return spectrum.reshape(*spectrum.shape[:-2], h * w) @ bins

    spectra = xr.apply_ufunc(power, x, input_core_dims=[[LAT, LON]], output_core_dims=[[WAVENUMBER]])
    return spectra.assign_coords({WAVENUMBER: wavenumber})


BANDS = ("coarse", "transition", "fine")
"""Scale bands of :func:`power_ratio_by_band`."""


def power_ratio_by_band(forecast: xr.DataArray, truth: xr.DataArray, scale_factor: int) -> xr.DataArray:
    """Predicted over true power per level and scale band, 1, over the fields (time) whose truth is complete.

    With n = min(n_lat, n_lon) fine cells and s = `scale_factor`, the radial wavenumbers k
    (cycles per box, :func:`radial_power`) fall in `coarse` (k ≤ n/(2s): resolved by the
    coarse grid), `transition` (n/(2s) < k ≤ n/s) and `fine` (k > n/s: shorter than the
    coarse grid length, as :func:`small_scale_power_ratio`). Dims (level, band).
    """
    n = min(truth.sizes[LAT], truth.sizes[LON])
    p_hat, p = radial_power(forecast), radial_power(truth)
    complete = p.notnull().all(WAVENUMBER)
    k = p[WAVENUMBER].values
    masks = {"coarse": k <= n / (2 * scale_factor), "transition": (k > n / (2 * scale_factor)) & (k <= n / scale_factor),
             "fine": k > n / scale_factor}
    others = [d for d in p.dims if d not in (LEVEL, WAVENUMBER)]
    ratios = []
    for band in BANDS:
        sel = {WAVENUMBER: masks[band]}
        top = p_hat.isel(sel).where(complete, 0.0).sum([WAVENUMBER, *others], skipna=False)
        bottom = p.isel(sel).where(complete, 0.0).sum([WAVENUMBER, *others])
        ratios.append(top / bottom.where(bottom > 0))
    return xr.concat(ratios, dim="band").assign_coords(band=list(BANDS)).transpose(LEVEL, "band")


def small_scale_power_ratio(forecast: xr.DataArray, truth: xr.DataArray, scale_factor: int) -> float:
    """Predicted over true power at wavelengths shorter than the coarse grid length, 1.

    R = Σ_f Σ_{k > n/s} P̂_f(k) / Σ_f Σ_{k > n/s} P_f(k) (`radial_power`) over the fields f
    (time, level) whose truth is complete; n = min(n_lat, n_lon) and the coarse grid length
    is s = `scale_factor` fine cells. NaN when no field is complete.
    """
    n = min(truth.sizes[LAT], truth.sizes[LON])

    def small_scale(x: xr.DataArray) -> xr.DataArray:
        power = radial_power(x)
        return power.isel({WAVENUMBER: power[WAVENUMBER].values > n / scale_factor}).sum(WAVENUMBER, skipna=False)

    p_hat, p = small_scale(forecast), small_scale(truth)
    complete = p.notnull()
    total = float(p.where(complete, 0.0).sum())
    return float(p_hat.where(complete, 0.0).sum(skipna=False)) / total if total > 0 else math.nan
