"""The real training loop at scale: 2 ranks train the model of 1 process, a killed run resumes exactly,
and the seed's command line (`--nodes/--nr`, `--model_path/--epoch_num`).

Every training here is `python -m geodiff train` in its own process(es), on the real stores of
the test config, both stages (the GeoDiff U-Net and the EDM residual model), in float32.

Tolerance of "the same model" (2 ranks against 1 process): after STEPS optimiser steps every
weight agrees to within RTOL of the largest weight of its tensor. The ranks' gradients are
summed by gloo in another order than one process sums its batch, and each rank runs its
convolutions on another thread count, so the two differ by float32 rounding; Adam's first
steps, nearly sign(g)·lr, carry it to ~1e-3 in the biases ahead of a GroupNorm, whose
gradients are almost zero. One process on 1 thread against 2 threads differs as much
(1.5e-3 measured); 2 ranks against 1 process 7.7e-4 (U-Net) and 4.4e-4 (diffusion model).
A wrong data order, a rank's own noise or a per-rank batch of B instead of B/2 moves the
weights by 30 % to 100 % of their largest value.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from geodiff.checkpoint import load_checkpoint
from geodiff.model.networks import model_from_state
from geodiff.train.checkpoints import checkpoints
from test_store import months  # noqa: F401 (the module fixture stores() reads)
from test_training import stores, with_train  # noqa: F401

STEPS = 12
RTOL = 2e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(stage: str, d: Path, out: Path, config: dict, deterministic: Path | None = None) -> list[str]:
    """`geodiff train` arguments for `stage` on the stores of `d`, writing `out`."""
    args = ["train", "--stage", stage, "--train", str(d / "train.h5"), "--val", str(d / "val.h5"), "--out", str(out),
            "--logdir", str(out.parent / "tb"), "--config-json", json.dumps(config), "--device", "cpu"]
    return args + (["--deterministic", str(deterministic)] if deterministic else [])


def run(cmd: list[str], log: Path, timeout: float = 300) -> str:
    """Run `cmd` with its output in `log`; fail the test with the log's end when it fails."""
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{text[-4000:]}"
    return text


