"""Distributed launch: one entry point for a single process, torchrun, srun and mpirun.

:func:`init_distributed` reads the environment the launcher left behind, picks
the device and the backend (NCCL on CUDA, Gloo on CPU), joins the process group
and returns a :class:`DistContext`. Detection order, first match wins:

1. ``torchrun``: ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set (torchrun
   also sets ``MASTER_ADDR``/``MASTER_PORT``).
2. ``mpirun``: Open MPI's ``OMPI_COMM_WORLD_*`` or MPICH/Intel MPI's
   ``PMI_RANK``/``PMI_SIZE`` (outside a SLURM step). Checked before SLURM because
   an ``mpirun`` inside an ``sbatch`` job also inherits ``SLURM_*`` variables.
   When :mod:`mpi4py` imports, ranks come from ``MPI.COMM_WORLD`` and rank 0
   broadcasts its address and a free port.
3. ``srun``: ``SLURM_PROCID`` with ``SLURM_STEP_ID`` (a job step; the batch
   script of an ``sbatch`` job has ``SLURM_PROCID=0`` and the job's task count
   but no step id, and is treated as a single process). ``MASTER_ADDR`` is the
   first host of ``SLURM_STEP_NODELIST`` (where srun places rank 0), the port
   ``MASTER_PORT`` or one derived from the job and step ids.
4. otherwise a single process, no process group.

``MASTER_ADDR``/``MASTER_PORT`` in the environment always win over derived values.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import product
from typing import Literal

import torch
import torch.distributed as dist

from geodiff.device import resolve_device

log = logging.getLogger(__name__)

Launcher = Literal["single", "torchrun", "srun", "mpirun"]

#: Ports derived from a SLURM job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN),
#: below Linux's default ephemeral range (32768-60999) so they rarely collide.
PORT_BASE = 15000
PORT_SPAN = 15000
DEFAULT_PORT = 29500
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    ``device`` is a torch device string (``"cpu"``, ``"cuda:1"``); ``backend``
    is ``"nccl"`` or ``"gloo"``. ``master_addr``/``master_port`` are the
    rendezvous point of the process group (informative for a single process).
    """

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: Launcher
    device: str
    backend: str

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank was joined."""
        return self.world_size > 1


@dataclass(frozen=True)
class LaunchInfo:
    """What the launcher's environment says, before any communication."""

    launcher: Launcher
    rank: int
    local_rank: int
    world_size: int
    master_addr: str | None
    master_port: int | None


_BRACKET = re.compile(r"\[([^\]]*)\]")


def _split_top_level(spec: str) -> list[str]:
    """Split ``spec`` at commas that are not inside ``[...]``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {spec!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in host list {spec!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _expand_range_set(body: str, spec: str) -> list[str]:
    """Expand the inside of one bracket, e.g. ``01-03,7`` -> ``['01', '02', '03', '7']``.

    Zero padding follows the width of the lower bound, as SLURM does.
    """
    out: list[str] = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty range in host list {spec!r}")
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {item!r} in host list {spec!r}")
            width = len(lo)
            out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
        else:
            if not item.isdigit():
                raise ValueError(f"bad index {item!r} in host list {spec!r}")
            out.append(item)
    return out


def expand_hostlist(spec: str) -> list[str]:
    """Expand a SLURM compressed host list into host names, in order.

    ``"node[1-2,5]"`` -> ``["node1", "node2", "node5"]``; ``"gpu[01-02]"`` keeps the
    padding; several brackets in one name expand as a product
    (``"r[1-2]n[1-2]"`` -> ``r1n1, r1n2, r2n1, r2n2``); top-level commas separate
    names (``"a1,b[3-4]"``). Same result as ``scontrol show hostnames``.
    """
    hosts: list[str] = []
    for name in _split_top_level(spec):
        pieces = _BRACKET.split(name)
        # pieces alternates literal text and bracket bodies: lit, body, lit, body, lit
        choices: list[list[str]] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                choices.append([piece])
            else:
                choices.append(_expand_range_set(piece, spec))
        hosts.extend("".join(combo) for combo in product(*choices))
    return hosts


def port_from_job_id(job_id: str | int, step_id: str | int = 0) -> int:
    """A rendezvous port that all ranks of a SLURM job step derive alike, with no talking.

    Two steps of one job running at once get different ports.
    """
    return PORT_BASE + (int(job_id) * 7 + int(step_id)) % PORT_SPAN


def _int(env: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` present in ``env``, as an int."""
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def detect_launcher(env: Mapping[str, str]) -> Launcher:
    """Which launcher started this process, judged from its environment only."""
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return "torchrun"
    if "OMPI_COMM_WORLD_SIZE" in env:
        return "mpirun"
    in_slurm_step = "SLURM_PROCID" in env and "SLURM_STEP_ID" in env
    if in_slurm_step:
        return "srun"
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        return "mpirun"
    return "single"


