"""Checkpoints that are data, never code, and never half-written.

A checkpoint is a ``dict`` of tensors, numbers, strings, ``None`` and nested
lists/tuples/dicts of those: model, EMA, optimiser and scaler state dicts, the
step, :func:`rng_state`, normalisation statistics as tensors, the config as a
plain dict. :func:`save_checkpoint` refuses anything else before writing, so
that :func:`load_checkpoint` (``torch.load(weights_only=True)``) can read back
everything it wrote and nothing that could run code.

Writing is atomic: the bytes go to a hidden temporary file in the same
directory, are flushed and fsync'ed, and ``os.replace`` puts them under the
final name. A job killed mid-write leaves the previous checkpoint in place and
at worst a ``.<name>.*.tmp`` file, which a later save removes once it is a
minute old.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_LEAF_TYPES = (torch.Tensor, bool, int, float, str, type(None), torch.dtype, torch.device)
#: Leftover temporary files older than this (s) are removed by the next save.
STALE_TMP_AGE_S = 60.0


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (missing, truncated, not a checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds something other than data (a pickled object, code)."""


def check_data_only(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value in ``obj`` that is not plain data.

    Plain data: tensors, bool/int/float/str/None, ``torch.dtype``/``torch.device``,
    and lists, tuples and dicts (keys str or int) of plain data.
    """
    if isinstance(obj, _LEAF_TYPES):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is {type(key).__name__}, not str or int")
            check_data_only(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_data_only(value, f"{where}[{i}]")
        return
    hint = " (convert numpy arrays with torch.from_numpy)" if isinstance(obj, np.ndarray | np.generic) else ""
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: not checkpoint data{hint}"
    )


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_tmp(path: Path, older_than: float) -> None:
    """Remove leftovers of earlier, killed saves of ``path``."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < older_than:
                tmp.unlink()
                log.info("removed leftover %s", tmp)
        except FileNotFoundError:
            continue


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; return the path.

    Raises ``TypeError`` (before touching the disk) when ``state`` holds anything
    but plain data (see :func:`check_data_only`). Parent directories are created.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    check_data_only(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tmp = path.parent / f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    _remove_stale_tmp(path, started - STALE_TMP_AGE_S)
    log.info("saved checkpoint %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, as data only.

    Uses ``torch.load(weights_only=True)``: a file that would construct any
    object other than tensors and plain containers raises
    :class:`UnsafeCheckpointError`; a missing, truncated or foreign file raises
    :class:`CheckpointError`. Both name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused, it is not a data-only checkpoint (weights_only load failed: "
            f"{str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state


def rng_state() -> dict[str, Any]:
    """Every global random generator's state, as checkpoint data.

    Keys: ``python`` (``random``), ``numpy`` (legacy global ``np.random``),
    ``torch`` (CPU generator) and ``cuda`` (one state per visible GPU; empty
    without CUDA). Under DDP each rank has its own state; save it per rank if
    exact per-rank replay matters.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators from :func:`rng_state` output (after a checkpoint round trip).

    CUDA states are restored for as many GPUs as both the checkpoint and this
    machine have; a mismatch is logged.
    """
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["bit_generator"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda", []))
    if cuda_states:
        n_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_here != len(cuda_states):
            log.warning(
                "checkpoint has RNG states for %d GPUs, this machine has %d", len(cuda_states), n_here
            )
        for index, cuda_state in enumerate(cuda_states[:n_here]):
            torch.cuda.set_rng_state(cuda_state.cpu(), index)
