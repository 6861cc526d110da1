"""DDP worker for the launcher tests: start under torchrun, mpirun or srun.

Each rank builds a tiny model from a *rank-dependent* seed (so only DDP's
initial broadcast makes the replicas agree), trains it for a few SGD steps on
rank-dependent data, and writes ``rank<r>.json`` into ``--out`` with its
context and final parameters. :func:`reference_params` replays the same
training in one process (mean of the ranks' gradients), which the tests compare
against: equal replicas *and* a correct all-reduce.

    python tests/ddp_worker.py --out DIR [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from geodiff.train.distributed import cleanup, init_distributed

log = logging.getLogger("ddp_worker")

IN_FEATURES = 4
OUT_FEATURES = 3
BATCH = 5
LR = 0.1


def make_model(rank: int) -> nn.Module:
    """The tiny model, initialised from a seed that differs per rank."""
    torch.manual_seed(1000 + rank)
    return nn.Linear(IN_FEATURES, OUT_FEATURES)


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and target of ``rank`` at ``step``: different on every rank."""
    g = torch.Generator().manual_seed(2000 + 100 * rank + step)
    return torch.randn(BATCH, IN_FEATURES, generator=g), torch.randn(BATCH, OUT_FEATURES, generator=g)


def flat_params(model: nn.Module) -> list[float]:
    """All parameters as one flat list of floats."""
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def reference_params(world_size: int, steps: int) -> list[float]:
    """What DDP must produce: rank 0's initial weights, SGD on the ranks' mean gradient."""
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(steps):
        opt.zero_grad()
        for rank in range(world_size):
            x, y = batch(rank, step)
            (nn.functional.mse_loss(model(x), y) / world_size).backward()
        opt.step()
    return flat_params(model)


def run_group(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a launcher in its own process group, stdout and stderr together.

    On timeout the group gets SIGTERM (snakemake cancels its SLURM jobs on it),
    then SIGKILL after a grace period, and an ``AssertionError`` carries the output's tail.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        raise AssertionError(f"{cmd[0]} timed out after {timeout:.0f} s:\n{out[-6000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def check_results(out: Path, launcher: str, world_size: int = 2, steps: int = 2) -> list[dict]:
    """Assert that every rank wrote a result, under ``launcher``, with identical, correct parameters.

    Returns the per-rank records, ordered by rank.
    """
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]
    expected = reference_params(world_size, steps)
    for r, rec in enumerate(records):
        assert rec["rank"] == r
        assert rec["world_size"] == world_size, rec
        assert rec["launcher"] == launcher, rec
        assert rec["backend"] == "gloo" and rec["device"] == "cpu", rec
        assert rec["params"] == records[0]["params"], f"rank {r} parameters differ from rank 0"
        assert (
            max(abs(a - b) for a, b in zip(rec["params"], expected, strict=True)) < 1e-6
        ), "not the mean-gradient update"
    assert {rec["master_port"] for rec in records} == {records[0]["master_port"]}
    return records


def main(argv: list[str] | None = None) -> int:
    """Run the worker; see the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)

    ctx = init_distributed("cpu")
    model = make_model(ctx.rank)
    ddp = DistributedDataParallel(model) if ctx.distributed else model
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    for step in range(args.steps):
        opt.zero_grad()
        x, y = batch(ctx.rank, step)
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()

    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": ctx.rank,
        "local_rank": ctx.local_rank,
        "world_size": ctx.world_size,
        "launcher": ctx.launcher,
        "backend": ctx.backend,
        "device": ctx.device,
        "master_addr": ctx.master_addr,
        "master_port": ctx.master_port,
        "hostname": socket.gethostname(),
        "params": flat_params(model),
    }
    (args.out / f"rank{ctx.rank}.json").write_text(json.dumps(record))
    log.info("rank %d done", ctx.rank)
    cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
