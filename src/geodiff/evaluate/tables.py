"""Metric tables (tidy CSV), the paper-style summary and figures for every method on the evaluation splits.

The splits are the evaluation split (``evaluate.split``) and, when the config has one, the
climate-shifted ``test_shift``: every row carries its `split`; with both, the rows of split
``SHIFT_LABEL`` hold the change signal (mean of test_shift minus mean of test, per method and
level, and its ratio to the true change, for temperature and lapse rate), and the summary
gains the climate-shift table (CORDEX-ML-Bench's degradation and change-signal ratios).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import xarray as xr

from geodiff.constants import LEVEL
from geodiff.data.store import read_field, read_statics, store_info
from geodiff.evaluate import metrics as m
from geodiff.evaluate.plots import plot_climate_shift, write_figures

log = logging.getLogger(__name__)

COLUMNS = ["split", "method", "variable", "level", "metric", "value", "units"]
SHIFT = "test_shift"
"""The climate-shifted split (config splits.test_shift)."""
SHIFT_LABEL = "test_shift-test"
"""`split` of the change-signal rows."""
TRUTH = "truth"
"""`method` of the true change's rows."""
POINT_METRICS = {"rmse": m.rmse, "mae": m.mae, "bias": m.bias, "lapse_rate_rmse": m.lapse_rate_rmse,
                 "spurious_instability": m.spurious_instability, "layer_thickness_rmse": m.layer_thickness_error}
ENSEMBLE_METRICS = {"crps": m.crps_fair, "spread_skill": m.spread_skill_ratio,
                    "rank_flatness": lambda e, y, dims=None: m.rank_flatness(m.rank_histogram(e, y, dims))}
UNITS = {"rmse": "K", "mae": "K", "bias": "K", "crps": "K", "lapse_rate_rmse": "K km-1", "spurious_instability": "1",
         "layer_thickness_rmse": "m", "thickness_rmse": "m", "small_scale_power_ratio": "1", "spread_skill": "1",
         "rank_flatness": "1", "sampling_seconds": "s", **{f"power_ratio_{band}": "1" for band in m.BANDS},
         "change": "K", "change_ratio": "1", "lapse_rate_change": "K km-1", "lapse_rate_change_ratio": "1"}
"""Units of every metric of the table (the `units` column)."""
SUMMARY = {"rmse": "RMSE (K)", "mae": "MAE (K)", "crps": "CRPS (K)", "spread_skill": "spread-skill",
           "lapse_rate_rmse": "lapse-rate RMSE (K/km)", "spurious_instability": "spurious instability"}
"""Columns of the summary: metric -> heading."""


def _rows(method: str, metric: str, fn: Callable[..., xr.DataArray], forecast: xr.DataArray, truth: xr.DataArray) -> list[dict]:
    """Rows of one metric: per level, and "all" pooled over every level's points."""
    return _level_rows(method, metric, fn(forecast, truth), float(fn(forecast, truth, dims=list(truth.dims))))


def _level_rows(method: str, metric: str, per_level: xr.DataArray, overall: float) -> list[dict]:
    """Rows of one metric's values per level and overall ("all")."""
    rows = [dict(method=method, variable="t", level=str(int(lev)), metric=metric, value=float(v))
            for lev, v in zip(per_level[LEVEL].values, per_level.values)]
    return rows + [dict(method=method, variable="t", level="all", metric=metric, value=overall)]


def method_rows(method: str, forecast: xr.DataArray, truth: xr.DataArray, scale_factor: int) -> list[dict]:
    """Rows of one deterministic forecast: point and physics metrics per level and overall.

    Its "crps" is that of a one-member ensemble, which equals its MAE, so every method
    can be ranked against the GeoDiff ensemble on CRPS.
    """
    rows = _rows(method, "crps", m.crps_fair, forecast.expand_dims({m.MEMBER: 1}), truth)
    for name, fn in POINT_METRICS.items():
        rows += _rows(method, name, fn, forecast, truth)
    rows.append(dict(method=method, variable="t", level="all", metric="thickness_rmse", value=float(m.thickness_error(forecast, truth))))
    rows.append(dict(method=method, variable="t", level="all", metric="small_scale_power_ratio",
                     value=m.small_scale_power_ratio(forecast, truth, scale_factor)))
    bands = m.power_ratio_by_band(forecast, truth, scale_factor)
    rows += [dict(method=method, variable="t", level=str(int(lev)), metric=f"power_ratio_{band}", value=float(bands.sel({LEVEL: lev, "band": band})))
             for lev in bands[LEVEL].values for band in m.BANDS]
    return rows