def geodiff(*args: str) -> list[str]:
    return [sys.executable, "-m", "geodiff", *args]


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), "-m", "geodiff", *args]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_model(a: Path, b: Path) -> float:
    """Every tensor of the model files `a` and `b` equal within RTOL of its largest value; returns the worst."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = 0.0
    for key in wa:
        scale = max(float(wa[key].abs().max()), 1e-12)
        worst = max(worst, float((wa[key] - wb[key]).abs().max()) / scale)
    assert worst <= RTOL, f"{a} and {b} differ by {worst:.2e} of a tensor's largest weight (tolerance {RTOL:g})"
    return worst


def assert_moved(a: Path, b: Path) -> None:
    """The models of `a` and `b` differ by far more than RTOL: the comparison can tell runs apart."""
    wa, wb = weights(a), weights(b)
    assert max(float((wa[k] - wb[k]).abs().max() / wa[k].abs().max().clamp_min(1e-12)) for k in wa) > 50 * RTOL


@pytest.fixture(scope="module")
def short(stores):  # noqa: F811
    """The test config trained for STEPS steps of batch 4 in float32, checkpoints kept: (config, store folder)."""
    config, d = stores
    return with_train(config, deterministic_steps=STEPS, residual_steps=STEPS, batch_size=4, amp=False,
                      checkpoint_every=1000), d


@pytest.fixture(scope="module")
def one_process(short, tmp_path_factory):
    """Both stages trained by one process: (deterministic.pt, residual.pt)."""
    config, d = short
    out = tmp_path_factory.mktemp("one")
    det, res = out / "deterministic.pt", out / "residual.pt"
    run(geodiff(*train_args("deterministic", d, det, config)), out / "det.log")
    run(geodiff(*train_args("residual", d, res, config, det)), out / "res.log")
    return det, res


@pytest.mark.parametrize("stage", ["deterministic", "residual"])
def test_two_torchrun_ranks_train_the_model_of_one_process(stage, short, one_process, tmp_path):
    config, d = short
    det, res = one_process
    out = tmp_path / f"{stage}.pt"
    text = run(torchrun(2, *train_args(stage, d, out, config, det if stage == "residual" else None)), tmp_path / "log")
    assert "rank 1/2" in text and "gloo" in text  # two ranks really joined one group
    assert_same_model(out, det if stage == "deterministic" else res)
    # a 2-rank run that takes the per-rank batch of the single process (B, not B/2) lands elsewhere
    wide = tmp_path / f"{stage}-wide.pt"
    run(torchrun(2, *train_args(stage, d, wide, with_train(config, batch_size=8), det if stage == "residual" else None)),
        tmp_path / "wide.log")
    assert_moved(wide, det if stage == "deterministic" else res)


def test_a_global_batch_that_does_not_split_is_refused(short, tmp_path):
    config, d = short
    out = tmp_path / "deterministic.pt"
    proc = subprocess.run(torchrun(2, *train_args("deterministic", d, out, with_train(config, batch_size=5))),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "train.batch_size = 5 (the global batch) does not split evenly across 2 ranks" \
        in proc.stdout + proc.stderr
    assert not out.exists()


def test_the_seed_multi_node_command_line(short, one_process, tmp_path):
    """`--nodes 2 --nr 0|1` started as two "nodes" on this host, and `--nodes 1 --gpus 2`: both give the
    model of one process; a node number outside the job is refused."""
    config, d = short
    det, _ = one_process
    port = str(free_port())
    out = tmp_path / "two-nodes.pt"
    args = train_args("deterministic", d, out, config)
    nodes = [subprocess.Popen(geodiff(*args, "--nodes", "2", "--nr", nr, "--gpus", "1", "--master-addr", "127.0.0.1",
                                      "--master-port", port), stdout=open(tmp_path / f"node{nr}.log", "w"),
                              stderr=subprocess.STDOUT) for nr in ("1", "0")]
    for proc in nodes:
        assert proc.wait(timeout=300) == 0, (tmp_path / "node0.log").read_text()[-3000:]
    assert "node 1 of 2: starting ranks [1] of 2" in (tmp_path / "node1.log").read_text()
    assert_same_model(out, det)

    local = tmp_path / "one-node.pt"
    run(geodiff(*train_args("deterministic", d, local, config), "--nodes", "1", "--gpus", "2"), tmp_path / "local.log")
    assert_same_model(local, det)

    proc = subprocess.run(geodiff(*args, "--nodes", "2", "--nr", "2", "--master-addr", "127.0.0.1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--nr 2 is not a node of --nodes 2 (0 to 1)" in proc.stderr


def kill_after_checkpoint(cmd: list[str], ckpt_dir: Path, step: int, log: Path) -> int:
    """Start `cmd`, SIGKILL it a moment after a checkpoint of at least `step` steps exists; return the step of
    the newest checkpoint it left."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = [s for s, _, _ in checkpoints(ckpt_dir)] if ckpt_dir.is_dir() else []
            if done and done[-1] >= step:
                time.sleep(0.1)  # a few more steps, past the checkpoint
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return checkpoints(ckpt_dir)[-1][0]
            assert proc.poll() is None, f"training ended before step {step}:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no checkpoint of step {step} in time:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("stage", ["deterministic", "residual"])
