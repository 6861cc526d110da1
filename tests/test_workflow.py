"""The whole workflow, end to end, on config/test.yaml in a temporary copy of the repository."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from geodiff.checkpoint import load_checkpoint
from geodiff.data.grid import Grid
from geodiff.provenance import config_hash
from test_constraint import block_mean
from workflow_run import ROOT, cf_problems, config_variant, copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.slow
RUN = "results/test"


def stage_of(name) -> str:
    """Which stage's config hash an artifact (path under the run folder) records."""
    folder, stem = name.parts[0], name.stem.removesuffix("_constrained")  # a constrained file keeps its source's
    if folder == "raw":
        return "statics" if stem == "statics" else "data"
    if folder == "regrid":
        return "regrid_weights" if stem.startswith("weights_") else "regrid"
    if folder == "priors":  # a split's store, priors/{split}.h5, or one of its months, priors/{split}/{year}-{month}.h5
        return f"store_{name.parts[1] if len(name.parts) > 2 else stem}"
    if folder == "baselines":
        split = "test_shift" if stem.startswith("test_shift_") else stem.split("_", 1)[0]
        baseline = stem.removeprefix(f"{split}_")
        return f"store_{split}" if baseline in ("bicubic", "bilinear") else baseline
    if folder == "samples":
        return "sample_guided" if stem.endswith("_guided") else "sample"
    if folder == "downscaled":  # made by the models of the bundle
        return "bundle"
    return stem


def test_artifacts_follow_the_data_contract(run):
    res = run / RUN
    for path in ["raw/2001-01.nc", "raw/statics.nc", "regrid/2001-01.nc", "regrid/weights_conservative.nc",
                 "priors/train.h5", "models/deterministic.pt", "models/residual.pt", "samples/test_ensemble.nc",
                 "baselines/test_bicubic.nc", "baselines/test_deterministic.nc", "metrics.csv", "metrics_by_level.csv",
                 "figures/maps.png", "logs/train_deterministic.log", "benchmarks/metrics.tsv"]:
        assert (res / path).stat().st_size > 0, path
    with xr.open_dataset(res / "raw/2001-01.nc", engine="netcdf4") as raw:
        assert raw["t"].dims == ("time", "level", "lat", "lon")
        assert raw["t"].attrs["units"] == "K" and raw["z"].attrs["units"] == "m2 s-2"
        assert list(raw["level"].values) == [1000, 850, 700, 500, 300]
        assert np.all(np.diff(raw["lat"].values) > 0) and np.all(np.diff(raw["lon"].values) > 0)
        assert raw["lon"].min() >= -180 and raw["lon"].max() < 180
        assert raw["t"].dtype == np.float32 and {"geodiff_version", "source"} <= set(raw.attrs)
    with xr.open_dataset(res / "regrid/2001-01.nc", engine="netcdf4") as low:
        assert low["t_coarse"].shape[-2:] == (4, 4) and low["t_bicubic"].shape[-2:] == (16, 16)
    with h5py.File(res / "priors/test.h5") as f:
        assert f["hr/t"].shape == (20, 5, 16, 16)
        assert f["stats"].attrs["from"] == "train.h5"
    with xr.open_dataset(res / "samples/test_ensemble.nc", engine="netcdf4") as ens:
        assert ens["t"].dims == ("member", "time", "level", "lat", "lon") and ens.sizes["member"] == 3
        assert ens["t"].attrs["units"] == "K" and np.isfinite(ens["t"]).all()


def test_constrained_fields_coarsen_to_the_coarse_input(run):
    """Model.constraint additive: the U-Net's field and every member, plain and guided, coarsen
    (brute-force block means) to the store's coarse input within float32 precision."""
    res = run / RUN
    with h5py.File(res / "priors/test.h5") as f:
        coarse = f["lr/t"][:].astype(np.float64)
    grid = Grid(0.25, (40.0, 44.0), (0.0, 4.0))
    for name in ["baselines/test_deterministic", "samples/test_ensemble", "samples/test_ensemble_guided"]:
        with xr.open_dataset(res / f"{name}_constrained.nc") as ds, xr.open_dataset(res / f"{name}.nc") as plain:
            error = np.abs(block_mean(ds["t"].values, grid) - coarse).max()
            before = np.abs(block_mean(plain["t"].values, grid) - coarse).max()
            assert error <= 1e-4 and before > 1e-2, (name, error, before)
            assert ds.attrs["method"] == f"{plain.attrs['method']}_constrained" and ds["t"].dims == plain["t"].dims


