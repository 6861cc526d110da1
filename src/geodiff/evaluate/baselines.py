"""Baselines on a split: the interpolated coarse field, or the deterministic U-Net alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch.utils.data import DataLoader

from geodiff.data.loader import StoreDataset
from geodiff.data.store import read_field, store_coords
from geodiff.evaluate.fields import write_prediction
from geodiff.model.networks import load_model
from geodiff.device import resolve_device

log = logging.getLogger(__name__)

INTERPOLATIONS = ("bicubic", "bilinear")


@torch.no_grad()
def deterministic_prediction(model_path: str, store_path: str, device: str = "auto", batch_size: int = 8):
    """The U-Net's temperature [time, level, lat, lon], K."""
    import xarray as xr

    device = resolve_device(device, 0)
    model = load_model(model_path, device).eval()
    dataset = StoreDataset(store_path, model.prior_names, position=model.arch["position"])
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        pred = model(batch["lr_up"].to(device), batch["static"].to(device), batch["priors"].to(device))
        out.append(model.denormalise(pred[:, 0]).cpu())
    coords = store_coords(store_path)
    return xr.DataArray(torch.cat(out).numpy(), dims=tuple(coords), coords=coords)


def write_baseline(
    store_path: str, method: str, out_path: str, deterministic_path: str | None = None, device: str = "auto",
    attrs: Mapping[str, str] | None = None,
) -> None:
    """Write one baseline's prediction on a split as CF NetCDF; `attrs` (provenance, see
    `geodiff.provenance.provenance_attrs`) join its global attributes."""
    if method in INTERPOLATIONS:
        t = read_field(store_path, f"interp/{method}")
    elif method == "deterministic" or method.startswith("ablation_"):
        if deterministic_path is None:
            raise ValueError(f"the {method} baseline needs its U-Net model file")
        t = deterministic_prediction(deterministic_path, store_path, device)
    else:
        raise ValueError(f"unknown baseline {method!r}: {INTERPOLATIONS + ('deterministic', 'ablation_<name>')}")
    log.info("baseline %s on %s: %d samples", method, store_path, t.sizes["time"])
    write_prediction(t, method, store_path, out_path, **(attrs or {}))
