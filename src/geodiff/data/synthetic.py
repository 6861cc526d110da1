"""The built-in synthetic atmosphere: temperature and geopotential on pressure levels.

Deterministic from `config["seed"]`, physically consistent, and hard to downscale:

* free-atmosphere temperature T(Z) = T_sl - Γ Z below a tropopause and nearly
  isothermal above it, with the sea-level temperature T_sl varying with
  latitude, season and synoptic waves, and the lapse rate Γ varying in space and
  time within about 4-9.8 K km-1;
* a boundary-layer anomaly anchored to fractal fine-grid terrain: daytime
  heating and night-time inversions that decay with height above the ground
  (e-folding `H_BL`), so the terrain's imprint follows the local profile;
* moving fronts (tanh steps narrower than a coarse cell, tilted with height);
* small-scale perturbations with a k^-5/3 energy spectrum, AR(1) in time;
* geopotential z = g Z, with Z from the hypsometric equation of the final
  temperature (DESIGN.md section 5), so z and T are exactly consistent;
* a climate shift (`data.synthetic_shift`) in the times of ``splits.test_shift``
  only (:func:`shift_fields`): warming amplified aloft, a changed lapse rate and
  more frequent low-level inversions; every other time is bit-identical to the
  unshifted atmosphere.

Each month is generated independently from (seed, year, month), so months fan
out in parallel; the large-scale fields are analytic in absolute time and so
continuous across months.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from geodiff import __version__
from geodiff.config_keys import config_value
from geodiff.constants import CF_ATTRS, G, LAT, LEVEL, LON, TIME
from geodiff.data.canonical import month_times
from geodiff.data.grid import Grid
from geodiff.periods import period_bounds
from geodiff.physics.thermo import hypsometric_height

log = logging.getLogger(__name__)

H_BL = 800.0
"""E-folding depth of the boundary-layer anomaly above the ground, m."""
NOISE_RMS = 0.5
"""Root-mean-square amplitude of the k^-5/3 perturbations, K."""
FRONT_JUMP = 5.0
"""Temperature jump across a front, K."""
FRONT_WIDTH_DEG = 0.25
"""Half-width of a front's tanh step, degrees."""
T_TROPOPAUSE_MIN = 208.0
"""Coldest tropopause temperature, K."""
TROPOPAUSE_SMOOTH = 1.5
"""Temperature scale of the smooth transition into the stratosphere, K."""
EPOCH = np.datetime64("2000-01-01T00:00")
SHIFT_KEYS = ("surface_warming", "aloft_warming", "lapse_rate_change", "inversion_offset")
"""Keys of `data.synthetic_shift` (units and meaning in workflow/schemas/config.schema.yaml)."""


def fractal_field(rng: np.random.Generator, shape: tuple[int, ...], slope: float) -> np.ndarray:
    """Zero-mean, unit-variance random fields on the last two axes with a power-law spectrum.

    The 2-D power |F(k)|^2 falls as k^-(slope + 1), so the radially summed energy
    spectrum E(k) = 2 pi k |F(k)|^2 falls as k^-slope (slope 5/3: Kolmogorov).
    """
    h, w = shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = np.inf  # no mean
    amplitude = k ** (-(slope + 1.0) / 2.0)
    white = np.fft.fft2(rng.standard_normal(shape))
    field = np.fft.ifft2(white * amplitude).real
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / field.std(axis=(-2, -1), keepdims=True)


def synthetic_statics(config: dict) -> xr.Dataset:
    """Orography (m) and land-sea mask (0..1) on the fine grid, from the seed alone."""
    grid = Grid.from_config(config["grid"]["hr"])
    rng = np.random.default_rng([int(config["seed"]), 7])
    land = fractal_field(rng, grid.shape, slope=3.0)  # smooth continents
    terrain = fractal_field(rng, grid.shape, slope=1.5)  # rough, fine-scale relief
    lsm = (land > -0.3).astype(np.float32)
    orography = np.clip(700.0 * (terrain + 0.8 * land + 0.6), 0.0, None) * lsm
    ds = xr.Dataset(
        {
            "orography": ((LAT, LON), orography.astype(np.float32), CF_ATTRS["orography"]),
            "lsm": ((LAT, LON), lsm, CF_ATTRS["lsm"]),
        },
        coords={LAT: (LAT, grid.lat, CF_ATTRS[LAT]), LON: (LON, grid.lon, CF_ATTRS[LON])},
    )
    ds.attrs.update(source="synthetic", seed=int(config["seed"]), geodiff_version=__version__)
    return ds


