"""A real, local SLURM cluster for the test suite.

One ``slurmctld`` and one ``slurmd`` per emulated node (Debian's slurmd is built
with multiple-slurmd support: ``slurmd -N node1``), all on this machine, talking
through ``munged``. The configuration goes to ``/etc/slurm/slurm.conf`` because
Snakemake's job step strips ``SLURM_CONF`` inside jobs, so only the default path
is seen everywhere.

:func:`ensure_cluster` is idempotent: a cluster that already answers ``sinfo``
with all its nodes usable is reused as it is; otherwise the daemons are (re)started.
A ``slurm.conf`` that this module did not write is never overwritten.

Usable from the shell too (``.ci/start-slurm.sh`` does this)::

    python tests/slurm_cluster.py start [--nodes 2]
    python tests/slurm_cluster.py stop
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
STATE_DIR = Path("/var/lib/geodiff-slurm")
RUN_DIR = Path("/run/geodiff-slurm")
LOG_DIR = Path("/var/log/geodiff-slurm")
MARKER = "# written by geodiff tests/slurm_cluster.py"
PARTITION = "debug"
CLUSTER_NAME = "geodiff"
CTLD_PORT = 6817
FIRST_SLURMD_PORT = 6830
CPUS_PER_NODE = 2
#: seconds without an answer from a slurmd before its node is DOWN: short, so a node-failure
#: test waits little, yet far above the few seconds a busy 2-core machine may delay a ping
SLURMD_TIMEOUT_S = 20

REQUIRED_BINARIES = (
    "munged",
    "munge",
    "unmunge",
    "slurmctld",
    "slurmd",
    "slurmstepd",
    "sinfo",
    "squeue",
    "srun",
    "sbatch",
    "scontrol",
)
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be had on this machine (binaries missing, not root, foreign config)."""


class SlurmStartError(RuntimeError):
    """SLURM is installed but the local cluster did not come up: a real failure."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the tests need to know about the running cluster."""

    nodes: tuple[str, ...]
    partition: str
    cpus_per_node: int
    conf: Path


def node_names(n_nodes: int) -> tuple[str, ...]:
    """Names of the emulated nodes: ``node1`` .. ``node<n>``."""
    return tuple(f"node{i}" for i in range(1, n_nodes + 1))


def missing_binaries() -> list[str]:
    """The SLURM/munge programs this module needs that are not on PATH."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=path) is None]


def _which(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise SlurmUnavailable(f"{name} not found on PATH")
    return found


def _run(args: list[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output."""
    log.debug("running %s", " ".join(args))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


def real_memory_mb(n_nodes: int) -> int:
    """RealMemory (MB) per emulated node: 3/4 of this machine's memory split over the nodes.

    Every slurmd reports the whole machine, so any value up to MemTotal passes slurmd's
    check; the split keeps the advertised total honest.
    """
    total_kb = 0
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total_kb = int(line.split()[1])
                break
    return max(500, int(total_kb / 1024 * 0.75 / n_nodes))


def render_conf(n_nodes: int, hostname: str | None = None) -> str:
    """The text of slurm.conf for an ``n_nodes`` emulated-node cluster on this machine."""
    host = hostname or socket.gethostname().split(".")[0]
    mem = real_memory_mb(n_nodes)
    lines = [
        MARKER,
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CryptoType=crypto/munge",
        f"SlurmctldPort={CTLD_PORT}",
        f"StateSaveLocation={STATE_DIR}/ctld",
        f"SlurmdSpoolDir={STATE_DIR}/slurmd-%n",
        f"SlurmctldPidFile={RUN_DIR}/slurmctld.pid",
        f"SlurmdPidFile={RUN_DIR}/slurmd-%n.pid",
        f"SlurmctldLogFile={LOG_DIR}/slurmctld.log",
        f"SlurmdLogFile={LOG_DIR}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "MinJobAge=300",
        "InactiveLimit=0",
        "KillWait=5",
        "SlurmctldTimeout=60",
        # a node whose slurmd stops answering is DOWN (its jobs NODE_FAIL) after SLURMD_TIMEOUT_S
        f"SlurmdTimeout={SLURMD_TIMEOUT_S}",
        "MessageTimeout=20",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
    ]
    for i, name in enumerate(node_names(n_nodes)):
        lines.append(
            f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 "
            f"Port={FIRST_SLURMD_PORT + i} CPUs={CPUS_PER_NODE} RealMemory={mem} State=UNKNOWN"
        )
    lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _ctld_listening() -> bool:
    """True when something accepts connections on slurmctld's port (sinfo takes ~15 s to give up)."""
    try:
        with socket.create_connection(("127.0.0.1", CTLD_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def node_states() -> dict[str, str]:
    """Node name -> state (lower case, flags like ``*`` or ``~`` stripped) from ``sinfo``.

    Empty when the controller does not answer.
    """
    if not _ctld_listening():
        return {}
    try:
        out = _run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15, check=False)
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return {}
    if out.returncode != 0:
        return {}
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1].lower().rstrip("*~#!%$@^-+")
    return states


