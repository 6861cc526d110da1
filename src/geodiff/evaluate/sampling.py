"""The GeoDiff ensemble on a split: one deterministic field plus M residual draws."""

from __future__ import annotations

import logging

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader
from tqdm import tqdm

from geodiff.data.loader import StoreDataset
from geodiff.evaluate.fields import store_coords, write_prediction
from geodiff.evaluate.metrics import MEMBER
from geodiff.model.edm import sample_ensemble
from geodiff.model.networks import load_model
from geodiff.device import bf16_autocast, resolve_device

log = logging.getLogger(__name__)


@torch.no_grad()
def ensemble_prediction(
    store_path: str,
    deterministic_path: str,
    residual_path: str,
    members: int,
    steps: int = 18,
    s_churn: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 8,
    limit: int | None = None,
    space: str = "scaled",
) -> xr.DataArray:
    """Temperature ensemble [member, time, level, lat, lon], K (first `limit` samples if given).

    `space` is the sampler's (see :func:`geodiff.model.edm.edm_sampler`)."""
    device = resolve_device(device, 0)
    deterministic = load_model(deterministic_path, device).eval()
    residual = load_model(residual_path, device).eval()
    dataset = StoreDataset(store_path, deterministic.prior_names)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    generator = torch.Generator(device).manual_seed(seed)
    out = []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="sample", unit="batch", mininterval=5):
        batch = {k: v.to(device) for k, v in batch.items()}
        det = deterministic(batch["lr_up"], batch["static"], batch["priors"])
        cond = residual.condition(det, batch)
        with bf16_autocast(device):  # the residual network only: ŷ stays the float32 deterministic baseline
            draws = sample_ensemble(residual, cond, batch["priors"], members, num_steps=steps,
                                    S_churn=s_churn, generator=generator, space=space)
        draws = residual.unscale(draws)
        out.append(deterministic.denormalise((det.unsqueeze(0) + draws)[:, :, 0]).cpu())
    coords = store_coords(store_path)
    if limit is not None:
        coords["time"] = coords["time"][: len(dataset)]
    return xr.DataArray(torch.cat(out, dim=1).numpy(), dims=(MEMBER, *coords), coords={**coords, MEMBER: np.arange(members)})


def write_ensemble(
    store_path: str, deterministic_path: str, residual_path: str, out_path: str, members: int,
    steps: int = 18, s_churn: float = 0.0, seed: int = 0, device: str = "auto",
) -> None:
    """Sample the ensemble on a split and write it as CF NetCDF."""
    t = ensemble_prediction(store_path, deterministic_path, residual_path, members, steps, s_churn, seed, device)
    log.info("ensemble of %d members, %d samples, %d sampler steps", members, t.sizes["time"], steps)
    write_prediction(t, "geodiff", store_path, out_path, members=members, sampler_steps=steps, s_churn=s_churn)
