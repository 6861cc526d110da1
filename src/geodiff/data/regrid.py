"""Regridding between the fine (HR) and coarse (LR) latitude-longitude grids.

Three methods (DESIGN.md section 3):

``conservative``
    fine -> coarse, the area-weighted mean over each target cell. The weight of a
    source cell is the area it shares with the target cell; on a regular
    lat-lon grid a cell's area is proportional to Δλ (sin φ_north − sin φ_south),
    the "sin band" of its edges. The coarse grid is the fine grid coarsened by
    ``grid.scale_factor`` with aligned edges, so every fine cell lies in exactly
    one coarse cell. The target box must lie inside the source box.
``bilinear``
    coarse -> fine, tensor-product linear interpolation in (lat, lon), degrees.
``bicubic``
    coarse -> fine, tensor-product *cubic convolution* (Keys 1981, "Cubic
    convolution interpolation for digital image processing", IEEE TASSP 29,
    eq. 15, a = −1/2): a local 4 × 4 stencil that reproduces quadratics, the
    classical image "bicubic". xESMF (ESMF) has no bicubic and xarray-regrid's
    ``cubic`` is a global spline through scipy, so bicubic is the same
    separable cubic-convolution weight path under *both* backends: the model
    input and the bicubic baseline do not change with the software env.

Edges. The outermost fine cell centres lie outside the outermost coarse centres
(by 1.5 fine cells at scale factor 4), so interpolation needs values beyond the
source. The source is extended by ghost cells: in latitude, and in longitude on
regional grids, the edge row/column is replicated (edge-extend, as an image
library's "replicate" border: bilinear then clamps to the edge value); on grids
that are global in longitude (``Grid.is_global_lon``) longitude wraps around
(periodic). Interpolating to points outside the source box raises.

Backends (``regrid.backend``): ``xesmf`` when ``import xesmf`` works (conda env
``envs/regrid.yaml``), else ``xarray-regrid``; ``auto`` picks and logs which.

- ``xarray-regrid``: every method is separable on rectilinear grids, so the
  weights are two dense matrices, W_lat [n_lat_out, n_lat_in] and W_lon
  [n_lon_out, n_lon_in], and out = W_lat · x · W_lonᵀ over each (time, level)
  slice. xarray-regrid computes them (conservative with its spherical
  correction, which is the sin band above; bilinear through its linear
  method on the ghost-extended axis): all its methods are linear in the data, so
  regridding unit impulses along one axis gives that axis' weight matrix
  exactly. Ghost columns are then folded onto the cells they copy.
- ``xesmf``: ESMF weights, applied by xESMF. ESMF takes every cell edge as a
  great-circle arc, whereas a lat-lon cell's north and south edges are
  parallels, so its conservative weights differ from the sin-band weights by
  O(Δλ² tan φ) (a few 0.1 % of a weight at 1°; the mean is still conserved in
  ESMF's own areas), and its bilinear works on the sphere rather than in
  degrees. Bilinear sees the source with one ghost ring (replicated in
  latitude, wrapped or replicated in longitude, as above).

Weights are computed once (``Regridder.save``) and reused (``Regridder.load``):
an xESMF weight file (variables ``S``, ``row``, ``col``) or, for the separable
path, a NetCDF file with ``weights_lat`` and ``weights_lon``; both carry the
grids, method and backend as global attributes. Files are written under a
temporary name and renamed, so a killed job leaves no file that looks finished.

Input. Every variable with dims (..., lat, lon) is regridded; other dims,
variables and attributes are kept. Longitudes in 0..360 or −180..180 and
descending latitudes are normalised (shifted into the source grid's frame and
sorted) before the coordinates are checked against the source grid, so all
spellings give identical results. float32 input stays float32. Dask-chunked
input stays lazy: each (time, level) chunk is regridded on its own, so a month
need not fit in memory (lat and lon are merged into one chunk per block). NaNs
propagate: a target value that uses a NaN is NaN.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import xarray as xr

from geodiff import __version__
from geodiff.atomic import atomic_write
from geodiff.constants import CF_ATTRS, LAT, LON
from geodiff.data.files import cf_global_attrs
from geodiff.data.grid import Grid

log = logging.getLogger(__name__)

BACKENDS = ("xesmf", "xarray-regrid")
"""Regridding libraries, in order of preference for ``auto``."""
METHODS = ("conservative", "bilinear", "bicubic")
"""Regridding methods: fine -> coarse (conservative), coarse -> fine (the others)."""
CUBIC_A = -0.5
"""Keys (1981) cubic-convolution parameter a; −1/2 makes the kernel third-order accurate."""
GHOSTS = 2
"""Ghost cells added to each end of a source axis for interpolation (the cubic stencil's reach)."""
BNDS = "bnds"
"""Name of the CF bounds dimension (two edges per cell)."""
FILE_FORMAT = "geodiff-regrid-weights/1"
"""Value of the ``geodiff_format`` attribute of a weights file."""
NETCDF_ENGINE = "netcdf4"
"""Named rather than guessed: guessing imports every xarray backend plugin (cfgrib, MetPy's gini, ...)."""

_AXIS, _IMPULSE = "_axis", "_impulse"  # dims of the 1-D impulse fields that yield xarray-regrid's weights
T = TypeVar("T", xr.Dataset, xr.DataArray)


@functools.cache
def _import_error(module: str) -> str | None:
    """Why ``import module`` fails, or None when it works (cached: xESMF is slow to import)."""
    try:
        __import__(module)
    except Exception as err:  # ESMF raises more than ImportError when esmpy is broken
        return f"{type(err).__name__}: {err}"
    return None


def resolve_backend(name: str) -> str:
    """The backend to use for config value ``name``: ``auto``, ``xesmf`` or ``xarray-regrid``.

    ``auto`` gives ``xesmf`` when it can be imported, else ``xarray-regrid``; the
    choice and its reason are logged. Asking for a backend that cannot be
    imported raises RuntimeError naming the cause and the way out.
    """
    modules = {"xesmf": "xesmf", "xarray-regrid": "xarray_regrid"}
    if name == "auto":
        why = _import_error("xesmf")
        if why is None:
            log.info("regrid backend: xesmf (auto, xesmf is importable)")
            return "xesmf"
        log.info("regrid backend: xarray-regrid (auto; xesmf not importable: %s)", why)
        name = "xarray-regrid"
    if name not in BACKENDS:
        raise ValueError(f"regrid.backend must be 'auto' or one of {BACKENDS}, not {name!r}")
    why = _import_error(modules[name])
    if why is not None:
        hint = (
            "xESMF needs ESMF (esmpy), which only conda provides: run with the conda env envs/regrid.yaml "
            "(snakemake --use-conda) or set regrid.backend: xarray-regrid"
            if name == "xesmf"
            else "pip install xarray-regrid"
        )
        raise RuntimeError(f"regrid.backend {name!r} asked for, but `import {modules[name]}` failed ({why}): {hint}")
    return name


@dataclass(frozen=True)
class _Axis:
    """One horizontal axis of a source -> target pair; positions in degrees."""

    source: np.ndarray  # source cell centres, ascending
    target: np.ndarray  # target cell centres, in the source's longitude frame
    spacing: float  # source cell size
    periodic: bool  # wraps around (global longitude)

    def extended(self, ghosts: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres of the source axis with `ghosts` ghost cells at each end, and the cell each copies."""
        k = np.arange(-ghosts, self.source.size + ghosts)
        copies = k % self.source.size if self.periodic else np.clip(k, 0, self.source.size - 1)
        return self.source[0] + self.spacing * k, copies

    def fold(self, w_ext: np.ndarray, ghosts: int) -> np.ndarray:
        """Weights on the ghost-extended axis [n_out, n_in + 2 ghosts] -> weights on the source cells."""
        _, copies = self.extended(ghosts)
        w = np.zeros((w_ext.shape[0], self.source.size))
        np.add.at(w.T, copies, w_ext.T)
        return w


def _axes(source: Grid, target: Grid) -> tuple[_Axis, _Axis]:
    """(lat, lon) axes; raises when the target box is not inside the source box (periodic lon excepted)."""
    west = source.lon_bounds[0]
    lon_target = west + np.mod(target.lon - west, 360.0)  # the target in the source's longitude frame
    boxes = [(LAT, source.lat_bounds, target.lat_bounds)]
    if not source.is_global_lon:
        shift = lon_target[0] - target.lon[0]
        boxes.append((LON, source.lon_bounds, target.lon_bounds + shift))
    for name, src, tgt in boxes:
        tol = 1e-6 * source.resolution
        if tgt[0] < src[0] - tol or tgt[-1] > src[-1] + tol:
            raise ValueError(
                f"regrid: target {name} box {tgt[0]}..{tgt[-1]} lies outside the source box {src[0]}..{src[-1]}"
            )
    return (
        _Axis(source.lat, target.lat, source.resolution, periodic=False),
        _Axis(source.lon, lon_target, source.resolution, periodic=source.is_global_lon),
    )


def _keys_kernel(s: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """Keys (1981) cubic-convolution kernel u(s), s in source cells (eq. 15)."""
    s = np.abs(s)
    inner = ((a + 2.0) * s - (a + 3.0)) * s**2 + 1.0
    outer = ((a * s - 5.0 * a) * s + 8.0 * a) * s - 4.0 * a
    return np.where(s <= 1.0, inner, np.where(s < 2.0, outer, 0.0))


def _cubic_convolution_weights(axis: _Axis) -> np.ndarray:
    """Weights [n_out, n_in] of 1-D cubic convolution along `axis`, edge-extended or periodic."""
    u = (axis.target - axis.source[0]) / axis.spacing  # target positions in source cells
    base = np.floor(u).astype(int)
    offsets = np.arange(-1, 3)
    w_ext = np.zeros((u.size, axis.source.size + 2 * GHOSTS))
    rows = np.arange(u.size)[:, None]
    w_ext[rows, base[:, None] + offsets + GHOSTS] = _keys_kernel(u[:, None] - (base[:, None] + offsets))
    return axis.fold(w_ext, GHOSTS)


def _dense(values: object) -> np.ndarray:
    """A numpy array from numpy, dask or sparse (xarray-regrid returns sparse when `sparse` is installed)."""
    if hasattr(values, "compute"):
        values = values.compute()
    if hasattr(values, "todense"):
        values = values.todense()
    return np.asarray(values, dtype=np.float64)


def _xarray_regrid_weights(axis: _Axis, method: str, latitude: bool) -> np.ndarray:
    """Weights [n_out, n_in] of xarray-regrid's `method` along `axis`, from its response to unit impulses.

    conservative: no ghost cells, spherical (sin-band) correction when `latitude`;
    bilinear: xarray-regrid ``linear`` on the ghost-extended axis, ghosts folded back.
    """
    import xarray_regrid  # noqa: F401  (registers the .regrid accessor)

    ghosts = 0 if method == "conservative" else GHOSTS
    centres, _ = axis.extended(ghosts)
    impulses = xr.DataArray(np.eye(centres.size), dims=(_IMPULSE, _AXIS), coords={_AXIS: centres})
    target = xr.Dataset(coords={_AXIS: axis.target})
    if method == "conservative":
        response = impulses.regrid.conservative(
            target, latitude_coord=_AXIS if latitude else None, time_dim=None, skipna=False
        )
    elif method == "bilinear":
        response = impulses.regrid.linear(target, time_dim=None)
    else:
        raise ValueError(f"xarray-regrid weights for {method!r} are not used (see module docstring)")
    w_ext = _dense(response.transpose(_AXIS, _IMPULSE).data)
    if not np.isfinite(w_ext).all():
        bad = axis.target[~np.isfinite(w_ext).all(axis=1)]
        raise ValueError(f"regrid: xarray-regrid {method} leaves target points {bad[:5]} (degrees) uncovered")
    return axis.fold(w_ext, ghosts)


def _matmul_separable(x: np.ndarray, w_lat: np.ndarray, w_lon_t: np.ndarray) -> np.ndarray:
    """W_lat · x · W_lonᵀ over the last two axes of x, in the cheaper multiplication order."""
    (n_lat_out, n_lat_in), n_lon_out = w_lat.shape, w_lon_t.shape[1]
    n_lon_in = x.shape[-1]
    lat_first = n_lat_out * n_lon_in * (n_lat_in + n_lon_out) <= n_lon_out * n_lat_in * (n_lon_in + n_lat_out)
    if lat_first:
        return np.matmul(np.matmul(w_lat, x), w_lon_t)
    return np.matmul(w_lat, np.matmul(x, w_lon_t))


def _apply_separable(x: np.ndarray, w_lat: np.ndarray, w_lon_t: np.ndarray) -> np.ndarray:
    """W_lat · x · W_lonᵀ, NaN exactly where a target uses a NaN source value (non-zero weight).

    (A plain product would make every target of the slice NaN: 0 · NaN is NaN.)
    """
    missing = np.isnan(x)
    if not missing.any():
        return _matmul_separable(x, w_lat, w_lon_t)
    out = _matmul_separable(np.where(missing, 0, x), w_lat, w_lon_t)
    uses = _matmul_separable(missing.astype(x.dtype), (w_lat != 0).astype(x.dtype), (w_lon_t != 0).astype(x.dtype))
    return np.where(uses > 0, np.nan, out).astype(x.dtype)


class _Separable:
    """Per-axis weights: out = W_lat · x · W_lonᵀ (every method under xarray-regrid, bicubic under both)."""

    def __init__(self, w_lat: np.ndarray, w_lon: np.ndarray, scheme: str) -> None:
        self.w_lat = w_lat  # [n_lat_out, n_lat_in], dimensionless
        self.w_lon = w_lon  # [n_lon_out, n_lon_in], dimensionless
        self.scheme = scheme  # human-readable description of where the weights come from

    @classmethod
    def build(cls, source: Grid, target: Grid, method: str) -> _Separable:
        """Weights for `method` between two grids (xarray-regrid for conservative/bilinear)."""
        lat, lon = _axes(source, target)
        if method == "bicubic":
            scheme = f"separable cubic convolution (Keys 1981, a={CUBIC_A})"
            return cls(_cubic_convolution_weights(lat), _cubic_convolution_weights(lon), scheme)
        from importlib.metadata import version

        scheme = f"xarray-regrid {version('xarray-regrid')} {method}, separable per axis"
        return cls(_xarray_regrid_weights(lat, method, True), _xarray_regrid_weights(lon, method, False), scheme)

    def apply(self, da: xr.DataArray) -> xr.DataArray:
        """Regrid `da` with dims (..., lat, lon); lazy for dask input (one block per chunk of other dims)."""
        if da.chunks is not None:
            da = da.chunk({LAT: -1, LON: -1})
        w_lat, w_lon_t = self.w_lat.astype(da.dtype), self.w_lon.T.astype(da.dtype)
        return xr.apply_ufunc(
            _apply_separable,
            da,
            kwargs={"w_lat": w_lat, "w_lon_t": w_lon_t},
            input_core_dims=[[LAT, LON]],
            output_core_dims=[[LAT, LON]],
            exclude_dims={LAT, LON},
            dask="parallelized",
            output_dtypes=[da.dtype],
            dask_gufunc_kwargs={"output_sizes": {LAT: w_lat.shape[0], LON: w_lon_t.shape[1]}},
            keep_attrs=True,
        )

    def save(self, path: Path, attrs: dict) -> None:
        """Write the weights and `attrs` to a NetCDF file."""
        ds = xr.Dataset(
            {
                "weights_lat": (("lat_out", "lat_in"), self.w_lat, {"long_name": "latitude weights", "units": "1"}),
                "weights_lon": (("lon_out", "lon_in"), self.w_lon, {"long_name": "longitude weights", "units": "1"}),
            },
            attrs={**attrs, "regrid_scheme": self.scheme, **cf_global_attrs(attrs, "GeoDiff regrid weights")},
        )
        ds.to_netcdf(path, engine=NETCDF_ENGINE)

    @classmethod
    def read(cls, path: Path) -> _Separable:
        """Weights written by `save`."""
        with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
            return cls(ds["weights_lat"].values, ds["weights_lon"].values, str(ds.attrs["regrid_scheme"]))


def _esmf_grid(grid: Grid, ghosts: int = 0, bounds: bool = False) -> xr.Dataset:
    """xESMF's description of `grid` (1-D lat/lon centres, optional lat_b/lon_b edges), degrees.

    With `ghosts`, one ring of ghost centres is added (latitudes kept within ±90).
    """
    lat, lon = grid.lat, grid.lon
    if ghosts:
        k_lat, k_lon = np.arange(-ghosts, lat.size + ghosts), np.arange(-ghosts, lon.size + ghosts)
        lat = np.clip(lat[0] + grid.resolution * k_lat, -90.0, 90.0)
        lon = lon[0] + grid.resolution * k_lon
    ds = xr.Dataset(coords={"lat": ("lat", lat), "lon": ("lon", lon)})
    if bounds:
        ds = ds.assign_coords(lat_b=("lat_b", grid.lat_bounds), lon_b=("lon_b", grid.lon_bounds))
    return ds


def _pad_ghosts(da: xr.DataArray, grid: Grid, ghosts: int) -> xr.DataArray:
    """`da` on `grid` with ghost cells: replicated in latitude, wrapped (global) or replicated in longitude."""
    padded = da.pad({LAT: (ghosts, ghosts)}, mode="edge")
    padded = padded.pad({LON: (ghosts, ghosts)}, mode="wrap" if grid.is_global_lon else "edge")
    esmf = _esmf_grid(grid, ghosts)
    return padded.assign_coords({LAT: esmf["lat"].values, LON: esmf["lon"].values})


class _Xesmf:
    """ESMF weights applied by xESMF (conservative and bilinear under the xesmf backend)."""

    def __init__(self, source: Grid, target: Grid, method: str, weights: Path | None = None) -> None:
        import xesmf

        self.source = source
        self.ghosts = 1 if method == "bilinear" else 0
        self.scheme = f"ESMF {method} via xESMF {xesmf.__version__}"
        _axes(source, target)  # the separable path's coverage check: ESMF would leave uncovered cells at 0
        bounds = method == "conservative"
        self.regridder = xesmf.Regridder(
            _esmf_grid(source, self.ghosts, bounds),
            _esmf_grid(target, 0, bounds),
            method,
            periodic=False,  # longitude wrap is in the ghost ring; conservative needs none
            ignore_degenerate=True,  # a ghost row at a pole collapses to a point
            weights=None if weights is None else str(weights),
        )

    def apply(self, da: xr.DataArray) -> xr.DataArray:
        """Regrid `da` with dims (..., lat, lon); xESMF keeps dask input lazy."""
        if da.chunks is not None:
            da = da.chunk({LAT: -1, LON: -1})
        if self.ghosts:
            da = _pad_ghosts(da, self.source, self.ghosts)
        out = self.regridder(da, keep_attrs=True)
        return out.drop_vars([LAT, LON], errors="ignore").astype(da.dtype)

    def save(self, path: Path, attrs: dict) -> None:
        """xESMF's weight file with `attrs` added as global attributes."""
        import netCDF4

        self.regridder.to_netcdf(str(path))
        with netCDF4.Dataset(path, "a") as nc:
            nc.setncatts({**attrs, "regrid_scheme": self.scheme})


def _grid_attrs(prefix: str, grid: Grid) -> dict:
    return {
        f"{prefix}_resolution": grid.resolution,
        f"{prefix}_lat_edges": np.asarray(grid.lat_edges),
        f"{prefix}_lon_edges": np.asarray(grid.lon_edges),
    }


def _grid_from_attrs(prefix: str, attrs: dict) -> Grid:
    return Grid(
        float(attrs[f"{prefix}_resolution"]),
        tuple(float(v) for v in np.atleast_1d(attrs[f"{prefix}_lat_edges"])),
        tuple(float(v) for v in np.atleast_1d(attrs[f"{prefix}_lon_edges"])),
    )


class Regridder:
    """Regrid fields between two regular lat-lon grids; weights computed once, reusable from file.

    >>> lr_from_hr = Regridder(hr, lr, "conservative")  # doctest: +SKIP
    >>> lr = lr_from_hr(ds)                             # doctest: +SKIP
    """

    def __init__(self, source: Grid, target: Grid, method: str, backend: str = "auto") -> None:
        if method not in METHODS:
            raise ValueError(f"regrid method must be one of {METHODS}, not {method!r}")
        self.source = source  # grid of the input, degrees
        self.target = target  # grid of the output, degrees
        self.method = method  # conservative | bilinear | bicubic
        self.backend = resolve_backend(backend)  # xesmf | xarray-regrid
        start = time.perf_counter()
        if self.backend == "xesmf" and method != "bicubic":
            self._weights: _Separable | _Xesmf = _Xesmf(source, target, method)
        else:
            self._weights = _Separable.build(source, target, method)
        log.info(
            "regrid weights %s %dx%d -> %dx%d: %s (%.2f s)",
            method,
            *source.shape,
            *target.shape,
            self._weights.scheme,
            time.perf_counter() - start,
        )

    def __repr__(self) -> str:
        return (
            f"Regridder({self.method}, {self.source.shape} {self.source.resolution}° -> "
            f"{self.target.shape} {self.target.resolution}°, backend={self.backend})"
        )

    @property
    def scheme(self) -> str:
        """Where the weights come from (library, version, method)."""
        return self._weights.scheme

    def _provenance(self) -> dict[str, str]:
        return {"regrid_method": self.method, "regrid_backend": self.backend, "regrid_scheme": self.scheme}

    def __call__(self, data: T) -> T:
        """`data` on the source grid (dims (..., lat, lon)) -> the same type on the target grid.

        Longitude may be in 0..360 or −180..180 and latitude descending; other
        dims, variables and attributes are kept; attributes ``regrid_method``,
        ``regrid_backend`` and ``regrid_scheme`` are added. A Dataset gets CF
        cell bounds ``lat_bnds``/``lon_bnds`` (degrees) as coordinates.
        """
        data = self._canonical(data)
        if isinstance(data, xr.DataArray):
            return self._regrid_array(data)
        variables = {}
        for name, var in data.data_vars.items():
            if LAT in var.dims and LON in var.dims:
                variables[name] = self._regrid_array(var)
            elif LAT in var.dims or LON in var.dims:
                log.warning("regrid: dropping %s %s: it has only one of the dims %s, %s", name, var.dims, LAT, LON)
            else:
                variables[name] = var
        coords = {k: c for k, c in data.coords.items() if LAT not in c.dims and LON not in c.dims}
        out = xr.Dataset(variables, coords=coords, attrs={**data.attrs, **self._provenance()})
        out = out.assign_coords(self._target_coords())
        bounds = {
            f"{axis}_bnds": ((axis, BNDS), np.stack([b[:-1], b[1:]], axis=1), {"units": CF_ATTRS[axis]["units"]})
            for axis, b in ((LAT, self.target.lat_bounds), (LON, self.target.lon_bounds))
        }
        out = out.assign_coords(bounds)
        out[LAT].attrs["bounds"], out[LON].attrs["bounds"] = f"{LAT}_bnds", f"{LON}_bnds"
        return out

    def _target_coords(self) -> dict[str, tuple]:
        return {LAT: (LAT, self.target.lat, CF_ATTRS[LAT]), LON: (LON, self.target.lon, CF_ATTRS[LON])}

    def _regrid_array(self, da: xr.DataArray) -> xr.DataArray:
        """One variable with dims (..., lat, lon, ...) in canonical coordinates."""
        dims = da.dims
        if not np.issubdtype(da.dtype, np.floating):
            da = da.astype(np.float64)
        out = self._weights.apply(da.transpose(..., LAT, LON))
        extra = [k for k, c in out.coords.items() if LAT in c.dims or LON in c.dims]
        out = out.drop_vars(extra).assign_coords(self._target_coords()).transpose(*dims)
        out.attrs.update(self._provenance())
        return out.rename(da.name)

    def _canonical(self, data: T) -> T:
        """`data` with lon in the source grid's frame, both axes ascending, exact source coordinates.

        Raises ValueError when the coordinates are not those of the source grid.
        """
        if LAT not in data.dims or LON not in data.dims:
            raise ValueError(f"regrid: input has dims {tuple(data.dims)}, needs {LAT!r} and {LON!r}")
        if isinstance(data, xr.Dataset):
            stale = {data[LAT].attrs.get("bounds"), data[LON].attrs.get("bounds"), f"{LAT}_bnds", f"{LON}_bnds"}
            data = data.drop_vars([v for v in stale if v in data.variables])
        west = self.source.lon_bounds[0]
        lon = west + np.mod(data[LON].values - west, 360.0)
        if not np.array_equal(lon, data[LON].values):
            data = data.assign_coords({LON: lon})
        for axis in (LAT, LON):
            if not data.indexes[axis].is_monotonic_increasing:
                data = data.sortby(axis)
        if not self.source.matches(data[LAT].values, data[LON].values):
            lat, lon = data[LAT].values, data[LON].values
            raise ValueError(
                f"regrid: input grid ({lat.size} lat {lat.min():g}..{lat.max():g}, {lon.size} lon "
                f"{lon.min():g}..{lon.max():g}) is not the source grid ({self.source.shape[0]} lat "
                f"{self.source.lat[0]:g}..{self.source.lat[-1]:g}, {self.source.shape[1]} lon "
                f"{self.source.lon[0]:g}..{self.source.lon[-1]:g}, degrees)"
            )
        return data.assign_coords({LAT: self.source.lat, LON: self.source.lon})

    def save(self, path: str | os.PathLike, attrs: dict) -> None:
        """Write the weights (xESMF weight file, or per-axis weights as NetCDF) atomically to `path`.

        `attrs` (provenance: ``config_hash``, ...; see :func:`geodiff.provenance.provenance_attrs`)
        are added to the file's global attributes.
        """
        attrs = {
            "geodiff_format": FILE_FORMAT,
            "geodiff_version": __version__,
            **attrs,
            "regrid_method": self.method,
            "regrid_backend": self.backend,
            **_grid_attrs("source", self.source),
            **_grid_attrs("target", self.target),
        }
        with atomic_write(path) as tmp:
            self._weights.save(tmp, attrs)
        log.info("regrid weights %s -> %s", self.method, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Regridder:
        """A Regridder from a file written by `save`; the weights are read, not recomputed."""
        path = Path(path)
        with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
            attrs = dict(ds.attrs)
        if attrs.get("geodiff_format") != FILE_FORMAT:
            raise ValueError(
                f"{path}: not a GeoDiff regrid weights file (geodiff_format is missing or not {FILE_FORMAT})"
            )
        self = cls.__new__(cls)
        self.source, self.target = _grid_from_attrs("source", attrs), _grid_from_attrs("target", attrs)
        self.method, self.backend = str(attrs["regrid_method"]), str(attrs["regrid_backend"])
        if self.backend == "xesmf" and self.method != "bicubic":
            resolve_backend("xesmf")  # clear error when the file needs xESMF and it is missing
            self._weights = _Xesmf(self.source, self.target, self.method, weights=path)
        else:
            self._weights = _Separable.read(path)
        log.info("regrid weights %s loaded from %s (%s)", self.method, path, self.scheme)
        return self
