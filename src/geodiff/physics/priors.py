"""Vertical physics priors: θ, Γ, σ, N² and height computed from a temperature field.

The priors are given to the network as extra input channels (DESIGN.md section 5).
In the pipeline they are computed from what is known at inference, the coarse
input interpolated to the fine grid, never from the fine truth. Heights come
from the hypsometric equation integrated upward from ``z_bottom``.

:func:`compute_priors` gives the same numbers as the reference formulas of
:mod:`geodiff.physics.thermo` (which are held to MetPy by the tests), but is
organised for speed on whole months of data:

- the level pressures are fixed, so every factor that depends on pressure only
  ((p0/p)^κ, ln(p_k/p_{k+1}), and for σ the whole finite-difference stencil in p
  together with R_d/p) is a per-level constant computed once in float64;
- the work runs in float32 on cache-sized blocks, with formulas chosen so that
  float32 loses no accuracy that matters: differences of temperature between
  adjacent levels are exact in float32 (Sterbenz lemma), ln(θ_{k+1}/θ_k) is taken as
  ``log1p(ΔT/T_k) + κ ln(p_k/p_{k+1})`` and Δθ as ``c_{k+1} ΔT + (c_{k+1} - c_k) T_k``
  (c = (p0/p)^κ) rather than as differences of rounded values; results agree with
  the float64 formulas to ~1e-6 of each field's range;
- blocks are shared among threads (numpy releases the GIL inside its loops).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from geodiff.constants import G, KAPPA, P0_HPA, R_D

logger = logging.getLogger(__name__)

PRIORS: dict[str, tuple[str, str]] = {
    "theta": ("K", "Potential temperature"),
    "lapse_rate": ("K km-1", "Temperature lapse rate -dT/dZ"),
    "static_stability": ("J kg-1 Pa-2", "Static stability -(R_d T/p) dln(theta)/dp"),
    "n2": ("s-2", "Squared Brunt-Vaisala frequency (g/theta) dtheta/dZ"),
    "height": ("m", "Height of the pressure level from the hypsometric equation"),
}
"""Prior name -> (units, long_name)."""

_BLOCK_ELEMENTS = 1 << 17
"""Target number of grid values (all levels) per block: large enough to amortise numpy's
per-call overhead, small enough that the float32 work buffers of a block stay in cache."""

_HPA_TO_PA = 100.0


@dataclass(frozen=True)
class _LevelConstants:
    """Per-level factors of the fixed pressure levels, float32, shaped [1, L (or L-1, L-2), m].

    They are repeated along the column axis (m = the widest block) because numpy
    multiplies by a contiguous row about twice as fast as by a broadcast
    (stride-0) vector; a block of m' <= m columns uses ``[..., :m']``.

    Symbols (p in hPa unless noted, k indexes levels, layer k lies between k and k+1):
    c_k = (p0/p_k)^κ; hypsometric layer thickness h_k = A_k (T_k + T_{k+1}) in m with
    A_k = R_d ln(p_k/p_{k+1}) / (2 g).
    """

    c: np.ndarray  # (p0/p_k)^κ, [1, L, m]
    a_h: np.ndarray  # -A_k / 1000: (T_k + T_{k+1}) a_h is minus the layer thickness in km, [1, L-1, m]
    n2_hi: np.ndarray  # -g/1000 c_{k+1}, [1, L-1, m]
    n2_lo: np.ndarray  # -g/1000 (c_{k+1} - c_k), [1, L-1, m]
    sig_lo: np.ndarray  # weight of y_{j(k)} in σ_k / T_k (see `_sigma_stencil`), [1, L, m]
    sig_hi: np.ndarray  # weight of y_{j(k)+1} in σ_k / T_k, [1, L, m]
    sig_c: np.ndarray  # constant term of σ_k / T_k, [1, L, m]

    @classmethod
    def from_levels(cls, levels_hpa: np.ndarray, cols: int) -> _LevelConstants:
        """Compute the factors in float64 from the level pressures (hPa), round to float32, repeat `cols` times."""
        p = np.asarray(levels_hpa, dtype=np.float64)
        p_pa = p * _HPA_TO_PA
        c = (P0_HPA / p) ** KAPPA
        log_ratio = np.log(p[:-1] / p[1:])
        dp = np.diff(p_pa)

        def shape(v: np.ndarray) -> np.ndarray:
            row = np.asarray(v, dtype=np.float32).reshape(1, -1, 1)
            return np.ascontiguousarray(np.broadcast_to(row, (1, row.shape[1], cols)))

        return cls(
            c=shape(c),
            a_h=shape(-1e-3 * R_D * log_ratio / (2.0 * G)),
            n2_hi=shape(-1e-3 * G * c[1:]),
            n2_lo=shape(-1e-3 * G * (c[1:] - c[:-1])),
            **{name: shape(v) for name, v in zip(("sig_lo", "sig_hi", "sig_c"), _sigma_stencil(p_pa))},
        )


def _derivative_matrix(x: np.ndarray) -> np.ndarray:
    r"""Matrix M ([L, L-1]) with :math:`f'_k = \sum_j M_{kj} s_j` for the slopes :math:`s_j = Δf_j/Δx_j`.

    The rows are the formulas of :func:`_derivative` for the 1-D coordinate `x`.
    """
    dx = np.diff(x)
    w = dx[:-1] / (dx[:-1] + dx[1:])  # w_k for k = 1..L-2
    n = x.size
    m = np.zeros((n, n - 1))
    m[np.arange(1, n - 1), np.arange(0, n - 2)] = 1.0 - w
    m[np.arange(1, n - 1), np.arange(1, n - 1)] = w
    m[0, 0], m[0, 1] = 1.0 + w[0], -w[0]
    m[-1, -2], m[-1, -1] = -(1.0 - w[-1]), 2.0 - w[-1]
    return m


def _sigma_stencil(p_pa: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Fold everything in σ that depends on pressure only into a two-point stencil.

    With :math:`y_j = \ln(T_{j+1}/T_j)`, the slope of ln θ in layer j is
    :math:`(y_j + \kappa \ln(p_j/p_{j+1}))/Δp_j`, so with the derivative matrix M in p,

    .. math:: \sigma_k = T_k \left(a_k\, y_{j(k)} + b_k\, y_{j(k)+1} + c_k\right),\qquad
              C_{kj} = -\frac{R_d}{p_k} \frac{M_{kj}}{Δp_j},\quad c_k = \sum_j C_{kj}\, \kappa \ln\frac{p_j}{p_{j+1}},

    where j(k) = k-1 inside, 0 at the bottom and L-3 at the top (the two layers each row uses).
    Returns (a, b, c), each of length L, float64.
    """
    n = p_pa.size
    coef = -(R_D / p_pa)[:, None] * _derivative_matrix(p_pa) / np.diff(p_pa)[None, :]
    const = coef @ (KAPPA * np.log(p_pa[:-1] / p_pa[1:]))
    j = np.clip(np.arange(n) - 1, 0, n - 3)
    rows = np.arange(n)
    return coef[rows, j], coef[rows, j + 1], const


