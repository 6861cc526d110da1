"""Validation scores of a model of either stage, in K, on a store where the truth is present."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from geodiff.data.loader import StoreDataset
from geodiff.device import batch_to
from geodiff.model.networks import truth_mask

VALIDATION_SIGMAS = (0.1, 0.5, 1.0, 2.0)
"""Noise levels σ (scaled residual units, σd = 1) at which the residual model's denoising is scored."""
VALIDATION_SEED = 0
"""Seed of the validation noise, so that scores of two models compare the same draws."""


@torch.no_grad()
def validate(stage, model, deterministic, val_path, prior_names, device) -> dict[str, float]:
    """Scores (K) on the validation store where the truth is present.

    Deterministic stage: ``rmse_K``, the U-Net's RMSE. Residual stage: the RMSE of the
    denoised residual, D(r̃ + σ n; σ) − r̃ (EDM eq. 2, scaled units r̃ = r/s_l) brought back
    to K, at each σ of :data:`VALIDATION_SIGMAS` (``denoise_rmse_K_sigma<σ>``) and over all
    of them (``denoise_rmse_K``); the noise n ~ N(0, I) is drawn from :data:`VALIDATION_SEED`.
    """
    dataset = StoreDataset(val_path, prior_names, position=model.arch["position"])
    std = torch.from_numpy(dataset.t_std).to(device)
    model.eval()
    if stage == "deterministic":
        sq, count = 0.0, 0.0
        for batch in DataLoader(dataset, batch_size=8):
            batch = batch_to(batch, device)
            mask = truth_mask(batch)
            err = (model(batch["lr_up"], batch["static"], batch["priors"]) - batch["hr"]) * mask
            sq += float(((err[:, 0] * std) ** 2).sum())
            count += float(mask.sum())
        return {"rmse_K": math.sqrt(sq / count)}
    generator = torch.Generator(device).manual_seed(VALIDATION_SEED)
    sq = dict.fromkeys(VALIDATION_SIGMAS, 0.0)
    count = 0.0
    for batch in DataLoader(dataset, batch_size=8):
        batch = batch_to(batch, device)
        mask = truth_mask(batch)
        det = deterministic(batch["lr_up"], batch["static"], batch["priors"])
        r, cond = model.scale(batch["hr"] - det), model.condition(det, batch)
        for sigma in VALIDATION_SIGMAS:
            n = torch.randn(r.shape, generator=generator, device=device)
            err = model.unscale(model(r + sigma * n, torch.full((r.shape[0],), sigma, device=device), cond,
                                      batch["priors"]) - r) * mask
            sq[sigma] += float(((err[:, 0] * std) ** 2).sum())
        count += float(mask.sum())
    metrics = {f"denoise_rmse_K_sigma{sigma:g}": math.sqrt(value / count) for sigma, value in sq.items()}
    metrics["denoise_rmse_K"] = math.sqrt(sum(sq.values()) / (count * len(VALIDATION_SIGMAS)))
    return metrics
