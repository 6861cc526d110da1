"""Vertical physics: thermo formulas (numpy and torch) against MetPy, closed forms, autograd.

MetPy's constants differ from GeoDiff's (DESIGN.md section 5): MetPy has
R_d = 287.04749 J kg-1 K-1 and c_p = 3.5 R_d, GeoDiff R_d = 287.04, c_p = 1004.64.
Both give κ = R_d/c_p = 2/7 (to 1e-16) and g = 9.80665 m s-2, so θ and N² are compared
directly; σ = -(R_d T/p) ∂lnθ/∂p is linear in R_d, so MetPy's σ is rescaled by
R_d(GeoDiff)/R_d(MetPy) before comparing (`_metpy_reference`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from geodiff.constants import C_P, G, KAPPA, P0_HPA, R_D
from geodiff.physics import thermo

with warnings.catch_warnings():  # metpy imports pyproj, which may warn about its PROJ database
    warnings.simplefilter("ignore")
    import metpy.calc as mpcalc  # a test dependency: never skipped
    import metpy.constants as mpconsts
    from metpy.units import units

LEVELS = np.array([1000.0, 925.0, 850.0, 700.0, 500.0, 400.0, 300.0, 200.0])
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GFS = REAL / "gfs" / "GFS_test.nc"
RTOL_METPY = 1e-5
RTOL_TORCH = 1e-6


def _columns(rng: np.random.Generator, shape: tuple[int, ...] = (3, 5, 6), levels: np.ndarray = LEVELS) -> np.ndarray:
    """Temperature [N, L, H, W] in K: a 6.5 K/km troposphere with a 216.65 K cap, plus noise of 1.5 K."""
    z_std = 288.15 / 6.5e-3 * (1 - (levels / 1013.25) ** (R_D * 6.5e-3 / G))
    profile = np.maximum(288.15 - 6.5e-3 * z_std, 216.65)
    n, h, w = shape
    return profile[None, :, None, None] + rng.normal(0.0, 1.5, (n, levels.size, h, w))


def _metpy_reference(t: np.ndarray, p_hpa: np.ndarray, height: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    """θ, σ (rescaled to GeoDiff's R_d), N² and lapse rate from MetPy, level axis `axis` of t."""
    shape = [1] * t.ndim
    shape[axis] = p_hpa.size
    p = units.Quantity(p_hpa.reshape(shape), "hPa")
    temperature = units.Quantity(t, "K")
    z = units.Quantity(height, "m")
    theta = mpcalc.potential_temperature(p, temperature)
    sigma = mpcalc.static_stability(p, temperature, vertical_dim=axis).m_as("J kg^-1 Pa^-2")
    return {
        "theta": theta.m_as("K"),
        "static_stability": sigma * (R_D / mpconsts.Rd.m_as("J kg^-1 K^-1")),
        "n2": mpcalc.brunt_vaisala_frequency_squared(z, theta, vertical_dim=axis).m_as("s^-2"),
        "lapse_rate": -mpcalc.first_derivative(temperature, x=z, axis=axis).m_as("K/km"),
    }


def _sigma(t, p, axis: int = -3):
    """σ of a temperature field (its θ computed first, as every caller does)."""
    return thermo.static_stability(t, thermo.potential_temperature(t, p, axis=axis), p, axis=axis)


def _n2(t, height, p, axis: int = -3):
    """N² of a temperature field (its θ computed first, as every caller does)."""
    return thermo.brunt_vaisala_frequency_squared(thermo.potential_temperature(t, p, axis=axis), height, axis=axis)


def _ours(t, p, height, axis: int) -> dict:
    """The same diagnostics from geodiff.physics.thermo (numpy or torch, as given)."""
    return {
        "theta": thermo.potential_temperature(t, p, axis=axis),
        "static_stability": _sigma(t, p, axis=axis),
        "n2": _n2(t, height, p, axis=axis),
        "lapse_rate": thermo.lapse_rate(t, height, axis=axis),
    }


def _assert_close_to_metpy(t: np.ndarray, p: np.ndarray, height: np.ndarray, axis: int) -> None:
    """numpy and torch (float64) forms agree with MetPy to RTOL_METPY, elementwise."""
    reference = _metpy_reference(t, p, height, axis)
    ours_np = _ours(t, p, height, axis)
    ours_torch = _ours(torch.from_numpy(t), torch.from_numpy(p), torch.from_numpy(height), axis)
    for name, ref in reference.items():
        assert isinstance(ours_np[name], np.ndarray) and isinstance(ours_torch[name], torch.Tensor)
        atol = 1e-12 * np.abs(ref).max()  # only for values that are 0 up to rounding
        np.testing.assert_allclose(ours_np[name], ref, rtol=RTOL_METPY, atol=atol, err_msg=f"numpy {name}")
        np.testing.assert_allclose(ours_torch[name].numpy(), ref, rtol=RTOL_METPY, atol=atol, err_msg=f"torch {name}")


def _real_data_dir() -> Path:
    """../shared/data/real beside the checkout; skipped when absent, except under CI=true (fails)."""
    if not GFS.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"real sample data missing under CI=true: {GFS}")
        pytest.skip(f"real sample data not found: {GFS}")
    return REAL


