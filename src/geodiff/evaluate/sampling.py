"""The GeoDiff ensemble on a split: one deterministic field plus M residual draws."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader
from tqdm import tqdm

from geodiff.data.loader import StoreDataset
from geodiff.data.store import store_coords, store_info
from geodiff.evaluate.fields import write_prediction
from geodiff.evaluate.metrics import MEMBER
from geodiff.model.edm import SAMPLERS, Guide, edm_time_steps, sample_ensemble
from geodiff.model.losses import instability, stability_of
from geodiff.model.networks import load_model
from geodiff.device import bf16_autocast, resolve_device

log = logging.getLogger(__name__)

MIN_MEMBERS = 2
"""Fewest members an ensemble may have: its spread and fair CRPS need two."""


def check_members(members: int) -> None:
    """Refuse an ensemble size nothing can score (fewer than :data:`MIN_MEMBERS`)."""
    if members < MIN_MEMBERS:
        raise ValueError(f"ensemble members must be >= {MIN_MEMBERS} (spread and fair CRPS need two), got {members}")


def stability_guide(weight: float, below: float, to_kelvin: Callable[[torch.Tensor], torch.Tensor],
                    p_hpa: torch.Tensor, sigma_ref: torch.Tensor) -> Guide:
    """Stability-aware sampling: at noise levels t <= `below` (the last sampler steps), each sample's
    denoised estimate x̂ (a row of the batch) takes the step x̂ − w I/|∇I|² ∇I, with I the sum over the
    sample of :func:`geodiff.model.losses.instability` of T = `to_kelvin`(x̂) (K): σ < 0 where the
    reference σ, `sigma_ref` of the coarse input, is positive, relative to it.

    The step is Polyak's: for one unstable point whose σ is linear in x̂, I is quadratic and w = 2
    removes it in one step, w = 1 halves it, so weights are of order 1 whatever the units (a
    plain gradient step diverges or does nothing depending on the scale of σ). The gradient is of the physics only, not of the
    network (autograd through :mod:`geodiff.physics.thermo`). With `weight` 0 the sampler is
    unchanged, bit for bit.
    """

    def guide(denoised: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t > below:
            return denoised
        with torch.enable_grad(), torch.autocast(denoised.device.type, enabled=False):  # physics in float64
            x = denoised.detach().requires_grad_(True)
            per_sample = instability(to_kelvin(x), p_hpa, sigma_ref).flatten(1).sum(1)
            (grad,) = torch.autograd.grad(per_sample.sum(), x)
        norm2 = grad.flatten(1).square().sum(1).clamp_min(torch.finfo(grad.dtype).tiny)
        step = (per_sample.detach() / norm2).reshape(-1, *[1] * (grad.dim() - 1))
        return denoised - weight * step * grad

    return guide


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
    guidance: Mapping[str, float] | None = None,
) -> xr.DataArray:
    """Temperature ensemble [member, time, level, lat, lon], K (first `limit` samples if given).

    `sampler` names one of :data:`geodiff.model.edm.SAMPLERS`; at least two `members`. With
    `guidance` (config `evaluate.guidance`: `stability` weight, `last_steps`), the sampler is
    guided toward the coarse input's static stability (:func:`stability_guide`)."""
    check_members(members)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: one of {sorted(SAMPLERS)}")
    device = resolve_device(device, 0)
    deterministic = load_model(deterministic_path, device).eval()
    residual = load_model(residual_path, device).eval()
    dataset = StoreDataset(store_path, deterministic.prior_names, position=deterministic.arch["position"])
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    generator = torch.Generator(device).manual_seed(seed)
    p_hpa = torch.as_tensor(store_info(store_path)["levels"], device=device)
    below = float(edm_time_steps(steps, residual.sigma_min, residual.sigma_max)[steps - guidance["last_steps"]]) if guidance else 0.0
    out = []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="sample", unit="batch", mininterval=5):
        batch = {k: v.to(device) for k, v in batch.items()}
        det = deterministic(batch["lr_up"], batch["static"], batch["priors"])
        cond = residual.condition(det, batch)
        guide = None
        if guidance:
            det_m = det.double().repeat(members, 1, 1, 1, 1)  # member m of sample b is row m·B + b
            sigma_ref = stability_of(deterministic.denormalise(batch["lr_up"][:, 0]).double(), p_hpa).repeat(members, 1, 1, 1)
            guide = stability_guide(guidance["stability"], below,
                                    lambda x: deterministic.denormalise((det_m + residual.unscale(x))[:, 0]), p_hpa, sigma_ref)
        with bf16_autocast(device):  # the residual network only: ŷ stays the float32 deterministic baseline
            draws = sample_ensemble(residual, cond, batch["priors"], members, sampler, num_steps=steps,
                                    S_churn=s_churn, generator=generator, guide=guide)
        draws = residual.unscale(draws)
        out.append(deterministic.denormalise((det.unsqueeze(0) + draws)[:, :, 0]).cpu())
    coords = store_coords(store_path)
    if limit is not None:
        coords["time"] = coords["time"][: len(dataset)]
    return xr.DataArray(torch.cat(out, dim=1).numpy(), dims=(MEMBER, *coords), coords={**coords, MEMBER: np.arange(members)})


def write_ensemble(
    store_path: str, deterministic_path: str, residual_path: str, out_path: str, members: int,
    steps: int = 18, s_churn: float = 0.0, seed: int = 0, device: str = "auto", sampler: str = "scaled",
    guidance: Mapping[str, float] | None = None, attrs: Mapping[str, str] | None = None,
) -> None:
    """Sample the ensemble (at least two members) on a split and write it as CF NetCDF, as method
    `geodiff`, or `geodiff_guided` with `guidance`; `attrs` (provenance, see
    `geodiff.provenance.provenance_attrs`) join its global attributes."""
    start = time.perf_counter()
    t = ensemble_prediction(store_path, deterministic_path, residual_path, members, steps, s_churn, seed, device,
                            sampler=sampler, guidance=guidance)
    seconds = time.perf_counter() - start
    log.info("ensemble of %d members, %d samples, %s sampler, %d steps, guidance %s: %.1f s",
             members, t.sizes["time"], sampler, steps, dict(guidance) if guidance else "none", seconds)
    extra = {f"guidance_{k}": v for k, v in (guidance or {}).items()}
    write_prediction(t, "geodiff_guided" if guidance else "geodiff", store_path, out_path, **(attrs or {}), members=members,
                     sampler=sampler, sampler_steps=steps, s_churn=s_churn, sampling_seconds=round(seconds, 2), **extra)
