"""Thermodynamic diagnostics on pressure levels, written once for numpy and torch.

Every function takes either numpy arrays or torch tensors and returns the same
kind: the array namespace is picked from the inputs (torch as soon as one input
is a tensor), and only operations that both namespaces share are used
(arithmetic, slicing, ``log``, ``cumsum``, ``reshape``, concatenation), so the
torch form is differentiable with autograd and runs on any device.

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

from geodiff.constants import G, KAPPA, P0_HPA, R_D

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]
"""A numpy array or a torch tensor."""

HPA_TO_PA = 100.0
"""Pascal per hectopascal."""

__all__ = [
    "brunt_vaisala_frequency_squared",
    "geopotential_height",
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


def _concat(xp: ModuleType, parts: list[Array], axis: int) -> Array:
    """Concatenate along `axis` in either namespace."""
    if xp is np:
        return np.concatenate(parts, axis=axis)
    return xp.cat(parts, dim=axis)


def _neg_axis(axis: int, ndim: int) -> int:
    """Return `axis` as a negative index into an array of `ndim` dimensions."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {ndim} dimensions")
    return axis - ndim if axis >= 0 else axis


def _along(a: Array, axis: int, index: slice) -> Array:
    """Slice `a` along the negative `axis` (works for numpy and torch alike)."""
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

    With the spacings :math:`h_{k-1} = x_k - x_{k-1}`, :math:`h_k = x_{k+1} - x_k` and the
    one-sided slopes :math:`s_k = (f_{k+1} - f_k)/h_k`, the three-point Lagrange formula
    at an interior level is

    .. math::
        f'_k = \frac{h_k^2 (f_k - f_{k-1}) + h_{k-1}^2 (f_{k+1} - f_k)}
                    {h_{k-1} h_k (h_{k-1} + h_k)}
             = s_{k-1} + w_k (s_k - s_{k-1}),\qquad w_k = \frac{h_{k-1}}{h_{k-1} + h_k},

    and at the two ends the derivative of the same parabola through the first
    (last) three points, :math:`f'_0 = s_0 - w_1 (s_1 - s_0)` and
    :math:`f'_{L-1} = s_{L-2} + (1 - w_{L-2}) (s_{L-2} - s_{L-3})`. These are the
    coefficients of ``metpy.calc.first_derivative``, rearranged into slopes.

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
    dx = _upper(x, ax) - _lower(x, ax)  # h_k, L-1 along axis
    s = (_upper(f, ax) - _lower(f, ax)) / dx  # s_k, L-1 along axis
    q = _upper(s, ax) - _lower(s, ax)  # s_k - s_{k-1}, L-2 along axis
    dx_lo, dx_hi = _lower(dx, ax), _upper(dx, ax)
    wq = dx_lo / (dx_lo + dx_hi) * q  # w_k (s_k - s_{k-1})
    s_lo, s_hi = _lower(s, ax), _upper(s, ax)
    first, last = slice(0, 1), slice(-1, None)
    left = _along(s_lo, ax, first) - _along(wq, ax, first)
    interior = s_lo + wq
    right = _along(s_hi, ax, last) + _along(q, ax, last) - _along(wq, ax, last)
    return _concat(xp, [left, interior, right], ax)


# --------------------------------------------------------------------------
# heights
# --------------------------------------------------------------------------
def geopotential_height(z: Array) -> Array:
    r"""Geopotential height :math:`Z = z / g` in m, from geopotential `z` in m² s⁻²."""
    xp = _namespace(z)
    return _as_float(z, xp) / G


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
              Z_{k+1} = Z_k + \frac{R_d \bar T_k}{g} \ln\frac{p_k}{p_{k+1}}

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    p : array or tensor
        Level pressures, hPa (1-D, length L).
    axis : int
        Level axis of `t`.
    z_bottom : float or array
        Height of level 0, m: a scalar, an array shaped like one level of `t`
        without the level axis (e.g. ``[H, W]`` or ``[..., H, W]``), or any array
        broadcastable to one level slice with the level axis kept (size 1).

    Returns
    -------
    array or tensor
        Heights in m, the shape of `t`.
    """
    xp, t, (p, zb), ax = _prepare(t, p, z_bottom, axis=axis)
    dz = layer_thickness(t, p, axis=ax)
    if zb.ndim == t.ndim - 1 and zb.ndim > 0:
        pos = zb.ndim + 1 + ax
        zb = zb.reshape(tuple(zb.shape[:pos]) + (1,) + tuple(zb.shape[pos:]))
    z0 = xp.zeros_like(_along(t, ax, slice(0, 1))) + zb
    return _concat(xp, [z0, z0 + xp.cumsum(dz, ax)], ax)


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


def static_stability(t: Array, p: Array, axis: int = -3) -> Array:
    r"""Static stability :math:`\sigma = -\frac{R_d T}{p} \frac{\partial \ln\theta}{\partial p}`.

    Pressure is converted to Pa, so σ is in J kg⁻¹ Pa⁻² (= m² s⁻² Pa⁻²), as
    ``metpy.calc.static_stability`` (Bluestein 1992, eq. 4.3.6). σ > 0 where θ
    increases with height (stable), 0 for a dry-adiabatic column.

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    p : array or tensor
        Level pressures, hPa (1-D, length L).
    axis : int
        Level axis of `t`.
    """
    xp, t, (p,), ax = _prepare(t, p, axis=axis)
    p_pa = _on_levels(p, ax, t.shape[ax], "p") * HPA_TO_PA
    log_theta = xp.log(potential_temperature(t, p, axis=ax))
    return -(R_D * t / p_pa) * vertical_derivative(log_theta, p_pa, axis=ax)


def brunt_vaisala_frequency_squared(t: Array, height: Array, p: Array, axis: int = -3) -> Array:
    r"""Squared Brunt–Väisälä frequency :math:`N^2 = \frac{g}{\theta} \frac{\partial\theta}{\partial Z}` in s⁻².

    Matches ``metpy.calc.brunt_vaisala_frequency_squared(height, potential_temperature)``.

    Parameters
    ----------
    t : array or tensor
        Temperature, K, levels along `axis`.
    height : array or tensor
        Level heights, m: 1-D (length L) or broadcastable to `t`.
    p : array or tensor
        Level pressures, hPa (1-D, length L).
    axis : int
        Level axis of `t`.
    """
    theta = potential_temperature(t, p, axis=axis)
    return G / theta * vertical_derivative(theta, height, axis=axis)