def test_metrics_table_is_tidy_and_complete(run):
    everything = pd.read_csv(run / RUN / "metrics.csv")
    assert list(everything.columns) == ["split", "method", "variable", "level", "metric", "value", "units"]
    assert (everything.loc[everything["metric"] == "rmse", "units"] == "K").all()
    assert set(everything["units"]) <= {"K", "K km-1", "m", "1", "s"} and not everything["value"].isna().any()
    table = everything[everything["split"] == "test"]
    methods = set(table["method"])
    assert set(everything.loc[everything["split"] == "test_shift", "method"]) == methods  # every method on both splits
    change = everything[everything["split"] == "test_shift-test"]
    points = {m for m in methods if not m.startswith("geodiff") or m.endswith("_mean")}
    for metric in ["change_ratio", "lapse_rate_change_ratio"]:
        assert set(change.loc[change["metric"] == metric, "method"]) == points
    assert set(change.loc[change["metric"] == "change", "method"]) == points | {"truth"}
    overall = table[(table["level"] == "all")].pivot_table(index="method", columns="metric", values="value")
    for method in ["bicubic", "bilinear", "deterministic", "ablation_no_priors", "geodiff_mean"]:
        assert {"rmse", "mae", "bias"} <= set(overall.columns) and not np.isnan(overall.loc[method, "rmse"])
    assert overall.loc["geodiff", "crps"] > 0
    for ensemble in ["geodiff_constrained", "geodiff_guided", "geodiff_guided_constrained"]:
        assert overall.loc[ensemble, "crps"] > 0 and overall.loc[f"{ensemble}_member", "spurious_instability"] >= 0
    assert overall.loc["deterministic_constrained", "rmse"] > 0
    assert overall.loc["geodiff", "sampling_seconds"] > 0 and overall.loc["geodiff_guided", "sampling_seconds"] > 0
    per_level = table[(table["level"] != "all") & (table["metric"] == "rmse")]
    assert set(per_level["level"].astype(int)) == {1000, 850, 700, 500, 300}


def test_summary_numbers_equal_the_metrics_table(run):
    """results/summary.md: every number is the CSV's (4 significant digits), under the run's config hash."""
    res = run / RUN
    text = (res / "summary.md").read_text()
    resolved = yaml.safe_load((res / "config.resolved.yaml").read_text())
    assert f"run config {config_hash(resolved['config_hashes'])}" in text.splitlines()[0]
    table = pd.read_csv(res / "metrics.csv")
    overall = table[(table["level"] == "all") & (table["split"] == "test")].pivot_table(
        index="method", columns="metric", values="value")
    main, shift = text.split("## Climate shift")
    lines = [line for line in main.splitlines() if line.startswith("| ") and not line.startswith(("| method", "| ---"))]
    source = {"rmse": "_mean", "mae": "_mean", "crps": "", "spread_skill": "",
              "lapse_rate_rmse": "_member", "spurious_instability": "_member"}
    ensembles = {"geodiff", "geodiff_constrained", "geodiff_guided", "geodiff_guided_constrained"}
    methods = []
    for line in lines:
        method, *values = [cell.strip() for cell in line.strip("|").split("|")]
        methods.append(method)
        for metric, value in zip([*source, "ratio_to_bicubic"], values):
            if metric == "ratio_to_bicubic":
                expected = summary_rmse(overall, method, ensembles) / overall.loc["bicubic", "rmse"]
            else:
                row = f"{method}{source[metric]}" if method in ensembles else method
                expected = overall.loc[row, metric] if metric in overall.columns else np.nan
            if value == "":
                assert np.isnan(expected), (method, metric)
            else:
                assert float(value) == pytest.approx(expected, rel=5e-4), (method, metric)
    assert set(methods) == {"bicubic", "bilinear", "deterministic", "deterministic_constrained", "ablation_no_priors"} | ensembles
    # the climate-shift table: RMSE and CRPS on both splits, degradation and change-signal ratios (ensembles: the mean)
    by_split = {s: table[(table["level"] == "all") & (table["split"] == s)].pivot_table(
        index="method", columns="metric", values="value") for s in ("test", "test_shift", "test_shift-test")}
    rows = [line for line in shift.splitlines() if line.startswith("| ") and not line.startswith(("| method", "| ---"))]
    assert {line.strip("|").split("|")[0].strip() for line in rows} == set(methods)
    for line in rows:
        method, *values = [cell.strip() for cell in line.strip("|").split("|")]
        point = f"{method}_mean" if method in ensembles else method
        rmse = [summary_rmse(by_split[s], method, ensembles) for s in ("test", "test_shift")]
        expected = [*rmse, rmse[1] / rmse[0], by_split["test"].loc[method, "crps"],
                    by_split["test_shift"].loc[method, "crps"], by_split["test_shift-test"].loc[point, "change_ratio"],
                    by_split["test_shift-test"].loc[point, "lapse_rate_change_ratio"]]
        assert [float(v) for v in values] == pytest.approx(expected, rel=5e-4), method


