"""On a real local SLURM cluster: srun DDP, sbatch, and the workflow through profiles/slurm."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import xarray as xr

from ddp_worker import check_results, run_group
from geodiff.train.distributed import expand_hostlist
from slurm_cluster import FAST_POLLING, NO_CONDA, NO_RETRIES, ClusterInfo, clean_env
from test_scale_out import assert_same_model, geodiff, train_args
from test_scale_out import run as run_logged
from workflow_run import SNAKEMAKE, config_variant, copy_run

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
VENV_BIN = Path(sys.executable).parent
RESULTS = "results/test"  # results/{run_name}/ of config/test.yaml


def test_hostlist_matches_scontrol(slurm_cluster: ClusterInfo) -> None:
    spec = "node[1-2,5],gpu[08-10],login1"
    out = subprocess.run(
        ["scontrol", "show", "hostnames", spec], capture_output=True, text=True, check=True, timeout=30
    )
    assert expand_hostlist(spec) == out.stdout.split()


@pytest.mark.parametrize(
    ("layout", "local_ranks"),
    [(["-N", "2", "-n", "2"], [0, 0]), (["-N", "1", "-n", "2"], [0, 1])],
    ids=["two-nodes", "one-node"],
)
def test_ddp_srun(
    slurm_cluster: ClusterInfo, tmp_path: Path, layout: list[str], local_ranks: list[int]
) -> None:
    cmd = ["srun", *layout, "--time=5", sys.executable, str(WORKER), "--out", str(tmp_path)]
    proc = run_group(cmd, timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stdout[-4000:]
    records = check_results(tmp_path, "srun")
    assert [r["local_rank"] for r in records] == local_ranks
    # rank 0 runs on the first node of the step; its name was resolved to an address
    assert records[0]["master_addr"] == "127.0.0.1"


def test_sbatch_job_completes(slurm_cluster: ClusterInfo, tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --job-name=geodiff-test\n"
        "#SBATCH --ntasks=2\n"
        "#SBATCH --time=5\n"
        f"#SBATCH --output={tmp_path}/job-%j.out\n"
        "set -euo pipefail\n"
        'srun hostname > "$SLURM_SUBMIT_DIR/hosts.txt"\n'
        'echo "done $SLURM_JOB_ID"\n'
    )
    proc = subprocess.run(
        ["sbatch", "--parsable", str(script)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    state = wait_for_job(job_id, timeout=120)
    assert (tmp_path / f"job-{job_id}.out").read_text().strip() == f"done {job_id}"
    assert len((tmp_path / "hosts.txt").read_text().split()) == 2
    assert re.search(r"JobState=COMPLETED\b", state), state
    assert "ExitCode=0:0" in state


def wait_for_job(job_id: str, timeout: float) -> str:
    """Poll ``scontrol show job`` until the job leaves the queue's active states; return its record."""
    deadline = time.monotonic() + timeout
    record = ""
    while time.monotonic() < deadline:
        record = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        if not re.search(r"JobState=(PENDING|CONFIGURING|RUNNING|COMPLETING)\b", record):
            return record
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], check=False, timeout=30)
    raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s:\n{record}")


DDP_SNAKEFILE = """
rule ddp:
    output:
        expand("ddp/rank{{rank}}.json", rank=range(2)),
    resources:
        nodes=2,
        tasks=2,
        mpi="srun",
        mem_mb=1000,
        runtime=5,
    shell:
        "{{resources.mpi}} -n {{resources.tasks}} {python} {worker} --out ddp"
"""


