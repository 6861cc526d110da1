"""compute_priors' fast paths (numba kernel, numpy fallback) against the reference formulas of thermo.

The reference is :mod:`geodiff.physics.thermo` in float64 on the same float32
temperatures (thermo is held to MetPy in test_physics.py). Both paths must agree
with it to 1e-5 relative, with an absolute floor of 1e-6 of the field's largest
value where a field crosses zero (lapse rate, σ and N² do).
"""

from __future__ import annotations

import numpy as np
import pytest

import geodiff.physics.priors as priors
from geodiff.constants import G, KAPPA, P0_HPA, R_D
from geodiff.physics import thermo
from geodiff.physics.priors import PRIORS, compute_priors

LEVELS = np.array([1000.0, 925.0, 850.0, 700.0, 500.0, 400.0, 300.0, 200.0])
NAMES = list(PRIORS)

needs_kernel = pytest.mark.skipif(priors._KERNEL is None, reason="numba is not installed")


def _temperature(
    rng: np.random.Generator, lead: tuple[int, ...], grid: tuple[int, int], levels: np.ndarray
) -> np.ndarray:
    """float32 temperature [*lead, L, H, W]: a 6.5 K/km troposphere capped at 216.65 K, 1.5 K noise."""
    z_std = 288.15 / 6.5e-3 * (1 - (levels / 1013.25) ** (R_D * 6.5e-3 / G))
    profile = np.maximum(288.15 - 6.5e-3 * z_std, 216.65)
    shape = lead + (levels.size,) + grid
    t = profile.reshape((levels.size, 1, 1)) + rng.normal(0.0, 1.5, shape)
    return t.astype(np.float32)


def _reference(t: np.ndarray, levels: np.ndarray, z_bottom: float | np.ndarray = 0.0) -> dict[str, np.ndarray]:
    """Every prior from thermo in float64."""
    t = t.astype(np.float64)
    z = thermo.hypsometric_height(t, levels, z_bottom=z_bottom)
    return {
        "theta": thermo.potential_temperature(t, levels),
        "lapse_rate": thermo.lapse_rate(t, z),
        "static_stability": thermo.static_stability(t, levels),
        "n2": thermo.brunt_vaisala_frequency_squared(t, z, levels),
        "height": z,
    }


