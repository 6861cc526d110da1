"""The whole workflow, end to end, on config/test.yaml in a temporary copy of the repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW_FILES = ["Snakefile", "workflow", "scripts", "config", "envs", "profiles"]

pytestmark = pytest.mark.slow


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(cwd)}
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The test config run to completion once; the folder it ran in."""
    repo = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(repo, "--cores", "2", "--configfile", "config/test.yaml")
    return repo


def test_artifacts_follow_the_data_contract(run):
    res = run / "results"
    for path in ["raw/2001-01.nc", "raw/statics.nc", "regrid/2001-01.nc", "regrid/weights_conservative.nc",
                 "priors/train.h5", "models/deterministic.pt", "models/residual.pt", "samples/test_ensemble.nc",
                 "baselines/test_bicubic.nc", "baselines/test_deterministic.nc", "metrics.csv", "metrics_by_level.csv",
                 "figures/maps.png", "logs/train_deterministic.log", "benchmarks/metrics.tsv"]:
        assert (res / path).stat().st_size > 0, path
    with xr.open_dataset(res / "raw/2001-01.nc", engine="netcdf4") as raw:
        assert raw["t"].dims == ("time", "level", "lat", "lon")
        assert raw["t"].attrs["units"] == "K" and raw["z"].attrs["units"] == "m2 s-2"
        assert list(raw["level"].values) == [1000, 850, 700, 500, 300]
        assert np.all(np.diff(raw["lat"].values) > 0) and np.all(np.diff(raw["lon"].values) > 0)
        assert raw["lon"].min() >= -180 and raw["lon"].max() < 180
        assert raw["t"].dtype == np.float32 and {"geodiff_version", "source"} <= set(raw.attrs)
    with xr.open_dataset(res / "regrid/2001-01.nc", engine="netcdf4") as low:
        assert low["t_coarse"].shape[-2:] == (4, 4) and low["t_bicubic"].shape[-2:] == (16, 16)
    with h5py.File(res / "priors/test.h5") as f:
        assert f["hr/t"].shape == (20, 5, 16, 16)
        assert f["stats"].attrs["from"] == "train.h5"
    with xr.open_dataset(res / "samples/test_ensemble.nc", engine="netcdf4") as ens:
        assert ens["t"].dims == ("member", "time", "level", "lat", "lon") and ens.sizes["member"] == 3
        assert ens["t"].attrs["units"] == "K" and np.isfinite(ens["t"]).all()


def test_metrics_table_is_tidy_and_complete(run):
    table = pd.read_csv(run / "results/metrics.csv")
    assert list(table.columns) == ["method", "variable", "level", "metric", "value"]
    assert not table["value"].isna().any()
    overall = table[(table["level"] == "all")].pivot_table(index="method", columns="metric", values="value")
    for method in ["bicubic", "bilinear", "deterministic", "ablation_no_priors", "geodiff_mean"]:
        assert {"rmse", "mae", "bias"} <= set(overall.columns) and not np.isnan(overall.loc[method, "rmse"])
    assert overall.loc["geodiff", "crps"] > 0
    per_level = table[(table["level"] != "all") & (table["metric"] == "rmse")]
    assert set(per_level["level"].astype(int)) == {1000, 850, 700, 500, 300}


def test_nothing_left_to_do_and_evaluation_only_reruns(run):
    dry = snakemake(run, "-n", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # an evaluation-only change re-runs sampling and metrics, never training or data
    changed = (run / "config/test.yaml").read_text().replace("ensemble_size: 3", "ensemble_size: 4")
    (run / "config/eval_changed.yaml").write_text(changed)
    plan = snakemake(run, "results/metrics.csv", "-n", "--configfile", "config/eval_changed.yaml")
    out = plan.stdout + plan.stderr
    assert "sample" in out and "metrics" in out
    for upstream in ["train_deterministic", "train_residual", "priors", "download", "regrid"]:
        assert f"rule {upstream}:" not in out, upstream


def test_lint_is_clean(run):
    lint = snakemake(run, "--lint", "--configfile", "config/test.yaml", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr


def test_invalid_config_stops_before_any_job(tmp_path):
    repo = copy_workflow(tmp_path)
    bad = (repo / "config/test.yaml").read_text().replace("scale_factor: 4", "scale_factor: one")
    (repo / "config/bad.yaml").write_text(bad)
    proc = snakemake(repo, "-n", "--configfile", "config/bad.yaml", check=False)
    assert proc.returncode != 0
    assert "scale_factor" in proc.stdout + proc.stderr
    assert not (repo / "results").exists()
