"""Figures of the evaluation: maps, vertical profiles, spectra, calibration and training curves.

Every figure names its quantities with units; error fields use a diverging colour map
centred on zero; coastlines are the 0.5 contour of the land-sea mask (no map data is
downloaded); legends sit outside the data.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from geodiff.constants import LAT, LEVEL, LON, TIME  # noqa: E402
from geodiff.evaluate import metrics as m  # noqa: E402

KM_PER_DEGREE = 111.195
"""Length of one degree of latitude (mean Earth radius 6371 km), km."""


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_maps(truth: xr.DataArray, lr_up: xr.DataArray, ensemble: xr.DataArray, lsm: np.ndarray, path: Path,
              level_index: int = 0, time_index: int = 0) -> None:
    """Truth, input, one member, ensemble mean, spread and error of the mean at one level and time, K."""
    sel = {TIME: time_index, LEVEL: level_index}
    mean = ensemble.mean(m.MEMBER)
    error = (mean - truth).isel(sel)
    limit = float(np.nanmax(np.abs(error))) or 1.0
    lo, hi = float(truth.isel(sel).min()), float(truth.isel(sel).max())
    panels = [
        ("truth", truth.isel(sel), "RdYlBu_r", (lo, hi)),
        ("input: interpolated coarse", lr_up.isel(sel), "RdYlBu_r", (lo, hi)),
        ("GeoDiff member 0", ensemble.isel({m.MEMBER: 0}).isel(sel), "RdYlBu_r", (lo, hi)),
        ("GeoDiff ensemble mean", mean.isel(sel), "RdYlBu_r", (lo, hi)),
        ("ensemble spread (std)", ensemble.std(m.MEMBER).isel(sel), "viridis", (None, None)),
        ("error of the mean", error, "RdBu_r", (-limit, limit)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
    for ax, (title, field, cmap, (vmin, vmax)) in zip(axes.ravel(), panels):
        im = ax.pcolormesh(field[LON], field[LAT], field.transpose(LAT, LON), cmap=cmap, vmin=vmin, vmax=vmax, shading="auto")
        if np.nanmin(lsm) < 0.5 < np.nanmax(lsm):
            ax.contour(truth[LON], truth[LAT], lsm, levels=[0.5], colors="k", linewidths=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        fig.colorbar(im, ax=ax, shrink=0.85, label="K")
    fig.suptitle(f"temperature at {int(truth[LEVEL][level_index])} hPa, {str(truth[TIME].values[time_index])[:16]}")
    _save(fig, path)


def plot_profiles(table: pd.DataFrame, path: Path) -> None:
    """Per-level RMSE and bias of every point forecast (ensembles: their mean) against pressure."""
    rows = table[(table["level"] != "all") & table["metric"].isin(["rmse", "bias"])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 5), sharey=True, constrained_layout=True)
    for ax, metric in zip(axes, ["rmse", "bias"]):
        for method, group in rows[rows["metric"] == metric].groupby("method"):
            if method.endswith("_member"):
                continue
            ax.plot(group["value"], group["level"].astype(float), marker="o", label=method)
        ax.set_xlabel(f"{metric.upper() if metric == 'rmse' else metric} (K)")
        if metric == "bias":
            ax.axvline(0.0, color="k", linewidth=0.6)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("pressure (hPa)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path)


def plot_climate_shift(table: pd.DataFrame, split: str, path: Path, shift: str = "test_shift") -> None:
    """Per level, of every point forecast (ensembles: their mean): the degradation ratio RMSE(`shift`)/RMSE(`split`)
    and the change-signal ratio (downscaled over true change of the mean temperature, `shift` minus `split`)."""
    levels = table[table["level"] != "all"]
    rmse = levels[levels["metric"] == "rmse"].pivot_table(index=["method", "level"], columns="split", values="value")
    degradation = (rmse[shift] / rmse[split]).rename("value").reset_index()
    change = levels[levels["metric"] == "change_ratio"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 5), sharey=True, constrained_layout=True)
    for ax, rows, label in zip(axes, (degradation, change), (f"RMSE {shift} / RMSE {split}", "change ratio")):
        for method, group in rows.groupby("method"):
            if method.endswith("_member"):
                continue
            ax.plot(group["value"], group["level"].astype(float), marker="o", label=method)
        ax.axvline(1.0, color="k", linewidth=0.6)  # no degradation; the whole signal kept
        ax.set_xlabel(label)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("pressure (hPa)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path)


def box_km(field: xr.DataArray) -> float:
    """Side of the square with the area of the lat-lon box of `field`, km (the length the radial
    wavenumbers of :func:`geodiff.evaluate.metrics.radial_power` count cycles over)."""
    lat, lon = field[LAT].values, field[LON].values
    height = lat.size * abs(lat[1] - lat[0]) * KM_PER_DEGREE
    width = lon.size * abs(lon[1] - lon[0]) * KM_PER_DEGREE * math.cos(math.radians(float(lat.mean())))
    return math.sqrt(height * width)


def plot_spectra(truth: xr.DataArray, predictions: dict[str, xr.DataArray], scale_factor: int, path: Path,
                 level_index: int = 0) -> None:
    """Radially binned power spectra at one level against wavelength (km), averaged over time."""
    side = box_km(truth)
    fig, ax = plt.subplots(figsize=(6.5, 4.5), constrained_layout=True)
    for name, field in {"truth": truth, **predictions}.items():
        power = m.radial_power(field.isel({LEVEL: level_index})).mean(TIME)
        ax.loglog(side / power[m.WAVENUMBER], power, label=name)
    coarse_km = side / min(truth.sizes[LAT], truth.sizes[LON]) * scale_factor
    ax.axvline(coarse_km, color="k", linestyle=":", linewidth=0.8)
    ax.text(coarse_km, ax.get_ylim()[0], " coarse grid length", rotation=90, va="bottom", fontsize=8)
    ax.invert_xaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("wavelength (km)")
    ax.set_ylabel("power (K²)")
    ax.set_title(f"{int(truth[LEVEL][level_index])} hPa")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path)


def plot_rank_histograms(ensemble: xr.DataArray, truth: xr.DataArray, path: Path) -> None:
    """Rank histogram of the truth among the members at each level, with its reliability index Δ."""
    hist = m.rank_histogram(ensemble, truth)
    flatness = m.rank_flatness(hist)
    levels = hist[LEVEL].values
    cols = min(4, len(levels))
    rows = math.ceil(len(levels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), sharey=True, squeeze=False, constrained_layout=True)
    for ax, level in zip(axes.ravel(), levels):
        ax.bar(hist[m.RANK], hist.sel({LEVEL: level}), color="tab:blue")
        ax.axhline(1.0 / hist.sizes[m.RANK], color="k", linestyle="--", linewidth=0.8)
        ax.set_title(f"{int(level)} hPa, Δ = {float(flatness.sel({LEVEL: level})):.2f}", fontsize=9)
        ax.set_xlabel("rank of the truth")
    for ax in axes.ravel()[len(levels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("frequency")
    _save(fig, path)


def plot_spread_skill(ensemble: xr.DataArray, truth: xr.DataArray, path: Path, bins: int = 10) -> None:
    """Binned spread against the RMSE of the ensemble mean in each bin, K (a consistent ensemble is on the diagonal)."""
    binned = m.spread_skill_bins(ensemble, truth, bins)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), constrained_layout=True)
    ax.plot(binned["spread"], binned["rmse"], marker="o", label="GeoDiff")
    top = float(max(binned["spread"].max(), binned["rmse"].max())) * 1.05
    ax.plot([0, top], [0, top], color="k", linestyle="--", linewidth=0.8, label="spread = RMSE")
    ax.set_xlabel("ensemble spread, √((M+1)/M) s (K)")
    ax.set_ylabel("RMSE of the ensemble mean (K)")
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def write_figures(truth, predictions, ensemble, lr_up, lsm, table, scale_factor: int, figures_dir: str,
                  level_index: int = 0, time_index: int = 0) -> None:
    """maps, profiles, spectra, rank_histograms and spread_skill (`<name>.png`) into `figures_dir`; maps and spectra at level `level_index`, maps at time `time_index`."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_maps(truth, lr_up, ensemble, lsm, out / "maps.png", level_index, time_index)
    plot_profiles(table, out / "profiles.png")
    plot_spectra(truth, {**predictions, "geodiff_member": ensemble.isel({m.MEMBER: 0}, drop=True)}, scale_factor,
                 out / "spectra.png", level_index)
    plot_rank_histograms(ensemble, truth, out / "rank_histograms.png")
    plot_spread_skill(ensemble, truth, out / "spread_skill.png")