def is_healthy(nodes: tuple[str, ...]) -> bool:
    """True when the controller answers and every node in ``nodes`` can run jobs."""
    states = node_states()
    return all(states.get(n) in USABLE_STATES for n in nodes)


def _munge_works() -> bool:
    try:
        cred = _run(["munge", "-n"], timeout=10, check=False)
        if cred.returncode != 0:
            return False
        back = subprocess.run(
            ["unmunge"], input=cred.stdout, capture_output=True, text=True, timeout=10, check=False
        )
    except (subprocess.TimeoutExpired, FileNotFoundError):
        return False
    return back.returncode == 0


def ensure_munge() -> None:
    """Start munged (with a key, created if absent) unless credentials already round-trip."""
    if _munge_works():
        return
    if not MUNGE_KEY.exists():
        log.info("creating %s", MUNGE_KEY)
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        _run([_which("mungekey"), "--create", f"--keyfile={MUNGE_KEY}"])
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o600)
    for d in (Path("/run/munge"), Path("/var/lib/munge"), Path("/var/log/munge")):
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    log.info("starting munged")
    _run(["runuser", "-u", "munge", "--", _which("munged")], timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _munge_works():
            return
        time.sleep(0.2)
    raise SlurmStartError("munged started but munge -n | unmunge fails")


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def stop_cluster() -> None:
    """Stop the slurmctld/slurmd daemons this module started (found by their pid files)."""
    for pidfile in sorted(RUN_DIR.glob("*.pid")):
        pid = _pid_alive(pidfile)
        if pid is None:
            continue
        log.info("stopping pid %d (%s)", pid, pidfile.name)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _pid_alive(pidfile) is not None:
            time.sleep(0.1)
        if _pid_alive(pidfile) is not None:
            os.kill(pid, signal.SIGKILL)


def wait_healthy(nodes: tuple[str, ...], timeout: float) -> None:
    """Wait until every node in ``nodes`` can run jobs, resuming those that are down or drained."""
    deadline = time.monotonic() + timeout
    resumed = False
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = node_states()
        if all(states.get(n) in USABLE_STATES for n in nodes):
            return
        bad = [n for n in nodes if states.get(n, "").startswith(("down", "drain", "fail"))]
        if bad and not resumed:
            log.info("resuming nodes %s (states %s)", bad, states)
            _run(["scontrol", "update", f"NodeName={','.join(bad)}", "State=RESUME"], check=False)
            resumed = True
        time.sleep(0.3)
    raise SlurmStartError(f"SLURM nodes not idle after {timeout:.0f} s: {states}; logs in {LOG_DIR}")


def ensure_cluster(n_nodes: int = 2, timeout: float = 60.0) -> ClusterInfo:
    """Have a healthy local SLURM cluster with ``n_nodes`` emulated nodes; start it if needed.

    Raises :class:`SlurmUnavailable` when SLURM/munge are not installed, when not
    root, or when ``/etc/slurm/slurm.conf`` belongs to someone else;
    :class:`SlurmStartError` when the daemons do not come up within ``timeout`` seconds.
    """
    missing = missing_binaries()
    if missing:
        raise SlurmUnavailable(f"missing {', '.join(missing)}; install with: apt-get install slurm-wlm munge")
    nodes = node_names(n_nodes)
    info = ClusterInfo(nodes=nodes, partition=PARTITION, cpus_per_node=CPUS_PER_NODE, conf=SLURM_CONF)
    wanted = render_conf(n_nodes)
    current = SLURM_CONF.read_text() if SLURM_CONF.exists() else None
    if current is not None and not current.startswith(MARKER):
        raise SlurmUnavailable(f"{SLURM_CONF} was not written by the test suite; not touching it")
    if current == wanted and _munge_works() and is_healthy(nodes):
        log.info("reusing running SLURM cluster (%s)", ", ".join(nodes))
        return info
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting the local SLURM cluster needs root")

    ensure_munge()
    stop_cluster()
    for d in (STATE_DIR / "ctld", RUN_DIR, LOG_DIR, *(STATE_DIR / f"slurmd-{n}" for n in nodes)):
        d.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    tmp = SLURM_CONF.with_suffix(".conf.tmp")
    tmp.write_text(wanted)
    os.replace(tmp, SLURM_CONF)
    log.info("wrote %s; starting slurmctld and %d slurmd", SLURM_CONF, n_nodes)
    # -c: start clean, forget jobs/nodes from an earlier configuration
    _run([_which("slurmctld"), "-c"], timeout=30)
    for name in nodes:
        _run([_which("slurmd"), "-N", name], timeout=30)
    wait_healthy(nodes, timeout)
    log.info("SLURM cluster up: %s", node_states())
    return info


def job_processes(job_id: str) -> list[int]:
    """Process ids of SLURM job ``job_id`` on this machine: its ``slurmstepd`` and all they started."""
    children: dict[int, list[int]] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
        if cmdline.startswith(f"slurmstepd: [{job_id}.".encode()):
            roots.append(int(entry.name))
    found = []
    while roots:
        pid = roots.pop()
        found.append(pid)
        roots.extend(children.get(pid, []))
    return found


def fail_node(node: str, job_id: str) -> list[int]:
    """A node failure, as far as one machine can stage it: ``node``'s slurmd and every process of
    ``job_id`` (running there) die at once, by SIGKILL. The controller sees it after SlurmdTimeout.

    Returns the process ids killed.
    """
    slurmd = _pid_alive(RUN_DIR / f"slurmd-{node}.pid")
    if slurmd is None:
        raise SlurmStartError(f"slurmd of {node} is not running")
    pids = [slurmd, *job_processes(job_id)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log.info("failed node %s: killed slurmd and job %s (pids %s)", node, job_id, pids)
    return pids


def start_node(node: str) -> None:
    """Start ``node``'s slurmd unless it runs (a node back from a failure returns to service)."""
    if _pid_alive(RUN_DIR / f"slurmd-{node}.pid") is None:
        _run([_which("slurmd"), "-N", node], timeout=30)


def clean_env() -> dict[str, str]:
    """This environment minus launcher variables, with this Python's programs first on PATH.

    Jobs inherit it (sbatch --export=ALL), so they find this Python, geodiff and snakemake.
    Their OpenMP threads sleep rather than spin while they wait: the emulated nodes share this
    machine's cores, so two jobs' threads take turns on one core, where a spinning thread holds
    the core its partner needs (tests/test_slurm.py::test_workflow_on_slurm: 75 s, spinning 105 s).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "OMPI_", "PMI_", "PMIX_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


#: Snakemake options for this cluster, which answers at once: poll it often (the profile's
#: defaults suit real clusters).
FAST_POLLING = [
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "2",
    "--latency-wait", "5",
]  # fmt: skip
#: ... and, in tests of what should not fail, no resubmission of a failed job
NO_RETRIES = ["--retries", "0"]
#: profiles/slurm deploys the rules' conda envs; this machine has no conda, so workflow runs here
#: take the environment they run in (no rule has `envmodules:`, so nothing is deployed)
NO_CONDA = ["--sdm", "env-modules"]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``start [--nodes N]``, ``stop``, ``status``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.action == "start":
        ensure_cluster(args.nodes)
    elif args.action == "stop":
        stop_cluster()
    else:
        states = node_states()
        log.info("nodes: %s", states or "controller not answering")
        return 0 if states else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
