"""The workflow's DAG, read from Snakemake's dry runs: run folders, resources, local inputs, scripts by hand,
what each stage's hash covers, and params read by their scripts."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from snakemake.utils import validate as validate_schema

from geodiff.data.synthetic import synthetic_month, synthetic_statics
from geodiff.stand_in import stand_in
from geodiff.train.config import TrainConfig
from geodiff.workflow import stage_hashes, training_config
from workflow_run import ROOT, config_variant, copy_workflow, planned_jobs, snakemake


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def outputs(jobs: list[dict[str, str]]) -> list[str]:
    return [path for job in jobs for path in job.get("output", "").split(", ") if path]


@pytest.mark.parametrize(("configfile", "run_name"), [("config/config.yaml", "default"), ("config/test.yaml", "test")])
def test_every_output_goes_to_the_run_folder(repo, configfile, run_name):
    jobs = planned_jobs(repo, "--configfile", configfile)
    assert len(jobs) > 10
    paths = outputs(jobs)
    assert paths and all(p.startswith(f"results/{run_name}/") for p in paths), paths


def test_gpu_config_gives_model_jobs_a_gpu(repo):
    jobs = planned_jobs(repo, "--configfile", "config/era5.yaml")
    by_rule = {job["rule"]: job for job in jobs}
    for rule in ("sample", "train_deterministic", "train_residual"):
        assert "gpu=" in by_rule[rule]["resources"], rule
    assert "gpu=1" in by_rule["sample"]["resources"] and "device=cuda" in by_rule["sample"]["resources"]
    assert "gpu=4" in by_rule["train_residual"]["resources"]
    baselines = {job["wildcards"]: job["resources"] for job in jobs if job["rule"] == "baselines"}
    assert "gpu=1" in baselines["split=test, baseline=deterministic"]
    assert "gpu=0" in baselines["split=test, baseline=bicubic"]


def test_cpu_config_asks_for_no_gpu(repo):
    jobs = planned_jobs(repo, "--configfile", "config/test.yaml")
    assert all("gpu=0" in job["resources"] for job in jobs if job["rule"] in ("sample", "baselines"))


def write_local_files(folder: Path, config: dict) -> None:
    """Three months and the statics of the synthetic atmosphere, as a user's NetCDF files."""
    folder.mkdir()
    for month in (1, 2, 3):
        synthetic_month(config, 2001, month).to_netcdf(folder / f"era_2001{month:02d}.nc")
    synthetic_statics(config).to_netcdf(folder / "statics.nc")


def local_config(repo: Path, files: Path) -> str:
    """config/test.yaml reading `files` as source local, run `local`."""
    return config_variant(
        repo,
        "local",
        [
            ("run_name: test", "run_name: local"),
            (
                "  source: synthetic\n",
                f"  source: local\n  local: {{paths: ['{files}/era_*.nc'], statics: '{files}/statics.nc'}}\n",
            ),
        ],
    )


def test_a_month_in_no_local_file_stops_before_any_job(repo, tmp_path):
    files = tmp_path / "mine"
    write_local_files(files, yaml.safe_load((ROOT / "config/test.yaml").read_text()))
    (files / "era_200103.nc").unlink()
    proc = snakemake(repo, "-n", "--configfile", local_config(repo, files), check=False)
    assert proc.returncode != 0 and "data.local.paths: no file has data for 2001-03" in proc.stdout + proc.stderr


def test_editing_a_local_file_reruns_its_month_only(repo, tmp_path):
    files = tmp_path / "mine"
    write_local_files(files, yaml.safe_load((ROOT / "config/test.yaml").read_text()))
    configfile = local_config(repo, files)
    targets = [f"results/local/regrid/2001-0{m}.nc" for m in (1, 2, 3)]
    snakemake(repo, *targets, "--cores", "2", "--configfile", configfile)
    assert "Nothing to be done" in snakemake(repo, *targets, "-n", "--configfile", configfile).stdout

    february = files / "era_200102.nc"
    with xr.open_dataset(february) as ds:
        warmer = ds.load()
    warmer["t"] += 5.0
    warmer.to_netcdf(february)
    jobs = planned_jobs(repo, *targets, "--configfile", configfile)
    planned = sorted(outputs(jobs))
    assert planned == ["results/local/raw/2001-02.nc", "results/local/regrid/2001-02.nc"], planned
    download = next(job for job in jobs if job["rule"] == "download")
    assert download["input"] == str(february)