def ensemble_rows(method: str, ensemble: xr.DataArray, truth: xr.DataArray) -> list[dict]:
    """CRPS and spread-skill rows of an ensemble per level and overall."""
    return [row for name, fn in ENSEMBLE_METRICS.items() for row in _rows(method, name, fn, ensemble, truth)]


def metric_table(truth: xr.DataArray, predictions: dict[str, xr.DataArray], ensembles: dict[str, xr.DataArray],
                 scale_factor: int, split: str = "test") -> pd.DataFrame:
    """The tidy table: one row per method × variable × level × metric.

    Each ensemble E (e.g. `geodiff`, `geodiff_constrained`) gives the rows E (CRPS and
    spread-skill), E_mean (its mean as a point forecast) and E_member (its first member).
    """
    rows = []
    for method, forecast in predictions.items():
        rows += method_rows(method, forecast, truth, scale_factor)
    for method, ensemble in ensembles.items():
        rows += method_rows(f"{method}_mean", ensemble.mean(m.MEMBER), truth, scale_factor)
        rows += method_rows(f"{method}_member", ensemble.isel({m.MEMBER: 0}, drop=True), truth, scale_factor)
        rows += ensemble_rows(method, ensemble, truth)
    return _with_units(rows, split)


def point_forecasts(predictions: dict[str, xr.DataArray], ensembles: dict[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    """Every method as a point forecast: the predictions, and each ensemble's mean (`<E>_mean`)."""
    return {**predictions, **{f"{e}_mean": ens.mean(m.MEMBER) for e, ens in ensembles.items()}}


def change_rows(before: dict[str, xr.DataArray], after: dict[str, xr.DataArray]) -> list[dict]:
    """The change signal of every field of `before`/`after` (the truth under :data:`TRUTH`), per level and
    overall: the area-weighted mean of `after` minus that of `before` (``change``, K, and
    ``lapse_rate_change``, K km-1) and, for the methods, its ratio to the true change (``change_ratio``,
    ``lapse_rate_change_ratio``). A ratio below 1 is a method that shrinks the signal, CORDEX-ML-Bench's
    finding for models trained on the past."""
    rows = []
    for metric, field in (("change", lambda x: x), ("lapse_rate_change", m.lapse_rate_field)):
        true_level, true_all = _change(field(before[TRUTH]), field(after[TRUTH]))
        for method in before:
            level, overall = _change(field(before[method]), field(after[method]))
            rows += _level_rows(method, metric, level, overall)
            if method != TRUTH:
                rows += _level_rows(method, f"{metric}_ratio", level / true_level, overall / true_all)
    return rows


def _change(before: xr.DataArray, after: xr.DataArray) -> tuple[xr.DataArray, float]:
    """Area-weighted mean of `after` minus that of `before`: per level, and over every level's points."""
    def mean(x: xr.DataArray, dims: list[str] | None) -> xr.DataArray:
        return m.weighted_mean(x, x.notnull(), dims)

    return mean(after, None) - mean(before, None), float(mean(after, list(after.dims)) - mean(before, list(before.dims)))


def _with_units(rows: list[dict], split: str) -> pd.DataFrame:
    """The tidy table of `rows` on `split`, the `units` column filled from :data:`UNITS`."""
    return pd.DataFrame([{**row, "split": split, "units": UNITS[row["metric"]]} for row in rows], columns=COLUMNS)


def summary_table(table: pd.DataFrame, ensembles: list[str]) -> pd.DataFrame:
    """Methods x the :data:`SUMMARY` metrics (overall values) and the RMSE ratio to bicubic.

    A point method's row holds its own scores; an ensemble E's row holds the RMSE and MAE of
    its mean (E_mean), its CRPS and spread-skill, and the physics of one member (E_member):
    what a user who takes a single member gets.
    """
    overall = table[table["level"] == "all"].pivot_table(index="method", columns="metric", values="value")
    parts = {f"{e}{suffix}" for e in ensembles for suffix in ("", "_mean", "_member")}
    out = overall.loc[[name for name in overall.index if name not in parts], [k for k in SUMMARY if k in overall]]
    for e in ensembles:
        out.loc[e] = {"rmse": overall.loc[f"{e}_mean", "rmse"], "mae": overall.loc[f"{e}_mean", "mae"],
                      "crps": overall.loc[e, "crps"], "spread_skill": overall.loc[e, "spread_skill"],
                      "lapse_rate_rmse": overall.loc[f"{e}_member", "lapse_rate_rmse"],
                      "spurious_instability": overall.loc[f"{e}_member", "spurious_instability"]}
    if "bicubic" in overall.index:
        out["ratio_to_bicubic"] = out["rmse"] / overall.loc["bicubic", "rmse"]
    return out.rename_axis("method")


def shift_table(table: pd.DataFrame, ensembles: list[str], split: str) -> pd.DataFrame:
    """Methods x the climate-shift scores: RMSE and CRPS on `split` and on :data:`SHIFT`, the degradation
    ratio RMSE(shift)/RMSE(split), and the change-signal ratios of temperature and lapse rate (overall; an
    ensemble's are those of its mean)."""
    scores = {s: summary_table(table[table["split"] == s], ensembles) for s in (split, SHIFT)}
    out = pd.DataFrame({f"rmse_{split}": scores[split]["rmse"], f"rmse_{SHIFT}": scores[SHIFT]["rmse"]})
    out["degradation"] = out[f"rmse_{SHIFT}"] / out[f"rmse_{split}"]
    out[f"crps_{split}"], out[f"crps_{SHIFT}"] = scores[split]["crps"], scores[SHIFT]["crps"]
    change = table[(table["split"] == SHIFT_LABEL) & (table["level"] == "all")]
    change = change.pivot_table(index="method", columns="metric", values="value")
    for metric in ("change_ratio", "lapse_rate_change_ratio"):
        out[metric] = [change.loc[f"{name}_mean" if name in ensembles else name, metric] for name in out.index]
    return out.rename_axis("method")


def write_summary(summary: pd.DataFrame, path: str, config_hash: str, shift: pd.DataFrame | None = None) -> str:
    """`summary` as Markdown (4 significant digits) under a heading with the run's config hash (in the
    workflow: the hash of every stage's hash, config.resolved.yaml's `config_hashes`) and the date
    (UTC), then the climate-shift table `shift` when given; returns the text."""
    headings = {**SUMMARY, "ratio_to_bicubic": "RMSE / bicubic"}
    lines = [f"# GeoDiff summary, run config {config_hash}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             "Overall over the evaluation split. Ensembles: RMSE and MAE of the mean, CRPS and spread-skill of the "
             "ensemble, lapse-rate RMSE and spurious instability of one member.", "",
             *_markdown(summary, [headings[c] for c in summary.columns])]
    if shift is not None:
        lines += ["", "## Climate shift", "",
                  f"Scores on the evaluation split and on {SHIFT}; degradation = RMSE({SHIFT}) / RMSE; change ratio = "
                  f"the downscaled change (mean of {SHIFT} minus mean of the evaluation split) over the true change, "
                  "of temperature and of the lapse rate (1: the signal kept; below 1: shrunk). Ensembles: their mean.",
                  "", *_markdown(shift, [c.replace("_", " ") for c in shift.columns])]
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text, encoding="utf-8")
    return text


def _markdown(frame: pd.DataFrame, headings: list[str]) -> list[str]:
    """The lines of a Markdown table of `frame` (index: method), 4 significant digits."""
    lines = ["| method | " + " | ".join(headings) + " |", "| --- |" + " --- |" * len(headings)]
    for method, row in frame.iterrows():
        lines.append(f"| {method} | " + " | ".join("" if pd.isna(v) else f"{v:.4g}" for v in row) + " |")
    return lines


def _read_predictions(paths: list[str]) -> tuple[dict[str, xr.DataArray], dict[str, dict]]:
    """{method: t} of prediction files (their `method` attribute), and {method: the file's attributes}."""
    fields, attrs = {}, {}
    for path in paths:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            fields[ds.attrs["method"]], attrs[ds.attrs["method"]] = ds["t"].load(), dict(ds.attrs)
    return fields, attrs


def cost_rows(attrs: dict[str, dict]) -> list[dict]:
    """A `sampling_seconds` row per ensemble whose file records its sampler's wall time (a constrained
    ensemble: that of the ensemble it was made from; the constraint itself takes a fraction of a second)."""
    return [dict(method=method, variable="t", level="all", metric="sampling_seconds", value=float(a["sampling_seconds"]))
            for method, a in attrs.items() if "sampling_seconds" in a]


def write_tables(evaluations: dict[str, tuple[str, list[str], list[str]]], metrics_path: str,
                 by_level_path: str, summary_path: str, figures_dir: str, config_hash: str = "",
                 map_level: float | None = None, map_time: int = 0) -> pd.DataFrame:
    """Compute every metric on each split and write metrics.csv, metrics_by_level.csv (levels in
    numeric order), the summary (`summary_path`, Markdown, beside it the same numbers as CSV) and the
    figures.

    `evaluations` maps each split to (its store, ensemble files, baseline files); the first is the
    evaluation split, of the summary table and the figures (those of an ensemble show its first
    ensemble; maps and spectra at the level `map_level`, hPa, default the lowest, maps at the time
    index `map_time`). With :data:`SHIFT` among them: the change-signal rows, the climate-shift table
    and its figure.
    """
    split, *_ = evaluations
    tables, fields = [], {}
    for name, (store_path, ensemble_paths, baseline_paths) in evaluations.items():
        truth = read_field(store_path, "hr/t")
        scale_factor = store_info(store_path)["scale_factor"]
        predictions, _ = _read_predictions(baseline_paths)
        ensembles, ensemble_attrs = _read_predictions(ensemble_paths)
        tables += [metric_table(truth, predictions, ensembles, scale_factor, name),
                   _with_units(cost_rows(ensemble_attrs), name)]
        fields[name] = (truth, predictions, ensembles, scale_factor)
    truth, predictions, ensembles, scale_factor = fields[split]
    store_path = evaluations[split][0]
    levels = [float(v) for v in truth[LEVEL].values]
    if map_level is not None and float(map_level) not in levels:
        raise ValueError(f"evaluate.map_level {map_level} hPa is not a level of {store_path}: {levels}")
    if not 0 <= map_time < truth.sizes["time"]:
        raise ValueError(f"evaluate.map_time {map_time} is outside the {truth.sizes['time']} times of {store_path}")
    shifted = SHIFT in fields and SHIFT != split
    if shifted:
        before, after = ({TRUTH: f[0], **point_forecasts(f[1], f[2])} for f in (fields[split], fields[SHIFT]))
        tables.append(_with_units(change_rows(before, after), SHIFT_LABEL))
    table = pd.concat(tables, ignore_index=True)
    if table["value"].isna().any():
        raise ValueError(f"NaN metrics: {table[table['value'].isna()].to_dict('records')}")
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(metrics_path, index=False, float_format="%.6g")
    per_level = table[table["level"] != "all"].assign(level=lambda t: t["level"].astype(int))
    wide = per_level.pivot_table(index=["split", "metric", "level"], columns="method", values="value").sort_index()
    wide.to_csv(by_level_path, float_format="%.6g")
    summary = summary_table(table[table["split"] == split], list(ensembles))
    summary.to_csv(Path(summary_path).with_suffix(".csv"), float_format="%.6g")
    shift = shift_table(table, list(ensembles), split) if shifted else None
    log.info("summary:\n%s", write_summary(summary, summary_path, config_hash, shift))
    first = next(iter(ensembles.values()))
    write_figures(truth, predictions, first, read_field(store_path, "lr_up/t"), read_statics(store_path, ["lsm"])["lsm"],
                  table[table["split"] == split], scale_factor, figures_dir,
                  0 if map_level is None else levels.index(float(map_level)), map_time)
    if shifted:
        plot_climate_shift(table, split, Path(figures_dir) / "climate_shift.png")
    return table