def parse_launch_env(env: Mapping[str, str]) -> LaunchInfo:
    """Rank, local rank, world size and rendezvous point as the environment gives them.

    ``master_addr``/``master_port`` are ``None`` where the environment does not
    determine them (mpirun without ``MASTER_*``), to be settled by communication.
    """
    launcher = detect_launcher(env)
    env_addr = env.get("MASTER_ADDR") or None
    env_port = _int(env, "MASTER_PORT")
    if launcher == "torchrun":
        return LaunchInfo(
            launcher,
            rank=int(env["RANK"]),
            local_rank=int(env["LOCAL_RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env_addr or LOOPBACK,
            master_port=DEFAULT_PORT if env_port is None else env_port,
        )
    if launcher == "mpirun":
        rank = _int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK") or 0
        size = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE") or 1
        local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
        local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")
        addr = env_addr
        if addr is None and local_size is not None and local_size == size:
            addr = LOOPBACK  # every rank on this node
        return LaunchInfo(
            launcher,
            rank=rank,
            local_rank=local if local is not None else 0,
            world_size=size,
            master_addr=addr,
            master_port=env_port,
        )
    if launcher == "srun":
        size = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1
        addr = env_addr
        if addr is None:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
            hosts = expand_hostlist(nodelist) if nodelist else []
            addr = hosts[0] if hosts else LOOPBACK
        port = env_port
        if port is None:
            job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
            port = port_from_job_id(job_id, env.get("SLURM_STEP_ID", 0)) if job_id else DEFAULT_PORT
        return LaunchInfo(
            launcher,
            rank=int(env["SLURM_PROCID"]),
            local_rank=_int(env, "SLURM_LOCALID") or 0,
            world_size=size,
            master_addr=addr,
            master_port=port,
        )
    ntasks = _int(env, "SLURM_NTASKS")
    if ntasks is not None and ntasks > 1:
        log.warning(
            "SLURM allocation has %d tasks but this process was not started by srun; "
            "running as a single process (start the ranks with `srun`)",
            ntasks,
        )
    return LaunchInfo("single", 0, 0, 1, env_addr or LOOPBACK, DEFAULT_PORT if env_port is None else env_port)


def _free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _host_address() -> str:
    """This host's address as other nodes reach it (its name, resolved)."""
    name = socket.getfqdn()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name


def _settle_with_mpi(info: LaunchInfo) -> LaunchInfo:
    """Use mpi4py, when it imports, for ranks and to broadcast rank 0's address and a free port."""
    try:
        from mpi4py import MPI
    except ImportError:
        if info.master_addr is None:
            raise RuntimeError(
                "mpirun across nodes needs mpi4py or MASTER_ADDR (and MASTER_PORT) "
                "exported to all ranks (mpirun -x MASTER_ADDR -x MASTER_PORT)"
            ) from None
        if info.master_port is None:
            return LaunchInfo(
                info.launcher, info.rank, info.local_rank, info.world_size, info.master_addr, DEFAULT_PORT
            )
        return info
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size != info.world_size:
        raise RuntimeError(
            f"mpirun started {info.world_size} ranks but mpi4py sees {size}: mpi4py is built "
            "against a different MPI than the mpirun in use (check `which mpirun` and mpi4py.get_config())"
        )
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank = node_comm.Get_rank()
    all_local = node_comm.Get_size() == size
    node_comm.Free()
    proposal: tuple[str, int] | None = None
    if rank == 0:
        addr = info.master_addr or (LOOPBACK if all_local else _host_address())
        proposal = (addr, _free_port() if info.master_port is None else info.master_port)
    addr, port = comm.bcast(proposal, root=0)
    return LaunchInfo("mpirun", rank, local_rank, size, addr, port)


def resolve_node_address(host: str) -> str:
    """An address for a SLURM node name: the name when it resolves, else the node's ``NodeAddr``.

    Node names need not be DNS names (``NodeName=node1 NodeAddr=10.0.0.5``);
    ``scontrol show node`` knows the address.
    """
    try:
        socket.getaddrinfo(host, None)
        return host
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", host], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"cannot resolve SLURM node {host!r} and scontrol failed: {err}") from err
    match = re.search(r"NodeAddr=(\S+)", out)
    if match is None:
        raise RuntimeError(f"cannot resolve SLURM node {host!r}: no NodeAddr in scontrol output")
    return match.group(1)


def init_distributed(device: str = "auto") -> DistContext:
    """Detect the launcher, choose device and backend, join the process group.

    With one rank no process group is created. Sets ``MASTER_ADDR``,
    ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in
    ``os.environ`` so that libraries reading them see the same view.
    """
    info = parse_launch_env(os.environ)
    if info.launcher == "mpirun":
        info = _settle_with_mpi(info)
    dev = resolve_device(device, info.local_rank)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    addr = info.master_addr or LOOPBACK
    port = DEFAULT_PORT if info.master_port is None else info.master_port
    if info.launcher == "srun" and info.world_size > 1 and "MASTER_ADDR" not in os.environ:
        addr = resolve_node_address(addr)
    ctx = DistContext(
        rank=info.rank,
        local_rank=info.local_rank,
        world_size=info.world_size,
        master_addr=addr,
        master_port=port,
        launcher=info.launcher,
        device=dev,
        backend=backend,
    )
    if ctx.world_size > 1:
        os.environ.update(
            MASTER_ADDR=addr,
            MASTER_PORT=str(port),
            RANK=str(ctx.rank),
            WORLD_SIZE=str(ctx.world_size),
            LOCAL_RANK=str(ctx.local_rank),
        )
        if not dist.is_initialized():
            log.info(
                "rank %d/%d (local %d, %s, node %s) joining %s process group at %s:%d on %s",
                ctx.rank,
                ctx.world_size,
                ctx.local_rank,
                ctx.launcher,
                os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
                backend,
                addr,
                port,
                dev,
            )
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{addr}:{port}",
                rank=ctx.rank,
                world_size=ctx.world_size,
            )
    else:
        log.info("single process (%s) on %s", ctx.launcher, dev)
    return ctx


def node_env(nodes: int, node_rank: int, per_node: int, local_rank: int, addr: str | None,
             port: int | None) -> dict[str, str]:
    """The torchrun-style environment of process `local_rank` on node `node_rank` of a manual launch.

    ``geodiff train --nodes N --nr R --gpus G`` (the seed's command line) starts G processes on
    each of N nodes: global rank R·G + local rank, world size N·G. The rendezvous point is
    `addr`/`port`, else ``MASTER_ADDR``/``MASTER_PORT`` of the environment, else this host
    (one node only) and port 29500.
    """
    if not 0 <= node_rank < nodes:
        raise ValueError(f"--nr {node_rank} is not a node of --nodes {nodes} (0 to {nodes - 1})")
    addr = addr or os.environ.get("MASTER_ADDR")
    if addr is None:
        if nodes > 1:
            raise ValueError(f"--nodes {nodes}: give node 0's address with --master-addr (or MASTER_ADDR), "
                             "the same on every node")
        addr = LOOPBACK
    port = port or _int(os.environ, "MASTER_PORT") or DEFAULT_PORT
    return {"MASTER_ADDR": addr, "MASTER_PORT": str(port), "RANK": str(node_rank * per_node + local_rank),
            "WORLD_SIZE": str(nodes * per_node), "LOCAL_RANK": str(local_rank)}


def _node_process(local_rank: int, fn: Callable[[], object], envs: list[dict[str, str]]) -> None:
    """One process of :func:`launch_node`: its environment, logging, then `fn`."""
    from geodiff.logs import setup_logging

    os.environ.update(envs[local_rank])
    setup_logging()
    fn()


def launch_node(fn: Callable[[], object], nodes: int, node_rank: int, per_node: int, addr: str | None = None,
                port: int | None = None) -> None:
    """Run `fn` (picklable) in `per_node` processes of this node, ranks as :func:`node_env` gives them.

    Each process finds the torchrun-style variables and :func:`init_distributed` joins the group.
    """
    envs = [node_env(nodes, node_rank, per_node, local, addr, port) for local in range(per_node)]
    log.info("node %d of %d: starting ranks %s of %s (rendezvous %s:%s)", node_rank, nodes,
             [int(e["RANK"]) for e in envs], envs[0]["WORLD_SIZE"], envs[0]["MASTER_ADDR"], envs[0]["MASTER_PORT"])
    torch.multiprocessing.spawn(_node_process, args=(fn, envs), nprocs=per_node)


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main(ctx: DistContext) -> bool:
    """True on global rank 0: the process that logs, shows progress and writes files."""
    return ctx.rank == 0