def test_stand_in_reads_the_command_line_as_snakemake_would():
    sm = stand_in(
        argv=[
            "--input", "store=s.h5", "raw=[a.nc, b.nc]",
            "--output", "out.nc",
            "--params", "members=4", "period={start: 2001-03-01, end: 2001-03-10}", "s_churn=0.5",
            "--wildcards", "year=2001",
        ]
    )
    assert sm.input.store == "s.h5" and sm.input.raw == ["a.nc", "b.nc"] and list(sm.input) == ["s.h5", "a.nc", "b.nc"]
    assert sm.output[0] == "out.nc" and sm.log[0] is None
    assert sm.params.members == 4 and sm.params.s_churn == 0.5
    assert sm.params.period == {"start": "2001-03-01", "end": "2001-03-10"}
    assert sm.wildcards.year == 2001 and sm.input.get("stats_from") is None and sm.resources.get("device", "auto") == "auto"
    with pytest.raises(AttributeError, match="no 'members'"):
        _ = sm.input.members


def test_a_script_runs_by_hand_on_real_files(tmp_path):
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    out = tmp_path / "raw.nc"
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "scripts/download.py"),
            "--output", str(out),
            "--wildcards", "year=2001", "month=2",
            "--params", f"config={yaml.safe_dump(config, default_flow_style=True, width=10**6).strip()}",
            "config_hash=abc123", "run_name=by-hand",
        ],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with xr.open_dataset(out) as ds:
        assert ds.attrs["config_hash"] == "abc123" and ds.attrs["run_name"] == "by-hand"
        expected = synthetic_month(config, 2001, 2)
        assert ds.sizes["time"] == 28 * len(config["data"]["hours"])
        np.testing.assert_allclose(ds["t"].values, expected["t"].values, rtol=1e-6)


def resolved_test_config() -> dict:
    """config/test.yaml with the schema's defaults filled in, as the workflow sees it."""
    config = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    validate_schema(config, str(ROOT / "workflow/schemas/config.schema.yaml"), set_default=True)
    return config


def edited(config: dict, key: str, value) -> dict:
    out = copy.deepcopy(config)
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


STORES = {"store_train", "store_val", "store_test", "store_test_shift"}
MODELS = {"deterministic", "residual", "ablation_no_priors"}
SAMPLES = {"sample", "sample_guided"}


@pytest.mark.parametrize(
    ("key", "value", "changed"),
    [
        ("model.residual_width", 12, {"residual", *SAMPLES}),
        ("train.residual_steps", 3, {"residual", *SAMPLES}),
        ("train.ema_decay", 0.5, {"residual", *SAMPLES}),
        ("model.width", 12, {"deterministic", "ablation_no_priors", *SAMPLES}),
        ("loss.gradient.weight", 0.3, {"deterministic", "ablation_no_priors", *SAMPLES}),
        ("loss.ramp", [0.25, 0.5], {"deterministic", "ablation_no_priors", *SAMPLES}),
        ("train.lr", 1e-4, MODELS | SAMPLES),
        ("train.device", "cuda", set()),
        ("train.checkpoint_every", 7, set()),
        ("train.keep_checkpoints", 1, set()),
        ("data.cds.retries", 9, set()),
        ("data.cds.local_download", True, set()),
        ("data.period.end", "2001-04", set()),
        ("data.period.start", "2000-12", {"statics", "bundle"}),  # statics of a new box come from the same hour
        ("splits.test.end", "2001-03-09", {"store_test"}),
        ("splits.test_shift.end", "2001-03-19", {"data", "regrid"} | STORES),  # the synthetic months are shifted there
        ("data.synthetic_shift.aloft_warming", 5.0, {"data", "regrid"} | STORES),
        ("data.synthetic_shift.inversion_offset", 0.0, {"data", "regrid"} | STORES),
        ("splits.train.start", "2001-01-02", {"store_train"}),
        ("regrid.upsample", "bilinear", {"regrid_weights", "regrid"} | STORES),
        ("priors.names", ["theta"], STORES | MODELS | SAMPLES),
        ("evaluate.sampler_steps", 9, SAMPLES | {"bundle"}),
        ("evaluate.split", "val", set()),
        ("evaluate.guidance.stability", 1.0, {"sample_guided"}),
        ("evaluate.guidance.last_steps", 3, {"sample_guided"}),
        ("model.constraint", "none", {"bundle"}),
    ],
)
def test_a_setting_changes_the_hash_of_exactly_the_artifacts_it_shapes(key, value, changed):
    config = resolved_test_config()
    before, after = stage_hashes(config), stage_hashes(edited(config, key, value))
    assert set(before) == set(after)
    assert {stage for stage in before if before[stage] != after[stage]} == changed


