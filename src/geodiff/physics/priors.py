"""Vertical physics priors: θ, Γ, σ, N² and height computed from a temperature field.

The priors are given to the network as extra input channels (DESIGN.md section 5).
In the pipeline they are computed from what is known at inference, the coarse
input interpolated to the fine grid, never from the fine truth. Heights come
from the hypsometric equation integrated upward from ``z_bottom``.

:func:`compute_priors` gives the same numbers as the reference formulas of
:mod:`geodiff.physics.thermo` (which define each formula once and are held to
MetPy by the tests) to float32 accuracy, but is organised for speed on whole
months of data. Two implementations share the front end:

- **numba kernel** (used when numba imports): one compiled pass up each chunk of
  columns (:func:`_priors_columns`): one loop per layer turns the temperatures of
  the layer into its slopes and writes the priors of a level, vectorised by LLVM
  along the contiguous grid axis, with one division per value; each value of ``t``
  is read from memory once and each output written once. Compiled on first use
  for each combination of requested priors (a few seconds) and cached on disk.
  See :func:`_priors_columns` for the formulas.
- **numpy path** (the fallback without numba, or with ``NUMBA_DISABLE_JIT``):
  the same algebra as blocked numpy ufunc calls on cache-sized blocks
  (:func:`_block`).

Common to both:

- the level pressures are fixed, so every factor that depends on pressure only
  ((p0/p)^κ, ln(p_k/p_{k+1}), and for σ the whole finite-difference stencil in p
  together with R_d/p) is a per-level constant computed once in float64;
- the work runs in float32, with formulas chosen so that float32 loses no
  accuracy that matters: differences of temperature between adjacent levels are
  exact in float32 (Sterbenz lemma), ln(T_{k+1}/T_k) and Δθ are formed from that
  difference rather than as differences of rounded values (the kernel also sums
  heights in float64); results agree with the float64 formulas to ~1e-6 of each
  field's range;
- the grid is cut into blocks that are shared among threads (numba's kernel and
  numpy's loops both release the GIL);
- the outputs are views into one float32 block, so a large output is a single
  allocation (numpy backs allocations of 4 MiB and more with transparent huge
  pages: no page fault per 4 KiB when the kernel first writes it).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from geodiff.constants import G, KAPPA, P0_HPA, R_D

logger = logging.getLogger(__name__)

try:
    import numba
except ImportError:  # optional speed-up: the numpy path gives the same numbers
    numba = None
    logger.debug("numba is not installed: compute_priors uses its numpy path")

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


# --------------------------------------------------------------------------
# numba kernel
# --------------------------------------------------------------------------
_CHUNK_COLUMNS = 1024
"""Grid columns of one kernel chunk: the rows of t, outputs and scratch that one layer touches
(4 KiB each at this size) stay in the L1/L2 caches."""

_MIN_VALUES_PER_THREAD = 1 << 16
"""Grid values (all levels) below which a further kernel thread costs more than it saves."""

_BATCHES_PER_THREAD = 4
"""Batches of chunks per kernel thread: threads take them as they go, so a thread that runs
late, or slower, gets fewer (each batch costs some 10 µs of hand-over between threads)."""

_LOG_SERIES_LIMIT = 0.125
"""|u| = |T_{k+1} - T_k| / (T_{k+1} + T_k) up to which ln(T_{k+1}/T_k) = 2 atanh(u) is taken from
its series to u^7 (relative error below u^8/9 = 7e-9); beyond (T ratios outside 0.78..1.29,
never seen between adjacent levels of a real atmosphere) the kernel calls log in float64."""

# rows of the kernel's constant table ([_N_KERNEL_CONSTANTS, L] float32; layer rows use L-1 entries)
_K_THICK, _K_LAPSE, _K_N2_P, _K_N2_Q, _K_C, _K_RC, _K_SIG_A, _K_SIG_B, _K_SIG_C, _K_ALPHA, _K_GAMMA = range(11)
_N_KERNEL_CONSTANTS = 11


@functools.lru_cache(maxsize=16)
def _kernel_constants_of(levels: tuple[float, ...]) -> np.ndarray:
    """:func:`_kernel_constants` cached by the level tuple (read-only array)."""
    table = _kernel_constants(np.array(levels))
    table.flags.writeable = False
    return table


def _kernel_constants(levels_hpa: np.ndarray) -> np.ndarray:
    """Per-level factors of :func:`_priors_columns`, computed in float64 and rounded to float32.

    Layer k (between levels k and k+1), with A_k = R_d ln(p_k/p_{k+1}) / (2 g) and c = (p0/p)^κ:
    thickness factor A_k (ΔZ_k = A_k (T_k + T_{k+1})), -1000/A_k, and the two coefficients
    g (c_{k+1} ∓ c_k) / (2 A_k) of g Δθ/ΔZ as an affine function of u. Level k: c_k, the σ
    stencil (a_k, b_k, c_k of :func:`_sigma_stencil`) and (α_k, γ_k) of the derivative weight.
    """
    p = np.asarray(levels_hpa, dtype=np.float64)
    n = p.size
    c = (P0_HPA / p) ** KAPPA
    a = R_D * np.log(p[:-1] / p[1:]) / (2.0 * G)
    alpha, gamma = np.zeros(n), np.ones(n)
    gamma[0] = -1.0  # bottom: f'_0 = s_0 - w_1 (s_1 - s_0)
    alpha[-1], gamma[-1] = 2.0, -1.0  # top: f' = s_{L-3} + (2 - w_{L-2}) (s_{L-2} - s_{L-3})
    rows = {
        _K_THICK: a,
        _K_LAPSE: -1000.0 / a,
        _K_N2_P: G * (c[1:] - c[:-1]) / (2.0 * a),
        _K_N2_Q: G * (c[1:] + c[:-1]) / (2.0 * a),
        _K_C: c,
        _K_RC: 1.0 / c,
        _K_ALPHA: alpha,
        _K_GAMMA: gamma,
    }
    rows.update(zip((_K_SIG_A, _K_SIG_B, _K_SIG_C), _sigma_stencil(p * _HPA_TO_PA)))
    table = np.zeros((_N_KERNEL_CONSTANTS, n), np.float32)
    for row, values in rows.items():
        table[row, : values.size] = values
    return table


def _priors_columns(t, z0, start, stop, width, kc, theta, lapse, sigma, n2, height):  # noqa: C901
    r"""Priors of chunks ``start..stop-1`` of `t` ([n, L, m] float32), written into the outputs.

    Compiled by numba (:data:`_KERNEL`); plain Python otherwise (correct, but slow). Chunk i
    is row ``i // ceil(m / width)`` and `width` columns of it. `z0` ([1 or n, 1 or m]
    float64) is the height of level 0; `kc` is :func:`_kernel_constants`. An output given as
    None is not computed: numba compiles one specialisation per combination of None outputs,
    with the branches on them removed.

    Layer k of a column (levels k, k+1; T_k = lo, T_{k+1} = hi) is described by
    :math:`u = (hi - lo)/(hi + lo)`, from the exact difference; then, with the constants of
    :func:`_kernel_constants`,

    - thickness :math:`ΔZ_k = A_k (hi + lo)` (m, summed into heights in float64),
    - lapse-rate slope :math:`-1000\,ΔT/ΔZ = -(1000/A_k)\,u` (K km⁻¹),
    - N² slope :math:`g\,Δθ/ΔZ = g\,\frac{(c_{k+1} - c_k) + (c_{k+1} + c_k) u}{2 A_k}` (Δθ from
      the identities hi = (hi + lo)(1 + u)/2, lo = (hi + lo)(1 - u)/2),
    - :math:`y_k = \ln(hi/lo) = 2\,\mathrm{atanh}\,u`, its odd series to u⁷ (float64 log
      beyond :data:`_LOG_SERIES_LIMIT`).

    Level k takes the slopes s of layers j = clip(k - 1, 0, L - 3) and j + 1: derivative
    :math:`s_j + β (s_{j+1} - s_j)` with :math:`β = α_k + γ_k w`,
    :math:`w = ΔZ_j / (ΔZ_j + ΔZ_{j+1})` (the second-order stencil of
    :func:`geodiff.physics.thermo.vertical_derivative`, see :func:`_derivative`), and
    :math:`σ_k = T_k (a_k y_j + b_k y_{j+1} + c_k)` (:func:`_sigma_stencil`), θ = c_k T_k,
    N² = g ∂θ/∂Z / θ.

    Organisation, for speed: one loop per layer k >= 1 computes layer k and writes level
    k's priors (interior stencil, β = w), keeping the slopes of layer k for the next loop
    (two buffers, swapped); the one division of a value gives 1/(hi + lo),
    1/(ΔZ_{k-1} + ΔZ_k) and 1/T_k together. The one-sided bottom and top levels are
    written from the buffers once their two layers are known. Values the shortcuts
    cannot give (|u| beyond the series, a division that took in a NaN or inf of the layer
    below) are redone one by one, rarely. Every loop runs along the contiguous column axis
    with float32 constants only (a float64 constant would promote the loop), and indexes
    the grid with unsigned integers (no negative-index wraparound), so LLVM vectorises it.
    """
    f32 = np.float32
    n_lev = t.shape[1]
    n_cols = t.shape[2]
    n_lay = n_lev - 1
    n_chunks = (n_cols + width - 1) // width
    # The slopes of the current layer and of the one below, swapped at each layer (two
    # arrays, not two rows of one: the compiler cannot tell rows apart, and would not
    # vectorise a loop that reads one row and writes the other).
    sl_a = np.zeros(width, f32)  # -1000 ΔT/ΔZ, K/km
    sl_b = np.zeros(width, f32)
    sn_a = np.zeros(width, f32)  # g Δθ/ΔZ, K s-2
    sn_b = np.zeros(width, f32)
    y_a = np.zeros(width, f32)  # ln(T_{k+1}/T_k)
    y_b = np.zeros(width, f32)
    w_end = np.zeros(width, f32)  # stencil weight, for the levels written after a layer
    z = np.zeros(width, np.float64)  # height of the current level, m
    one, lim = f32(1.0), f32(_LOG_SERIES_LIMIT)
    e1, e3, e5, e7 = f32(2.0), f32(2.0 / 3.0), f32(2.0 / 5.0), f32(2.0 / 7.0)
    for item in range(start, stop):
        r = item // n_chunks
        j0 = (item - r * n_chunks) * width
        m = min(width, n_cols - j0)
        if height is not None:
            rz = r if z0.shape[0] > 1 else 0
            if z0.shape[1] > 1:
                for j in range(m):
                    z[j] = z0[rz, np.uintp(j0 + j)]
            else:
                for j in range(m):
                    z[j] = z0[rz, 0]
        for k in range(n_lay):
            if k % 2 == 0:
                sl_c, sn_c, y_c, sl_p, sn_p, y_p = sl_a, sn_a, y_a, sl_b, sn_b, y_b
            else:
                sl_c, sn_c, y_c, sl_p, sn_p, y_p = sl_b, sn_b, y_b, sl_a, sn_a, y_a
            kp = max(k - 1, 0)  # the layer below (layer 0 itself at the bottom)
            a_p = kc[_K_THICK, kp]
            a_k = kc[_K_THICK, k]
            l_k = kc[_K_LAPSE, k]
            p_k = kc[_K_N2_P, k]
            q_k = kc[_K_N2_Q, k]
            c_k = kc[_K_C, k]
            rc_k = kc[_K_RC, k]
            sa = kc[_K_SIG_A, k]
            sb = kc[_K_SIG_B, k]
            sc = kc[_K_SIG_C, k]
            # Layer k, and level k's priors from layers k-1 and k (the interior stencil), in
            # one loop, so that the stores of the outputs overlap with the arithmetic.
            n_redo = np.int32(0)
            if k == 0:  # layer 0 only: level 0 is written once layer 1 is known
                for j in range(m):
                    jc = np.uintp(j0 + j)
                    lo = t[r, 0, jc]
                    hi = t[r, 1, jc]
                    u = (hi - lo) / (hi + lo)
                    if lapse is not None:
                        sl_c[j] = l_k * u
                    if n2 is not None:
                        sn_c[j] = p_k + q_k * u
                    if sigma is not None:
                        u2 = u * u
                        y_c[j] = u * (e1 + u2 * (e3 + u2 * (e5 + u2 * e7)))
                        n_redo = max(n_redo, np.int32(not (abs(u) <= lim)))
                    if theta is not None:
                        theta[r, 0, jc] = c_k * lo
                    if height is not None:
                        height[r, 0, jc] = z[j]
                        z[j] += a_k * (hi + lo)
            for j in range(m if k > 0 else 0):
                jc = np.uintp(j0 + j)
                lo = t[r, k, jc]
                hi = t[r, k + 1, jc]
                s = hi + lo
                h = a_k * s  # ΔZ_k
                h_p = a_p * (t[r, kp, jc] + lo)  # ΔZ_{k-1}
                h_sum = h_p + h
                # one division for 1/s, 1/(ΔZ_{k-1} + ΔZ_k) and (N² only) 1/T_k
                if n2 is not None:
                    s_lo = s * lo
                else:
                    s_lo = s
                rec = one / (s_lo * h_sum)
                r_h = rec * h_sum
                if n2 is not None:
                    r_s = r_h * lo
                else:
                    r_s = r_h
                u = (hi - lo) * r_s
                w = h_p * (rec * s_lo)  # ΔZ_{k-1} / (ΔZ_{k-1} + ΔZ_k)
                if lapse is not None:
                    sl = l_k * u
                    sl_c[j] = sl
                    v = sl_p[j]
                    lapse[r, k, jc] = v + w * (sl - v)
                if n2 is not None:
                    sn = p_k + q_k * u
                    sn_c[j] = sn
                    v = sn_p[j]
                    n2[r, k, jc] = (v + w * (sn - v)) * rc_k * (r_h * s)
                if sigma is not None:
                    u2 = u * u
                    y = u * (e1 + u2 * (e3 + u2 * (e5 + u2 * e7)))
                    y_c[j] = y
                    sigma[r, k, jc] = lo * (sa * y_p[j] + sb * y + sc)
                if lapse is not None or n2 is not None or sigma is not None:
                    # an int32 max: a reduction that LLVM vectorises cheaply (a bool or int64
                    # count costs a quarter of the loop)
                    n_redo = max(n_redo, np.int32(not (abs(u) <= lim)))
                if theta is not None:
                    theta[r, k, jc] = c_k * lo
                if height is not None:
                    height[r, k, jc] = z[j]
                    z[j] += h
            if n_redo:
                # |u| beyond the series somewhere in the chunk, or not finite: the shared
                # division also takes in the layer below, and a NaN or inf there (or a zero
                # divisor) must not leak into this layer. Redo those values on their own,
                # and level k below.
                for j in range(m):
                    jc = np.uintp(j0 + j)
                    lo = t[r, k, jc]
                    hi = t[r, k + 1, jc]
                    s = hi + lo
                    h_sum = a_p * (t[r, kp, jc] + lo) + a_k * s
                    den = s * lo * h_sum if n2 is not None else s * h_sum
                    u = (hi - lo) / s
                    if not (abs(u) <= lim) or den == 0 or not math.isfinite(den):
                        if lapse is not None:
                            sl_c[j] = l_k * u
                        if n2 is not None:
                            sn_c[j] = p_k + q_k * u
                        if sigma is not None:
                            y_c[j] = math.log(np.float64(hi) / np.float64(lo))
            # Levels written from layers k-1 and k with the general stencil
            # s_{k-1} + (α + γ w) (s_k - s_{k-1}): level k after a redo, the bottom level
            # (one-sided) once layer 1 is known, the top level (one-sided) at the last layer.
            for case in range(3):
                if case == 0:
                    lev = k if n_redo > 0 and k > 0 else -1
                elif case == 1:
                    lev = 0 if k == 1 else -1
                else:
                    lev = n_lay if k == n_lay - 1 else -1
                if lev < 0 or (lapse is None and n2 is None and sigma is None):
                    continue
                al = kc[_K_ALPHA, lev]
                ga = kc[_K_GAMMA, lev]
                a_p = kc[_K_THICK, k - 1]
                if lapse is not None or n2 is not None:
                    for j in range(m):
                        jc = np.uintp(j0 + j)
                        lo = t[r, k, jc]
                        h_p = a_p * (t[r, k - 1, jc] + lo)
                        w_end[j] = al + ga * (h_p / (h_p + a_k * (t[r, k + 1, jc] + lo)))
                if lapse is not None:
                    for j in range(m):
                        v = sl_p[j]
                        lapse[r, lev, np.uintp(j0 + j)] = v + w_end[j] * (sl_c[j] - v)
                if n2 is not None:
                    rc_l = kc[_K_RC, lev]
                    for j in range(m):
                        jc = np.uintp(j0 + j)
                        v = sn_p[j]
                        n2[r, lev, jc] = (v + w_end[j] * (sn_c[j] - v)) * rc_l / t[r, lev, jc]
                if sigma is not None:
                    sa = kc[_K_SIG_A, lev]
                    sb = kc[_K_SIG_B, lev]
                    sc = kc[_K_SIG_C, lev]
                    for j in range(m):
                        jc = np.uintp(j0 + j)
                        sigma[r, lev, jc] = t[r, lev, jc] * (sa * y_p[j] + sb * y_c[j] + sc)
        if theta is not None:
            c_k = kc[_K_C, n_lay]
            for j in range(m):
                jc = np.uintp(j0 + j)
                theta[r, n_lay, jc] = c_k * t[r, n_lay, jc]
        if height is not None:
            for j in range(m):
                height[r, n_lay, np.uintp(j0 + j)] = z[j]


def _jit_kernel() -> Callable[..., None] | None:
    """:func:`_priors_columns` compiled by numba, or None (no numba, or JIT disabled)."""
    if numba is None:
        return None
    if numba.config.DISABLE_JIT:
        logger.debug("NUMBA_DISABLE_JIT is set: compute_priors uses its numpy path")
        return None
    # fastmath 'contract' only: lets LLVM fuse a*b + c into one FMA (one rounding instead of
    # two); no reassociation, no reciprocal or NaN/inf assumptions. error_model='numpy': a
    # division by zero gives inf/nan rather than raising, which keeps the loops vectorisable.
    return numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})(_priors_columns)


_KERNEL = _jit_kernel()
"""The compiled kernel, or None: compute_priors then takes the numpy path."""

_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide executor with at least `workers` threads (remade after a fork)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < workers:
            if _POOL is not None and _POOL[0] == os.getpid():
                _POOL[2].shutdown(wait=False)
            _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="geodiff-priors"))
        return _POOL[2]


def _kernel_z0(z_bottom: float | np.ndarray, t_ndim: int, lead: tuple[int, ...], grid: tuple[int, int]) -> np.ndarray:
    """`z_bottom` as the kernel's float64 [1 or rows, 1 or columns] array (constant axes not repeated)."""
    zb = np.asarray(z_bottom, dtype=np.float64)
    if zb.ndim == t_ndim and zb.shape[-3] == 1:  # level axis kept
        zb = zb[..., 0, :, :]
    full = np.broadcast_to(zb, lead + grid)
    if all(s == 0 for s in full.strides):
        return np.full((1, 1), full.flat[0] if full.size else 0.0)
    if all(s == 0 for s in full.strides[: len(lead)]):
        return np.ascontiguousarray(full[(0,) * len(lead)]).reshape(1, -1)
    return np.ascontiguousarray(full).reshape(-1, grid[0] * grid[1])


