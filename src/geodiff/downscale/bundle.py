"""A trained model as one self-contained folder: the two model files and `bundle.json`.

`bundle.json` (written by the workflow's `bundle` rule beside `deterministic.pt` and
`residual.pt`, :func:`write_bundle`) holds what applying the models needs besides their
weights: the fine resolution and the scale factor, the levels, the prior names and the
upsampling method of the model input, the normalisation statistics of the priors and the
statics (those of temperature and the residual scales are buffers of the models; the
network config is their ``arch``), where statics for a new box come from (the run's data
source and seed), the hard constraint and the sampler's defaults, the version, the config
hash and each model file's SHA-256 (a bundle whose files were swapped is refused).

Nothing in it names the training box except as information (``train_box``): the networks
see only their input fields (config ``model.position``), so the bundle applies to any box
at its resolution.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geodiff import __version__
from geodiff.atomic import atomic_write
from geodiff.constants import BUNDLE, STATICS
from geodiff.data.store import read_stats, store_info
from geodiff.model.networks import load_model
from geodiff.provenance import config_hash

BUNDLE_FORMAT = 1
MODELS = ("deterministic", "residual")


def sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_bundle(out_path: str, config: dict, train_store: str, models: dict[str, str]) -> None:
    """Write `bundle.json` for the `models` ({stage: path}, in the folder of `out_path`) trained on
    `train_store`; `config` holds the keys of :func:`geodiff.workflow.bundle_config` of the validated config."""
    folder = Path(out_path).parent
    info = store_info(train_store)
    stats = read_stats(train_store, [*info["priors"], *STATICS])
    for stage, path in models.items():
        if Path(path).parent.resolve() != folder.resolve():
            raise ValueError(f"{path}: the {stage} model must lie in the bundle's folder {folder}")
    bundle = {
        "format": BUNDLE_FORMAT,
        "geodiff_version": __version__,
        "config_hash": config_hash(config),
        "run_name": config["run_name"],
        "models": {stage: {"file": Path(path).name, "sha256": sha256(path)} for stage, path in models.items()},
        "resolution": float(config["grid"]["hr"]["resolution"]),
        "scale_factor": int(config["grid"]["scale_factor"]),
        "train_box": {"lat": list(config["grid"]["hr"]["lat"]), "lon": list(config["grid"]["hr"]["lon"])},
        "levels": [float(v) for v in info["levels"]],
        "upsample": info["upsample"],
        "stats": {name: {"mean": np.ravel(m).tolist(), "std": np.ravel(s).tolist()} for name, (m, s) in stats.items()},
        "statics_source": {"seed": config["seed"], "data": config["data"]},
        "constraint": config["model"]["constraint"],
        "sampler": dict(config["evaluate"]),
    }
    with atomic_write(out_path) as tmp:
        Path(tmp).write_text(json.dumps(bundle, indent=1))


@dataclass
class Bundle:
    """A loaded bundle: the two models (eval mode, on `device`) and the fields of `bundle.json`."""

    folder: Path
    meta: dict
    deterministic: torch.nn.Module
    residual: torch.nn.Module

    @property
    def levels(self) -> np.ndarray:
        return np.asarray(self.meta["levels"], dtype=np.float64)

    @property
    def prior_names(self) -> list[str]:
        return list(self.deterministic.prior_names)

    @property
    def position(self) -> str:
        return str(self.deterministic.arch["position"])

    def stats(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of a prior ([L]) or a static ([1]) as the training store had them."""
        s = self.meta["stats"][name]
        return np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)


def load_bundle(folder: str | Path, device: str = "cpu") -> Bundle:
    """The bundle in `folder` (a run's `models/`); a missing file, or a model file that is not the one
    the bundle was written for, raises naming it."""
    folder = Path(folder)
    path = folder / BUNDLE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model bundle (the workflow's bundle rule writes it: "
                                f"snakemake results/<run>/models/{BUNDLE})")
    meta = json.loads(path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: bundle format {meta.get('format')!r}, this geodiff reads {BUNDLE_FORMAT}")
    loaded = {}
    for stage in MODELS:
        entry = meta["models"][stage]
        model_path = folder / entry["file"]
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: the {stage} model of {path} is missing")
        if sha256(model_path) != entry["sha256"]:
            raise ValueError(f"{model_path}: not the {stage} model {path} was written for (SHA-256 differs); "
                             "rerun the bundle rule")
        loaded[stage] = load_model(str(model_path), device).eval()
    return Bundle(folder, meta, loaded["deterministic"], loaded["residual"])