def test_snakemake_mpi_rule_runs_ddp(slurm_cluster: ClusterInfo, tmp_path: Path) -> None:
    # what the training rules do: profiles/slurm submits the job, its shell starts the ranks with srun
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "Snakefile").write_text(DDP_SNAKEFILE.format(python=sys.executable, worker=WORKER))
    cmd = [str(VENV_BIN / "snakemake"), "--profile", "profiles/slurm", *FAST_POLLING, *NO_RETRIES, *NO_CONDA]
    proc = run_group(cmd, timeout=180, env=clean_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "SLURM jobid" in proc.stdout, proc.stdout[-3000:]
    records = check_results(tmp_path / "ddp", "srun")
    assert [r["local_rank"] for r in records] == [0, 0]  # one rank on each emulated node


@pytest.mark.slow
def test_workflow_on_slurm(slurm_cluster: ClusterInfo, run: Path, tmp_path: Path) -> None:
    """In a copy of the local run of config/test.yaml, the test month is fetched again and what the
    evaluation and the downscaling of it need is rebuilt as SLURM jobs through profiles/slurm. The
    trainings go through SLURM in the test below; the files equal the local run's."""
    work = copy_run(run, tmp_path / "repo")  # the local run: its models and Snakemake's records
    rebuilt = ["samples/test_ensemble.nc", "baselines/test_bicubic.nc", "baselines/test_deterministic.nc",
               "downscaled/march.nc"]
    cmd = [
        str(VENV_BIN / "snakemake"), *(f"{RESULTS}/{name}" for name in rebuilt),
        "--forcerun", f"{RESULTS}/raw/2001-03.nc",
        "--profile", "profiles/slurm", "--configfile", "config/test.yaml",
        *FAST_POLLING, *NO_RETRIES, *NO_CONDA,
    ]  # fmt: skip
    proc = run_group(cmd, timeout=420, env=clean_env(), cwd=work)
    assert proc.returncode == 0, proc.stdout[-6000:]
    submitted = re.findall(r"submitted with SLURM jobid \d+ \(log: \S+/slurm_logs/rule_(\w+)/", proc.stdout)
    assert sorted(set(submitted)) == ["baselines", "download", "downscale", "priors", "priors_month", "regrid",
                                      "sample"], proc.stdout[-3000:]
    for name in rebuilt:
        with xr.open_dataset(work / RESULTS / name) as on_slurm, xr.open_dataset(run / RESULTS / name) as local:
            xr.testing.assert_allclose(on_slurm, local)


@pytest.mark.slow
def test_two_slurm_nodes_train_the_model_of_one_process(slurm_cluster: ClusterInfo, stores: Path, tmp_path: Path) -> None:
    """The U-Net of config/test.yaml trained by `snakemake --profile profiles/slurm` as one job of 4 ranks on the
    2 emulated nodes equals the same training in one process (tolerance: tests/test_scale_out.py, which holds
    both stages to it under torchrun)."""
    repo = copy_run(stores, tmp_path)  # the stores on this machine (the cluster's shared file system)
    cfg = config_variant(repo, "two_nodes", [
        ("resources: {nodes: 1, tasks: 1, gpus: 0, cpus: 2, mem_mb: 2000, runtime: 10}",
         "resources: {nodes: 2, tasks: 4, gpus: 0, cpus: 1, mem_mb: 1000, runtime: 10}"),
        ("deterministic_steps: 40", "deterministic_steps: 12"),
    ])  # fmt: skip
    model = Path(RESULTS) / "models/deterministic.pt"
    cmd = [*SNAKEMAKE, str(model), "--profile", "profiles/slurm", *FAST_POLLING, *NO_RETRIES, *NO_CONDA,
           "--configfile", cfg]
    proc = run_group(cmd, timeout=600, env=clean_env(), cwd=repo)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert re.search(r"SLURM jobid \d+", proc.stdout), proc.stdout[-3000:]
    log = (repo / RESULTS / "logs/train_deterministic.log").read_text()
    joined = re.findall(r"rank (\d)/4 \(local \d, srun, node (\w+)\)", log)
    assert sorted(rank for rank, _ in joined) == list("0123") and {node for _, node in joined} == set(
        slurm_cluster.nodes), log[-3000:]

    state = torch.load(repo / model, weights_only=True)
    out = tmp_path / "one" / model.name
    out.parent.mkdir()
    args = train_args("deterministic", repo / RESULTS / "priors", out, state["config"], None)
    run_logged(geodiff(*args, "--checkpoint-every", "100", "--keep-checkpoints", "1"), out.with_suffix(".log"))
    assert_same_model(out, repo / model)
