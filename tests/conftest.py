"""Shared pytest fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from slurm_cluster import ClusterInfo, SlurmUnavailable, ensure_cluster
from workflow_run import SNAKEMAKE, copy_workflow, snakemake, snakemake_env


@pytest.fixture(scope="session")
def slurm_cluster() -> ClusterInfo:
    """A running local SLURM cluster (two emulated nodes), started once per session.

    Without SLURM the dependent tests are skipped, except under ``CI=true``,
    where they fail: CI must run them.
    """
    try:
        return ensure_cluster(n_nodes=2)
    except SlurmUnavailable as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"local SLURM cluster unavailable under CI=true: {err}")
        pytest.skip(f"local SLURM cluster unavailable: {err}")


@pytest.fixture(scope="session")
def make_config() -> Callable[..., dict[str, Any]]:
    """The builder of the small config dicts of the data tests; keywords override its defaults.

    ``make_config(source, month=..., hours=..., grid=..., levels=..., scale_factor=..., **data)``
    gives one month (``data.period``) of `source` at `hours` (UTC) without NaNs allowed, on
    the fine grid `grid` (``grid.hr``: resolution and lat/lon box edges in degrees) coarsened
    by `scale_factor`, at `levels` (hPa); further keywords (``local``, ``cds``, ``arco``,
    ``allow_nans``) go into ``data``. The default grid is 4 x 4 one-degree cells (centres
    41..44 N, -2..1 E), the default levels 1000, 850 and 500 hPa.
    """

    def build(
        source: str = "synthetic",
        *,
        month: str = "2021-02",
        hours: tuple[int, ...] = (0, 12),
        grid: dict[str, Any] | None = None,
        levels: tuple[float, ...] = (1000, 850, 500),
        scale_factor: int = 2,
        **data: Any,
    ) -> dict[str, Any]:
        hr = grid or {"resolution": 1.0, "lat": [40.5, 44.5], "lon": [-2.5, 1.5]}
        hr = {key: list(value) if isinstance(value, (list, tuple)) else value for key, value in hr.items()}
        return {
            "seed": 1,
            "data": {
                "source": source,
                "period": {"start": month, "end": month},
                "hours": list(hours),
                "allow_nans": False,
                **data,
            },
            "grid": {"hr": hr, "scale_factor": scale_factor},
            "levels": list(levels),
        }

    return build


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium (Debian's `chromium`, installed by .ci/run).

    Without it the dependent tests are skipped, except under ``CI=true``, where they fail.
    """
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed under CI=true (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the workflow with the train and val stores of config/test.yaml built (results/test/priors/);
    tests take it with `workflow_run.copy_run`."""
    repo = copy_workflow(tmp_path_factory.mktemp("stores"))
    snakemake(repo, *(f"results/test/priors/{split}.h5" for split in ("train", "val")), "--cores", "2",
              "--configfile", "config/test.yaml")
    return repo


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The SLURM tests that do not read the workflow run go first, in their order: while they wait on the
    cluster, the run that later tests read (fixture `run`) is built beside them (fixture `_run_started`)."""
    first = [item for item in items if item.get_closest_marker("slurm") and "run" not in item.fixturenames]
    items[:] = first + [item for item in items if item not in first]


@pytest.fixture(scope="session", autouse=True)
def _run_started(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """config/test.yaml's run with its declared downscaling (results/test/downscaled/march.nc), started at the
    session's start when a collected test reads it: (its folder, a copy of the workflow; the snakemake process)."""
    if not any("run" in item.fixturenames for item in request.session.items):
        yield None
        return
    repo = copy_workflow(tmp_path_factory.mktemp("wf"))
    args = ["--cores", "2", "all", "results/test/downscaled/march.nc", "--configfile", "config/test.yaml"]
    with open(repo / "snakemake.log", "w") as log:
        proc = subprocess.Popen([*SNAKEMAKE, *args], cwd=repo, env=snakemake_env(repo), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    yield repo, proc
    if proc.poll() is None:  # the session ended before a test waited for it: stop snakemake and its jobs
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def run(_run_started) -> Path:
    """The folder of config/test.yaml's completed run (see `_run_started`)."""
    repo, proc = _run_started
    if proc.wait() != 0:
        raise AssertionError(f"the run of config/test.yaml failed:\n{(repo / 'snakemake.log').read_text()[-6000:]}")
    return repo
