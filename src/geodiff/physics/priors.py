"""Vertical physics priors: θ, Γ, σ, N² and height computed from a temperature field.

The priors are given to the network as extra input channels (DESIGN.md section 5).
In the pipeline they are computed from what is known at inference, the coarse
input interpolated to the fine grid, never from the fine truth.

Every formula is the one of :mod:`geodiff.physics.thermo` (held to MetPy by the
tests); this module only chooses how to run it on whole months of data:

- in float32, the precision they are stored and used in: a difference of θ or
  ln θ between adjacent levels keeps about 5 of float32's 7 digits, so the
  vertical derivatives agree with MetPy's float64 ones to a few 1e-5 of their
  largest value (tests/test_priors.py), far below what matters for a network input;
- through ``torch.compile`` of the torch form, for speed: inductor fuses the
  formulas into a few C++ loops over the field, several times faster than numpy or
  eager torch, which write every intermediate array to memory (numbers in
  ``benchmarks/priors.py``). The first call for a set of priors compiles (tens of
  seconds; inductor caches the result on disk, so later processes load it).
  Without a working C++ compiler (e.g. a conda env without one) the compile fails
  once, a warning is logged and the same functions run eagerly;
- on torch's intra-op threads (``torch.get_num_threads()``: the cores of the job,
  at most ``OMP_NUM_THREADS``, which Snakemake sets to the rule's ``threads``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from geodiff.physics import thermo

logger = logging.getLogger(__name__)

PRIORS: dict[str, tuple[str, str]] = {
    "theta": ("K", "Potential temperature"),
    "lapse_rate": ("K km-1", "Temperature lapse rate -dT/dZ"),
    "static_stability": ("J kg-1 Pa-2", "Static stability -(R_d T/p) dln(theta)/dp"),
    "n2": ("s-2", "Squared Brunt-Vaisala frequency (g/theta) dtheta/dZ"),
    "height": ("m", "Height of the pressure level above the lowest level, from the hypsometric equation"),
}
"""Prior name -> (units, long_name)."""


def _priors(t: torch.Tensor, p: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
    """The priors `names` of t ([N, L, M], K, float32) on the levels p (hPa), float32."""
    p = p.float()
    theta = thermo.potential_temperature(t, p, axis=1)  # once, for θ, σ and N²: fewer powers in the loops
    z = thermo.hypsometric_height(t, p, axis=1) if {"height", "lapse_rate", "n2"} & set(names) else None
    formulas: dict[str, Callable[[], torch.Tensor]] = {
        "theta": lambda: theta,
        "lapse_rate": lambda: thermo.lapse_rate(t, z, axis=1),
        "static_stability": lambda: thermo.static_stability(t, theta, p, axis=1),
        "n2": lambda: thermo.brunt_vaisala_frequency_squared(theta, z, axis=1),
        "height": lambda: z,
    }
    return [formulas[name]() for name in names]


_compiled = torch.compile(_priors)
""":func:`_priors` compiled by inductor on its first call. torch's automatic dynamic shapes: the first
field size is compiled for that size (its loop bounds known: about 20 % faster than a size-generic
kernel on a month of the default config), and a second size recompiles once for any size."""


_eager = False
"""True once compiling has failed in this process: the priors then run eagerly."""


def _run(t: torch.Tensor, p: torch.Tensor, names: tuple[str, ...]) -> list[torch.Tensor]:
    """:func:`_priors`, compiled unless compiling failed before in this process."""
    global _eager
    if not _eager:
        try:
            return _compiled(t, p, names)
        except torch._dynamo.exc.BackendCompilerFailed as err:  # e.g. no C++ compiler in the env
            _eager = True
            logger.warning(
                "torch.compile is unavailable, priors run eagerly (the same numbers, several times slower): %s",
                str(err).splitlines()[0],
            )
    return _priors(t, p, names)


def compute_priors(
    t: np.ndarray, levels_hpa: Sequence[float] | np.ndarray, names: Iterable[str]
) -> dict[str, np.ndarray]:
    r"""Vertical physics priors of a temperature field on pressure levels.

    With hypsometric heights :math:`Z` above level 0 (:func:`thermo.hypsometric_height`):

    - ``theta``: :math:`\theta = T (p_0/p)^\kappa`, K (:func:`thermo.potential_temperature`)
    - ``lapse_rate``: :math:`\Gamma = -\partial T/\partial Z`, K km⁻¹ (:func:`thermo.lapse_rate`)
    - ``static_stability``: :math:`\sigma = -(R_d T/p)\,\partial\ln\theta/\partial p`, J kg⁻¹ Pa⁻²
      (:func:`thermo.static_stability`)
    - ``n2``: :math:`N^2 = (g/\theta)\,\partial\theta/\partial Z`, s⁻² (:func:`thermo.brunt_vaisala_frequency_squared`)
    - ``height``: :math:`Z`, m, 0 at level 0

    Parameters
    ----------
    t : np.ndarray
        Temperature, K, shaped [..., L, H, W] (levels on axis -3).
    levels_hpa : sequence of float
        The L level pressures, hPa, positive and strictly monotonic (surface upward: decreasing).
    names : iterable of str
        Priors to compute, keys of :data:`PRIORS`.

    Returns
    -------
    dict[str, np.ndarray]
        name -> float32 array shaped like `t`, in the order of `names`.
    """
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in PRIORS]
    if unknown:
        raise ValueError(f"unknown priors {unknown}; known: {sorted(PRIORS)}")
    t = np.asarray(t)
    if t.ndim < 3:
        raise ValueError(f"t must be shaped [..., L, H, W], got shape {t.shape}")
    levels = np.asarray(levels_hpa, dtype=np.float64).ravel()
    n_levels = t.shape[-3]
    if levels.size != n_levels:
        raise ValueError(f"{levels.size} levels given for a field with {n_levels} levels on axis -3")
    if n_levels < 3:
        raise ValueError(f"priors need at least 3 levels, got {n_levels}")
    step = np.diff(levels)
    if not (np.all(step < 0) or np.all(step > 0)) or np.any(levels <= 0):
        raise ValueError(f"levels must be positive and strictly monotonic, got {levels.tolist()}")
    if not names:
        return {}
    if t.size == 0:
        return {name: np.empty(t.shape, np.float32) for name in names}
    # one rank for every input ([columns before, L, columns after]): one compiled graph serves all
    rows = int(np.prod(t.shape[:-3]))
    t3 = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32).reshape(rows, n_levels, -1))
    with torch.no_grad():
        out = _run(t3, torch.tensor(levels), names)
    return {name: value.numpy().reshape(t.shape) for name, value in zip(names, out)}
