"""Checkpoints that are data, never code, and never half-written.

A checkpoint is a ``dict`` of tensors, numbers, strings, ``None`` and nested
lists/tuples/dicts of those: model, EMA, optimiser and scaler state dicts, the
step, :func:`rng_state`, normalisation statistics as tensors, the config as a
plain dict. :func:`save_checkpoint` refuses anything else before writing, so
that :func:`load_checkpoint` (``torch.load(weights_only=True)``) can read back
everything it wrote and nothing that could run code.

Writing is atomic (:func:`geodiff.atomic.atomic_write`): a job killed mid-write
leaves the previous checkpoint in place and at worst a ``.<name>.*.tmp`` file,
which a later save removes once it is a minute old.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geodiff.atomic import atomic_write

log = logging.getLogger(__name__)

_LEAF_TYPES = (torch.Tensor, bool, int, float, str, type(None), torch.dtype, torch.device)


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


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; return the path.

    Raises ``TypeError`` (before touching the disk) when ``state`` holds anything
    but plain data (see :func:`check_data_only`). Parent directories are created.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    check_data_only(state)
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(dict(state), tmp)
    log.info("saved checkpoint %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _refusal_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that says what was refused, without its advice to load anyway."""
    for line in str(err).splitlines():
        if "unsupported" in line.lower():
            return line.strip().rstrip(".")
    return "the weights-only unpickler refused it"


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
            f"{path}: refused: it holds objects other than tensors and plain data ({_refusal_reason(err)}); "
            "a GeoDiff checkpoint is data, never code"
        ) from None  # torch's own message advises loading the file anyway
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
