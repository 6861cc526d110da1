"""The one atomic-write helper: complete or absent, leftovers swept, live writers left alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geodiff.atomic import STALE_TMP_AGE_S, atomic_write


def _aged(path: Path) -> Path:
    """Touch `path` and date it back past the leftover age."""
    path.write_bytes(b"partial")
    old = time.time() - 10 * STALE_TMP_AGE_S
    os.utime(path, (old, old))
    return path


def test_success_renames_and_failure_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.nc"
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["out.nc"]


def test_old_leftovers_of_dead_writers_go_but_a_slow_live_writer_keeps_its_file(tmp_path: Path) -> None:
    target = tmp_path / "out.nc"
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = _aged(tmp_path / f".out.nc.{host}.{int(dead.stdout)}.deadbeef.tmp")
    other_host = _aged(tmp_path / f".out.nc.elsewhere.{os.getpid()}.cafecafe.tmp")
    live = _aged(tmp_path / f".out.nc.{host}.{os.getpid()}.0badf00d.tmp")  # this process: still writing
    fresh = tmp_path / f".out.nc.{host}.1.12345678.tmp"
    fresh.write_bytes(b"young")  # too young to be judged
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"done")
    assert not gone.exists() and not other_host.exists()
    assert live.exists() and fresh.exists()
    assert target.read_bytes() == b"done"
