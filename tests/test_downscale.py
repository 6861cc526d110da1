"""`geodiff downscale`: the model of config/test.yaml applied to real coarse data without fine truth."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from geodiff.constants import G, R_D
from geodiff.data.canonical import DataError, canonicalize
from geodiff.data.files import open_any
from geodiff.data.grid import Grid
from geodiff.data.regrid import Regridder
from geodiff.downscale.bundle import load_bundle
from geodiff.downscale.generate import Domain, downscale as downscale_files, generate
from geodiff.downscale.inputs import box_statics, grid_of, model_grids, on_coarse_grid, read_input
from geodiff.downscale.tiles import Tiling, tile_starts
from test_constraint import block_mean
from test_scale_out import free_port
from workflow_run import cf_problems

pytestmark = pytest.mark.slow
REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
GFS = REAL / "gfs" / "GFS_test.nc"
BOX = [29.5, 49.5, -110.5, -80.5]  # 20 x 30 GFS cells (centres on whole degrees): 80 x 120 fine cells
TILE, OVERLAP = 80, 32  # 2 x 2 tiles of the 100 x 120 fine cells of the tiling test
if not REAL.is_dir() and not os.environ.get("CI"):
    pytest.skip("real sample data ../shared/data/real not present", allow_module_level=True)


def models(run: Path) -> Path:
    return run / "results" / "test" / "models"


def downscale(run: Path, out: Path, *args: str, ranks: int = 0) -> xr.Dataset:
    """`geodiff downscale` of the GFS file with the run's bundle (under torchrun with `ranks` > 0), one thread per process."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
              str(free_port())] if ranks else [sys.executable]
    cmd = [*launch, "-m", "geodiff", "downscale", "--model", str(models(run)), "--input", str(GFS), "--out", str(out),
           "--device", "cpu", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    with xr.open_dataset(out) as ds:
        return ds.load()


def gfs_coarse(levels) -> xr.DataArray:
    """The GFS temperature on the model's levels over BOX, read independently of geodiff.downscale, K."""
    ds = canonicalize(open_any(GFS), "local", str(GFS))
    return ds["t"].sel(level=levels).sel(lat=slice(BOX[0], BOX[1]), lon=slice(BOX[2], BOX[3])).load()


@pytest.fixture(scope="module")
def gfs(run, tmp_path_factory):
    """The run's bundle applied to the real GFS file over BOX, with the run's constraint (additive) and without."""
    out = tmp_path_factory.mktemp("gfs")
    args = ["--box", *map(str, BOX), "--members", "3"]
    return downscale(run, out / "gfs.nc", *args), downscale(run, out / "raw.nc", *args, "--constraint", "none")


def test_gfs_at_one_degree_becomes_a_quarter_degree_ensemble(gfs, run):
    ds, _ = gfs
    bundle = json.loads((models(run) / "bundle.json").read_text())
    assert ds["t"].dims == ("realization", "time", "level", "lat", "lon") and ds["t"].shape == (3, 1, 5, 80, 120)
    np.testing.assert_allclose(np.diff(ds["lat"]), 0.25)
    np.testing.assert_allclose(ds["level"], bundle["levels"])
    assert ds.attrs["input_files"] == GFS.name and ds.attrs["config_hash"] == bundle["config_hash"]
    assert ds.attrs["input_regrid"].startswith("none")  # BOX is whole GFS cells
    for name in ("t", "t_mean", "t_spread"):
        assert np.isfinite(ds[name]).all()
    np.testing.assert_allclose(ds["t_mean"], ds["t"].mean("realization"), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ds["t_spread"], ds["t"].std("realization", ddof=1), rtol=0, atol=1e-4)
    assert ds["t"].encoding["chunksizes"] == (1, 1, 5, 80, 120)  # one time step (and member) per chunk
    assert cf_problems(Path(ds.encoding["source"])) == []


def lapse_rates(t: np.ndarray, p: np.ndarray) -> list[np.ndarray]:
    """Γ = −ΔT/ΔZ (K/km) of each layer between adjacent levels of t [..., level, lat, lon], ΔZ from the
    hypsometric equation with the layer-mean temperature."""
    out = []
    for k in range(len(p) - 1):
        lower, upper = t[..., k, :, :], t[..., k + 1, :, :]
        out.append(-(upper - lower) / (R_D * 0.5 * (lower + upper) / G * math.log(p[k] / p[k + 1])) * 1000.0)
    return out


def test_lapse_rates_are_physical(gfs, run):
    """No member's layer reaches the auto-convective lapse rate g/R_d (34 K/km: density growing with height)
    or is more often dry super-adiabatic (Γ > g/c_p = 9.8 K/km) than the fine truth the model learned from;
    inversions stay within −20 K/km and the medians are a typical atmosphere's."""
    t = gfs[0]["t"]
    p = t["level"].values
    truth = np.concatenate([xr.open_dataset(run / "results" / "test" / "raw" / f"2001-0{m}.nc")["t"].values for m in (1, 2)])
    for k, (gamma, learned) in enumerate(zip(lapse_rates(t.values, p), lapse_rates(truth, p))):
        layer = f"{p[k]:g}-{p[k + 1]:g} hPa"
        assert -20.0 < gamma.min() and gamma.max() < G / R_D * 1000.0, (layer, gamma.min(), gamma.max())
        assert (gamma > 9.8).mean() <= (learned > 9.8).mean(), layer
        assert 3.0 < np.median(gamma) < 9.0, (layer, np.median(gamma))


def test_the_self_check_holds_the_output_to_its_input(gfs):
    """The file's self-check equals a brute-force one (area-weighted block means against GFS) and, with the
    run's constraint, lies far below bicubic interpolation's own mismatch with the input."""
    constrained, raw = gfs
    coarse = gfs_coarse(constrained["level"].values).values[0]
    hr = Grid(0.25, tuple(BOX[:2]), tuple(BOX[2:]))
    bicubic = Regridder(hr.coarsen(4), hr, "bicubic")(xr.DataArray(coarse, dims=("level", "lat", "lon"),
                                                                    coords={"lat": hr.coarsen(4).lat, "lon": hr.coarsen(4).lon}))
    bicubic_rmse = float(np.sqrt(((block_mean(bicubic.values, hr) - coarse) ** 2).mean()))
    for ds in (constrained, raw):
        diff = block_mean(ds["t_mean"].values[0], hr) - coarse
        assert ds.attrs["self_check_rmse_K"] == pytest.approx(np.sqrt((diff**2).mean()), rel=1e-3, abs=1e-5)
        assert ds.attrs["self_check_max_abs_K"] == pytest.approx(np.abs(diff).max(), rel=1e-3, abs=1e-5)
    assert constrained.attrs["constraint"] == "additive" and constrained.attrs["self_check_rmse_K"] < 1e-3
    assert constrained.attrs["self_check_rmse_K"] < bicubic_rmse / 100  # bicubic: 0.135 K
    # without the constraint the tiny model (40 steps, trained on the synthetic atmosphere) moves the
    # large scales by more than bicubic does: what the self-check is there to show
    assert raw.attrs["constraint"] == "none" and raw.attrs["self_check_rmse_K"] > bicubic_rmse


@pytest.fixture(scope="module")
def domain(run, tmp_path_factory):
    """The model inputs over a misaligned box (the GFS cells regridded conservatively): (bundle, domain, fine grid)."""
    bundle = load_bundle(models(run))
    ds, origin = read_input([str(GFS)], bundle.levels)
    source = grid_of(ds, origin)
    hr, lr = model_grids(bundle.meta["resolution"], bundle.meta["scale_factor"], [30.0, 55.0, -110.0, -80.0], source)
    coarse, how = on_coarse_grid(ds, source, lr, origin)
    assert how.startswith("conservative") and coarse.shape == (1, 5, 25, 30)
    statics = box_statics(None, bundle.meta["statics_source"], hr, tmp_path_factory.mktemp("statics"))
    return bundle, Domain(bundle, coarse, hr, lr, statics, "cpu"), hr


def test_tiles_give_the_untiled_field_and_members_without_seams(domain):
    bundle, dom, hr = domain
    x = dom.inputs(0)
    with torch.no_grad():
        def deterministic(tiling):
            return bundle.deterministic.denormalise(tiling.blend(bundle.deterministic, x["lr_up"], x["static"], x["priors"]))
        whole, tiled = deterministic(Tiling(hr.shape, None, 0)), deterministic(Tiling(hr.shape, TILE, OVERLAP))
    assert len(Tiling(hr.shape, TILE, OVERLAP)) == 2 * 2
    assert float((tiled - whole).abs().max()) < 0.02  # K
    members = generate(bundle, dom, [(0, m) for m in range(4)], Tiling(hr.shape, TILE, OVERLAP), 6, 0, False)
    t = np.stack(list(members.values()))  # [M, L, H, W]
    for axis, n in ((-2, hr.shape[0]), (-1, hr.shape[1])):
        grad = np.abs(np.diff(t, axis=axis)).mean(axis=tuple(a for a in range(t.ndim) if a != t.ndim + axis))
        starts = tile_starts(n, TILE, OVERLAP)
        borders = sorted({s - 1 for s in starts if s > 0} | {s + TILE - 1 for s in starts} - {n - 1})
        inside = np.setdiff1d(np.arange(n - 1), borders)
        ratio = grad[borders].mean() / grad[inside].mean()
        assert abs(ratio - 1) < 0.10, f"|∇T| across tile borders along axis {axis}: {ratio:.3f} of elsewhere"


def test_two_ranks_write_the_file_of_one(run, tmp_path):
    args = ["--box", "29.5", "39.5", "-110.5", "-90.5", "--members", "3", "--steps", "4", "--tile", "32", "--overlap", "8"]
    one, two = downscale(run, tmp_path / "one.nc", *args), downscale(run, tmp_path / "two.nc", *args, ranks=2)
    assert one.attrs["ranks"] == 1 and two.attrs["ranks"] == 2
    for name in ("t", "t_mean", "t_spread"):
        np.testing.assert_array_equal(one[name].values, two[name].values)
    # the members differ from one another: the ranks did not draw the same noise
    assert float(np.abs(one["t"][0] - one["t"][1]).max()) > 0.1


def test_cmip_names_read_as_the_same_field(run, tmp_path):
    """`ta` on `plev` in Pa (CMIP) gives the temperatures of the GFS file it was written from, on the model's levels."""
    bundle = load_bundle(models(run))
    gfs = canonicalize(open_any(GFS), "local", str(GFS))
    cmip = xr.Dataset({"ta": (("time", "plev", "lat", "lon"), gfs["t"].values, {"units": "K", "standard_name": "air_temperature"})},
                      coords={"time": gfs["time"].values, "plev": ("plev", gfs["level"].values * 100.0, {"units": "Pa"}),
                              "lat": gfs["lat"].values, "lon": gfs["lon"].values})
    cmip.to_netcdf(tmp_path / "ta_Amon.nc")
    ds, _ = read_input([str(tmp_path / "ta_Amon.nc")], bundle.levels)
    np.testing.assert_array_equal(ds["t"].values, gfs["t"].sel(level=bundle.levels).values)


def test_inputs_it_cannot_use_are_refused_by_name(run, tmp_path):
    bundle = load_bundle(models(run))
    with pytest.raises(DataError, match=r"missing levels 1000, 700, 300 hPa"):
        read_input([str(REAL / "era5" / "era5-levels-members.grib")], bundle.levels)  # 500 and 850 hPa only
    coarse = canonicalize(open_any(GFS), "local", str(GFS)).coarsen(lat=3, lon=3, boundary="trim").mean()
    coarse.attrs.clear()
    path = tmp_path / "gfs_3deg.nc"
    coarse.to_netcdf(path)
    ds, origin = read_input([str(path)], bundle.levels)
    source = grid_of(ds, origin)
    hr, lr = model_grids(0.25, 4, None, source)
    with pytest.raises(DataError, match=r"gfs_3deg.nc: grid spacing 3° is coarser than 2x the model's coarse grid \(1°\)"):
        on_coarse_grid(ds, source, lr, origin)
    with pytest.raises(ValueError, match=r"--box .* whole coarse cells of 1°"):
        model_grids(0.25, 4, [30.0, 31.5, -100.0, -99.0], source)
    # the command says it in one line and writes nothing
    grib, out = REAL / "era5" / "pl_regular_ll.grib", tmp_path / "out.nc"
    proc = subprocess.run([sys.executable, "-m", "geodiff", "downscale", "--model", str(models(run)), "--input", str(grib),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    assert proc.stderr.strip().splitlines()[-1] == (f"geodiff downscale: {grib}: grid spacing 10° is coarser than 2x the "
                                                   "model's coarse grid (1°): the model downscales from 1°")


def test_tiles_that_would_start_inside_a_coarse_cell_are_refused(run, tmp_path):
    """The test model's coarse cells are 4 fine cells: a 6-cell overlap would start the second tile inside one."""
    with pytest.raises(ValueError, match=r"tile 32, overlap 6: both must be multiples of the scale factor 4"):
        downscale_files(str(models(run)), [str(GFS)], str(tmp_path / "out.nc"), tile=32, overlap=6, device="cpu")
    assert not (tmp_path / "out.nc").exists()


def test_a_bundle_whose_model_was_swapped_is_refused(run, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("bundle.json", "deterministic.pt"):
        (folder / name).write_bytes((models(run) / name).read_bytes())
    (folder / "residual.pt").write_bytes((models(run) / "ablation_no_priors.pt").read_bytes())
    with pytest.raises(ValueError, match=r"residual.pt: not the residual model .* was written for"):
        load_bundle(folder)


def test_the_workflow_downscales_a_declared_input(run):
    """config/test.yaml declares March's fine truth as an input: finer than the model's coarse grid, it is
    coarsened conservatively (as the store's coarse input was made), then downscaled back to its own grid."""
    ds = xr.open_dataset(run / "results" / "test" / "downscaled" / "march.nc")
    truth = xr.open_dataset(run / "results" / "test" / "raw" / "2001-03.nc")["t"]
    assert ds["t"].sizes == {"realization": 3, "time": truth.sizes["time"], "level": 5, "lat": 16, "lon": 16}
    assert ds.attrs["input_regrid"].startswith("conservative from 0.25° (input finer")
    # the same models on the same coarse fields as the workflow's own ensemble of the test split: the same skill
    metrics = pd.read_csv(run / "results" / "test" / "metrics.csv").set_index(["split", "method", "level", "metric"])
    days = {"time": xr.open_dataset(run / "results" / "test" / "samples" / "test_ensemble.nc")["time"]}
    rmse = float(np.sqrt(((ds["t_mean"].sel(days) - truth.sel(days)) ** 2).mean()))
    assert rmse == pytest.approx(metrics.loc[("test", "geodiff_constrained_mean", "all", "rmse"), "value"], rel=0.05)
