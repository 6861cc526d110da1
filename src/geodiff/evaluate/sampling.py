"""The GeoDiff ensemble on a split: one deterministic field plus M residual draws."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader
from tqdm import tqdm

from geodiff.data.loader import StoreDataset
from geodiff.data.store import store_coords
from geodiff.evaluate.fields import write_prediction
from geodiff.evaluate.metrics import MEMBER
from geodiff.model.edm import SAMPLERS, sample_ensemble
from geodiff.model.networks import load_model
from geodiff.device import bf16_autocast, resolve_device

log = logging.getLogger(__name__)

MIN_MEMBERS = 2
"""Fewest members an ensemble may have: its spread and fair CRPS need two."""


def check_members(members: int) -> None:
    """Refuse an ensemble size nothing can score (fewer than :data:`MIN_MEMBERS`)."""
    if members < MIN_MEMBERS:
        raise ValueError(f"ensemble members must be >= {MIN_MEMBERS} (spread and fair CRPS need two), got {members}")


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
    sampler: str = "scaled",
) -> xr.DataArray:
    """Temperature ensemble [member, time, level, lat, lon], K (first `limit` samples if given).

    `sampler` names one of :data:`geodiff.model.edm.SAMPLERS`; at least two `members`."""
    check_members(members)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: one of {sorted(SAMPLERS)}")
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
            draws = sample_ensemble(residual, cond, batch["priors"], members, sampler, num_steps=steps,
                                    S_churn=s_churn, generator=generator)
        draws = residual.unscale(draws)
        out.append(deterministic.denormalise((det.unsqueeze(0) + draws)[:, :, 0]).cpu())
    coords = store_coords(store_path)
    if limit is not None:
        coords["time"] = coords["time"][: len(dataset)]
    return xr.DataArray(torch.cat(out, dim=1).numpy(), dims=(MEMBER, *coords), coords={**coords, MEMBER: np.arange(members)})


def write_ensemble(
    store_path: str, deterministic_path: str, residual_path: str, out_path: str, members: int,
    steps: int = 18, s_churn: float = 0.0, seed: int = 0, device: str = "auto", sampler: str = "scaled",
    attrs: Mapping[str, str] | None = None,
) -> None:
    """Sample the ensemble (at least two members) on a split and write it as CF NetCDF; `attrs`
    (provenance, see `geodiff.provenance.provenance_attrs`) join its global attributes."""
    t = ensemble_prediction(store_path, deterministic_path, residual_path, members, steps, s_churn, seed, device,
                            sampler=sampler)
    log.info("ensemble of %d members, %d samples, %s sampler, %d steps", members, t.sizes["time"], sampler, steps)
    write_prediction(t, "geodiff", store_path, out_path, **(attrs or {}), members=members, sampler=sampler, sampler_steps=steps,
                     s_churn=s_churn)
