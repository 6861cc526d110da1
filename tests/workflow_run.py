"""Running the workflow in a temporary copy of the repository, and reading what Snakemake plans."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW_FILES = ["Snakefile", "workflow", "scripts", "config", "envs", "profiles"]


def copy_workflow(dest: Path) -> Path:
    """The workflow's files copied into `dest` (which becomes the working directory of a run)."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def copy_run(src: Path, dest: Path) -> Path:
    """The workflow copy `src`, its results and Snakemake's records of them, copied into `dest`: what was
    built there stays up to date."""
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    return dest


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`snakemake *args` in `cwd`, with this interpreter's environment only."""
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=snakemake_env(cwd))
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def snakemake_env(cwd: Path) -> dict[str, str]:
    """This interpreter's programs first, `cwd` as home; OpenMP threads sleep while they wait, so that a
    run beside other tests does not hold cores in spin loops."""
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(cwd), "OMP_WAIT_POLICY": "PASSIVE"}


def planned_jobs(cwd: Path, *args: str) -> list[dict[str, str]]:
    """The jobs a dry run plans: for each, its rule and the text of its fields (output, resources ...)."""
    proc = snakemake(cwd, "-n", *args)
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", proc.stdout + proc.stderr, flags=re.M):
        rule = re.search(r"^(?:localrule|rule) (\w+):", block, flags=re.M)
        if rule:
            fields = dict(re.findall(r"^\s+(\w+): (.*)$", block, flags=re.M))
            jobs.append({"rule": rule.group(1), **fields})
    return jobs


def config_variant(repo: Path, name: str, replacements: list[tuple[str, str]], base: str = "test.yaml") -> str:
    """Write config/<name>.yaml as config/`base` with the text replacements (old, new); its path."""
    text = (repo / "config" / base).read_text()
    for old, new in replacements:
        assert old in text, f"{old!r} not in {base}"
        text = text.replace(old, new)
    (repo / "config" / f"{name}.yaml").write_text(text)
    return f"config/{name}.yaml"


def cf_problems(path: Path) -> list[str]:
    """What the IOOS compliance checker (CF 1.8) would have corrected in a NetCDF file (empty: nothing)."""
    checker = Path(sys.executable).parent / "compliance-checker"
    proc = subprocess.run([str(checker), "--test", "cf:1.8", "--format", "json", "-o", "-", str(path)],
                          capture_output=True, text=True)
    (result,) = json.loads(proc.stdout).values()
    problems = [msg for item in result["all_priorities"] for msg in item["msgs"]]
    return problems or ([] if result["scored_points"] == result["possible_points"] else ["points lost without a message"])
