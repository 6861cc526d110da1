"""Thermodynamic diagnostics on pressure levels: each formula defined once, for numpy and torch.

θ, the hypsometric thickness and heights, Γ, σ, N² and the uneven-grid vertical
derivative are each written in exactly one function below. Every function takes
either numpy arrays or torch tensors and returns the same kind: the array
namespace is picked from the inputs (torch as soon as one input is a tensor),
and only operations that both namespaces share are used (arithmetic, slicing,
picking levels by a list of indices, ``log``, ``reshape``,
``concatenate``). So the same source serves the evaluation metrics (numpy), the
training losses (torch, differentiable with autograd, on any device) and the
priors of the pipeline (:func:`geodiff.physics.priors.compute_priors` runs the
torch form, compiled by ``torch.compile``).

Conventions (DESIGN.md section 5):

- ``t`` is temperature in K with the level axis at ``axis`` (default ``-3``,
  i.e. ``[..., L, H, W]``); levels are ordered from the surface upward
  (1000 -> 200 hPa, pressure decreasing with index), although nothing below
  depends on that order.
- ``p`` is the pressure of the levels in hPa, a 1-D array of length ``L`` that
  is broadcast along ``axis`` (an array already broadcastable to ``t`` is used
  as it is).
- Heights are in m. Vertical derivatives are second-order finite differences on
  the uneven level spacing, one-sided (second order) at the two end levels, the
  same stencil as ``metpy.calc.first_derivative``.
- numpy: coordinates (pressures, heights, ``z_bottom``) are taken as float64, so
  results are float64 even for a float32 ``t``; torch: coordinates are cast to the
  dtype and device of ``t``, and results keep them.

Constants come from :mod:`geodiff.constants` (R_d = 287.04, c_p = 1004.64,
g = 9.80665, p0 = 1000 hPa).
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from geodiff.constants import G, HPA_TO_PA, KAPPA, P0_HPA, R_D

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]
"""A numpy array or a torch tensor."""

__all__ = [
    "brunt_vaisala_frequency_squared",
    "hypsometric_height",
    "lapse_rate",
    "layer_thickness",
    "potential_temperature",
    "static_stability",
    "vertical_derivative",
]


# --------------------------------------------------------------------------
# namespace helpers
# --------------------------------------------------------------------------
def _is_tensor(a: Any) -> bool:
    """True when `a` is a torch tensor (without importing torch if nobody did)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def _namespace(*arrays: Any) -> ModuleType:
    """Return the ``torch`` module when any input is a tensor, else ``numpy``."""
    if any(_is_tensor(a) for a in arrays):
        return sys.modules["torch"]
    return np


def _as_float(a: Any, xp: ModuleType, like: Array | None = None) -> Array:
    """Convert `a` to a floating array of namespace `xp`.

    numpy: float arrays keep their dtype, anything else becomes float64.
    torch: with `like`, the dtype and device of `like`; otherwise float tensors
    are kept and anything else becomes the default float dtype.
    """
    if xp is np:
        arr = np.asarray(a)
        return arr if np.issubdtype(arr.dtype, np.floating) else arr.astype(np.float64)
    torch = xp
    if like is not None:
        return torch.as_tensor(a, dtype=like.dtype, device=like.device)
    arr = torch.as_tensor(a)
    return arr if arr.is_floating_point() else arr.to(torch.get_default_dtype())


def _neg_axis(axis: int, ndim: int) -> int:
    """Return `axis` as a negative index into an array of `ndim` dimensions."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {ndim} dimensions")
    return axis - ndim if axis >= 0 else axis


def _along(a: Array, axis: int, index: slice | list[int]) -> Array:
    """Slice (or pick the listed levels of) `a` along the negative `axis`, in numpy and torch alike."""
    return a[(Ellipsis, index) + (slice(None),) * (-axis - 1)]


def _lower(a: Array, axis: int) -> Array:
    """Levels 0..L-2 along `axis` (the first level of every consecutive pair)."""
    return _along(a, axis, slice(None, -1))


def _upper(a: Array, axis: int) -> Array:
    """Levels 1..L-1 along `axis` (the second level of every consecutive pair)."""
    return _along(a, axis, slice(1, None))


def _on_levels(c: Array, axis: int, n_levels: int, name: str) -> Array:
    """Reshape a 1-D level coordinate `c` so that it broadcasts along the negative `axis`.

    Arrays with more than one dimension are returned unchanged (they must already
    broadcast against the field).
    """
    if c.ndim != 1:
        return c
    if c.shape[0] != n_levels:
        raise ValueError(f"{name} has {c.shape[0]} levels but the field has {n_levels} along axis {axis}")
    return c.reshape((n_levels,) + (1,) * (-axis - 1))


def _levels(values: list[float], xp: ModuleType, like: Array, axis: int) -> Array:
    """Per-level constants `values` as an array of `like`'s namespace and float type, broadcast along `axis`."""
    c = np.asarray(values, dtype=np.float64) if xp is np else _as_float(values, xp, like=like)
    return _on_levels(c, axis, len(values), "values")