def _large_scale(days: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> dict[str, np.ndarray]:
    """Smooth fields over (time, lat, lon): sea-level T (K), lapse rate (K m-1), heights (m), fronts."""
    t = days[:, None, None]
    la = np.deg2rad(lat)[None, :, None]
    lo = lon[None, None, :]
    season = np.cos(2 * np.pi * (t - 196.0) / 365.25)  # +1 in mid July
    wave1 = np.sin(np.deg2rad(2.0 * lo * 3 + 45 * np.rad2deg(la)) - 2 * np.pi * t / 4.3)
    wave2 = np.sin(np.deg2rad(3.0 * lo * 3 - 30 * np.rad2deg(la)) - 2 * np.pi * t / 2.7 + 1.3)
    t_sl = 302.0 - 38.0 * np.sin(la) ** 2 + 11.0 * season + 4.0 * wave1 + 2.5 * wave2
    gamma = 1e-3 * np.clip(6.6 + 1.4 * wave2 - 0.9 * wave1 + 0.6 * season, 4.0, 9.8)
    z_1000 = 110.0 + 90.0 * wave1 - 40.0 * wave2
    z_tp = 11500.0 - 3000.0 * (np.sin(la) - np.sin(np.deg2rad(45.0))) + 600.0 * wave1
    z_tp = np.minimum(z_tp, (t_sl - T_TROPOPAUSE_MIN) / gamma)  # a steep lapse rate meets a lower tropopause
    local_hour = (np.mod(t, 1.0) * 24.0 + lo / 15.0) % 24.0
    diurnal = np.cos(2 * np.pi * (local_hour - 14.0) / 24.0)  # +1 at 14 h local solar time
    # fronts: lines moving east, position s(t), tilted westward with height later
    front_phase = np.deg2rad(lo * 3 + 20.0 * np.rad2deg(la)) - 2 * np.pi * t / 3.1
    return dict(t_sl=t_sl, gamma=gamma, z_1000=z_1000, z_tp=z_tp, diurnal=diurnal, season=season, front_phase=front_phase)


def in_test_shift(config: dict, times: np.ndarray) -> np.ndarray:
    """Whether each time lies in ``splits.test_shift`` (from its first day 00 UTC to the end of its
    last day); all False when the config has no such split."""
    period = config.get("splits", {}).get("test_shift")
    if period is None:
        return np.zeros(len(times), dtype=bool)
    start, stop = period_bounds(period)
    return (times >= start) & (times < stop)


def shift_fields(config: dict, times: np.ndarray) -> dict[str, np.ndarray | float]:
    """`data.synthetic_shift` over [time, 1, 1, 1]: its values at the times of ``splits.test_shift``,
    exactly 0.0 elsewhere (so those times are computed bit for bit as without a shift).

    Read only when a time of the month is shifted; the config is then the one validated
    against the schema (which fills in the shift's defaults).
    """
    inside = in_test_shift(config, times)[:, None, None, None]
    if not inside.any():
        return dict.fromkeys(SHIFT_KEYS, 0.0)
    return {key: np.where(inside, float(config_value(config, f"data.synthetic_shift.{key}")), 0.0) for key in SHIFT_KEYS}


def synthetic_month(config: dict, year: int, month: int) -> xr.Dataset:
    """One month of the synthetic atmosphere in canonical form (DESIGN.md section 3)."""
    grid = Grid.from_config(config["grid"]["hr"])
    levels = np.asarray(config["levels"], dtype=np.float64)
    times = month_times(year, month, config["data"]["hours"])
    statics = synthetic_statics(config)
    orog = statics["orography"].values.astype(np.float64)[None, None]
    lsm = statics["lsm"].values.astype(np.float64)[None, None]
    days = (times.values - EPOCH) / np.timedelta64(1, "D")
    f = {k: v[:, None] for k, v in _large_scale(np.asarray(days, float), grid.lat, grid.lon).items()}

    rng = np.random.default_rng([int(config["seed"]), year, month])
    noise = _ar1_noise(rng, (len(times), len(levels), *grid.shape), rho_time=0.8, rho_level=0.7)
    shift = shift_fields(config, times.values)
    gamma = f["gamma"] + 1e-3 * shift["lapse_rate_change"]  # K m-1; the tropopause stays at z_tp
    # a longer, deeper night-time branch: the boundary layer's amplitude rises with `diurnal`, so lowering
    # it lowers the amplitude at every time and land point, steepening the warming with height above the
    # ground everywhere, so the set of points where T rises with height only grows
    diurnal = f["diurnal"] - shift["inversion_offset"]

    def temperature(z: np.ndarray) -> np.ndarray:
        free = f["t_sl"] - gamma * z
        t_tp = f["t_sl"] - gamma * f["z_tp"]
        strat = t_tp + 1e-3 * (z - f["z_tp"])
        above_ground = np.clip(z - orog, 0.0, None)
        # boundary layer over land: +6 K in the afternoon, -8 K night-time inversion, stronger in summer
        amp = lsm * (np.where(diurnal > 0, 6.0, 8.0) * diurnal) * (1.0 + 0.3 * f["season"])
        bl = amp * np.exp(-above_ground / H_BL)
        tilt = 5e-5 * z  # fronts lean about 1 degree of longitude per km of height, radians of phase per m
        front = FRONT_JUMP * np.tanh(np.sin(f["front_phase"] + tilt) / np.deg2rad(FRONT_WIDTH_DEG * 3))
        front *= np.exp(-z / 6000.0)
        # smooth maximum (log-sum-exp over TROPOPAUSE_SMOOTH K): its lapse rate is a convex
        # combination of the two, so the tropopause never makes the column super-adiabatic
        base = np.logaddexp(free / TROPOPAUSE_SMOOTH, strat / TROPOPAUSE_SMOOTH) * TROPOPAUSE_SMOOTH
        # upper-tropospheric amplification: linear in height from sea level to z_tp, constant above
        aloft = np.clip(z / f["z_tp"], 0.0, 1.0)
        warming = shift["surface_warming"] + (shift["aloft_warming"] - shift["surface_warming"]) * aloft
        return base + bl + front + NOISE_RMS * noise + warming

    z_std = 44330.8 * (1.0 - (levels / 1013.25) ** 0.190263)  # standard atmosphere, m
    height = np.broadcast_to(z_std[None, :, None, None], noise.shape) + f["z_1000"]
    for _ in range(3):  # fixed point: T depends on Z, Z on T through the hypsometric equation
        t = temperature(height)
        height = hypsometric_height(t, levels, axis=1, z_bottom=f["z_1000"][:, 0])
    t = temperature(height)
    height = hypsometric_height(t, levels, axis=1, z_bottom=f["z_1000"][:, 0])

    ds = xr.Dataset(
        {
            "t": ((TIME, LEVEL, LAT, LON), t.astype(np.float32), CF_ATTRS["t"]),
            "z": ((TIME, LEVEL, LAT, LON), (G * height).astype(np.float32), CF_ATTRS["z"]),
        },
        coords={
            TIME: (TIME, times.values, {"standard_name": "time", "axis": "T"}),
            LEVEL: (LEVEL, levels, CF_ATTRS[LEVEL]),
            LAT: (LAT, grid.lat, CF_ATTRS[LAT]),
            LON: (LON, grid.lon, CF_ATTRS[LON]),
        },
    )
    ds.attrs.update(
        Conventions="CF-1.8",
        title=f"GeoDiff synthetic atmosphere {year}-{month:02d}",
        source="synthetic",
        seed=int(config["seed"]),
        geodiff_version=__version__,
    )
    log.info("synthetic %d-%02d: %d times, %d levels, %dx%d", year, month, len(times), len(levels), *grid.shape)
    return ds


def _ar1_noise(rng: np.random.Generator, shape: tuple[int, int, int, int], rho_time: float, rho_level: float) -> np.ndarray:
    """k^-5/3 fields [time, level, lat, lon], unit variance, AR(1)-correlated in time and along levels."""
    innov = fractal_field(rng, shape, slope=5.0 / 3.0)
    for k in range(1, shape[1]):
        innov[:, k] = rho_level * innov[:, k - 1] + np.sqrt(1 - rho_level**2) * innov[:, k]
    for i in range(1, shape[0]):
        innov[i] = rho_time * innov[i - 1] + np.sqrt(1 - rho_time**2) * innov[i]
    return innov
