"""GRIB through cfgrib in a fresh interpreter: right values, and a clean exit.

Some ecCodes wheels crash when the interpreter exits (eccodeslib 2.50.0.33; and
eckitlib >= 2.3, bundled with eccodeslib >= 2.48, ships its own libproj, loaded
globally, which frees memory twice at exit once pyproj, e.g. through MetPy's
xarray backend, is loaded too). Every rule script that reads GRIB would then
fail with exit code 134 after doing its work, so the exit code is what this checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
needs_real = pytest.mark.skipif(
    not REAL.is_dir() and not os.environ.get("CI"), reason="real sample data ../shared/data/real not present"
)

READER = """
import importlib.util, json, sys
import xarray as xr
ds = xr.open_dataset(sys.argv[1], engine="cfgrib", backend_kwargs={"indexpath": ""})
t = ds["t"].sel(number=0).isel(time=0)
out = {
    "shape": list(ds["t"].shape),
    "t_mean": float(ds["t"].mean()),
    "z_mean": float(ds["z"].mean()),
    "t500_45n_6e": float(t.sel(isobaricInhPa=500, latitude=45, longitude=6)),
    "t850_0n_0e": float(t.sel(isobaricInhPa=850, latitude=0, longitude=0)),
}
if importlib.util.find_spec("pyproj") is not None:
    import pyproj  # loaded by MetPy's xarray backend in the test and workflow environments anyway
print(json.dumps(out))
"""


@needs_real
def test_cfgrib_reads_real_era5_grib_and_exits_cleanly(tmp_path: Path) -> None:
    """ERA5 t/z (10 members x 4 times x 2 levels, 3 deg) decoded in a subprocess that exits with 0."""
    path = REAL / "era5" / "era5-levels-members.grib"
    before = sorted(p.name for p in path.parent.iterdir())
    run = subprocess.run(
        [sys.executable, "-c", READER, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, f"exit code {run.returncode}; stderr tail: {run.stderr[-500:]}"
    assert "double free" not in run.stderr and "Segmentation" not in run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["shape"] == [10, 4, 2, 61, 120]
    assert out["t_mean"] == pytest.approx(262.92136, abs=1e-3)
    assert out["z_mean"] == pytest.approx(33869.543, abs=0.05)
    assert out["t500_45n_6e"] == pytest.approx(250.82629, abs=1e-3)
    assert out["t850_0n_0e"] == pytest.approx(291.16315, abs=1e-3)
    assert sorted(p.name for p in path.parent.iterdir()) == before  # no index file beside the data
    assert list(tmp_path.iterdir()) == []


@needs_real
def test_eccodes_alone_agrees_with_cfgrib(tmp_path: Path) -> None:
    """The first message decoded by ecCodes directly, in a subprocess, matches the known field."""
    code = (
        "import eccodes, json, sys\n"
        "f = open(sys.argv[1], 'rb'); h = eccodes.codes_grib_new_from_file(f)\n"
        "v = eccodes.codes_get_values(h)\n"
        "name, level = eccodes.codes_get(h, 'shortName'), eccodes.codes_get(h, 'level')\n"
        "print(json.dumps([name, level, float(v.mean()), v.size]))\n"
        "eccodes.codes_release(h)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(REAL / "era5" / "era5-levels-members.grib")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-500:]
    name, level, mean, size = json.loads(run.stdout.strip().splitlines()[-1])
    assert (name, level, size) == ("z", 500, 61 * 120)
    assert mean == pytest.approx(53995.2489, abs=1e-2)
