"""Provenance attributes stamped on every artifact."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from geodiff import __version__


def config_hash(config: Any) -> str:
    """Short, stable hash of a (JSON-serialisable) config: first 12 hex digits of SHA-256."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance_attrs(config_digest: str | None, run_name: str | None = None) -> dict[str, str]:
    """Global attributes every NetCDF/HDF5 artifact carries: the package version, ``config_hash``
    (the hash of the config keys that define the artifact, i.e. its workflow stage) and, inside a
    workflow run, ``run_name``. A value given as None is left out."""
    attrs = {"geodiff_version": __version__, "config_hash": config_digest, "run_name": run_name}
    return {k: v for k, v in attrs.items() if v is not None}
