"""Logging set-up shared by the CLI and the rule scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> None:
    """Log to stderr, warnings from libraries too; with `log_file` (a rule's log), stderr itself
    goes there, so tracebacks and progress bars land in the log beside the messages."""
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        sys.stderr = open(log_file, "w", buffering=1)  # noqa: SIM115 (lives as long as the process)
    logging.basicConfig(level=level, format=FORMAT, handlers=[logging.StreamHandler(sys.stderr)], force=True)
    logging.captureWarnings(True)