class _Batches:
    """Chunk ranges handed out one at a time to the threads that run the kernel.

    The calling thread takes batches from the front, the workers from the back, so that
    threads write far-apart parts of the outputs (each first write to a huge page of a
    new output faults and zeroes it: two threads on one page wait for each other). The
    calling thread waits only for batches that a worker has actually taken: a worker that
    the OS schedules late (the machine is busy) finds nothing left and costs nothing.
    """

    def __init__(self, n_items: int, n_batches: int) -> None:
        self._cuts = [n_items * i // n_batches for i in range(n_batches + 1)]
        self._front = 0  # batches [front, back) are left
        self._back = n_batches
        self._busy = 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def take(self, from_back: bool) -> tuple[int, int] | None:
        """The next (start, stop) range of chunks from one end, or None when all are taken."""
        with self._cond:
            if self._front >= self._back or self._error is not None:
                return None
            if from_back:
                self._back -= 1
                i = self._back
            else:
                i = self._front
                self._front += 1
            self._busy += 1
            return self._cuts[i], self._cuts[i + 1]

    def done(self, error: BaseException | None = None) -> None:
        """Mark a taken batch finished (with the error it raised, if any)."""
        with self._cond:
            self._busy -= 1
            if error is not None and self._error is None:
                self._error = error
            if self._busy == 0:
                self._cond.notify_all()

    def run(self, kernel: Callable[..., None], args: tuple, from_back: bool) -> None:
        """Take and run batches until none is left: ``kernel(*args[:2], start, stop, *args[2:])``."""
        while (batch := self.take(from_back)) is not None:
            try:
                kernel(*args[:2], *batch, *args[2:])
            except BaseException as err:  # noqa: BLE001 - handed to the calling thread
                self.done(err)
                raise
            self.done()

    def wait(self) -> None:
        """Block until every taken batch is finished; re-raise the first error."""
        with self._cond:
            self._cond.wait_for(lambda: self._busy == 0)
            if self._error is not None:
                raise self._error


def _run_kernel(
    t3: np.ndarray, levels: np.ndarray, out: dict[str, np.ndarray], z0: np.ndarray, threads: int | None
) -> tuple[int, int]:
    """Run :data:`_KERNEL` over t3 ([n, L, m] float32) into `out`; returns (chunks, threads)."""
    n_rows, n_levels, n_cols = t3.shape
    width = min(_CHUNK_COLUMNS, n_cols)
    n_items = n_rows * -(-n_cols // width)
    n_workers = min(threads or _n_threads(), n_items, max(1, t3.size // _MIN_VALUES_PER_THREAD))
    n_workers = max(1, n_workers)
    args = (t3, z0, width, _kernel_constants_of(tuple(levels.tolist()))) + tuple(out.get(name) for name in PRIORS)
    if n_workers == 1:
        _KERNEL(t3, z0, 0, n_items, *args[2:])
        return n_items, 1
    batches = _Batches(n_items, min(n_items, _BATCHES_PER_THREAD * n_workers))
    pool = _pool(n_workers - 1)
    for _ in range(n_workers - 1):
        pool.submit(batches.run, _KERNEL, args, True)
    try:
        batches.run(_KERNEL, args, False)
    finally:
        batches.wait()
    return n_items, n_workers


def _run_numpy(
    t3: np.ndarray, levels: np.ndarray, out: dict[str, np.ndarray], zb: np.ndarray | None, threads: int | None
) -> tuple[int, int]:
    """Run the blocked numpy path over t3 ([n, L, m] float32) into `out`; returns (blocks, threads)."""
    n_rows, n_levels, n_cols = t3.shape
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
    return len(blocks), n_workers


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

    The work is done by a numba kernel when numba is installed (compiled on the first
    call for each combination of requested priors, a few seconds, and cached on disk
    next to this module), else by blocked numpy code; both give the same numbers to
    float32 accuracy.

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
        Worker threads (the kernel and numpy release the GIL); default: every core this
        process may use, at most OMP_NUM_THREADS when that is set. Small fields use fewer.

    Returns
    -------
    dict[str, np.ndarray]
        name -> float32 array shaped like `t`, in the order of `names`. The arrays are
        views into one block of memory (one allocation for all of them).
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
    if not names:
        return {}

    start = time.perf_counter()
    lead, grid = t.shape[:-3], t.shape[-2:]
    n_rows, n_cols = math.prod(lead), grid[0] * grid[1]
    t3 = np.ascontiguousarray(t, dtype=np.float32).reshape(n_rows, n_levels, n_cols)
    block = np.empty((len(names), n_rows, n_levels, n_cols), np.float32)
    out = dict(zip(names, block))
    if t3.size == 0:  # an empty field: nothing to compute
        return {name: arr.reshape(t.shape) for name, arr in out.items()}
    if _KERNEL is not None:
        z0 = _kernel_z0(z_bottom, t.ndim, lead, grid) if "height" in names else np.zeros((1, 1))
        parts, n_workers = _run_kernel(t3, levels, out, z0, threads)
        logger.debug("priors %s on %s: numba kernel, %d chunks, %d threads", names, t.shape, parts, n_workers)
    else:
        zb = None
        if "height" in names and np.any(np.asarray(z_bottom) != 0):
            zb_arr = np.asarray(z_bottom, dtype=np.float32)
            if zb_arr.ndim == t.ndim and zb_arr.shape[-3] == 1:  # level axis kept
                zb_arr = zb_arr[..., 0, :, :]
            zb = np.broadcast_to(zb_arr, lead + grid).reshape(n_rows, n_cols)
        parts, n_workers = _run_numpy(t3, levels, out, zb, threads)
        logger.debug("priors %s on %s: numpy, %d blocks, %d threads", names, t.shape, parts, n_workers)
    logger.debug("priors took %.1f ms", 1e3 * (time.perf_counter() - start))
    return {name: arr.reshape(t.shape) for name, arr in out.items()}