class _Workspace:
    """Float32 scratch buffers of one worker, sized for the largest block."""

    def __init__(self, rows: int, n_levels: int, cols: int) -> None:
        layer = (rows, n_levels - 1, cols)
        self.d_t = np.empty(layer, np.float32)
        self.h = np.empty(layer, np.float32)
        self.s = np.empty(layer, np.float32)
        self.x = np.empty(layer, np.float32)
        self.w = np.empty((rows, max(n_levels - 2, 0), cols), np.float32)
        self.q = np.empty((rows, max(n_levels - 2, 0), cols), np.float32)
        self.theta = np.empty((rows, n_levels, cols), np.float32)

    def view(self, rows: int, cols: int) -> dict[str, np.ndarray]:
        """Buffers cut to a block of `rows` x `cols`."""
        return {k: v[:rows, :, :cols] for k, v in vars(self).items()}


def _derivative(s: np.ndarray, w: np.ndarray, out: np.ndarray, q: np.ndarray) -> None:
    r"""Second-order derivative on uneven levels from layer slopes, written into `out`.

    `s` holds the slopes :math:`s_k = (f_{k+1} - f_k)/h_k` ([n, L-1, m]) and `w` the
    weights :math:`w_k = h_{k-1}/(h_{k-1} + h_k)` ([n or 1, L-2, m or 1]);

    .. math::
        f'_0 = s_0 - w_1 (s_1 - s_0),\quad f'_k = s_{k-1} + w_k (s_k - s_{k-1}),\quad
        f'_{L-1} = s_{L-2} + (1 - w_{L-2})(s_{L-2} - s_{L-3}),

    the three-point Lagrange formulas of :func:`geodiff.physics.thermo.vertical_derivative`.
    `q` is an [n, L-2, m] scratch buffer.
    """
    np.subtract(s[:, 1:], s[:, :-1], out=q)
    np.multiply(q[:, -1], 1.0 - w[:, -1], out=out[:, -1])
    out[:, -1] += s[:, -1]
    np.multiply(q, w, out=q)
    np.add(s[:, :-1], q, out=out[:, 1:-1])
    np.subtract(s[:, 0], q[:, 0], out=out[:, 0])