def summary_rmse(overall, method, ensembles):
    return overall.loc[f"{method}_mean" if method in ensembles else method, "rmse"]


def test_report_opens_in_chromium_with_every_figure_and_the_tables(run, chromium, tmp_path):
    """`snakemake --report` gives one self-contained page; headless Chromium shows its categories,
    decodes every image it holds and reads the summary table it holds."""
    from playwright.sync_api import sync_playwright

    report = tmp_path / "report.html"
    snakemake(run, "--report", str(report), "--configfile", "config/test.yaml")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(report.as_uri())
        menu = page.inner_text("body")
        assert all(category in menu for category in ["Calibration", "Fields", "Scores", "Training"]), menu[:500]
        page.get_by_text("Scores", exact=True).click()
        assert page.locator("tr", has_text="summary.csv").count() == 1
        held = dict(page.evaluate("Object.values(results).map(r => [r.filename, r.data_uri])"))
        images = {name: uri for name, uri in held.items() if name.endswith(".png")}
        assert set(images) == {"climate_shift.png", "maps.png", "profiles.png", "spectra.png", "rank_histograms.png",
                               "spread_skill.png", "training.png"}
        sizes = page.evaluate(
            "uris => Promise.all(uris.map(u => { const img = new Image(); img.src = u;"
            " return img.decode().then(() => [img.naturalWidth, img.naturalHeight]); }))",
            list(images.values()),
        )
        assert all(w > 100 and h > 100 for w, h in sizes), dict(zip(images, sizes))
        summary = page.evaluate("u => fetch(u).then(r => r.text())", held["summary.csv"])
        page.screenshot(path=str(tmp_path / "report.png"))
        browser.close()
    assert summary.replace("\r\n", "\n") == (run / RUN / "summary.csv").read_text()
    assert "geodiff_constrained" in summary and not errors, errors


REFERENCE = ROOT / "tests/reference/test_metrics.csv"
"""metrics.csv of a run of config/test.yaml (regenerate: copy results/test/metrics.csv there, in the
commit of a change that improves skill; see tests/reference/README.md)."""
TOLERANCE = {"rmse": 0.02, "crps": 0.02}
"""Relative worsening of a method's overall score that fails the reference test: measured run-to-run
noise (tests/reference/README.md) with margin."""


