"""A failed job's log is printed in the terminal, with or without a profile, local or on SLURM.

The data error of a `local` month in degrees Celsius (file, variable and problem, on the
last line of the rule's log) must be in Snakemake's output, so a user sees it without
hunting for the log file.

profiles/slurm deploys the rules' conda envs; this machine has no conda, so the runs here
use the profile as its comment tells a site without conda to: without that line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from slurm_cluster import FAST_POLLING, NO_RETRIES, ClusterInfo, clean_env
from workflow_run import SNAKEMAKE, config_variant, copy_workflow, snakemake

MONTH = "results/test/raw/2001-01.nc"  # results/{run_name}/
LOG = Path("results/test/logs/download/2001-01.log")


@pytest.fixture
def celsius_run(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the workflow whose `local` source holds its months in °C; its config."""
    repo = copy_workflow(tmp_path)
    time = pd.date_range("2001-01-01", "2001-03-31T12", freq="12h")  # every month of data.period
    levels = [1000.0, 850.0, 700.0, 500.0, 300.0]
    lat = np.arange(40.25, 48.0, 0.5)
    lon = np.arange(0.25, 8.0, 0.5)
    t = np.full((time.size, len(levels), lat.size, lon.size), 12.5, dtype=np.float32)
    ds = xr.Dataset({"t": (("time", "level", "lat", "lon"), t, {"units": "degC"})},
                    coords={"time": time, "level": levels, "lat": lat, "lon": lon})  # fmt: skip
    ds.to_netcdf(repo / "celsius.nc")
    cfg = config_variant(repo, "celsius", [("source: synthetic", "source: local\n  local: {paths: [celsius.nc]}")])
    return repo, cfg


def without_conda(repo: Path) -> None:
    """Delete the `software-deployment-method` line of a copy's profiles/slurm (its comment's advice)."""
    profile = repo / "profiles/slurm/config.yaml"
    text = profile.read_text()
    assert "\nsoftware-deployment-method: conda\n" in text, "profiles/slurm no longer deploys conda envs"
    profile.write_text(text.replace("\nsoftware-deployment-method: conda\n", "\n"))


def test_slurm_profile_needs_conda_unless_switched_off(tmp_path: Path) -> None:
    repo = copy_workflow(tmp_path)
    args = ("-n", "--profile", "profiles/slurm", "--configfile", "config/test.yaml")
    stock = snakemake(repo, *args, check=False)  # no conda here
    assert stock.returncode != 0 and "Is conda installed" in stock.stdout + stock.stderr
    without_conda(repo)
    planned = snakemake(repo, *args)  # fails the test unless it succeeds
    assert "rule train_deterministic:" in planned.stdout + planned.stderr


def run_failing(repo: Path, args: list[str], env: dict[str, str], timeout: float) -> str:
    """Snakemake's output (stdout and stderr) of a run that must fail."""
    proc = subprocess.run([*SNAKEMAKE, MONTH, *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode != 0, proc.stdout[-3000:]
    return proc.stdout + proc.stderr


def assert_log_error_shown(repo: Path, output: str) -> None:
    error = (repo / LOG).read_text().strip().splitlines()[-1]
    assert "celsius.nc" in error and "Celsius" in error, error  # the log holds the data error ...
    assert error in output, f"{error!r} not in the terminal output:\n{output[-3000:]}"  # ... and the terminal too


@pytest.mark.parametrize("profile", [[], ["--profile", "profiles/local"]], ids=["no-profile", "local"])
def test_failed_log_in_terminal(celsius_run: tuple[Path, str], profile: list[str]) -> None:
    repo, cfg = celsius_run
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(repo)}
    output = run_failing(repo, [*profile, "--cores", "1", "--configfile", cfg], env, timeout=300)
    assert_log_error_shown(repo, output)


@pytest.mark.slurm
def test_failed_log_in_terminal_on_slurm(slurm_cluster: ClusterInfo, celsius_run: tuple[Path, str]) -> None:
    repo, cfg = celsius_run
    without_conda(repo)
    args = ["--profile", "profiles/slurm", *FAST_POLLING, *NO_RETRIES, "--configfile", cfg]
    output = run_failing(repo, args, clean_env(), timeout=300)
    assert "SLURM jobid" in output, output[-3000:]
    assert_log_error_shown(repo, output)
