"""compute_priors against MetPy and closed forms, and its eager fallback without a C++ compiler.

The reference is MetPy in float64 on the same float32 temperatures: θ, σ, N², the
lapse rate from ``first_derivative``, and heights summed from
``thickness_hydrostatic`` layer by layer (MetPy's R_d = 287.04749 differs from
GeoDiff's 287.04: σ and heights are linear in R_d and are rescaled by the ratio;
κ and g are the same). The priors are computed and stored in float32 and must agree
to 1e-5 relative, with an absolute floor of 5e-5 of the field's largest value where
a field crosses zero (lapse rate, σ and N² do): a float32 difference of θ or ln θ
between adjacent levels keeps about 5 of float32's 7 digits (θ ≈ 300 K rounded to
2e-5 K, a difference of a few K), and the one-sided stencils at the ends of a
3-level column weigh such differences up to 3 times, so the vertical derivatives are
good to a few 1e-5 of their largest value, far below what matters for a network input.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from geodiff.constants import C_P, G, KAPPA, P0_HPA, R_D
from geodiff.physics.priors import PRIORS, compute_priors

with warnings.catch_warnings():  # metpy imports pyproj, which may warn about its PROJ database
    warnings.simplefilter("ignore")
    import metpy.calc as mpcalc
    import metpy.constants as mpconsts
    from metpy.units import units

LEVELS = np.array([1000.0, 925.0, 850.0, 700.0, 500.0, 400.0, 300.0, 200.0])
NAMES = list(PRIORS)
R_RATIO = R_D / mpconsts.Rd.m_as("J kg^-1 K^-1")
"""GeoDiff's R_d over MetPy's."""


def _temperature(
    rng: np.random.Generator, lead: tuple[int, ...], grid: tuple[int, int], levels: np.ndarray
) -> np.ndarray:
    """float32 temperature [*lead, L, H, W]: a 6.5 K/km troposphere capped at 216.65 K, 1.5 K noise."""
    z_std = 288.15 / 6.5e-3 * (1 - (levels / 1013.25) ** (R_D * 6.5e-3 / G))
    profile = np.maximum(288.15 - 6.5e-3 * z_std, 216.65)
    shape = lead + (levels.size,) + grid
    t = profile.reshape((levels.size, 1, 1)) + rng.normal(0.0, 1.5, shape)
    return t.astype(np.float32)


def _metpy(t: np.ndarray, levels: np.ndarray) -> dict[str, np.ndarray]:
    """Every prior from MetPy in float64, t shaped [..., L, H, W]."""
    t = t.astype(np.float64)
    p = units.Quantity(levels.reshape((1,) * (t.ndim - 3) + (-1, 1, 1)), "hPa")
    temperature = units.Quantity(t, "K")
    # heights above level 0: hydrostatic thickness of each layer, summed upward
    columns = np.moveaxis(t, -3, -1).reshape(-1, levels.size)
    dz = np.array(
        [
            [
                mpcalc.thickness_hydrostatic(units.Quantity(levels[k : k + 2], "hPa"), units.Quantity(col[k : k + 2], "K"))
                .m_as("m")
                for k in range(levels.size - 1)
            ]
            for col in columns
        ]
    )
    z_cols = np.concatenate([np.zeros((columns.shape[0], 1)), np.cumsum(dz, axis=1)], axis=1) * R_RATIO
    height = np.moveaxis(z_cols.reshape(t.shape[:-3] + t.shape[-2:] + (levels.size,)), -1, -3)
    z = units.Quantity(height, "m")
    theta = mpcalc.potential_temperature(p, temperature)
    return {
        "theta": theta.m_as("K"),
        "lapse_rate": -mpcalc.first_derivative(temperature, x=z, axis=-3).m_as("K/km"),
        "static_stability": mpcalc.static_stability(p, temperature, vertical_dim=t.ndim - 3).m_as("J kg^-1 Pa^-2")
        * R_RATIO,
        "n2": mpcalc.brunt_vaisala_frequency_squared(z, theta, vertical_dim=t.ndim - 3).m_as("s^-2"),
        "height": height,
    }


def _assert_close(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    """float32 results: 1e-5 relative, or 5e-5 of the field's largest value where it crosses 0."""
    for name, value in out.items():
        assert value.dtype == np.float32 and value.shape == shape, name
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(value, ref[name], rtol=1e-5, atol=5e-5 * scale, err_msg=name)


# --------------------------------------------------------------------------
# against MetPy
# --------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["surface_up", "top_down"])
def test_every_prior_matches_metpy(order: str) -> None:
    rng = np.random.default_rng(11)
    levels = LEVELS if order == "surface_up" else LEVELS[::-1].copy()
    t = _temperature(rng, (3,), (7, 9), levels)
    out = compute_priors(t, levels, NAMES)
    assert list(out) == NAMES
    _assert_close(out, _metpy(t, levels), t.shape)


@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_any_leading_dims(lead: tuple[int, ...]) -> None:
    rng = np.random.default_rng(12)
    t = _temperature(rng, lead, (5, 6), LEVELS)
    _assert_close(compute_priors(t, LEVELS, NAMES), _metpy(t, LEVELS), t.shape)


