"""Vertical physics priors: θ, Γ, σ, N² and height computed from a temperature field.

The priors are given to the network as extra input channels (DESIGN.md section 5).
In the pipeline they are computed from what is known at inference, the coarse
input interpolated to the fine grid, never from the fine truth. Heights come
from the hypsometric equation integrated upward from ``z_bottom``.

:func:`compute_priors` gives the same numbers as the reference formulas of
:mod:`geodiff.physics.thermo` (which define each formula once and are held to
MetPy by the tests) to float32 accuracy, but is organised for speed on whole
months of data. Two implementations share the front end:

- **numba kernel** (used when numba imports): one compiled pass over each chunk
  of columns (:func:`_priors_columns`). A first loop over the L-1 layers turns
  the two temperatures of a layer into everything the derivatives need; a second
  loop over the L levels writes the requested priors. Both loops run along the
  contiguous grid axis, so LLVM vectorises them; the per-layer values live in a
  small scratch buffer that stays in cache, and each value of ``t`` is read from
  memory once. See :func:`_priors_columns` for the formulas.
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
  difference rather than as differences of rounded values, and heights are summed
  in float64; results agree with the float64 formulas to ~1e-6 of each field's range;
- the grid is cut into blocks that are shared among threads (numba's kernel and
  numpy's loops both release the GIL);
- the outputs are views into one float32 block, so a large output is a single
  allocation (numpy backs allocations of 4 MiB and more with transparent huge
  pages: no page fault per 4 KiB when the kernel first writes it).
"""

from __future__ import annotations

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
_KERNEL_SCRATCH_VALUES = 1 << 15
"""Float32 values of one per-layer scratch array of the kernel (layers x chunk columns); the
five of them (640 KiB at this size) stay in the L2 cache."""

_MIN_VALUES_PER_THREAD = 1 << 16
"""Grid values (all levels) below which a further kernel thread costs more than it saves."""

_LOG_SERIES_LIMIT = 0.125
"""|u| = |T_{k+1} - T_k| / (T_{k+1} + T_k) up to which ln(T_{k+1}/T_k) = 2 atanh(u) is taken from
its series to u^7 (relative error below u^8/9 = 7e-9); beyond (T ratios outside 0.78..1.29,
never seen between adjacent levels of a real atmosphere) the kernel calls log in float64."""