def _block(
    t: np.ndarray,
    out: dict[str, np.ndarray],
    z_bottom: np.ndarray | None,
    rows: slice,
    cols: slice,
    k: _LevelConstants,
    ws: _Workspace,
) -> None:
    """Compute the requested priors of one block t[rows, :, cols] (t is [n, L, m], float32, K)."""
    temp = t[rows, :, cols]
    n, _, m = temp.shape
    b = ws.view(n, m)
    c = {name: v[:, :, :m] for name, v in vars(k).items()}
    lo, hi = temp[:, :-1], temp[:, 1:]
    o = {name: arr[rows, :, cols] for name, arr in out.items()}
    want_z = "lapse_rate" in o or "n2" in o  # derivatives in height

    if "height" in o or want_z:
        h = np.add(hi, lo, out=b["h"])
        h *= c["a_h"]  # -(Z_{k+1} - Z_k) in km
    if "height" in o:
        z = o["height"]
        if z_bottom is None:
            z[:, 0] = 0.0
        else:
            z[:, 0] = z_bottom[rows, cols]
        for lev in range(h.shape[1]):  # Z_{k+1} = Z_k + ΔZ_k (np.cumsum along axis 1 is slower)
            np.multiply(h[:, lev], -1000.0, out=z[:, lev + 1])
            z[:, lev + 1] += z[:, lev]
    if want_z:
        w = np.add(h[:, :-1], h[:, 1:], out=b["w"])
        np.divide(h[:, :-1], w, out=w)  # h_{k-1} / (h_{k-1} + h_k)
    if want_z or "static_stability" in o:
        d_t = np.subtract(hi, lo, out=b["d_t"])  # T_{k+1} - T_k, K (exact in float32)

    if "theta" in o or "n2" in o:
        theta = o.get("theta", b["theta"])
        np.multiply(temp, c["c"], out=theta)  # θ = T (p0/p)^κ

    if "lapse_rate" in o:
        s = np.divide(d_t, h, out=b["s"])  # -1000 ΔT/ΔZ, K/km
        _derivative(s, w, o["lapse_rate"], b["q"])

    if "n2" in o:
        s = np.multiply(d_t, c["n2_hi"], out=b["s"])
        s += np.multiply(lo, c["n2_lo"], out=b["x"])  # -g/1000 Δθ, Δθ = c_{k+1} ΔT + (c_{k+1} - c_k) T_k
        s /= h  # g Δθ/ΔZ, K s-2
        n2 = o["n2"]
        _derivative(s, w, n2, b["q"])
        n2 /= theta  # (g/θ) ∂θ/∂Z

    if "static_stability" in o:
        y = np.divide(d_t, lo, out=b["x"])
        np.log1p(y, out=y)  # y_k = ln(T_{k+1}/T_k), accurate for small ΔT/T
        sigma = o["static_stability"]
        a, bb, cc = c["sig_lo"], c["sig_hi"], c["sig_c"]
        np.multiply(y[:, :-1], a[:, 1:-1], out=sigma[:, 1:-1])
        sigma[:, 1:-1] += np.multiply(y[:, 1:], bb[:, 1:-1], out=b["q"])
        for lev, j in ((0, 0), (-1, -2)):  # one-sided ends use layers (0, 1) and (L-3, L-2)
            np.multiply(y[:, j], a[:, lev], out=sigma[:, lev])
            sigma[:, lev] += y[:, j + 1] * bb[:, lev]
        sigma += cc
        sigma *= temp  # -(R_d T/p) ∂lnθ/∂p