@pytest.fixture(scope="module")
def gfs() -> dict[str, np.ndarray]:
    """GFS_test.nc turned to GeoDiff's order (surface upward): T (K), Z (m), p (hPa), float64."""
    xr = pytest.importorskip("xarray")
    path = _real_data_dir() / "gfs" / "GFS_test.nc"
    # h5netcdf: the netCDF4 engine aborts at interpreter exit in this environment (double free)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["isobaric3"].attrs["units"] == "Pa"
        assert ds["Geopotential_height_isobaric"].attrs["units"] == "gpm"
        p_pa = ds["isobaric3"].values.astype(np.float64)
        order = np.argsort(-p_pa)  # file: 10 Pa ... 1000 hPa; GeoDiff: 1000 hPa first
        t = ds["Temperature_isobaric"].values.astype(np.float64)[:, order]
        z = ds["Geopotential_height_isobaric"].values.astype(np.float64)[:, order]
    assert t.shape == (1, 26, 46, 101)
    return {"t": t, "z": z, "p": p_pa[order] / 100.0}


# --------------------------------------------------------------------------
# numpy vs torch
# --------------------------------------------------------------------------
def test_numpy_and_torch_forms_agree() -> None:
    rng = np.random.default_rng(1)
    t = _columns(rng)
    zb = rng.uniform(-50.0, 800.0, t.shape[-2:])
    tt, pt, zbt = torch.from_numpy(t), torch.from_numpy(LEVELS), torch.from_numpy(zb)
    z = thermo.hypsometric_height(t, LEVELS, z_bottom=zb)
    zt = thermo.hypsometric_height(tt, pt, z_bottom=zbt)
    pairs = {
        "theta": (thermo.potential_temperature(t, LEVELS), thermo.potential_temperature(tt, pt)),
        "theta, p as numpy": (thermo.potential_temperature(t, LEVELS), thermo.potential_temperature(tt, LEVELS)),
        "height": (z, zt),
        "thickness": (thermo.layer_thickness(t, LEVELS), thermo.layer_thickness(tt, pt)),
        "d/dp 1-D": (thermo.vertical_derivative(t, LEVELS), thermo.vertical_derivative(tt, pt)),
        "d/dz field": (thermo.vertical_derivative(t, z), thermo.vertical_derivative(tt, zt)),
        "lapse": (thermo.lapse_rate(t, z), thermo.lapse_rate(tt, zt)),
        "sigma": (_sigma(t, LEVELS), _sigma(tt, pt)),
        "n2": (
            _n2(t, z, LEVELS),
            _n2(tt, zt, pt),
        ),
    }
    for name, (a, b) in pairs.items():
        assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor), name
        assert b.dtype == torch.float64 and tuple(b.shape) == a.shape, name
        np.testing.assert_allclose(b.numpy(), a, rtol=RTOL_TORCH, atol=1e-14 * np.abs(a).max(), err_msg=name)
    assert z.shape == t.shape and pairs["thickness"][0].shape == (3, 7, 5, 6)
    np.testing.assert_array_equal(z[:, 0], np.broadcast_to(zb, z[:, 0].shape))