def _assert_close(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    """float32 results: 1e-5 relative, or 1e-6 of the field's largest value where it crosses 0."""
    for name, value in out.items():
        assert value.dtype == np.float32 and value.shape == shape, name
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(value, ref[name], rtol=1e-5, atol=1e-6 * scale, err_msg=name)


@pytest.fixture(params=["numba", "numpy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the numba kernel and on the numpy fallback."""
    if request.param == "numba" and priors._KERNEL is None:
        pytest.skip("numba is not installed")
    if request.param == "numpy":
        monkeypatch.setattr(priors, "_KERNEL", None)
    return request.param


# --------------------------------------------------------------------------
# against thermo
# --------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["surface_up", "top_down"])
@pytest.mark.parametrize("name", NAMES)
def test_each_prior_matches_thermo(path: str, name: str, order: str) -> None:
    rng = np.random.default_rng(11)
    levels = LEVELS if order == "surface_up" else LEVELS[::-1].copy()
    t = _temperature(rng, (3,), (7, 9), levels)
    zb = rng.uniform(-50.0, 1500.0, (7, 9))
    out = compute_priors(t, levels, [name], z_bottom=zb)
    assert list(out) == [name]
    _assert_close(out, _reference(t, levels, zb), t.shape)


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_any_leading_dims_and_all_priors_at_once(path: str, lead: tuple[int, ...]) -> None:
    rng = np.random.default_rng(12)
    t = _temperature(rng, lead, (5, 6), LEVELS)
    zb = rng.uniform(0.0, 800.0, lead + (5, 6))
    out = compute_priors(t, LEVELS, NAMES, z_bottom=zb)
    assert list(out) == NAMES
    _assert_close(out, _reference(t, LEVELS, zb), t.shape)


def test_z_bottom_forms(path: str) -> None:
    rng = np.random.default_rng(13)
    t = _temperature(rng, (2, 3), (4, 5), LEVELS)
    per_grid = rng.uniform(0.0, 900.0, (4, 5))
    per_column = rng.uniform(0.0, 900.0, (2, 3, 4, 5))
    per_first_dim = rng.uniform(0.0, 900.0, (2, 1, 4, 5))
    forms = {
        "zero": 0.0,
        "scalar": 123.5,
        "0-d array": np.array(-40.0),
        "grid": per_grid,
        "column": per_column,
        "level axis kept": per_column[:, :, None],
        "first lead dim": per_first_dim,
        "constant grid": np.full((4, 5), 7.0),
    }
    for label, zb in forms.items():
        ref_zb = zb[:, :, 0] if label == "level axis kept" else zb
        ref = _reference(t, LEVELS, ref_zb)["height"]
        out = compute_priors(t, LEVELS, ["height"], z_bottom=zb)["height"]
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-3, err_msg=label)
    with pytest.raises(ValueError):
        compute_priors(t, LEVELS, ["height"], z_bottom=np.ones((4, 4, 5)))


def test_uneven_levels_and_float64_noncontiguous_input(path: str) -> None:
    rng = np.random.default_rng(14)
    levels = np.array([1000.0, 975.0, 950.0, 925.0, 900.0, 850.0, 700.0, 600.0, 500.0, 300.0, 250.0, 150.0, 100.0])
    t64 = _temperature(rng, (3,), (6, 10), levels).astype(np.float64)
    t = t64[:, :, :, ::2]  # float64, not contiguous
    out = compute_priors(t, levels, NAMES, z_bottom=100.0)
    ref = _reference(t.astype(np.float32), levels, 100.0)
    _assert_close(out, ref, t.shape)
    three = compute_priors(t[:, :3], levels[:3], NAMES)  # the fewest levels: one stencil for all
    _assert_close(three, _reference(t[:, :3].astype(np.float32), levels[:3]), t[:, :3].shape)


def test_physical_limits(path: str) -> None:
    """Dry-adiabatic columns: Γ = g/c_p, σ = N² = 0; isothermal: Γ = 0, N² = g²/(c_p T)."""
    levels = np.linspace(1000.0, 200.0, 81)
    dry = 300.0 * (levels / P0_HPA) ** KAPPA
    t = np.broadcast_to(dry[:, None, None], (levels.size, 2, 3)).astype(np.float32)
    out = compute_priors(t, levels, ["lapse_rate", "static_stability", "n2"])
    np.testing.assert_allclose(out["lapse_rate"], G / 1004.64 * 1000.0, atol=1.2e-3)
    assert np.abs(out["static_stability"]).max() < 1e-10  # typical σ ~ 1e-6
    assert np.abs(out["n2"]).max() < 1e-8  # typical N² ~ 1e-4
    iso = np.full((levels.size, 2, 3), 250.0, np.float32)
    out = compute_priors(iso, levels, ["lapse_rate", "n2"])
    assert np.abs(out["lapse_rate"]).max() < 1e-4
    np.testing.assert_allclose(out["n2"], G**2 / (1004.64 * 250.0), rtol=2e-3)


# --------------------------------------------------------------------------
# kernel specifics
# --------------------------------------------------------------------------
@needs_kernel
def test_kernel_agrees_with_the_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(15)
    t = _temperature(rng, (6,), (11, 13), LEVELS)
    zb = rng.uniform(0.0, 500.0, (11, 13))
    fast = compute_priors(t, LEVELS, NAMES, z_bottom=zb)
    monkeypatch.setattr(priors, "_KERNEL", None)
    slow = compute_priors(t, LEVELS, NAMES, z_bottom=zb)
    _assert_close(fast, {k: v.astype(np.float64) for k, v in slow.items()}, t.shape)


@needs_kernel
def test_chunks_batches_and_threads_give_identical_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(16)
    t = _temperature(rng, (5,), (9, 37), LEVELS)  # 333 columns: chunks of 16 leave a remainder
    zb = rng.uniform(0.0, 500.0, (5, 9, 37))
    whole = compute_priors(t, LEVELS, NAMES, z_bottom=zb, threads=1)
    monkeypatch.setattr(priors, "_CHUNK_COLUMNS", 16)
    monkeypatch.setattr(priors, "_MIN_VALUES_PER_THREAD", 1)
    for threads in (1, 2, 3):
        split = compute_priors(t, LEVELS, NAMES, z_bottom=zb, threads=threads)
        for name in NAMES:
            np.testing.assert_array_equal(split[name], whole[name], err_msg=f"{name}, {threads} threads")


@needs_kernel
def test_large_temperature_jumps_use_the_exact_log() -> None:
    """ln(T_{k+1}/T_k) outside the series' range (|u| > 1/8) comes from log, not the series."""
    rng = np.random.default_rng(17)
    t = _temperature(rng, (2,), (3, 40), LEVELS)
    t[0, 3, 1, 5] = 400.0  # T ratio ~1.6 to both neighbours
    t[1, 5, 2, 30] = 120.0
    out = compute_priors(t, LEVELS, ["static_stability"])
    _assert_close(out, _reference(t, LEVELS), t.shape)


@needs_kernel
def test_nan_stays_in_its_column_and_stencil() -> None:
    """A NaN temperature spoils only what depends on it: θ and σ exactly where the reference's
    are NaN; Γ and N² only within their stencil (the reference's are NaN all the way up,
    through heights summed from below: the derivatives only need differences of heights)."""
    rng = np.random.default_rng(18)
    t = _temperature(rng, (2,), (4, 5), LEVELS)
    t[1, 4, 2, 3] = np.nan
    out = compute_priors(t, LEVELS, NAMES, z_bottom=10.0)
    ref = _reference(t, LEVELS, 10.0)
    for name in ("theta", "static_stability", "height"):
        np.testing.assert_array_equal(np.isnan(out[name]), np.isnan(ref[name]), err_msg=name)
    for name in ("lapse_rate", "n2"):
        nan = np.isnan(out[name])
        assert np.flatnonzero(nan[1, :, 2, 3]).tolist() == [3, 4, 5], name  # stencils with layer 3 or 4
        nan[1, :, 2, 3] = False
        assert not nan.any(), name
    finite = ~np.isnan(ref["lapse_rate"])
    np.testing.assert_allclose(out["lapse_rate"][finite], ref["lapse_rate"][finite], rtol=1e-5, atol=1e-4)


def test_kernel_logic_in_plain_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's source run by the interpreter (no numba needed): the same numbers."""
    rng = np.random.default_rng(19)
    t = _temperature(rng, (2,), (3, 4), LEVELS)
    t[1, 2, 1, 1] = 390.0  # a jump beyond the log series: the redo path
    zb = rng.uniform(0.0, 300.0, (3, 4))
    monkeypatch.setattr(priors, "_KERNEL", priors._priors_columns)
    monkeypatch.setattr(priors, "_CHUNK_COLUMNS", 5)  # chunks of 5 and 2 columns
    for names in (NAMES, ["static_stability"], ["lapse_rate", "height"]):
        _assert_close(compute_priors(t, LEVELS, names, z_bottom=zb), _reference(t, LEVELS, zb), t.shape)


def test_kernel_constants_fold_the_stencil() -> None:
    """The kernel's per-level table: derivative weights (α, γ) and the σ stencil rows."""
    table = priors._kernel_constants(LEVELS)
    assert table.dtype == np.float32 and table.shape == (priors._N_KERNEL_CONSTANTS, LEVELS.size)
    np.testing.assert_array_equal(table[priors._K_ALPHA], [0, 0, 0, 0, 0, 0, 0, 2])
    np.testing.assert_array_equal(table[priors._K_GAMMA], [-1, 1, 1, 1, 1, 1, 1, -1])
    thick = table[priors._K_THICK, :-1].astype(np.float64)
    np.testing.assert_allclose(thick, R_D * np.log(LEVELS[:-1] / LEVELS[1:]) / (2 * G), rtol=1e-7)
    np.testing.assert_allclose(table[priors._K_C] * table[priors._K_RC], 1.0, rtol=1e-6)
