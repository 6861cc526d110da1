"""GPU jobs on SLURM, read from dry runs of the workflow under profiles/slurm (no SLURM needed).

Every job that runs a model on a GPU (training, sampling, U-Net baselines) asks for one and
is given ``--device cuda``; every other job asks for none. ``train.resources`` becomes the
training jobs' sbatch options one to one: checked on the sbatch command line that the
installed snakemake-executor-plugin-slurm builds from the planned resources. The profile
deploys each rule's conda env, with PyTorch's CUDA build for the jobs of a GPU run; conda is
not installed here, so a stand-in answers Snakemake's checks of it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

from workflow_run import ROOT, SNAKEMAKE, copy_workflow

GPU_RULES = {"train_deterministic", "train_residual", "train_ablation", "sample"}
"""Rules that run a model on a GPU in a GPU run (and baselines of a model: `runs_on_gpu`)."""
INTERPOLATIONS = {"bicubic", "bilinear"}
TWO_NODES = "  # resources: {nodes: 2"
"""The start of config/era5.yaml's commented example of 2 nodes x 4 GPUs."""

FAKE_CONDA = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls.log"
case "$*" in
  "info --json") echo '{"conda_prefix": "/nonexistent", "platform": "linux-64"}' ;;
  "--version") echo "conda 24.11.3" ;;
  *) echo '{"get": {"channel_priority": "strict"}}' ;;
esac
"""
"""What Snakemake asks of conda before a dry run with conda envs: its info, version and channel priority."""


def runs_on_gpu(job: dict) -> bool:
    return job["rule"] in GPU_RULES or (
        job["rule"] == "baselines" and job["wildcards"]["baseline"] not in INTERPOLATIONS
    )


def fields(block: str, name: str) -> dict[str, str | int]:
    """A job's ``name: a=1, b=x y`` line of a dry run (resources, wildcards) as {"a": 1, "b": "x y"}."""
    line = re.search(rf"^\s+{name}: (.*)$", block, flags=re.M)
    pairs = (item.split("=", 1) for item in (line.group(1) if line else "").split(", ") if "=" in item)
    return {key: int(value) if value.isdigit() else value for key, value in pairs}


def slurm_dry_run(repo: Path, configfile: str) -> SimpleNamespace:
    """`snakemake -n --profile profiles/slurm`: its jobs, its output and the calls to conda."""
    bin_dir = repo / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "conda").write_text(FAKE_CONDA)
    (bin_dir / "conda").chmod(0o755)
    (bin_dir / "calls.log").unlink(missing_ok=True)
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(repo)}
    proc = subprocess.run([*SNAKEMAKE, "-n", "--profile", "profiles/slurm", "--configfile", configfile],
                          cwd=repo, env=env, capture_output=True, text=True)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", output, flags=re.M):
        rule = re.search(r"^(?:localrule|rule) (\w+):", block, flags=re.M)
        if rule:
            shell = re.search(r"^Shell command: (.*)$", block, flags=re.M)
            jobs.append({
                "rule": rule.group(1),
                "resources": fields(block, "resources"),
                "wildcards": fields(block, "wildcards"),
                "shell": shell.group(1) if shell else "",
            })  # fmt: skip
    calls = (bin_dir / "calls.log").read_text() if (bin_dir / "calls.log").exists() else ""
    return SimpleNamespace(jobs=jobs, output=output, conda_calls=calls)


def two_nodes_config(repo: Path) -> str:
    """config/era5.yaml with its commented 2 x 4 GPU example as train.resources, and device auto."""
    lines = (repo / "config/era5.yaml").read_text().splitlines(keepends=True)
    example = lines.pop(next(i for i, line in enumerate(lines) if line.startswith(TWO_NODES)))
    active = next(i for i, line in enumerate(lines) if line.startswith("  resources: {"))
    lines[active] = example.replace("# ", "", 1)
    text = "".join(lines).replace("  device: cuda\n", "  device: auto\n")
    (repo / "config/era5_2x4.yaml").write_text(text)
    return "config/era5_2x4.yaml"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.fixture(scope="module")