def _prepare(t: Any, *coords: Any, axis: int) -> tuple[ModuleType, Array, list[Array], int]:
    """Common argument handling: namespace, float field, converted coordinates, negative axis."""
    xp = _namespace(t, *coords)
    f = _as_float(t, xp)
    ax = _neg_axis(axis, f.ndim)
    if xp is np:
        converted = [np.asarray(c, dtype=np.float64) for c in coords]
    else:
        converted = [_as_float(c, xp, like=f) for c in coords]
    return xp, f, converted, ax


# --------------------------------------------------------------------------
# derivative
# --------------------------------------------------------------------------
def vertical_derivative(f: Array, x: Array, axis: int = -3) -> Array:
    r"""Derivative ∂f/∂x along the level axis on uneven spacing, second order everywhere.

    With the layer spacings :math:`h_j = x_{j+1} - x_j` and slopes
    :math:`s_j = (f_{j+1} - f_j)/h_j`, the derivative at level k is that of the
    parabola through three consecutive levels a, a+1, a+2 (the three-point
    Lagrange formula):

    .. math::
        f'_k = s_a + c_k (s_{a+1} - s_a),\qquad
        c_k = \alpha_k + \gamma_k \frac{h_a}{h_a + h_{a+1}},\qquad a = \min(\max(k-1, 0), L-3),

    with :math:`(\alpha_k, \gamma_k) = (0, 1)` at the interior levels (centred,
    a = k-1), :math:`(0, -1)` at the bottom and :math:`(2, -1)` at the top (one-sided,
    second order). These are the coefficients of ``metpy.calc.first_derivative``,
    rearranged into slopes; the form is exact for quadratics. One expression for all
    levels (the two slopes picked per level) rather than three pieces concatenated:
    ``torch.compile`` then writes each output value once.

    Parameters
    ----------
    f : array or tensor
        Field with at least 3 levels along `axis`, any units [f].
    x : array or tensor
        Coordinate, units [x]: 1-D of length L (the same for every column), or an
        array broadcastable to `f` (e.g. heights that vary in space).
    axis : int
        Level axis of `f`.

    Returns
    -------
    array or tensor
        ∂f/∂x in [f]/[x], the shape of `f` broadcast with `x`.
    """
    xp, f, (x,), ax = _prepare(f, x, axis=axis)
    n = f.shape[ax]
    if n < 3:
        raise ValueError(f"vertical_derivative needs at least 3 levels along axis {axis}, got {n}")
    x = _on_levels(x, ax, n, "x")
    h = _upper(x, ax) - _lower(x, ax)
    s = (_upper(f, ax) - _lower(f, ax)) / h
    a = [min(max(k - 1, 0), n - 3) for k in range(n)]
    b = [j + 1 for j in a]
    alpha = [0.0] * (n - 1) + [2.0]
    gamma = [-1.0] + [1.0] * (n - 2) + [-1.0]
    h_a = _along(h, ax, a)
    c = _levels(alpha, xp, f, ax) + _levels(gamma, xp, f, ax) * h_a / (h_a + _along(h, ax, b))
    s_a = _along(s, ax, a)
    return s_a + c * (_along(s, ax, b) - s_a)


# --------------------------------------------------------------------------
# heights
# --------------------------------------------------------------------------
def layer_thickness(t: Array, p: Array, axis: int = -3) -> Array:
    r"""Thickness of each layer between consecutive levels from the hypsometric equation.

    .. math:: \Delta Z_k = Z_{k+1} - Z_k = \frac{R_d \bar T_k}{g} \ln\frac{p_k}{p_{k+1}},
              \qquad \bar T_k = \tfrac12 (T_k + T_{k+1})

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    p : array or tensor
        Level pressures, hPa (1-D, length L).
    axis : int
        Level axis of `t`.

    Returns
    -------
    array or tensor
        Layer thicknesses in m, length L-1 along `axis` (positive when p decreases upward).
    """
    xp, t, (p,), ax = _prepare(t, p, axis=axis)
    p = _on_levels(p, ax, t.shape[ax], "p")
    log_ratio = xp.log(_lower(p, ax) / _upper(p, ax))
    return (0.5 * R_D / G) * (_lower(t, ax) + _upper(t, ax)) * log_ratio