def skill_regressions(reference: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """One line per method and metric of :data:`TOLERANCE` whose overall score is worse than the
    reference's by more than its tolerance, or missing."""
    def overall(t):
        return t[t["level"] == "all"].set_index(["split", "method", "metric"])["value"]

    ref, new = overall(reference), overall(table)
    lines = []
    for (split, method, metric), value in ref.items():
        key = (split, method, metric)
        if metric not in TOLERANCE:
            continue
        if key not in new.index:
            lines.append(f"{split} {method} {metric}: missing (reference {value:.4f})")
        elif new[key] > value * (1 + TOLERANCE[metric]):
            lines.append(f"{split} {method} {metric}: {new[key]:.4f} against the reference {value:.4f} "
                         f"(+{new[key] / value - 1:.1%}, tolerance {TOLERANCE[metric]:.0%})")
    return lines


def test_skill_is_no_worse_than_the_reference_run(run):
    worse = skill_regressions(pd.read_csv(REFERENCE), pd.read_csv(run / RUN / "metrics.csv"))
    assert not worse, "skill lost against tests/reference/test_metrics.csv:\n" + "\n".join(worse)


@pytest.mark.parametrize("name", ["raw/2001-01.nc", "raw/statics.nc", "regrid/2001-01.nc", "regrid/weights_bicubic.nc",
                                  "baselines/test_bicubic.nc", "baselines/test_deterministic_constrained.nc",
                                  "samples/test_ensemble.nc", "samples/test_ensemble_guided_constrained.nc",
                                  "downscaled/march.nc"])
def test_every_kind_of_netcdf_output_passes_the_cf_checker(run, name):
    """The IOOS compliance checker (CF 1.8) finds nothing to correct in any kind of file the workflow writes."""
    assert cf_problems(run / RUN / name) == []


def test_nothing_left_to_do_and_evaluation_only_reruns(run):
    dry = snakemake(run, "-n", "--configfile", "config/test.yaml")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # an evaluation-only change re-runs sampling and metrics, never training or data
    changed = (run / "config/test.yaml").read_text().replace("ensemble_size: 3", "ensemble_size: 4")
    (run / "config/eval_changed.yaml").write_text(changed)
    plan = snakemake(run, f"{RUN}/metrics.csv", "-n", "--configfile", "config/eval_changed.yaml")
    out = plan.stdout + plan.stderr
    assert "sample" in out and "metrics" in out
    for upstream in ["train_deterministic", "train_residual", "priors", "priors_month", "download", "regrid"]:
        assert f"rule {upstream}:" not in out, upstream


def test_lint_is_clean(run):
    lint = snakemake(run, "--lint", "--configfile", "config/test.yaml", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for" not in lint.stdout + lint.stderr


def test_snakefmt_is_clean():
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_invalid_config_stops_before_any_job(tmp_path):
    repo = copy_workflow(tmp_path)
    bad = (repo / "config/test.yaml").read_text().replace("scale_factor: 4", "scale_factor: one")
    (repo / "config/bad.yaml").write_text(bad)
    proc = snakemake(repo, "-n", "--configfile", "config/bad.yaml", check=False)
    assert proc.returncode != 0
    assert "scale_factor" in proc.stdout + proc.stderr
    assert not (repo / "results").exists()


def test_resolved_config_and_every_artifact_record_their_provenance(run):
    resolved = yaml.safe_load((run / RUN / "config.resolved.yaml").read_text())
    hashes = resolved["config_hashes"]
    assert resolved["run_name"] == "test" and resolved["geodiff_version"]
    assert resolved["train"]["checkpoint_every"] == 20 and resolved["regrid"]["backend"] == "auto"  # schema defaults in
    stages = {"data", "statics", "regrid_weights", "regrid", "store_train", "store_val", "store_test",
              "store_test_shift", "deterministic", "residual", "ablation_no_priors", "sample", "sample_guided", "bundle"}
    assert set(hashes) == stages and len(set(hashes.values())) == len(stages)
    artifacts = sorted((run / RUN).rglob("*.nc")) + sorted((run / RUN).rglob("*.h5"))
    assert len(artifacts) == 38  # 4 raw, 3 weights, 3 regrid, 5 store months, 4 stores, 2 x 5 baselines, 2 x 4 ensembles,
    # and the downscaled March
    for path in artifacts:
        with h5py.File(path, "r") as f:  # NetCDF-4 is HDF5: one reader for both
            attrs = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in f.attrs.items()}
        name = path.relative_to(run / RUN)
        assert attrs.get("geodiff_version") == resolved["geodiff_version"], name
        assert attrs.get("run_name") == "test", name
        assert attrs.get("config_hash") == hashes[stage_of(name)], name
    models = sorted((run / RUN / "models").glob("*.pt"))
    assert len(models) == 3
    for path in models:  # a model is matched to its run by the same number
        assert load_checkpoint(path)["config_hash"] == hashes[stage_of(path.relative_to(run / RUN))], path.name


def test_run_settings_never_retrain(run):
    changed = config_variant(
        run,
        "run_changed",
        [
            ("device: cpu", "device: auto"),
            ("checkpoint_every: 20", "checkpoint_every: 7"),
            ("resources: {nodes: 1, tasks: 1, gpus: 0, cpus: 2, mem_mb: 2000, runtime: 10}",
             "resources: {nodes: 1, tasks: 1, gpus: 0, cpus: 1, mem_mb: 3000, runtime: 20}\n  launcher: mpirun"),
        ],
    )
    dry = snakemake(run, "-n", "--configfile", changed)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]