def era5(repo) -> SimpleNamespace:
    return slurm_dry_run(repo, "config/era5.yaml")


@pytest.fixture(scope="module")
def two_nodes(repo) -> SimpleNamespace:
    return slurm_dry_run(repo, two_nodes_config(repo))


def test_profile_deploys_conda_envs(era5):
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile.get("software-deployment-method") == "conda"
    assert "info --json" in era5.conda_calls, "the dry run under profiles/slurm never asked conda"


@pytest.mark.parametrize("run", ["era5", "two_nodes"])
def test_model_jobs_get_a_gpu_and_cuda_others_none(run, request):
    jobs = request.getfixturevalue(run).jobs
    on_gpu = [job for job in jobs if runs_on_gpu(job)]
    assert {job["rule"] for job in on_gpu} == GPU_RULES | {"baselines"}, sorted({job["rule"] for job in jobs})
    for job in on_gpu:
        resources = job["resources"]
        assert resources.get("gpu", 0) >= 1 and resources.get("device") == "cuda", job
        if job["rule"].startswith("train_"):
            assert " --device cuda " in job["shell"], job["shell"]
    for job in jobs:
        if not runs_on_gpu(job):
            assert job["resources"].get("gpu", 0) == 0 and job["resources"].get("device") != "cuda", job


def test_a_gpu_run_builds_the_cuda_env(era5):
    assert "Conda environment envs/train-cuda.yaml will be created" in era5.output
    assert "Conda environment envs/train.yaml will be created" not in era5.output


def test_a_cpu_run_asks_for_no_gpu_and_builds_no_cuda_env(repo):
    cpu = slurm_dry_run(repo, "config/test.yaml")
    assert {"train_deterministic", "sample"} <= {job["rule"] for job in cpu.jobs}
    for job in cpu.jobs:
        assert job["resources"].get("gpu", 0) == 0 and job["resources"].get("device") != "cuda", job
    assert "Conda environment envs/train.yaml will be created" in cpu.output
    assert "train-cuda.yaml" not in cpu.output


class PlannedJob:
    """What the SLURM plugin reads of a job to submit it: its resources (by key or attribute) and threads."""

    def __init__(self, resources: dict):
        self.resources = SimpleNamespace(**resources, get=resources.get)
        self.threads = 1


def sbatch_options(job: dict) -> list[str]:
    """The sbatch command line the installed snakemake-executor-plugin-slurm builds for a planned job."""
    planned = PlannedJob(job["resources"])
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": job["rule"], "account": "",
              "partition": "", "workdir": ""}  # fmt: skip
    return (get_submit_command(planned, params) + set_gres_string(planned)).split()


def test_two_nodes_of_four_gpus_map_one_to_one_onto_sbatch(two_nodes):
    train = next(job for job in two_nodes.jobs if job["rule"] == "train_deterministic")
    resources = train["resources"]
    assert (resources["nodes"], resources["tasks_per_node"], resources["gpu"]) == (2, 4, 8)
    assert resources["mpi"] == "srun" and train["shell"].startswith("srun -n 8 python -m geodiff train ")
    options = sbatch_options(train)
    for option in ["--nodes=2", "--ntasks-per-node=4", "--gpus=8", "--cpus-per-task=8"]:
        assert option in options, options
    assert options[options.index("--mem") + 1] == "256000" and options[options.index("-t") + 1] == "2880", options
    assert not [o for o in options if o.startswith(("--ntasks=", "--ntasks-per-gpu"))], options


def test_one_gpu_for_sampling(era5):
    sample = next(job for job in era5.jobs if job["rule"] == "sample")
    options = sbatch_options(sample)
    assert "--gpus=1" in options and not [o for o in options if o.startswith("--nodes")], options