@pytest.mark.parametrize(
    ("key", "value", "changed"),
    [("splits.test_shift.end", "2001-03-19", {"store_test_shift"}), ("data.synthetic_shift.surface_warming", 5.0, set())],
)
def test_real_data_is_not_shifted(key, value, changed):
    """With a real source the test_shift split is only a later period: the shift's settings shape nothing."""
    config = edited(resolved_test_config(), "data.source", "cds")
    before, after = stage_hashes(config), stage_hashes(edited(config, key, value))
    assert {stage for stage in before if before[stage] != after[stage]} == changed


def test_without_test_shift_there_is_no_such_store_and_no_shift():
    config = resolved_test_config()
    del config["splits"]["test_shift"]
    hashes = stage_hashes(config)
    assert "store_test_shift" not in hashes
    assert hashes["data"] == stage_hashes(edited(config, "data.synthetic_shift.aloft_warming", 5.0))["data"]


def test_a_model_records_the_hash_of_its_rule_params():
    """`geodiff train` hashes the params it is given; the workflow lists the same number per model."""
    config = resolved_test_config()
    hashes = stage_hashes(config)
    for stage, ablation, name in [("deterministic", None, "deterministic"), ("residual", None, "residual"),
                                  ("deterministic", "no_priors", "ablation_no_priors")]:
        params = yaml.safe_load(yaml.safe_dump(training_config(config, stage, ablation)))  # as the CLI reads them
        assert TrainConfig.from_config(params, stage).hash == hashes[name]
    assert TrainConfig.from_config(config, "residual").hash == hashes["residual"]  # the resolved config: the same


def test_no_physics_loss_zeroes_the_physics_weights_and_keeps_the_rest():
    config = edited(resolved_test_config(), "loss.ramp", [0.25, 0.5])
    loss = training_config(config, "deterministic", "no_physics_loss")["loss"]
    assert {term: loss[term]["weight"] for term in ("stability", "gradient", "coupling")} == dict.fromkeys(
        ("stability", "gradient", "coupling"), 0.0)
    assert loss["charbonnier"] == config["loss"]["charbonnier"] and loss["ramp"] == [0.25, 0.5]


def rule_params() -> dict[str, tuple[str, set[str]]]:
    """Each rule run by a script: its script path and the names of its params, read from the rule files."""
    rules = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"^(?=rule |use rule )", smk.read_text(), flags=re.M):
            name = re.match(r"(?:use )?rule (\w+)", block)
            script = re.search(r"^    script:\n\s+\"([^\"]+)\"", block, flags=re.M)
            params = re.search(r"^    params:\n((?:        .*\n)+)", block, flags=re.M)
            if name and script and params:
                names = set(re.findall(r"^        (\w+)=", params.group(1), flags=re.M))
                rules[name.group(1)] = ((smk.parent / script.group(1)).resolve(), names)
    return rules


def test_every_param_of_a_script_rule_is_read_by_its_script():
    rules = rule_params()
    assert {"download", "statics", "regrid", "regrid_weights", "priors", "sample", "baselines"} <= set(rules)
    for rule, (script, names) in rules.items():
        text = script.read_text()
        unread = sorted(n for n in names if f"snakemake.params.{n}" not in text)
        assert unread == [], f"rule {rule}: params {unread} are never read by {script.name}"