def planned_after(run, name: str, replacements: list[tuple[str, str]], *targets: str) -> list[str]:
    """The outputs a dry run plans after the completed run, with config/test.yaml edited."""
    jobs = planned_jobs(run, *targets, "--configfile", config_variant(run, name, replacements))
    return sorted(p.removeprefix(f"{RUN}/") for job in jobs for p in job.get("output", "").split(", ") if p)


FIGURES = [f"figures/{name}.png" for name in ["climate_shift", "maps", "profiles", "rank_histograms", "spectra",
                                              "spread_skill"]]
SCORES = [*FIGURES, "metrics.csv", "metrics_by_level.csv", "summary.csv", "summary.md"]
EVAL_SPLITS = ["test", "test_shift"]
EVALUATION = [*(f"baselines/{split}_{name}.nc" for split in EVAL_SPLITS
                for name in ["ablation_no_priors", "deterministic", "deterministic_constrained"]), *SCORES]
SAMPLES = [f"samples/{split}_{name}.nc" for split in EVAL_SPLITS
           for name in ["ensemble", "ensemble_constrained", "ensemble_guided", "ensemble_guided_constrained"]]


@pytest.mark.parametrize(
    ("old", "new"),
    [("residual_width: 8", "residual_width: 12"), ("ema_decay: 0.9", "ema_decay: 0.8"),
     ("residual_steps: 40", "residual_steps: 30")],
)
def test_a_diffusion_setting_retrains_the_diffusion_model_only(run, old, new):
    planned = planned_after(run, "diffusion", [(old, new)])
    assert planned == sorted([*SCORES, "figures/training.png", "models/bundle.json", "models/residual.pt", *SAMPLES])


def test_a_learning_rate_reruns_no_interpolation(run):
    planned = planned_after(run, "lr", [("lr: 2.0e-3", "lr: 1.0e-3")])
    assert planned == sorted([*EVALUATION, "figures/training.png", "models/ablation_no_priors.pt", "models/bundle.json",
                              "models/deterministic.pt", "models/residual.pt", *SAMPLES])


def test_download_settings_rerun_nothing(run):
    edit = ("  allow_nans: false\n", "  allow_nans: false\n  cds: {retries: 5, local_download: true}\n")
    assert planned_after(run, "cds", [edit]) == []


def test_a_month_more_downloads_and_regrids_that_month_only(run):
    planned = planned_after(run, "april", [('end: "2001-03"}', 'end: "2001-04"}')], f"{RUN}/regrid/2001-04.nc",
                            f"{RUN}/metrics.csv")
    assert planned == ["raw/2001-04.nc", "regrid/2001-04.nc"]


def test_moving_the_test_split_rebuilds_its_store_only(run):
    planned = planned_after(run, "test_split", [('end: "2001-03-10"', 'end: "2001-03-08"')])
    test_only = [path for path in [*EVALUATION, *SAMPLES] if "test_shift_" not in path]
    assert planned == sorted([*test_only, "baselines/test_bicubic.nc", "baselines/test_bilinear.nc",
                              "priors/test.h5", "priors/test/2001-03.h5"])


def test_another_run_plans_only_in_its_own_folder(run):
    jobs = planned_jobs(run, "--configfile", "config/config.yaml")
    outputs = [p for job in jobs for p in job.get("output", "").split(", ") if p]
    assert len(outputs) > 20 and all(p.startswith("results/default/") for p in outputs)
    assert not (run / "results/default").exists()


def test_sample_script_runs_by_hand(run, tmp_path):
    out = tmp_path / "ensemble.nc"
    res = run / RUN
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "scripts/sample.py"),
            "--input", f"store={res}/priors/test.h5", f"deterministic={res}/models/deterministic.pt",
            f"residual={res}/models/residual.pt",
            "--output", str(out),
            "--params", "members=2", "steps=4", "s_churn=0.0", "seed=1", "sampler=scaled", "guidance=null",
            "config_hash=0123abcd", "run_name=by-hand",
        ],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with xr.open_dataset(out) as ens, xr.open_dataset(res / "samples/test_ensemble.nc") as workflow_ens:
        assert ens.sizes["member"] == 2 and ens["t"].shape[1:] == workflow_ens["t"].shape[1:]
        assert ens.attrs["run_name"] == "by-hand" and ens.attrs["config_hash"] == "0123abcd"
        assert np.isfinite(ens["t"]).all()
