"""Regridding: conservative coarsening, bilinear/bicubic upsampling, coordinate spellings, cached weights.

Every test runs on the xarray-regrid backend; the same tests run on xesmf where
`import xesmf` works (conda env envs/regrid.yaml) and are skipped elsewhere.
ESMF takes cell edges as great-circle arcs and interpolates on the sphere, so
its comparisons against lat-lon (sin-band, degree-linear) references get looser
tolerances (see the module docstring of geodiff.data.regrid).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from geodiff.constants import LAT, LEVEL, LON, TIME
from geodiff.data import regrid
from geodiff.data.grid import Grid
from geodiff.data.regrid import Regridder, resolve_backend

HAS_XESMF = regrid._import_error("xesmf") is None
BACKENDS = [
    "xarray-regrid",
    pytest.param("xesmf", marks=pytest.mark.skipif(not HAS_XESMF, reason="xesmf not importable (conda-only ESMF)")),
]
# tolerances against lat-lon references: block means (K), linear field (K), relative area-mean change
TOL = {
    "xarray-regrid": {"block": 1e-10, "linear": 1e-10, "mean": 1e-6},
    "xesmf": {"block": 5e-3, "linear": 2e-2, "mean": 1e-4},
}

HR = Grid(0.25, (40.0, 52.0), (0.0, 12.0))  # the default config's fine grid, 48 x 48
LR = HR.coarsen(4)  # 12 x 12, 1 degree
HR_GLOBAL = Grid(2.5, (-90.0, 90.0), (-180.0, 180.0))  # 72 x 144
LR_GLOBAL = HR_GLOBAL.coarsen(4)  # 18 x 36, 10 degrees


def field(
    grid: Grid, values: np.ndarray | None = None, *, times: int = 2, seed: int = 0, dtype=np.float64
) -> xr.DataArray:
    """A (time, level, lat, lon) DataArray on `grid`: `values` [lat, lon] broadcast, or random normal."""
    shape = (times, 2, *grid.shape)
    data = np.broadcast_to(values, shape) if values is not None else np.random.default_rng(seed).normal(size=shape)
    return xr.DataArray(
        np.array(data, dtype=dtype),
        dims=(TIME, LEVEL, LAT, LON),
        coords={TIME: np.arange(times), LEVEL: [850.0, 500.0], LAT: grid.lat, LON: grid.lon},
        name="t",
        attrs={"units": "K"},
    )


def band_area(grid: Grid) -> np.ndarray:
    """Relative cell areas [lat, lon] of a regular grid: Δλ (sin φ_north − sin φ_south)."""
    b = np.deg2rad(grid.lat_bounds)
    return np.broadcast_to((np.sin(b[1:]) - np.sin(b[:-1]))[:, None], grid.shape) * np.deg2rad(grid.resolution)


def analytic(grid: Grid, f) -> np.ndarray:
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    return f(lat, lon)


def test_resolve_backend():
    assert resolve_backend("xarray-regrid") == "xarray-regrid"
    assert resolve_backend("auto") == ("xesmf" if HAS_XESMF else "xarray-regrid")
    with pytest.raises(ValueError, match="regrid.backend"):
        resolve_backend("esmf")
    if not HAS_XESMF:
        with pytest.raises(RuntimeError, match="conda"):
            resolve_backend("xesmf")
        with pytest.raises(RuntimeError, match="import xesmf"):
            Regridder(HR, LR, "conservative", "xesmf")
    with pytest.raises(ValueError, match="method"):
        Regridder(HR, LR, "cubic", "xarray-regrid")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fine,coarse", [(HR, LR), (HR_GLOBAL, LR_GLOBAL)], ids=["regional", "global"])
def test_conservative_constant_and_mean(backend, fine, coarse):
    regridder = Regridder(fine, coarse, "conservative", backend)
    const = regridder(field(fine, np.full(fine.shape, 273.15)))
    assert const.shape == (2, 2, *coarse.shape)
    assert np.abs(const.values - 273.15).max() < 1e-6

    x = field(fine, np.random.default_rng(1).uniform(0.0, 1.0, fine.shape))
    y = regridder(x)
    mean_fine = (x.values[0, 0] * band_area(fine)).sum() / band_area(fine).sum()
    mean_coarse = (y.values[0, 0] * band_area(coarse)).sum() / band_area(coarse).sum()
    assert abs(mean_coarse / mean_fine - 1.0) < TOL[backend]["mean"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conservative_matches_numpy_block_means(backend):
    x = field(HR, seed=2)
    y = Regridder(HR, LR, "conservative", backend)(x)
    # cos(lat)-weighted 4 x 4 block means, the weight of a row being sin(north edge) - sin(south edge)
    w = np.diff(np.sin(np.deg2rad(HR.lat_bounds)))
    blocks = x.values.reshape(2, 2, 12, 4, 12, 4)
    w_rows = w.reshape(12, 4)
    expected = np.einsum("tkaibj,ai->tkab", blocks, w_rows) / (4 * w_rows.sum(axis=1))[:, None]
    assert np.abs(y.values - expected).max() < TOL[backend]["block"]
    # and not the unweighted block mean: the test can tell the weights apart
    assert np.abs(y.values - blocks.mean(axis=(3, 5))).max() > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_missing_value_reaches_only_the_targets_that_use_it(backend):
    """NaN in the source: NaN in the coarse cell holding it, or at the fine points whose stencil uses it."""
    x = field(HR, seed=4)
    x[0, 1, 17, 30] = np.nan
    coarse = Regridder(HR, LR, "conservative", backend)(x)
    expected = np.zeros(coarse.shape, bool)
    expected[0, 1, 17 // 4, 30 // 4] = True  # the 4 x 4 block holding the gap
    np.testing.assert_array_equal(np.isnan(coarse.values), expected)
    np.testing.assert_allclose(coarse.values[~expected], Regridder(HR, LR, "conservative", backend)(field(HR, seed=4)).values[~expected])
    y = field(LR, seed=5)
    y[1, 0, 6, 3] = np.nan
    fine = Regridder(LR, HR, "bicubic", backend)(y)
    # brute force: the fine points within 2 coarse cells (the cubic stencil) of the gap, in each direction
    near_lat = np.abs(HR.lat - LR.lat[6]) < 2 * LR.resolution
    near_lon = np.abs(HR.lon - LR.lon[3]) < 2 * LR.resolution
    expected = np.zeros(fine.shape, bool)
    expected[1, 0] = near_lat[:, None] & near_lon[None, :]
    np.testing.assert_array_equal(np.isnan(fine.values), expected)


def test_conservative_equals_xarray_regrid_directly():
    import xarray_regrid  # noqa: F401

    x = field(HR, seed=3)
    ours = Regridder(HR, LR, "conservative", "xarray-regrid")(x)
    theirs = x.regrid.conservative(xr.Dataset(coords={LAT: LR.lat, LON: LR.lon}), latitude_coord=LAT)
    np.testing.assert_allclose(ours.values, regrid._dense(theirs.data), rtol=0, atol=1e-12)  # sparse with `sparse`


@pytest.mark.parametrize("backend", BACKENDS)
def test_bilinear_linear_field_exact_inside_and_clamped_at_edges(backend):
    linear = lambda lat, lon: 3.0 * lat - 2.0 * lon + 5.0  # noqa: E731
    y = Regridder(LR, HR, "bilinear", backend)(field(LR, analytic(LR, linear))).values[0, 0]
    inside = np.ix_((HR.lat >= LR.lat[0]) & (HR.lat <= LR.lat[-1]), (HR.lon >= LR.lon[0]) & (HR.lon <= LR.lon[-1]))
    assert inside[0].size == 44 and inside[1].size == 44  # 2 fine points beyond the coarse centres at each end
    assert np.abs(y[inside] - analytic(HR, linear)[inside]).max() < TOL[backend]["linear"]
    # edge-extend: beyond the outermost coarse centres the field is that of the nearest centre line
    lat_c, lon_c = np.meshgrid(
        np.clip(HR.lat, LR.lat[0], LR.lat[-1]), np.clip(HR.lon, LR.lon[0], LR.lon[-1]), indexing="ij"
    )
    assert np.abs(y - linear(lat_c, lon_c)).max() < TOL[backend]["linear"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bicubic_beats_bilinear_on_smooth_field(backend):
    smooth = lambda lat, lon: np.sin(2 * np.pi * lon / 8.0) * np.cos(2 * np.pi * (lat - 40.0) / 10.0)  # noqa: E731
    x = field(LR, analytic(LR, smooth))
    truth = analytic(HR, smooth)
    # interior: points whose 4-point stencil needs no ghost cell
    rows = (HR.lat >= LR.lat[1]) & (HR.lat <= LR.lat[-2])
    cols = (HR.lon >= LR.lon[1]) & (HR.lon <= LR.lon[-2])
    err = {}
    for method in ("bilinear", "bicubic"):
        y = Regridder(LR, HR, method, backend)(x).values[0, 0]
        err[method] = np.sqrt(np.mean((y - truth)[np.ix_(rows, cols)] ** 2))
    assert 0.02 < err["bilinear"] < 0.1  # the field is resolved but curved: bilinear misses by a few %
    assert err["bicubic"] < 0.25 * err["bilinear"]


def test_bicubic_is_cubic_convolution():
    regridder = Regridder(LR, HR, "bicubic", "xarray-regrid")
    assert "cubic convolution" in regridder.scheme
    w = regridder._weights.w_lat
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-14)  # partition of unity
    # Keys' a = -1/2 kernel reproduces quadratics away from the edges
    quadratic = lambda lat, lon: 0.3 * (lat - 45.0) ** 2 - 0.2 * (lat - 45.0) * (lon - 6.0) + lon  # noqa: E731
    y = regridder(field(LR, analytic(LR, quadratic))).values[0, 0]
    rows = (HR.lat >= LR.lat[1]) & (HR.lat <= LR.lat[-2])
    cols = (HR.lon >= LR.lon[1]) & (HR.lon <= LR.lon[-2])
    assert np.abs(y - analytic(HR, quadratic))[np.ix_(rows, cols)].max() < 1e-10
    # fine centre 44.625 lies 1/8 coarse cell north of 44.5: weights are Keys' u(s) at s = 9/8, 1/8, 7/8, 15/8
    row = np.flatnonzero(np.isclose(HR.lat, 44.625))[0]
    np.testing.assert_allclose(w[row, 3:7], [-0.0478515625, 0.9638671875, 0.0908203125, -0.0068359375], atol=1e-14)
    assert np.count_nonzero(w[row]) == 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_longitude_wraps_on_global_grid(backend, method):
    wave = lambda lat, lon: np.cos(np.deg2rad(lat)) * np.cos(np.deg2rad(2 * lon + 30.0))  # noqa: E731
    y = Regridder(LR_GLOBAL, HR_GLOBAL, method, backend)(field(LR_GLOBAL, analytic(LR_GLOBAL, wave))).values[0, 0]
    err = np.abs(y - analytic(HR_GLOBAL, wave))[4:-4]  # away from the poles' edge-extension
    seam = err[:, [0, 1, -2, -1]].max()  # fine columns beyond the first/last coarse centre, across ±180°
    assert err.max() < 0.05
    assert seam <= err[:, 2:-2].max() + 1e-12  # no worse at the seam than anywhere else


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["conservative", "bilinear", "bicubic"])
def test_coordinate_spellings_give_identical_results(backend, method):
    fine, coarse = HR_GLOBAL, LR_GLOBAL
    source, target = (fine, coarse) if method == "conservative" else (coarse, fine)
    regridder = Regridder(source, target, method, backend)
    x = field(source, seed=4)
    reference = regridder(x)
    lon360 = x.assign_coords({LON: np.mod(x[LON].values, 360.0)})  # 0..360, unsorted
    assert regridder(lon360).identical(reference)
    assert regridder(lon360.sortby(LON)).identical(reference)  # 0..360 ascending
    assert regridder(x.isel({LAT: slice(None, None, -1)})).identical(reference)  # north -> south
    assert regridder(x.transpose(LAT, LON, TIME, LEVEL)).transpose(*reference.dims).identical(reference)


def test_regional_box_across_greenwich_in_0_360():
    fine = Grid(0.25, (40.0, 52.0), (-6.0, 6.0))
    regridder = Regridder(fine, fine.coarsen(4), "conservative", "xarray-regrid")
    x = field(fine, seed=5)
    reference = regridder(x)
    assert regridder(x.assign_coords({LON: np.mod(fine.lon, 360.0)})).identical(reference)
    with pytest.raises(ValueError, match="not the source grid"):
        regridder(x.isel({LON: slice(1, None)}))
    with pytest.raises(ValueError, match="outside the source box"):
        Regridder(fine.coarsen(4), Grid(0.25, (30.0, 52.0), (-6.0, 6.0)), "bilinear", "xarray-regrid")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dask_lazy_float32_dataset(backend):
    x = field(HR, seed=6, times=8, dtype=np.float32)
    ds = xr.Dataset({"t": x, "t_mean": x.mean((LAT, LON)), "lat_bnds": ((LAT, "bnds"), np.zeros((48, 2)))})
    ds[LAT].attrs["bounds"] = "lat_bnds"
    regridder = Regridder(HR, LR, "conservative", backend)
    eager = regridder(ds)
    lazy = regridder(ds.chunk({TIME: 2, LAT: 16}))
    assert lazy["t"].chunks is not None and lazy["t"].chunksizes[TIME] == (2, 2, 2, 2)
    assert lazy["t"].dtype == np.float32 and eager["t"].dtype == np.float32
    np.testing.assert_allclose(lazy["t"].values, eager["t"].values, rtol=0, atol=1e-5)
    # other variables and attributes are kept; provenance and CF bounds added
    xr.testing.assert_identical(eager["t_mean"], ds["t_mean"])
    assert eager["t"].attrs["units"] == "K"
    assert eager.attrs["regrid_method"] == "conservative" and eager.attrs["regrid_backend"] == backend
    assert eager["t"].attrs["regrid_method"] == "conservative"
    assert eager[LAT].attrs["bounds"] == "lat_bnds" and eager[LAT].attrs["units"] == "degrees_north"
    np.testing.assert_array_equal(eager["lat_bnds"].values[:2], [[40.0, 41.0], [41.0, 42.0]])
    np.testing.assert_array_equal(eager["lon_bnds"].values[-1], [11.0, 12.0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["conservative", "bilinear", "bicubic"])
def test_save_load_round_trip_without_recomputation(backend, method, tmp_path, monkeypatch):
    source, target = (HR, LR) if method == "conservative" else (LR, HR)
    regridder = Regridder(source, target, method, backend)
    x = field(source, seed=7, dtype=np.float32)
    path = tmp_path / "weights" / f"weights_{method}.nc"
    regridder.save(path, {"geodiff_version": "test", "config_hash": "abc"})
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind

    def refuse(*args, **kwargs):
        raise AssertionError("weights recomputed on load")

    monkeypatch.setattr(regrid, "_xarray_regrid_weights", refuse)
    monkeypatch.setattr(regrid, "_cubic_convolution_weights", refuse)
    loaded = Regridder.load(path)
    with xr.open_dataset(path) as saved:
        assert saved.attrs["config_hash"] == "abc" and saved.attrs["regrid_method"] == method
    assert (loaded.source, loaded.target, loaded.method, loaded.backend) == (source, target, method, backend)
    assert loaded(x).identical(regridder(x))


def test_load_refuses_other_files(tmp_path):
    path = tmp_path / "other.nc"
    xr.Dataset({"S": ("n_s", np.ones(3))}).to_netcdf(path)
    with pytest.raises(ValueError, match="not a GeoDiff regrid weights file"):
        Regridder.load(path)
