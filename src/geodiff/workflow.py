"""Pure helpers of the Snakemake workflow: config checks, stage hashes, months and split periods,
and the files of a `local` month."""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from geodiff import __version__
from geodiff.atomic import atomic_write
from geodiff.constants import PHYSICS_TERMS, STORE_LAYOUT
from geodiff.periods import period_bounds
from geodiff.provenance import config_hash
from geodiff.train.config import stage_config

SPLITS = ("train", "val", "test", "test_shift")
"""Every split a config may define; test_shift (a later, shifted test period) is optional."""


class ConfigError(ValueError):
    """The config is refused before any job runs; the message names the keys."""


# --- config checks -------------------------------------------------------------------------


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """`schema` with a local ``$ref`` (``#/$defs/name``) followed."""
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def unknown_keys(config: Mapping[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, where: str = "") -> list[str]:
    """A message per config key that the schema does not define, with the nearest valid key (difflib).

    A mapping whose keys are names of the user's (an ``additionalProperties`` schema, e.g.
    ``downscale.inputs``) takes any key, and its values are checked against that schema."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    known = schema.get("properties", {})
    named = schema.get("additionalProperties")
    problems = []
    for key, value in config.items():
        name = f"{where}{key}"
        if key not in known and not isinstance(named, Mapping):
            near = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean '{where}{near[0]}'?" if near else f"valid keys: {', '.join(known)}"
            problems.append(f"unknown key '{name}': {hint}")
        elif isinstance(value, Mapping):
            problems += unknown_keys(value, known.get(key, named), root, f"{name}.")
    return problems


def check_keys(config: Mapping[str, Any], schema_path: str | os.PathLike[str]) -> None:
    """Refuse keys the schema does not define (typos such as ``trian``), naming the nearest valid one.

    Snakemake's own validation says only that additional properties are not allowed; this
    check runs before it so that the message names the key.
    """
    with open(schema_path, encoding="utf-8") as fh:
        schema = yaml.safe_load(fh)
    problems = unknown_keys(config, schema)
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def _grid_problems(grid: Mapping[str, Any]) -> list[str]:
    """Box bounds in order, a whole number of cells, a scale factor that divides the cell counts."""
    resolution, factor = float(grid["hr"]["resolution"]), int(grid["scale_factor"])
    problems = []
    for axis, (low, high), words in (("lat", grid["hr"]["lat"], "south, north"), ("lon", grid["hr"]["lon"], "west, east")):
        key = f"grid.hr.{axis}"
        if high <= low:
            problems.append(f"{key} {[low, high]}: bounds reversed, expected [{words}] with {words.split(', ')[0]} first")
            continue
        cells = (high - low) / resolution
        if not np.isclose(cells, round(cells), rtol=0, atol=1e-6):
            problems.append(f"{key} {[low, high]}: {high - low:g} degrees is not a whole number of grid.hr.resolution {resolution:g} cells")
        elif round(cells) % factor:
            problems.append(f"grid.scale_factor {factor} does not divide the {round(cells)} {axis} cells of {key}")
    return problems


def _level_problems(levels: list[float]) -> list[str]:
    """Levels unique and from the surface upward (decreasing hPa)."""
    repeated = sorted({lvl for lvl in levels if levels.count(lvl) > 1}, reverse=True)
    if repeated:
        return [f"levels {levels}: {', '.join(f'{lvl:g}' for lvl in repeated)} hPa listed more than once"]
    rising = [(a, b) for a, b in zip(levels, levels[1:]) if b > a]
    if rising:
        return [f"levels {levels}: must go from the surface upward (decreasing hPa), but {rising[0][1]:g} follows {rising[0][0]:g}"]
    return []


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse cross-field errors before any job: grid box and scale factor, levels, splits vs data.period,
    guidance steps vs sampler steps, patches vs the scale factor, the map level vs the levels."""
    problems = _grid_problems(config["grid"]) + _level_problems(list(config["levels"]))
    steps, guided = config.get("evaluate", {}).get("sampler_steps"), config.get("evaluate", {}).get("guidance", {}).get("last_steps")
    if steps is not None and guided is not None and guided > steps:  # both are there once the schema's defaults are
        problems.append(f"evaluate.guidance.last_steps {guided} exceeds evaluate.sampler_steps {steps}")
    crop, factor = config.get("train", {}).get("crop"), config["grid"]["scale_factor"]
    if crop is not None and crop % factor:
        problems.append(f"train.crop {crop} is not a multiple of grid.scale_factor {factor}: a patch must hold whole coarse cells")
    map_level = config.get("evaluate", {}).get("map_level")
    if map_level is not None and float(map_level) not in [float(v) for v in config["levels"]]:
        problems.append(f"evaluate.map_level {map_level} hPa is not one of the levels {list(config['levels'])}")
    try:
        check_splits(config)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def months_in_period(period: Mapping[str, str]) -> list[str]:
    """Month keys YYYY-MM from period["start"] to period["end"] inclusive."""
    start, end = pd.Period(period["start"], "M"), pd.Period(period["end"], "M")
    if end < start:
        raise ConfigError(f"data.period: end {period['end']} is before start {period['start']}")
    return [p.strftime("%Y-%m") for p in pd.period_range(start, end, freq="M")]


def splits_of(config: Mapping[str, Any]) -> list[str]:
    """The splits of :data:`SPLITS` that the config defines (train, val, test, and test_shift when given)."""
    return [s for s in SPLITS if s in config["splits"]]


def split_bounds(config: Mapping[str, Any], split: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First instant and the instant after the last day of a split."""
    return tuple(pd.Timestamp(t) for t in period_bounds(config["splits"][split]))


def months_of_split(config: Mapping[str, Any], split: str, months: list[str]) -> list[str]:
    """The months (from `months`) that overlap a split's period."""
    start, stop = split_bounds(config, split)
    chosen = []
    for m in months:
        first = pd.Timestamp(f"{m}-01")
        if first < stop and first + pd.offsets.MonthBegin(1) > start:
            chosen.append(m)
    return chosen


def check_splits(config: Mapping[str, Any]) -> None:
    """Refuse reversed or overlapping splits and splits outside the downloaded period, naming the keys
    (every problem at once: a split moved past data.period may also overlap test_shift)."""
    splits = splits_of(config)
    bounds = {s: split_bounds(config, s) for s in splits}
    backwards = [f"splits.{s}: end is before start" for s, (start, stop) in bounds.items() if stop <= start]
    if backwards:
        raise ConfigError("; ".join(backwards))
    problems = [f"splits.{a} and splits.{b} overlap" for i, a in enumerate(splits) for b in splits[i + 1 :]
                if bounds[a][0] < bounds[b][1] and bounds[b][0] < bounds[a][1]]
    months = months_in_period(config["data"]["period"])
    first, last = pd.Timestamp(f"{months[0]}-01"), pd.Timestamp(f"{months[-1]}-01") + pd.offsets.MonthBegin(1)
    problems += [f"splits.{s} lies outside data.period {months[0]}..{months[-1]}"
                 for s, (start, stop) in bounds.items() if start < first or stop > last]
    if problems:
        raise ConfigError("; ".join(problems))


# --- what defines each artifact ------------------------------------------------------------

ABLATIONS = {
    "no_priors": "the U-Net without the physics-prior branch",
    "no_physics_loss": "the U-Net trained on the Charbonnier data term alone",
}
"""Ablations of the deterministic model, each a change to its training config."""

CDS_RUN_ONLY = ("retries", "local_download")
"""Keys of `data.cds` that say how a download runs (attempts, on which host), not what it fetches."""


def training_config(config: Mapping[str, Any], stage: str, ablation: str | None = None) -> dict:
    """The keys that shape one stage's model (:func:`geodiff.train.config.stage_config`), with an
    ablation of the deterministic U-Net applied: the training rule's params, whose hash the model records."""
    out = stage_config(dict(config), stage)
    if ablation is not None and stage != "deterministic":
        raise ValueError(f"ablation {ablation!r} is of the deterministic stage, not {stage!r}")
    if ablation == "no_priors":
        out["model"]["use_priors"] = False
    elif ablation == "no_physics_loss":
        out["loss"] = {k: {**v, "weight": 0.0} if k in PHYSICS_TERMS else v for k, v in out["loss"].items()}
    elif ablation is not None:
        raise ValueError(f"unknown ablation {ablation!r}: {sorted(ABLATIONS)}")
    return out


SAMPLE_KEYS = ("ensemble_size", "sampler", "sampler_steps", "s_churn")
"""Keys of `evaluate` that shape an ensemble (the others choose what is scored)."""


def _data_keys(config: Mapping[str, Any]) -> dict:
    """`data` without its period (a month is named by its file), without how a download runs and
    without the synthetic shift (added where it shapes the months, :func:`shifts_synthetic`)."""
    data = {k: copy.deepcopy(v) for k, v in config["data"].items() if k not in ("period", "synthetic_shift")}
    if "cds" in data:
        data["cds"] = {k: v for k, v in data["cds"].items() if k not in CDS_RUN_ONLY}
    return data


def shifts_synthetic(config: Mapping[str, Any]) -> bool:
    """Whether the months are the synthetic atmosphere shifted in splits.test_shift (data.synthetic_shift);
    real data of that split is simply a later period."""
    return config["data"].get("source", "synthetic") == "synthetic" and "test_shift" in config["splits"]


def stage_configs(config: Mapping[str, Any]) -> dict[str, dict]:
    """The config keys that define each artifact, and nothing else: a stage's hash is a param of its
    rules, so a key that does not change their output would rerun them for nothing.

    data: a raw month (also splits.test_shift and data.synthetic_shift when they shift the synthetic
    months, :func:`shifts_synthetic`); statics: the fine-grid statics (requested for the period's first hour);
    regrid_weights: the weights of each method; regrid: a coarse month; store_<split>: the HDF5
    store of a split (its own period only; the others read the train store's statistics,
    through their input); deterministic, residual, ablation_<name>: the models (the training
    rule's params, :func:`training_config`); sample: the ensemble; sample_guided: the ensemble
    drawn with stability guidance; bundle: the models' bundle.json (:func:`bundle_config`), whose hash a
    downscaled file also records.
    """
    data = {"seed": config["seed"], "data": _data_keys(config), "grid": config["grid"], "levels": config["levels"]}
    statics = {**data, "data": {**data["data"], "period": {"start": config["data"]["period"]["start"]}}}
    if shifts_synthetic(config):  # the months' times in splits.test_shift are generated shifted
        data = {**data, "data": {**data["data"], "synthetic_shift": config["data"]["synthetic_shift"]},
                "splits": {"test_shift": config["splits"]["test_shift"]}}
    regrid = {**data, "regrid": config["regrid"]}
    stages = {"data": data, "statics": statics, "regrid_weights": {"grid": config["grid"], "regrid": config["regrid"]},
              "regrid": regrid}
    for split in splits_of(config):
        stages[f"store_{split}"] = {**regrid, "priors": config["priors"], "period": config["splits"][split],
                                    "store_layout": STORE_LAYOUT}
    stages["deterministic"] = training_config(config, "deterministic")
    stages["residual"] = training_config(config, "residual")
    for ablation in config["ablations"]:
        stages[f"ablation_{ablation}"] = training_config(config, "deterministic", ablation)
    stages["sample"] = {"seed": config["seed"], "evaluate": {k: config["evaluate"][k] for k in SAMPLE_KEYS},
                        "models": {m: config_hash(stages[m]) for m in ("deterministic", "residual")}}
    stages["sample_guided"] = {**stages["sample"], "guidance": config["evaluate"]["guidance"]}
    stages["bundle"] = bundle_config(config)
    return stages


def bundle_config(config: Mapping[str, Any]) -> dict:
    """The config keys a model bundle records (geodiff.downscale.bundle.write_bundle): the run's name, the
    grid, the statics source (seed, data settings), the constraint and the sampler's settings."""
    return {"run_name": config["run_name"], "seed": config["seed"], "grid": copy.deepcopy(config["grid"]),
            "data": {**_data_keys(config), "period": {"start": config["data"]["period"]["start"]}},  # as the statics
            "model": {"constraint": config["model"]["constraint"]},
            "evaluate": {k: config["evaluate"][k] for k in SAMPLE_KEYS}}


def stage_hashes(config: Mapping[str, Any]) -> dict[str, str]:
    """`config_hash` of each stage's keys: what an artifact of that stage records (for a model, the
    same number as :func:`geodiff.train.config.stage_hash` of its params)."""
    return {stage: config_hash(keys) for stage, keys in stage_configs(config).items()}


def write_resolved_config(config: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the config after schema defaults, with the package version and the stage hashes (YAML, atomic)."""
    resolved = {"geodiff_version": __version__, "config_hashes": stage_hashes(config), **copy.deepcopy(dict(config))}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")


def local_files_by_month(config: Mapping[str, Any], months: Iterable[str]) -> dict[str, list[str]]:
    """For source `local`: the files of ``data.local.paths`` that hold data of each month (YYYY-MM).

    Read once when the DAG is built (times only), so that each month's `download` job has
    exactly its own files as inputs. The statics file, should a pattern match it, is left out.

    Raises:
        ConfigError: a month of `months` is in no file.
    """
    from geodiff.constants import STATICS, TIME
    from geodiff.data.canonical import canonicalize
    from geodiff.data.files import open_any
    from geodiff.data.sources.local import paths

    by_month: dict[str, list[str]] = {m: [] for m in months}
    for path in paths(config):
        with open_any(path) as ds:
            canonical = canonicalize(ds, "local", str(path))
            if set(STATICS) & set(map(str, canonical.data_vars)):
                continue
            for month in sorted(set(pd.DatetimeIndex(canonical[TIME].values).strftime("%Y-%m"))):
                if month in by_month:
                    by_month[month].append(str(path))
    missing = [m for m, files in by_month.items() if not files]
    if missing:
        raise ConfigError(f"data.local.paths: no file has data for {', '.join(missing)} (data.period needs every month)")
    return by_month


def export_source_path(basedir: str) -> None:
    """Put `<basedir>/src` first on PYTHONPATH, so rule jobs (also in conda envs without the
    package installed, and on cluster nodes, which inherit the environment) import this checkout."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [f"{basedir}/src", os.environ.get("PYTHONPATH")]))
