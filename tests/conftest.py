"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest

from slurm_cluster import ClusterInfo, SlurmUnavailable, ensure_cluster


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