def test_sigkill_mid_epoch_then_rerun_ends_bit_identical(stage, short, one_process, tmp_path):
    """Checkpoints every 5 steps; the train split has 23 batches of 4, so checkpoints fall mid-epoch. The run is
    killed past step 25 (in epoch 2) and rerun: its model file and its last checkpoint (weights, EMA,
    optimiser, schedule) equal those of a run never killed, tensor for tensor."""
    config, d = short
    det, _ = one_process
    config = with_train(config, deterministic_steps=60, residual_steps=60)
    settings = ["--checkpoint-every", "5", "--keep-checkpoints", "3"]
    whole, killed = tmp_path / "whole" / f"{stage}.pt", tmp_path / "killed" / f"{stage}.pt"
    for out in (whole, killed):
        out.parent.mkdir()
    deterministic = det if stage == "residual" else None
    run(geodiff(*train_args(stage, d, whole, config, deterministic), *settings), tmp_path / "whole.log")
    at = kill_after_checkpoint(geodiff(*train_args(stage, d, killed, config, deterministic), *settings),
                               Path(f"{killed}.ckpt"), 25, tmp_path / "killed.log")
    assert not killed.exists() and at % 23  # killed mid-epoch, before the end
    text = run(geodiff(*train_args(stage, d, killed, config, deterministic), *settings), tmp_path / "rerun.log")
    assert f"resumed {stage} from step {at}" in text

    ends = [load_checkpoint(p) for p in (whole, killed)]
    for key in ends[0]["model"]:
        assert torch.equal(ends[0]["model"][key], ends[1]["model"][key]), key
    lasts = [checkpoints(Path(f"{p}.ckpt")) for p in (whole, killed)]
    assert [(s, e) for s, e, _ in lasts[0]] == [(50, 3), (55, 3), (60, 3)]  # the newest 3; epoch = ceil(step / 23)
    a, b = (load_checkpoint(entries[-1][2]) for entries in lasts)
    flat = lambda state: {k: v for k, v in _tensors(state, "")}  # noqa: E731
    fa, fb = flat({k: a[k] for k in ("model", "optimizer", "scheduler", "ema")}), \
        flat({k: b[k] for k in ("model", "optimizer", "scheduler", "ema")})
    assert fa.keys() == fb.keys() and len(fa) > len(ends[0]["model"])
    for key in fa:
        assert torch.equal(torch.as_tensor(fa[key]), torch.as_tensor(fb[key])), key


def _tensors(obj, prefix):
    """(path, leaf) of every tensor and number in a nested checkpoint state."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")
    elif isinstance(obj, (torch.Tensor, int, float)) and not isinstance(obj, bool):
        yield prefix, obj


def test_the_seed_evaluate_command_scores_an_epoch(short, tmp_path):
    """`geodiff evaluate --model_path DIR --epoch_num E` scores the newest checkpoint of epoch E: its RMSE is the
    one computed here from that checkpoint's weights and the store's truth; a missing epoch is named."""
    config, d = short
    models = tmp_path / "models"
    models.mkdir()
    config = with_train(config, deterministic_steps=30)
    run(geodiff(*train_args("deterministic", d, models / "deterministic.pt", config), "--checkpoint-every", "10",
                "--keep-checkpoints", "5"), tmp_path / "train.log")
    proc = subprocess.run(geodiff("evaluate", "--model_path", str(models), "--epoch_num", "1", "--store",
                                  str(d / "val.h5")), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads(proc.stdout)
    assert scores["deterministic"]["step"] == 20 and scores["deterministic"]["epoch"] == 1  # 23 batches per epoch

    state = load_checkpoint(Path(f"{models / 'deterministic.pt'}.ckpt") / "step-00000020_epoch-0001.pt")
    model = model_from_state(state, state["model"]).eval()
    from geodiff.data.loader import StoreDataset

    data = StoreDataset(str(d / "val.h5"), model.prior_names, position=model.arch["position"])
    with torch.no_grad():
        preds = [model(*(data[i][k][None] for k in ("lr_up", "static", "priors")))[0, 0].numpy() for i in range(len(data))]
    with h5py.File(d / "val.h5") as f:
        truth = f["hr/t"][:].astype(np.float64)
    pred = np.stack(preds).astype(np.float64) * data.t_std + data.t_mean
    assert scores["deterministic"]["rmse_K"] == pytest.approx(math.sqrt(np.mean((pred - truth) ** 2)), rel=1e-4)

    proc = subprocess.run(geodiff("evaluate", "--model-path", str(models), "--epoch", "3", "--store",
                                  str(d / "val.h5")), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no checkpoint of epoch 3 (epochs kept: [1, 2]" in proc.stderr


def test_an_unreadable_newest_checkpoint_is_skipped(tmp_path):
    """A checkpoint cut short (a full disk, a copy interrupted) does not stop the resume: the newest readable one is taken."""
    from geodiff.checkpoint import save_checkpoint
    from geodiff.train.checkpoints import checkpoint_name
    from geodiff.train.loop import _latest_state

    for step in (5, 10):
        save_checkpoint(tmp_path / checkpoint_name(step, 1), {"step": step, "weights": torch.full((1000,), float(step))})
    newest = tmp_path / checkpoint_name(10, 1)
    newest.write_bytes(newest.read_bytes()[:100])
    assert _latest_state(tmp_path, "cpu")["step"] == 5
