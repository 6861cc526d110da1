"""Provenance attributes stamped on every artifact."""

from __future__ import annotations

import hashlib
import json

from geodiff import __version__


def config_hash(config: dict) -> str:
    """Short, stable hash of a (JSON-serialisable) config: first 12 hex digits of SHA-256."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def provenance_attrs(source: str, config_digest: str) -> dict[str, str]:
    """Global attributes every GeoDiff file carries."""
    return {"geodiff_version": __version__, "config_hash": config_digest, "source": source}
