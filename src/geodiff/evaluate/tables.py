"""Metric tables (tidy CSV) and figures for every method on the evaluation split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import xarray as xr

from geodiff.constants import LEVEL
from geodiff.data.store import read_field, store_info
from geodiff.evaluate import metrics as m
from geodiff.evaluate.plots import write_figures

log = logging.getLogger(__name__)

COLUMNS = ["method", "variable", "level", "metric", "value"]
POINT_METRICS = {"rmse": m.rmse, "mae": m.mae, "bias": m.bias, "lapse_rate_rmse": m.lapse_rate_rmse,
                 "spurious_instability": m.spurious_instability}
ENSEMBLE_METRICS = {"crps": m.crps_fair, "spread_skill": m.spread_skill_ratio}


def _rows(method: str, metric: str, fn: Callable[..., xr.DataArray], forecast: xr.DataArray, truth: xr.DataArray) -> list[dict]:
    """Rows of one metric: per level, and "all" pooled over every level's points."""
    per_level = fn(forecast, truth)
    rows = [dict(method=method, variable="t", level=str(int(lev)), metric=metric, value=float(v))
            for lev, v in zip(per_level[LEVEL].values, per_level.values)]
    overall = float(fn(forecast, truth, dims=list(truth.dims)))
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
    return rows


def ensemble_rows(method: str, ensemble: xr.DataArray, truth: xr.DataArray) -> list[dict]:
    """CRPS and spread-skill rows of an ensemble per level and overall."""
    return [row for name, fn in ENSEMBLE_METRICS.items() for row in _rows(method, name, fn, ensemble, truth)]


def metric_table(truth: xr.DataArray, predictions: dict[str, xr.DataArray], ensembles: dict[str, xr.DataArray],
                 scale_factor: int) -> pd.DataFrame:
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
    return pd.DataFrame(rows, columns=COLUMNS)


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


def write_tables(store_path: str, ensemble_paths: list[str], baseline_paths: list[str], metrics_path: str,
                 by_level_path: str, figures_dir: str) -> pd.DataFrame:
    """Compute every metric on the split and write metrics.csv, metrics_by_level.csv and figures
    (those of an ensemble show the first of `ensemble_paths`)."""
    truth = read_field(store_path, "hr/t")
    scale_factor = store_info(store_path)["scale_factor"]
    predictions, _ = _read_predictions(baseline_paths)
    ensembles, ensemble_attrs = _read_predictions(ensemble_paths)
    table = metric_table(truth, predictions, ensembles, scale_factor)
    table = pd.concat([table, pd.DataFrame(cost_rows(ensemble_attrs), columns=COLUMNS)], ignore_index=True)
    if table["value"].isna().any():
        raise ValueError(f"NaN metrics: {table[table['value'].isna()].to_dict('records')}")
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(metrics_path, index=False, float_format="%.6g")
    wide = table[table["level"] != "all"].pivot_table(index=["metric", "level"], columns="method", values="value")
    wide.to_csv(by_level_path, float_format="%.6g")
    overall = table[(table["level"] == "all") & (table["metric"] == "rmse")].set_index("method")["value"]
    log.info("overall RMSE (K):\n%s", overall.to_string())
    write_figures(truth, predictions, next(iter(ensembles.values())), read_field(store_path, "lr_up/t"), table, figures_dir)
    return table
