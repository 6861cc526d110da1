"""Checkpoints: round trip, data only, atomic under kill and exception."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geodiff.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    check_data_only,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class Payload:
    """An arbitrary class: pickling it into a checkpoint must not survive loading."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # what a malicious file does: call something on load
        return (os.system, ("echo pwned > /dev/null",))


def full_state() -> dict:
    """A realistic training state: model, EMA, optimiser, scaler, step, RNG, stats, config."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.GELU(), nn.Conv3d(4, 1, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 2, 3, 4, 4)).sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return {
        "model": model.state_dict(),
        "ema": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "step": 1234,
        "rng": rng_state(),
        "stats": {"t": {"mean": torch.linspace(280, 220, 8), "std": torch.ones(8)}},
        "config": {
            "model": {"width": 24, "use_priors": True},
            "levels": [1000, 925, 850],
            "lr": 2e-3,
            "note": None,
        },
        "dtype": torch.float32,
    }


def assert_same(a: object, b: object) -> None:
    """Deep equality for nested dicts/lists of tensors and scalars."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_round_trip(tmp_path: Path) -> None:
    state = full_state()
    path = save_checkpoint(tmp_path / "sub" / "model.pt", state)
    assert path.is_file()
    loaded = load_checkpoint(path)
    assert_same(state, loaded)
    # a model and an optimiser accept the loaded state dicts
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.GELU(), nn.Conv3d(4, 1, 1))
    model.load_state_dict(loaded["model"])
    torch.optim.AdamW(model.parameters(), lr=1e-3).load_state_dict(loaded["optimizer"])
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["model.pt"]


def test_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 2


def test_rng_state_restores_every_generator(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    # scramble, then restore from the file
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert got == expected


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": Payload()}, path)  # torch.save pickles anything
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(plain)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refusal_does_not_advise_loading_the_file_anyway(tmp_path: Path) -> None:
    """torch's refusal suggests `weights_only=False`, i.e. running the payload: ours must not, nor chain it."""
    path = tmp_path / "hostile.pt"
    torch.save({"model": {"w": torch.ones(2)}, "payload": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        load_checkpoint(path)
    message = str(excinfo.value)
    assert str(path) in message and "refused" in message
    assert "posix.system" in message  # what was refused
    assert "weights_only=False" not in message and "weights_only" not in message
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__  # no chained torch advice


def test_non_data_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError, match=r"state\['extra'\]\[0\].*Payload"):
        save_checkpoint(path, {"step": 1, "extra": [Payload()]})
    with pytest.raises(TypeError, match="numpy"):
        check_data_only({"stats": np.zeros(3)})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def big_state(n: int = 300) -> dict:
    """About n MB of distinct tensors: long enough to write that it can be interrupted."""
    return {"blocks": [torch.full((2**18,), float(i)) for i in range(n)], "step": 2}


def test_exception_during_write_keeps_previous(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})
    state = big_state()

    class Interrupted(Exception):
        """Raised from a timer signal while torch.save is writing."""

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted("mid-write")

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(BaseException) as excinfo:
            save_checkpoint(path, state)
            time.sleep(5)  # only reached when the save beat the timer; the alarm fires here
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # torch's zip writer may raise its own error on the way out, chained to ours
    chain: list[BaseException] = []
    err: BaseException | None = excinfo.value
    while err is not None:
        chain.append(err)
        err = err.__context__
    assert any(isinstance(e, Interrupted) for e in chain), chain
    assert load_checkpoint(path) == {"step": 1}, "save was not interrupted: make big_state larger"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "temporary file left behind"


def test_sigkill_during_write_keeps_previous(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import torch
                from geodiff.checkpoint import save_checkpoint
                state = {{"blocks": [torch.full((2**18,), float(i)) for i in range(600)], "step": 2}}
                print("writing", flush=True)
                save_checkpoint({str(path)!r}, state)
                print("finished", flush=True)
                """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 60
    tmp_files: list[Path] = []
    while time.monotonic() < deadline:
        tmp_files = [p for p in tmp_path.glob(".ckpt.pt.*.tmp") if p.stat().st_size > 0]
        if tmp_files or child.poll() is not None:
            break
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert tmp_files, "the child finished before it could be killed mid-write"
    assert child.returncode == -signal.SIGKILL
    assert load_checkpoint(path) == {"step": 1}
    # a partial file may remain under its temporary name only; the next save removes it
    leftovers = list(tmp_path.glob(".ckpt.pt.*.tmp"))
    assert leftovers
    for p in leftovers:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    save_checkpoint(path, {"step": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path) == {"step": 3}
