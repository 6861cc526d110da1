"""Files that are either complete or absent: the one atomic-write helper of the package.

Every artifact (NetCDF, HDF5 store, regrid weights, checkpoint, model file) is
written under a hidden temporary name in its own folder, flushed to disk, and
renamed onto its final name with ``os.replace`` (atomic on POSIX). A job that
fails or is killed therefore never leaves a file that Snakemake, or a resumed
training, would take as finished: at worst a ``.<name>.*.tmp`` leftover, which
the next write of the same path removes once it is older than
:data:`STALE_TMP_AGE_S`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STALE_TMP_AGE_S = 60.0
"""Leftover temporary files older than this (s) are removed by the next write of the same path."""


def _fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data to disk; best effort for folders, which not every filesystem allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _writer_alive(tmp: Path, final: Path) -> bool:
    """True when `tmp` (``.<name>.<host>.<pid>.<id>.tmp``) belongs to a process still running on this host."""
    host, _, rest = tmp.name[len(final.name) + 2 : -len(".tmp")].rpartition(".")[0].rpartition(".")
    if host != socket.gethostname() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _remove_stale_tmp(path: Path, older_than: float) -> None:
    """Remove leftovers of earlier, killed writes of `path` last modified before `older_than` (epoch s),
    except those of a writer that is still running on this host (a slow write is not a leftover)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < older_than and not _writer_alive(tmp, path):
                tmp.unlink()
                log.info("removed leftover %s", tmp)
        except FileNotFoundError:
            continue


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the folder of `path`; on success it becomes `path`.

    The caller writes the whole file to the yielded path (any writer: ``to_netcdf``,
    ``h5py.File``, ``torch.save``). When the block ends without an exception, the
    file is fsync'ed and renamed onto `path`, and the folder is fsync'ed so the
    rename survives a crash. When the block raises (or the process is interrupted),
    the temporary file is removed and `path` is left as it was. Parent folders are
    created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tmp = final.with_name(f".{final.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(final.parent)
    _remove_stale_tmp(final, started - STALE_TMP_AGE_S)
