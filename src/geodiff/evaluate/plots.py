"""Figures of the evaluation: maps, vertical RMSE profiles and spectra."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from geodiff.constants import LAT, LEVEL, LON, TIME  # noqa: E402
from geodiff.evaluate.metrics import MEMBER, WAVENUMBER, radial_power  # noqa: E402


def plot_maps(truth: xr.DataArray, lr_up: xr.DataArray, ensemble: xr.DataArray, path: Path, level_index: int = 0) -> None:
    """Truth, input, ensemble mean, error and spread at one level and the first time."""
    sel = {"time": 0, LEVEL: level_index}
    mean = ensemble.mean(MEMBER)
    panels = [
        ("truth (K)", truth.isel(sel), "RdYlBu_r"),
        ("input: interpolated coarse (K)", lr_up.isel(sel), "RdYlBu_r"),
        ("GeoDiff ensemble mean (K)", mean.isel(sel), "RdYlBu_r"),
        ("error of mean (K)", (mean - truth).isel(sel), "RdBu_r"),
        ("ensemble spread (K)", ensemble.std(MEMBER).isel(sel), "viridis"),
    ]
    lo, hi = float(truth.isel(sel).min()), float(truth.isel(sel).max())
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), constrained_layout=True)
    for ax, (title, field, cmap) in zip(axes, panels):
        kwargs = {"vmin": lo, "vmax": hi} if cmap == "RdYlBu_r" else {}
        im = ax.pcolormesh(field[LON], field[LAT], field.transpose(LAT, LON), cmap=cmap, shading="auto", **kwargs)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{int(truth[LEVEL][level_index])} hPa, {str(truth['time'].values[0])[:16]}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(table: pd.DataFrame, path: Path, metric: str = "rmse") -> None:
    """Per-level `metric` of every method against pressure."""
    rows = table[(table["metric"] == metric) & (table["level"] != "all")]
    fig, ax = plt.subplots(figsize=(4.5, 5), constrained_layout=True)
    for method, group in rows.groupby("method"):
        ax.plot(group["value"], group["level"].astype(float), marker="o", label=method)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (K)")
    ax.set_ylabel("pressure (hPa)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectra(truth: xr.DataArray, predictions: dict[str, xr.DataArray], path: Path, level_index: int = 0) -> None:
    """Radially binned horizontal power spectra at one level, averaged over time (fields with missing truth skipped)."""
    fig, ax = plt.subplots(figsize=(5, 4), constrained_layout=True)
    for name, field in {"truth": truth, **predictions}.items():
        power = radial_power(field.isel({LEVEL: level_index})).mean(TIME)
        ax.loglog(power[WAVENUMBER], power, label=name)
    ax.set_xlabel("wavenumber (cycles per box)")
    ax.set_ylabel("power (K²)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_figures(truth, predictions, ensemble, lr_up, table, figures_dir: str) -> None:
    """maps.png, profiles.png and spectra.png into `figures_dir`."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_maps(truth, lr_up, ensemble, out / "maps.png")
    plot_profiles(table, out / "profiles.png")
    plot_spectra(truth, {**predictions, "geodiff_member": ensemble.isel({MEMBER: 0}, drop=True)}, out / "spectra.png")