# rows of the kernel's constant table ([_N_KERNEL_CONSTANTS, L] float32; layer rows use L-1 entries)
_K_THICK, _K_LAPSE, _K_N2_P, _K_N2_Q, _K_C, _K_SIG_A, _K_SIG_B, _K_SIG_C, _K_ALPHA, _K_GAMMA = range(10)
_N_KERNEL_CONSTANTS = 10


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
    :math:`s_j + β (s_{j+1} - s_j)` with :math:`β = α_k + γ_k w_j`,
    :math:`w_j = ΔZ_j / (ΔZ_j + ΔZ_{j+1})` (the second-order stencil of
    :func:`geodiff.physics.thermo.vertical_derivative`, see :func:`_derivative`), and
    :math:`σ_k = T_k (a_k y_j + b_k y_{j+1} + c_k)` (:func:`_sigma_stencil`), θ = c_k T_k,
    N² = g ∂θ/∂Z / θ. Each loop runs along the contiguous column axis with float32
    constants only (a float64 constant would promote the whole loop), and indexes the
    grid with unsigned integers (no negative-index wraparound), so LLVM vectorises it.
    """
    f32 = np.float32
    n_lev = t.shape[1]
    n_cols = t.shape[2]
    n_lay = n_lev - 1
    n_chunks = (n_cols + width - 1) // width
    thick = np.empty((n_lay, width), f32)  # ΔZ_k, m
    weight = np.empty((n_lay - 1, width), f32)  # w_j = ΔZ_j / (ΔZ_j + ΔZ_{j+1})
    s_lapse = np.empty((n_lay, width), f32)  # -1000 ΔT/ΔZ, K/km
    s_n2 = np.empty((n_lay, width), f32)  # g Δθ/ΔZ, K s-2
    log_t = np.empty((n_lay, width), f32)  # ln(T_{k+1}/T_k)
    z = np.empty(width, np.float64)
    one, lim = f32(1.0), f32(_LOG_SERIES_LIMIT)
    e1, e3, e5, e7 = f32(2.0), f32(2.0 / 3.0), f32(2.0 / 5.0), f32(2.0 / 7.0)
    for item in range(start, stop):
        r = item // n_chunks
        j0 = (item - r * n_chunks) * width
        m = min(width, n_cols - j0)
        for k in range(n_lay):
            a_k = kc[_K_THICK, k]
            l_k = kc[_K_LAPSE, k]
            p_k = kc[_K_N2_P, k]
            q_k = kc[_K_N2_Q, k]
            n_far = 0
            for j in range(m):
                jc = np.uintp(j0 + j)
                lo = t[r, k, jc]
                hi = t[r, k + 1, jc]
                s = hi + lo
                u = (hi - lo) / s
                u2 = u * u
                thick[k, j] = a_k * s
                s_lapse[k, j] = l_k * u
                s_n2[k, j] = p_k + q_k * u
                log_t[k, j] = u * (e1 + u2 * (e3 + u2 * (e5 + u2 * e7)))
                n_far += abs(u) > lim
            if n_far:  # T ratio outside the series' range somewhere in the chunk
                for j in range(m):
                    jc = np.uintp(j0 + j)
                    lo = t[r, k, jc]
                    hi = t[r, k + 1, jc]
                    if abs(hi - lo) > lim * (hi + lo):
                        log_t[k, j] = math.log(np.float64(hi) / np.float64(lo))
            if k > 0:
                for j in range(m):
                    weight[k - 1, j] = thick[k - 1, j] / (thick[k - 1, j] + thick[k, j])
        if height is not None:
            rz = r if z0.shape[0] > 1 else 0
            if z0.shape[1] > 1:
                for j in range(m):
                    z[j] = z0[rz, np.uintp(j0 + j)]
            else:
                for j in range(m):
                    z[j] = z0[rz, 0]
        for k in range(n_lev):
            j_lo = min(max(k - 1, 0), n_lev - 3)
            j_hi = j_lo + 1
            al = kc[_K_ALPHA, k]
            ga = kc[_K_GAMMA, k]
            c_k = kc[_K_C, k]
            if theta is not None:
                for j in range(m):
                    jc = np.uintp(j0 + j)
                    theta[r, k, jc] = c_k * t[r, k, jc]
            if lapse is not None:
                for j in range(m):
                    b = al + ga * weight[j_lo, j]
                    lapse[r, k, np.uintp(j0 + j)] = s_lapse[j_lo, j] + b * (s_lapse[j_hi, j] - s_lapse[j_lo, j])
            if n2 is not None:
                for j in range(m):
                    jc = np.uintp(j0 + j)
                    b = al + ga * weight[j_lo, j]
                    d_theta = s_n2[j_lo, j] + b * (s_n2[j_hi, j] - s_n2[j_lo, j])
                    n2[r, k, jc] = d_theta / (c_k * t[r, k, jc])
            if sigma is not None:
                sa = kc[_K_SIG_A, k]
                sb = kc[_K_SIG_B, k]
                sc = kc[_K_SIG_C, k]
                for j in range(m):
                    jc = np.uintp(j0 + j)
                    sigma[r, k, jc] = t[r, k, jc] * (sa * log_t[j_lo, j] + sb * log_t[j_hi, j] + sc)
            if height is not None:
                for j in range(m):
                    height[r, k, np.uintp(j0 + j)] = z[j]
                if k < n_lay:
                    for j in range(m):
                        z[j] += thick[k, j]


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


def _run_kernel(
    t3: np.ndarray, levels: np.ndarray, out: dict[str, np.ndarray], z0: np.ndarray, threads: int | None
) -> tuple[int, int]:
    """Run :data:`_KERNEL` over t3 ([n, L, m] float32) into `out`; returns (chunks, threads)."""
    n_rows, n_levels, n_cols = t3.shape
    width = max(16, _KERNEL_SCRATCH_VALUES // (n_levels - 1)) // 16 * 16
    width = min(width, n_cols)
    n_items = n_rows * -(-n_cols // width)
    n_workers = min(threads or _n_threads(), n_items, max(1, t3.size // _MIN_VALUES_PER_THREAD))
    n_workers = max(1, n_workers)
    args = (width, _kernel_constants(levels)) + tuple(out.get(name) for name in PRIORS)
    cuts = [n_items * i // n_workers for i in range(n_workers + 1)]
    futures = [_pool(n_workers - 1).submit(_KERNEL, t3, z0, lo, hi, *args) for lo, hi in zip(cuts[1:-1], cuts[2:])]
    _KERNEL(t3, z0, cuts[0], cuts[1], *args)
    for future in futures:
        future.result()
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
    if t3.size == 0:
        pass
    elif _KERNEL is not None:
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
