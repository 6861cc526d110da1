"""Pure helpers of the Snakemake workflow: months, split periods, their checks."""

from __future__ import annotations

import copy
import os

import pandas as pd

SPLITS = ("train", "val", "test")


def months_in_period(period: dict) -> list[str]:
    """Month keys YYYY-MM from period["start"] to period["end"] inclusive."""
    start, end = pd.Period(period["start"], "M"), pd.Period(period["end"], "M")
    if end < start:
        raise ValueError(f"data.period: end {period['end']} is before start {period['start']}")
    return [p.strftime("%Y-%m") for p in pd.period_range(start, end, freq="M")]


def split_bounds(config: dict, split: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First instant and the instant after the last day of a split."""
    period = config["splits"][split]
    return pd.Timestamp(period["start"]), pd.Timestamp(period["end"]) + pd.Timedelta(days=1)


def months_of_split(config: dict, split: str, months: list[str]) -> list[str]:
    """The months (from `months`) that overlap a split's period."""
    start, stop = split_bounds(config, split)
    chosen = []
    for m in months:
        first = pd.Timestamp(f"{m}-01")
        if first < stop and first + pd.offsets.MonthBegin(1) > start:
            chosen.append(m)
    return chosen


def check_splits(config: dict) -> None:
    """Refuse overlapping splits and splits outside the downloaded period, naming the keys."""
    bounds = {s: split_bounds(config, s) for s in SPLITS}
    for s, (start, stop) in bounds.items():
        if stop <= start:
            raise ValueError(f"splits.{s}: end is before start")
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            (a0, a1), (b0, b1) = bounds[a], bounds[b]
            if a0 < b1 and b0 < a1:
                raise ValueError(f"splits.{a} and splits.{b} overlap")
    months = months_in_period(config["data"]["period"])
    first, last = pd.Timestamp(f"{months[0]}-01"), pd.Timestamp(f"{months[-1]}-01") + pd.offsets.MonthBegin(1)
    for s, (start, stop) in bounds.items():
        if start < first or stop > last:
            raise ValueError(f"splits.{s} lies outside data.period {months[0]}..{months[-1]}")


ABLATIONS = {
    "no_priors": "the U-Net without the physics-prior branch",
    "no_physics_loss": "the U-Net trained on the Charbonnier data term alone",
}
"""Ablations of the deterministic model, each a change to its training config."""


def training_config(config: dict, ablation: str | None = None) -> dict:
    """The keys that define a trained model (never evaluation-only ones), with an ablation applied."""
    out = {k: copy.deepcopy(config[k]) for k in ("seed", "levels", "priors", "model", "loss")}
    out["train"] = {k: v for k, v in config["train"].items() if k not in ("resources", "launcher")}
    if ablation == "no_priors":
        out["model"]["use_priors"] = False
    elif ablation == "no_physics_loss":
        out["loss"] = {k: {**v, "weight": 0.0} if k != "charbonnier" else v for k, v in out["loss"].items()}
    elif ablation is not None:
        raise ValueError(f"unknown ablation {ablation!r}: {sorted(ABLATIONS)}")
    return out


def export_source_path(basedir: str) -> None:
    """Put `<basedir>/src` first on PYTHONPATH, so rule jobs (also in conda envs without the
    package installed, and on cluster nodes, which inherit the environment) import this checkout."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [f"{basedir}/src", os.environ.get("PYTHONPATH")]))