def _blocks(n_rows: int, n_levels: int, n_cols: int) -> tuple[list[tuple[slice, slice]], int, int]:
    """Split [n_rows, L, n_cols] into blocks of about `_BLOCK_ELEMENTS` values; also the largest block size."""
    per_row = n_levels * n_cols
    if per_row <= _BLOCK_ELEMENTS:
        rows, cols = max(1, _BLOCK_ELEMENTS // per_row), n_cols
    else:
        rows, cols = 1, max(1, _BLOCK_ELEMENTS // n_levels)
    blocks = [
        (slice(r, min(r + rows, n_rows)), slice(c, min(c + cols, n_cols)))
        for r in range(0, n_rows, rows)
        for c in range(0, n_cols, cols)
    ]
    return blocks, min(rows, n_rows), min(cols, n_cols)


def _n_threads() -> int:
    """Default worker count: the CPU cores this process may use, capped by OMP_NUM_THREADS when set.

    (Snakemake sets OMP_NUM_THREADS to the `threads` of the job it runs.)
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        return min(cores, int(limit))
    return cores


def compute_priors(
    t: np.ndarray,
    levels_hpa: Sequence[float] | np.ndarray,
    names: Iterable[str],
    z_bottom: float | np.ndarray = 0.0,
    *,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    r"""Vertical physics priors of a temperature field on pressure levels.

    With :math:`c_k = (p_0/p_k)^\kappa` and hypsometric heights
    :math:`Z_{k+1} = Z_k + (R_d \bar T_k / g) \ln(p_k/p_{k+1})`, :math:`Z_0 = z_\mathrm{bottom}`:

    - ``theta``: :math:`\theta = c T`, K
    - ``lapse_rate``: :math:`\Gamma = -\partial T/\partial Z`, K km⁻¹
    - ``static_stability``: :math:`\sigma = -(R_d T/p)\,\partial\ln\theta/\partial p`, J kg⁻¹ Pa⁻² (p in Pa)
    - ``n2``: :math:`N^2 = (g/\theta)\,\partial\theta/\partial Z`, s⁻²
    - ``height``: :math:`Z`, m

    Derivatives are the second-order uneven-spacing differences of
    :func:`geodiff.physics.thermo.vertical_derivative`; the results equal the
    functions of :mod:`geodiff.physics.thermo` to float32 accuracy.

    Parameters
    ----------
    t : np.ndarray
        Temperature, K, shaped [..., L, H, W] (levels on axis -3).
    levels_hpa : sequence of float
        The L level pressures, hPa, strictly monotonic (surface upward: decreasing).
    names : iterable of str
        Priors to compute, keys of :data:`PRIORS`.
    z_bottom : float or np.ndarray
        Height of level 0, m: a scalar or an array broadcastable to [..., H, W]
        (e.g. the height of the lowest level, or orography). Only ``height`` uses it.
    threads : int, optional
        Worker threads (numpy releases the GIL); default: every core this process may
        use, at most OMP_NUM_THREADS when that is set.

    Returns
    -------
    dict[str, np.ndarray]
        name -> float32 array shaped like `t`.
    """
    names = list(dict.fromkeys(names))
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

    start = time.perf_counter()
    lead, (h_size, w_size) = t.shape[:-3], t.shape[-2:]
    n_rows, n_cols = int(np.prod(lead, dtype=np.int64)), h_size * w_size
    t3 = np.ascontiguousarray(t, dtype=np.float32).reshape(n_rows, n_levels, n_cols)
    zb = None
    if "height" in names and np.any(np.asarray(z_bottom) != 0):
        zb_arr = np.asarray(z_bottom, dtype=np.float32)
        if zb_arr.ndim == t.ndim and zb_arr.shape[-3] == 1:  # level axis kept
            zb_arr = zb_arr[..., 0, :, :]
        zb = np.broadcast_to(zb_arr, lead + (h_size, w_size)).reshape(n_rows, n_cols)
    out = {name: np.empty((n_rows, n_levels, n_cols), np.float32) for name in names}
    blocks, max_rows, max_cols = _blocks(n_rows, n_levels, n_cols)
    consts = _LevelConstants.from_levels(levels, max_cols)
    n_workers = max(1, min(threads or _n_threads(), len(blocks)))

    def work(part: list[tuple[slice, slice]]) -> None:
        ws = _Workspace(max_rows, n_levels, max_cols)
        for rows, cols in part:
            _block(t3, out, zb, rows, cols, consts, ws)

    if n_workers == 1:
        work(blocks)
    else:
        parts = [blocks[i::n_workers] for i in range(n_workers)]
        with ThreadPoolExecutor(n_workers) as pool:
            list(pool.map(work, parts))
    logger.debug(
        "priors %s on %s in %.1f ms (%d blocks, %d threads)",
        names, t.shape, 1e3 * (time.perf_counter() - start), len(blocks), n_workers,
    )
    return {name: arr.reshape(t.shape) for name, arr in out.items()}
