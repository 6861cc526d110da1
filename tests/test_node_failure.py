"""A node fails under a training job on the local two-node SLURM cluster; the run still completes.

The training job's node dies mid-run (its slurmd and the job's processes are SIGKILLed);
after SlurmdTimeout the controller marks the node DOWN and the job NODE_FAIL,
profiles/slurm's `retries` resubmits it, the new job (on the other node) resumes from the
last checkpoint, and Snakemake finishes with the model. The failed node is brought back
afterwards, so later tests have both nodes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from geodiff.train.checkpoints import checkpoints

from slurm_cluster import (
    FAST_POLLING,
    NO_CONDA,
    SLURMD_TIMEOUT_S,
    ClusterInfo,
    clean_env,
    fail_node,
    start_node,
    wait_healthy,
)
from workflow_run import SNAKEMAKE, config_variant, copy_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 120
CHECKPOINT_EVERY = 10
RUN = Path("results/test")  # results/{run_name}/ of config/test.yaml
MODEL = RUN / "models/deterministic.pt"
JOB_LOGS = Path(".snakemake/slurm_logs/rule_train_deterministic")


def wait_for(what: str, condition, timeout: float, proc: subprocess.Popen, interval: float = 0.2):
    """Poll `condition()` until it returns something truthy; fail naming `what` on timeout or if Snakemake exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{proc.communicate()[0][-4000:]}")  # fmt: skip
        time.sleep(interval)
    raise AssertionError(f"no {what} after {timeout:.0f} s")


def job_field(job_id: str, field: str) -> str:
    record = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    found = re.search(rf"\b{field}=(\S+)", record)
    return found.group(1) if found else ""


def test_training_survives_a_node_failure(slurm_cluster: ClusterInfo, stores: Path, tmp_path: Path) -> None:
    repo = copy_run(stores, tmp_path)  # the stores on this machine (the shared file system of the cluster)
    cfg = config_variant(repo, "node_failure", [
        ("deterministic_steps: 40", f"deterministic_steps: {STEPS}"),
        ("checkpoint_every: 20", f"checkpoint_every: {CHECKPOINT_EVERY}"),
    ])  # fmt: skip
    cmd = [*SNAKEMAKE, str(MODEL), "--profile", "profiles/slurm", *FAST_POLLING, *NO_CONDA, "--configfile", cfg]
    proc = subprocess.Popen(cmd, cwd=repo, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    node = ""
    try:
        first = wait_for("training job", lambda: sorted(p.stem for p in (repo / JOB_LOGS).glob("*.log")), 180, proc)[0]
        checkpoint = repo / f"{MODEL}.ckpt"
        wait_for("checkpoint", checkpoint.exists, 180, proc)
        node = job_field(first, "NodeList")
        assert job_field(first, "JobState") == "RUNNING" and node in slurm_cluster.nodes, (first, node)
        fail_node(node, first)
        wait_for("NODE_FAIL", lambda: job_field(first, "JobState") == "NODE_FAIL", SLURMD_TIMEOUT_S + 60, proc, 1.0)
        start_node(node)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-6000:]
    finally:
        if proc.poll() is None:  # SIGTERM: Snakemake cancels its SLURM jobs
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
        if node:
            start_node(node)
            wait_healthy(slurm_cluster.nodes, timeout=60)

    jobs = re.findall(r"submitted with SLURM jobid (\d+)", out)
    assert len(jobs) == 2 and jobs[0] == first, out[-6000:]  # the failed job, then the one resubmission
    assert job_field(jobs[1], "JobState") == "COMPLETED"
    log = (repo / RUN / "logs/train_deterministic.log").read_text()
    resumed = re.search(r"resumed deterministic from step (\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) < STEPS and int(resumed.group(1)) % CHECKPOINT_EVERY == 0, log[-3000:]
    model = torch.load(repo / MODEL, weights_only=True)
    assert model["step"] == STEPS
    assert checkpoints(checkpoint)[-1][0] == STEPS  # kept after the run (geodiff evaluate --epoch_num)
