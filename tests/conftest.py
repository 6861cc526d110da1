"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from slurm_cluster import ClusterInfo, SlurmUnavailable, ensure_cluster
from workflow_run import copy_workflow, snakemake


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
def run(tmp_path_factory):
    """config/test.yaml run to completion once, with its declared downscaling (results/test/downscaled/march.nc);
    the folder it ran in (a copy of the workflow)."""
    repo = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(repo, "--cores", "2", "all", "results/test/downscaled/march.nc", "--configfile", "config/test.yaml")
    return repo
