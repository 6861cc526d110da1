"""Periods of whole days as the config gives them (``{start: YYYY-MM-DD, end: YYYY-MM-DD}``, inclusive)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def period_bounds(period: Mapping[str, str]) -> tuple[np.datetime64, np.datetime64]:
    """The first instant of a period of whole days ``{start, end}`` (YYYY-MM-DD, inclusive) and the instant
    after its last day: a time t lies in it when start <= t < stop."""
    start, end = pd.Timestamp(period["start"]), pd.Timestamp(period["end"])
    return start.to_datetime64(), (end + pd.Timedelta(days=1)).to_datetime64()