def test_torch_float32_keeps_dtype() -> None:
    t = torch.from_numpy(_columns(np.random.default_rng(2))).float()
    sigma = _sigma(t, LEVELS)
    assert sigma.dtype == torch.float32
    ref = _sigma(t.double().numpy(), LEVELS)
    np.testing.assert_allclose(sigma.numpy(), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


# --------------------------------------------------------------------------
# MetPy
# --------------------------------------------------------------------------
def test_matches_metpy_on_synthetic_columns() -> None:
    rng = np.random.default_rng(3)
    t = _columns(rng)
    z = thermo.hypsometric_height(t, LEVELS, z_bottom=110.0)
    _assert_close_to_metpy(t, LEVELS, z, axis=1)
    # level axis elsewhere and 1-D heights: one column, [L] with axis=0 and [H, L] with axis=-1
    col = t[0, :, 0, 0]
    _assert_close_to_metpy(col, LEVELS, z[0, :, 0, 0], axis=0)
    rows = np.moveaxis(t[0, :, :, 0], 0, -1).copy()
    _assert_close_to_metpy(rows, LEVELS, np.moveaxis(z[0, :, :, 0], 0, -1).copy(), axis=-1)


def test_matches_metpy_on_gfs(gfs: dict[str, np.ndarray]) -> None:
    _assert_close_to_metpy(gfs["t"], gfs["p"], gfs["z"], axis=1)


def test_vertical_derivative_matches_metpy_first_derivative() -> None:
    rng = np.random.default_rng(4)
    x = np.cumsum(rng.uniform(0.2, 3.0, 9))  # uneven
    f = rng.normal(size=(4, 9, 3))
    ref = mpcalc.first_derivative(f, x=x, axis=1).m_as("")
    np.testing.assert_allclose(thermo.vertical_derivative(f, x, axis=1), ref, rtol=1e-12, atol=1e-12)
    x_field = x[None, :, None] + rng.uniform(0, 0.1, (4, 9, 3))  # positions vary by column
    ref = mpcalc.first_derivative(f, x=x_field, axis=1).m_as("")
    np.testing.assert_allclose(thermo.vertical_derivative(f, x_field, axis=1), ref, rtol=1e-12, atol=1e-12)


def test_vertical_derivative_is_exact_for_quadratics() -> None:
    """The three-point stencil differentiates a parabola exactly on any uneven grid, at every level."""
    x = np.array([0.0, 0.3, 1.0, 1.2, 2.9, 3.0, 5.5])
    f = 2.0 - 3.0 * x + 0.7 * x**2
    exact = -3.0 + 1.4 * x
    np.testing.assert_allclose(thermo.vertical_derivative(f, x, axis=0), exact, rtol=0, atol=1e-12)
    torch_form = thermo.vertical_derivative(torch.from_numpy(f), torch.from_numpy(x), axis=0)
    np.testing.assert_allclose(torch_form.numpy(), exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(thermo.vertical_derivative(f[2:5], x[2:5], axis=0), exact[2:5], rtol=0, atol=1e-12)
    # a coordinate that varies by column ([L, 2]): each column its own parabola
    xs = np.stack([x, 2.0 * x + 1.0], axis=1)
    fs = 0.5 * xs**2 - xs
    np.testing.assert_allclose(thermo.vertical_derivative(fs, xs, axis=0), xs - 1.0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 3 levels"):
        thermo.vertical_derivative(f[:2], x[:2], axis=0)
    with pytest.raises(ValueError, match="levels"):
        thermo.vertical_derivative(f, x[:5], axis=0)


# --------------------------------------------------------------------------
# physical limits
# --------------------------------------------------------------------------
def test_dry_adiabatic_column() -> None:
    dry = G / C_P * 1000.0  # K/km
    assert dry == pytest.approx(9.7614, abs=1e-4)
    for levels, tol in ((LEVELS, 0.02), (np.linspace(1000.0, 200.0, 81), 2e-4)):
        t = 300.0 * (levels / P0_HPA) ** KAPPA  # θ = 300 K everywhere
        t = np.broadcast_to(t[:, None, None], (levels.size, 2, 3)).copy()
        z = thermo.hypsometric_height(t, levels)
        np.testing.assert_allclose(thermo.potential_temperature(t, levels), 300.0, rtol=1e-14)
        np.testing.assert_allclose(thermo.lapse_rate(t, z), dry, rtol=0, atol=tol)
        assert np.abs(_sigma(t, levels)).max() < 1e-18  # typical σ ~ 1e-6
        assert np.abs(_n2(t, z, levels)).max() < 1e-15  # typical N² ~ 1e-4


def test_isothermal_column() -> None:
    temp = 250.0
    for levels, tol in ((LEVELS, 0.08), (np.linspace(1000.0, 200.0, 81), 2e-3)):
        t = np.full((levels.size, 2, 3), temp)
        z = thermo.hypsometric_height(t, levels)
        closed = R_D * temp / G * np.log(P0_HPA / levels)  # Z(p) of an isothermal atmosphere, Z(p0) = 0
        np.testing.assert_allclose(z, np.broadcast_to(closed[:, None, None], t.shape), rtol=1e-13, atol=1e-9)
        np.testing.assert_allclose(thermo.layer_thickness(t, levels)[:, 0, 0], np.diff(closed), rtol=1e-13)
        assert np.all(thermo.lapse_rate(t, z) == 0.0)
        # stable: θ grows with height. Exact values σ = κ R_d T / p² (p in Pa), N² = g² / (c_p T)
        sigma = _sigma(t, levels)[:, 0, 0]
        n2 = _n2(t, z, levels)[:, 0, 0]
        assert np.all(sigma > 0) and np.all(n2 > 0)
        np.testing.assert_allclose(sigma, KAPPA * R_D * temp / (levels * 100.0) ** 2, rtol=tol)
        np.testing.assert_allclose(n2, G**2 / (C_P * temp), rtol=tol / 10)
    levels = LEVELS
    t = np.full((2, levels.size, 2, 3), temp)
    closed = R_D * temp / G * np.log(P0_HPA / levels)
    z0 = np.array([[0.0, 100.0, -20.0], [5.0, 3000.0, 1.0]])  # e.g. orography under the lowest level
    z = thermo.hypsometric_height(t, levels, z_bottom=z0)
    np.testing.assert_allclose(z - z0, np.broadcast_to(closed[:, None, None], t.shape), rtol=1e-12, atol=1e-9)


def test_hypsometric_height_z_bottom_forms() -> None:
    """z_bottom is a scalar or an array shaped like one level of t without the level axis; the
    heights above it are the same."""
    rng = np.random.default_rng(9)
    t = _columns(rng, shape=(2, 4, 5))  # [N, L, H, W]
    above = thermo.hypsometric_height(t, LEVELS)
    grid = rng.uniform(0.0, 900.0, (4, 5))
    per_time = rng.uniform(0.0, 900.0, (2, 4, 5))
    for z_bottom, level0 in ((123.5, np.full((2, 4, 5), 123.5)), (grid, np.broadcast_to(grid, (2, 4, 5))), (per_time, per_time)):
        z = thermo.hypsometric_height(t, LEVELS, z_bottom=z_bottom)
        np.testing.assert_allclose(z, above + level0[:, None], rtol=1e-13)
    # level axis elsewhere: [N, H, W, L] with z_bottom [N, H, W]
    moved = thermo.hypsometric_height(np.moveaxis(t, 1, -1), LEVELS, axis=-1, z_bottom=per_time)
    np.testing.assert_allclose(np.moveaxis(moved, -1, 1), above + per_time[:, None], rtol=1e-13)
    with pytest.raises(ValueError, match="z_bottom"):
        thermo.hypsometric_height(t, LEVELS, axis=1, z_bottom=np.zeros(5))


def test_stable_and_unstable_columns() -> None:
    # stable: 4 K/km lapse (below the dry 9.76 K/km); unstable: 11 K/km (super-adiabatic)
    for lapse, sign in ((4.0, 1.0), (11.0, -1.0)):
        z = np.linspace(0.0, 9000.0, 10)
        t = 290.0 - lapse * z / 1000.0
        p = P0_HPA * np.exp(-G / (R_D * 290.0) * z)  # any decreasing pressures
        t3, p_col = t[:, None, None], p
        assert np.all(sign * _sigma(t3, p_col) > 0)
        z_h = thermo.hypsometric_height(t3, p_col)
        assert np.all(sign * _n2(t3, z_h, p_col) > 0)


def test_gfs_hypsometric_heights_follow_the_model(gfs: dict[str, np.ndarray]) -> None:
    """Heights integrated from GFS temperature stay within 60 m of GFS's own heights up to 200 hPa.

    (Dry temperature instead of virtual temperature makes them slightly low.)
    """
    z = thermo.hypsometric_height(gfs["t"], gfs["p"], axis=1, z_bottom=gfs["z"][:, 0])
    top = int(np.flatnonzero(gfs["p"] == 200.0)[0])
    err = z[:, : top + 1] - gfs["z"][:, : top + 1]
    assert np.abs(err).max() < 60.0
    assert -40.0 < err[:, top].mean() < 0.0
    assert np.abs(z[:, 0] - gfs["z"][:, 0]).max() == 0.0


# --------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------
def test_gradient_flows_through_torch_forms() -> None:
    rng = np.random.default_rng(5)
    t = torch.from_numpy(_columns(rng, shape=(1, 2, 2))).requires_grad_(True)
    p = torch.from_numpy(LEVELS)
    assert torch.autograd.gradcheck(lambda x: _sigma(x, p), (t,))
    sigma = _sigma(t, p)
    sigma.square().sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0

    def n2_and_lapse(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = thermo.hypsometric_height(x, p)  # heights depend on T too
        return _n2(x, z, p), thermo.lapse_rate(x, z)

    assert torch.autograd.gradcheck(n2_and_lapse, (t.detach().requires_grad_(True),))
