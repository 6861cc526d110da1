"""Snakemake told to stop (``kill``, ``kill -INT``, a scancel of its job) stops its training job with it.

A real run of the workflow on config/test.yaml with a training too long to finish: once
its ``geodiff train`` process runs, Snakemake alone gets the signal, and within seconds no
process of that training may be left, and Snakemake has exited. With profiles/slurm the
training is a SLURM job, which must be cancelled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from slurm_cluster import FAST_POLLING, NO_CONDA, NO_RETRIES, ClusterInfo, clean_env, job_processes
from workflow_run import SNAKEMAKE, config_variant, copy_run, snakemake

pytestmark = pytest.mark.slow

#: seconds the training may take to go once Snakemake got the signal
STOP_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def workflow(stores: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the workflow with its stores built, and a config whose training never ends on its own."""
    repo = copy_run(stores, tmp_path_factory.mktemp("interrupt"))
    cfg = config_variant(repo, "endless", [("deterministic_steps: 40", "deterministic_steps: 1000000")])
    return repo, cfg


def training_processes(root: psutil.Process) -> list[psutil.Process]:
    """Descendants of `root` that belong to a `geodiff train` job (its shell, Python and loader workers)."""
    found = []
    for proc in root.children(recursive=True):
        try:
            if "geodiff train" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_for_training(root: psutil.Process, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = training_processes(root)
        if any(p.cmdline()[1:4] == ["-m", "geodiff", "train"] for p in found if p.is_running()):
            return found
        assert root.is_running(), "snakemake exited before its training job started"
        time.sleep(0.2)
    raise AssertionError(f"no geodiff train process under snakemake after {timeout:.0f} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_training_stops_with_snakemake(workflow: tuple[Path, str], signum: signal.Signals) -> None:
    repo, cfg = workflow
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(repo)}
    cmd = [*SNAKEMAKE, "--cores", "2", "--configfile", cfg, "--until", "train_deterministic", "--rerun-incomplete"]
    # its own session: the signal reaches Snakemake alone, as `kill PID` does, not a terminal's process group
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    training: list[psutil.Process] = []
    try:
        training = wait_for_training(psutil.Process(proc.pid), timeout=120)
        time.sleep(1.0)  # a few optimiser steps
        os.kill(proc.pid, signum)
        _, alive = psutil.wait_procs(training, timeout=STOP_WITHIN_S)
        assert not alive, f"still running {STOP_WITHIN_S:.0f} s after {signum.name} to snakemake: {alive}"
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode != 0, out[-3000:]
    finally:  # whatever happened, leave no process behind and the folder unlocked for the next case
        for p in training:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        snakemake(repo, "--unlock", "--configfile", cfg, check=False)


def slurm_job_state(job_id: str) -> str:
    record = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return record.split("JobState=", 1)[1].split()[0] if "JobState=" in record else ""


@pytest.mark.slurm
def test_slurm_training_job_cancelled_with_snakemake(slurm_cluster: ClusterInfo, workflow: tuple[Path, str]) -> None:
    repo, cfg = workflow
    cmd = [*SNAKEMAKE, "--profile", "profiles/slurm", *FAST_POLLING, *NO_RETRIES, *NO_CONDA, "--configfile", cfg,
           "--until", "train_deterministic"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=repo, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    logs = repo / ".snakemake/slurm_logs/rule_train_deterministic"
    job = ""
    try:
        deadline = time.monotonic() + 180
        training: list[psutil.Process] = []
        while not training and time.monotonic() < deadline and proc.poll() is None:
            job = next((p.stem for p in logs.glob("*.log")), "")
            training = [psutil.Process(pid) for pid in job_processes(job)] if job else []
            training = [p for p in training if "geodiff train" in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert training, f"no running training job:\n{proc.communicate()[0][-3000:] if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(training, timeout=STOP_WITHIN_S)
        assert not alive, f"still running {STOP_WITHIN_S:.0f} s after SIGTERM to snakemake: {alive}"
        assert slurm_job_state(job) == "CANCELLED"
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        if job:
            subprocess.run(["scancel", job], check=False, timeout=30)
        snakemake(repo, "--unlock", "--configfile", cfg, check=False)
