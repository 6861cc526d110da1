"""Config validation: unknown keys named with the nearest valid one, cross-field errors before any job."""

from pathlib import Path

import pytest
import yaml

from geodiff.workflow import ConfigError, check_config, check_keys
from workflow_run import ROOT, config_variant, copy_workflow, snakemake

SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "era5.yaml", "alpine.yaml"])
def test_shipped_configs_pass(name):
    config = load(name)
    check_keys(config, SCHEMA)
    check_config(config)


def test_every_schema_object_refuses_unknown_keys():
    def objects(node, where="<root>"):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield where, node
            for key, value in node.items():
                yield from objects(value, f"{where}.{key}")

    found = list(objects(yaml.safe_load(SCHEMA.read_text())))
    assert len(found) > 10
    # a mapping of the user's names (downscale.inputs) holds objects that refuse unknown keys themselves
    named = [w for w, node in found if isinstance(node.get("additionalProperties"), dict)]
    assert named == ["<root>.properties.downscale.properties.inputs"]
    assert [w for w, node in found if node.get("additionalProperties") is not False and w not in named] == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.update(trian=c.pop("train")), "unknown key 'trian': did you mean 'train'?"),
        (
            lambda c: c["evaluate"].update(ensemble_sizes=c["evaluate"].pop("ensemble_size")),
            "unknown key 'evaluate.ensemble_sizes': did you mean 'evaluate.ensemble_size'?",
        ),
        (lambda c: c["splits"]["val"].update(stop="2001-02-28"), "unknown key 'splits.val.stop'"),
        (lambda c: c["grid"]["hr"].update(resolutoin=0.5), "did you mean 'grid.hr.resolution'?"),
    ],
)
def test_unknown_key_is_named_with_the_nearest_valid_one(edit, expected):
    config = load("test.yaml")
    edit(config)
    with pytest.raises(ConfigError, match="unknown key") as err:
        check_keys(config, SCHEMA)
    assert expected in str(err.value)


BAD = {
    # name: (replacements in config/test.yaml, text the error must contain)
    "typo": ([("train:\n", "trian:\n")], "unknown key 'trian': did you mean 'train'?"),
    "nested_typo": (
        [("ensemble_size: 3", "ensemble_sizes: 3")],
        "unknown key 'evaluate.ensemble_sizes': did you mean 'evaluate.ensemble_size'?",
    ),
    "scale_factor": ([("scale_factor: 4", "scale_factor: 3")], "grid.scale_factor 3 does not divide the 16 lat cells"),
    "box_reversed": ([("lat: [40.0, 44.0]", "lat: [44.0, 40.0]")], "grid.hr.lat [44.0, 40.0]: bounds reversed"),
    "box_cells": (
        [("lon: [0.0, 4.0]", "lon: [0.0, 4.1]")],
        "grid.hr.lon [0.0, 4.1]: 4.1 degrees is not a whole number of grid.hr.resolution 0.25 cells",
    ),
    "levels_ascending": (
        [("levels: [1000, 850, 700, 500, 300]", "levels: [300, 500, 700, 850, 1000]")],
        "must go from the surface upward (decreasing hPa), but 500 follows 300",
    ),
    "levels_duplicated": (
        [("levels: [1000, 850, 700, 500, 300]", "levels: [1000, 850, 850, 500, 300]")],
        "850 hPa listed more than once",
    ),
    "split_outside_period": (
        [('test:  {start: "2001-03-01", end: "2001-03-10"}', 'test:  {start: "2001-03-01", end: "2001-04-10"}')],
        "splits.test lies outside data.period 2001-01..2001-03",
    ),
    "test_shift_overlap": (
        [('test_shift: {start: "2001-03-11"', 'test_shift: {start: "2001-03-08"')],
        "splits.test and splits.test_shift overlap",
    ),
    "guidance_steps": (
        [("last_steps: 2", "last_steps: 7")],
        "evaluate.guidance.last_steps 7 exceeds evaluate.sampler_steps 6",
    ),
    "constraint": ([("constraint: additive", "constraint: multiplicative")], "multiplicative"),
    "crop": ([("  batch_size: 4\n", "  batch_size: 4\n  crop: 6\n")], "train.crop 6 is not a multiple of grid.scale_factor 4"),
    "map_level": ([("map_level: 850", "map_level: 900")], "evaluate.map_level 900 hPa is not one of the levels"),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_stops_the_dry_run_naming_the_key(repo, name):
    replacements, expected = BAD[name]
    proc = snakemake(repo, "-n", "--configfile", config_variant(repo, name, replacements), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert expected in out, out[-2000:]
    assert "rule download" not in out and not (repo / "results").exists()