def plot_training(logdirs: dict[str, str], path: str) -> None:
    """Training loss and validation RMSE (K) of each model against step, from its TensorBoard log folder.

    A folder keeps the event files of every training of its model (a retraining, a resumed
    one): at each step the value written last counts, so a retraining replaces the curve.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for name, logdir in logdirs.items():
        files = sorted(Path(logdir).glob("events.out.tfevents.*"))
        if not files:
            raise FileNotFoundError(f"{logdir}: no TensorBoard event file (the training of {name} writes one)")
        curves: dict[str, dict[int, tuple[float, float]]] = {}
        for file in files:
            events = EventAccumulator(str(file), size_guidance={"scalars": 0})
            events.Reload()
            for tag in events.Tags()["scalars"]:
                for v in events.Scalars(tag):
                    if v.step not in curves.setdefault(tag, {}) or curves[tag][v.step][0] <= v.wall_time:
                        curves[tag][v.step] = (v.wall_time, v.value)
        for tag, points in curves.items():
            ax = loss_ax if tag.endswith("/loss") else val_ax if tag.endswith(("/val_rmse_K", "/val_denoise_rmse_K")) else None
            if ax is not None:
                steps = sorted(points)
                ax.plot(steps, [points[s][1] for s in steps], marker="." if ax is val_ax else None, label=name)
    loss_ax.set(yscale="log", xlabel="optimiser step", ylabel="training loss (normalised units)")
    val_ax.set(xlabel="optimiser step", ylabel="validation RMSE (K; diffusion: denoising RMSE)")
    val_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, Path(path))