def test_uneven_levels_and_float64_noncontiguous_input() -> None:
    rng = np.random.default_rng(14)
    levels = np.array([1000.0, 975.0, 950.0, 925.0, 900.0, 850.0, 700.0, 600.0, 500.0, 300.0, 250.0, 150.0, 100.0])
    t64 = _temperature(rng, (3,), (6, 10), levels).astype(np.float64)
    t = t64[:, :, :, ::2]  # float64, not contiguous
    _assert_close(compute_priors(t, levels, NAMES), _metpy(t.astype(np.float32), levels), t.shape)
    three = t[:, :3]  # the fewest levels: one three-point stencil for all
    _assert_close(compute_priors(three, levels[:3], NAMES), _metpy(three.astype(np.float32), levels[:3]), three.shape)


def test_a_subset_in_the_order_asked() -> None:
    rng = np.random.default_rng(15)
    t = _temperature(rng, (2,), (4, 3), LEVELS)
    out = compute_priors(t, LEVELS, ["static_stability", "theta", "static_stability"])
    assert list(out) == ["static_stability", "theta"]
    _assert_close(out, _metpy(t, LEVELS), t.shape)


# --------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------
def test_dry_adiabatic_column() -> None:
    """θ = 300 K everywhere: Γ = g/c_p (to the stencil's error on these levels), σ = N² = 0."""
    t = 300.0 * (LEVELS / P0_HPA) ** KAPPA
    t = np.broadcast_to(t[:, None, None], (1, LEVELS.size, 2, 3)).astype(np.float32)
    out = compute_priors(t, LEVELS, NAMES)
    np.testing.assert_allclose(out["theta"], 300.0, rtol=1e-6)
    np.testing.assert_allclose(out["lapse_rate"], G / C_P * 1000.0, atol=0.02)
    assert np.abs(out["static_stability"]).max() < 1e-10  # typical σ ~ 1e-6
    assert np.abs(out["n2"]).max() < 1e-8  # typical N² ~ 1e-4


def test_isothermal_column() -> None:
    """T = 250 K: Z(p) = (R_d T/g) ln(p0/p), Γ = 0, σ = κ R_d T/p² (p in Pa) and N² = g²/(c_p T)
    up to the stencil's error on these levels."""
    temp = 250.0
    t = np.full((1, LEVELS.size, 2, 3), temp, np.float32)
    out = compute_priors(t, LEVELS, NAMES)
    closed = R_D * temp / G * np.log(P0_HPA / LEVELS)
    np.testing.assert_allclose(out["height"], np.broadcast_to(closed[:, None, None], t.shape), rtol=1e-6, atol=1e-3)
    assert np.abs(out["lapse_rate"]).max() < 1e-4
    np.testing.assert_allclose(out["static_stability"][0, :, 0, 0], KAPPA * R_D * temp / (LEVELS * 100.0) ** 2, rtol=0.08)
    np.testing.assert_allclose(out["n2"], G**2 / (C_P * temp), rtol=0.008)


# --------------------------------------------------------------------------
# shapes, errors, fallback
# --------------------------------------------------------------------------
def test_shapes_and_errors() -> None:
    rng = np.random.default_rng(7)
    t4 = _temperature(rng, (2,), (4, 3), LEVELS)
    assert compute_priors(t4, LEVELS, []) == {}
    empty = compute_priors(t4[:0], LEVELS, ["theta"])
    assert empty["theta"].shape == (0, 8, 4, 3) and empty["theta"].dtype == np.float32
    with pytest.raises(ValueError, match="unknown priors"):
        compute_priors(t4, LEVELS, ["vorticity"])
    with pytest.raises(ValueError, match="levels"):
        compute_priors(t4, LEVELS[:-1], ["theta"])
    with pytest.raises(ValueError, match="monotonic"):
        compute_priors(t4, np.r_[LEVELS[:3], LEVELS[2], LEVELS[4:]], ["theta"])
    with pytest.raises(ValueError, match="at least 3 levels"):
        compute_priors(t4[:, :2], LEVELS[:2], ["theta"])
    with pytest.raises(ValueError, match="L, H, W"):
        compute_priors(t4[0, :, 0], LEVELS, ["theta"])


def test_without_a_compiler_the_same_numbers_run_eagerly(tmp_path: Path) -> None:
    """A process whose C++ compiler does not exist (and with an empty inductor cache) logs one
    warning and returns the numbers of the compiled run."""
    rng = np.random.default_rng(16)
    t = _temperature(rng, (2,), (3, 4), LEVELS)
    np.save(tmp_path / "t.npy", t)
    script = (
        "import logging, sys, numpy as np\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from geodiff.physics.priors import PRIORS, compute_priors\n"
        f"t = np.load({str(tmp_path / 't.npy')!r})\n"
        f"levels = np.array({LEVELS.tolist()})\n"
        "for _ in range(2):\n"
        "    out = compute_priors(t, levels, list(PRIORS))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **out)\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("torch.compile is unavailable, priors run eagerly") == 1, done.stderr
    assert "InvalidCxxCompiler" in done.stderr
    eager = dict(np.load(tmp_path / "out.npz"))
    compiled = compute_priors(t, LEVELS, NAMES)
    for name in NAMES:
        np.testing.assert_allclose(eager[name], compiled[name], rtol=1e-5, atol=1e-5 * np.abs(compiled[name]).max())