def hypsometric_height(t: Array, p: Array, axis: int = -3, z_bottom: Array | float = 0.0) -> Array:
    r"""Heights of the levels by integrating the hypsometric equation upward from level 0.

    .. math:: Z_0 = z_\mathrm{bottom},\qquad
              Z_{k+1} = Z_k + \Delta Z_k \quad(\text{thickness of :func:`layer_thickness`})

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    p : array or tensor
        Level pressures, hPa (1-D, length L).
    axis : int
        Level axis of `t`.
    z_bottom : float or array
        Height of level 0, m: a scalar, or an array broadcastable to one level of `t`
        without the level axis (e.g. ``[H, W]`` orography, or ``[N, H, W]``).

    Returns
    -------
    array or tensor
        Heights in m, the shape of `t`.
    """
    xp, t, (p, zb), ax = _prepare(t, p, z_bottom, axis=axis)
    dz = layer_thickness(t, p, axis=ax)
    if zb.ndim > 0:
        level = zb.ndim + ax + 1  # where the level axis goes in z_bottom's shape
        if level < 0:
            raise ValueError(f"z_bottom of shape {tuple(zb.shape)} does not broadcast to one level of shape {tuple(t.shape)}")
        zb = zb.reshape(tuple(zb.shape[:level]) + (1,) + tuple(zb.shape[level:]))
    heights = [xp.zeros_like(_along(t, ax, slice(0, 1))) + zb]
    for k in range(dz.shape[ax]):  # a running sum, not cumsum: torch.compile fuses it with the rest
        heights.append(heights[-1] + _along(dz, ax, slice(k, k + 1)))
    return xp.concatenate(heights, axis=ax)


# --------------------------------------------------------------------------
# thermodynamics
# --------------------------------------------------------------------------
def potential_temperature(t: Array, p: Array, axis: int = -3) -> Array:
    r"""Potential temperature :math:`\theta = T (p_0 / p)^\kappa` in K.

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    p : array or tensor
        Level pressures, hPa (1-D, length L); :math:`p_0` = 1000 hPa, :math:`\kappa = R_d/c_p`.
    axis : int
        Level axis of `t`.
    """
    _, t, (p,), ax = _prepare(t, p, axis=axis)
    p = _on_levels(p, ax, t.shape[ax], "p")
    return t * (P0_HPA / p) ** KAPPA


def lapse_rate(t: Array, height: Array, axis: int = -3) -> Array:
    r"""Lapse rate :math:`\Gamma = -\partial T / \partial Z` in K km⁻¹.

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    height : array or tensor
        Level heights, m: 1-D (length L) or broadcastable to `t`.
    axis : int
        Level axis of `t`.
    """
    return -1000.0 * vertical_derivative(t, height, axis=axis)


def static_stability(t: Array, theta: Array, p: Array, axis: int = -3) -> Array:
    r"""Static stability :math:`\sigma = -\frac{R_d T}{p} \frac{\partial \ln\theta}{\partial p}`.

    Pressure is converted to Pa, so σ is in J kg⁻¹ Pa⁻² (= m² s⁻² Pa⁻²), as
    ``metpy.calc.static_stability`` (Bluestein 1992, eq. 4.3.6). σ > 0 where θ
    increases with height (stable), 0 for a dry-adiabatic column.

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    theta : array or tensor
        Its potential temperature, K (:func:`potential_temperature`; taken, not recomputed, so
        that a caller needing θ too computes it once).
    p : array or tensor
        Level pressures, hPa (1-D, length L).
    axis : int
        Level axis of `t`.
    """
    xp, t, (theta, p), ax = _prepare(t, theta, p, axis=axis)
    p_pa = _on_levels(p, ax, t.shape[ax], "p") * HPA_TO_PA
    return -(R_D * t / p_pa) * vertical_derivative(xp.log(theta), p_pa, axis=ax)


def brunt_vaisala_frequency_squared(theta: Array, height: Array, axis: int = -3) -> Array:
    r"""Squared Brunt–Väisälä frequency :math:`N^2 = \frac{g}{\theta} \frac{\partial\theta}{\partial Z}` in s⁻².

    Matches ``metpy.calc.brunt_vaisala_frequency_squared(height, potential_temperature)``.

    Parameters
    ----------
    theta : array or tensor
        Potential temperature, K (:func:`potential_temperature`), levels along `axis`.
    height : array or tensor
        Level heights, m: 1-D (length L) or broadcastable to `theta`.
    axis : int
        Level axis of `theta`.
    """
    return G / theta * vertical_derivative(theta, height, axis=axis)
