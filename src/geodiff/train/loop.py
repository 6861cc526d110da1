"""The training loop shared by both stages: deterministic U-Net and EDM residual model.

Runs alone, under torchrun, srun or mpirun (see `geodiff.train.distributed`), with a
DistributedSampler, gradient clipping, AMP (bfloat16) on GPUs and bfloat16-capable CPUs, EMA weights for the
diffusion model, TensorBoard logs and tqdm progress on rank 0, and atomic resumable
checkpoints (`<out>.ckpt`) that carry everything needed to continue.

A checkpoint is resumed only when it was written with the same training settings
(:func:`geodiff.train.config.stage_hash`), on the same training store (its SHA-256: data, grid,
levels and priors) and, for the residual stage, with the same deterministic model;
otherwise it is moved aside to `<out>.ckpt.stale-<its hash>` (never deleted) and the
training starts from step 0. A loss or gradient that turns non-finite stops the
training with :class:`TrainingDiverged` before the step is applied: no model file is
written and no checkpoint of the broken state.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from geodiff import __version__
from geodiff.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from geodiff.data.loader import StoreDataset
from geodiff.data.store import store_info
from geodiff.device import bf16_autocast
from geodiff.model.edm import EMA, edm_loss
from geodiff.model.losses import PhysicsLoss, masked_mean
from geodiff.model.networks import build_model, load_model, residual_scale, truth_mask
from geodiff.train.config import STAGES, RunSettings, TrainConfig
from geodiff.train.distributed import DistContext, cleanup, init_distributed, is_main

log = logging.getLogger(__name__)

VALIDATION_SIGMAS = (0.1, 0.5, 1.0, 2.0)
"""Noise levels σ (scaled residual units, σd = 1) at which the residual model's denoising is scored."""
VALIDATION_SEED = 0
"""Seed of the validation noise, so that scores of two models compare the same draws."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient of a training step is NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_lr(step: int, total: int, warmup: int = 50) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 5 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Run:
    """One stage's training: what :func:`_build` makes and the step functions advance."""

    stage: str
    cfg: TrainConfig
    ctx: DistContext
    train_path: str
    loader: DataLoader
    sampler: DistributedSampler
    levels: np.ndarray  # level pressures [L], hPa
    model: nn.Module
    net: nn.Module  # the model, wrapped in DistributedDataParallel when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None  # the diffusion model's averaged weights (residual stage only)
    physics: PhysicsLoss | None  # the data-fit loss (deterministic stage only)
    deterministic: nn.Module | None  # the frozen U-Net the residual stage corrects
    resume_key: dict  # what a checkpoint must match to be resumed
    step: int = 0


def train(
    stage: str,
    train_path: str,
    val_path: str,
    out_path: str,
    logdir: str,
    config: dict,
    deterministic_path: str | None = None,
    device: str | None = None,
    checkpoint_every: int | None = None,
) -> dict:
    """Train one stage and write its model file (rank 0); returns final validation metrics.

    `config` is the validated config (see :mod:`geodiff.train.config`); `device` and
    `checkpoint_every` override its train.device / train.checkpoint_every.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    if stage == "residual" and deterministic_path is None:
        raise ValueError("the residual stage needs the deterministic model file (deterministic_path)")
    cfg = TrainConfig.from_config(config, stage)
    settings = RunSettings.resolve(config, device, checkpoint_every)
    ctx = init_distributed(settings.device)
    try:
        run = _build(stage, cfg, ctx, train_path, deterministic_path)
        ckpt_path = Path(f"{out_path}.ckpt")
        _resume(run, ckpt_path)
        _loop(run, ckpt_path, logdir, settings.checkpoint_every)
        return _finish(run, val_path, out_path, ckpt_path, config, logdir)
    finally:
        cleanup()


def _build(stage: str, cfg: TrainConfig, ctx: DistContext, train_path: str, deterministic_path: str | None) -> Run:
    """Data, model (with the store's statistics), optimiser, schedule, EMA and loss of a fresh run."""
    seed_everything(cfg.seed + ctx.rank)
    prior_names = list(cfg.prior_names)
    dataset = StoreDataset(train_path, prior_names, crop=cfg.crop)
    _check_stats(train_path, dataset)
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    batch_size = min(cfg.batch_size, len(dataset) // ctx.world_size)
    loader = DataLoader(dataset, batch_size, sampler=sampler, drop_last=True, num_workers=1, persistent_workers=True)
    levels = store_info(train_path)["levels"]
    mean, std = torch.from_numpy(dataset.t_mean.ravel()), torch.from_numpy(dataset.t_std.ravel())

    model = build_model(stage, len(levels), len(prior_names), cfg.width, cfg.depth)
    model.t_mean.copy_(mean)
    model.t_std.copy_(std)
    model.prior_names = prior_names
    deterministic = None
    resume_key = {"config_hash": cfg.hash, "train_sha256": file_digest(train_path)}  # same settings, same data
    if stage == "residual":
        deterministic = load_model(deterministic_path, ctx.device).eval()
        model.r_scale.copy_(residual_scale(deterministic, loader, ctx.device))
        log.info("residual RMS per level (normalised units): %s", model.r_scale.cpu().numpy().round(3))
        resume_key["deterministic_sha256"] = file_digest(deterministic_path)
    model = model.to(ctx.device)
    device_ids = [ctx.device] if ctx.device.startswith("cuda") else None
    net = DistributedDataParallel(model, device_ids=device_ids) if ctx.distributed else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    total = cfg.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total))
    physics = ema = None
    if stage == "deterministic":
        physics = PhysicsLoss(cfg.loss_weights, cfg.charbonnier_eps, levels, mean, std).to(ctx.device)
    else:
        ema = EMA(model, decay=cfg.ema_decay)
    return Run(stage, cfg, ctx, train_path, loader, sampler, levels, model, net, optimizer, scheduler,
               ema, physics, deterministic, resume_key)


def _check_stats(path: str, dataset: StoreDataset) -> None:
    """Refuse normalisation statistics that are not finite, or standard deviations that are not positive."""
    stats = {"t": (dataset.t_mean, dataset.t_std), **dict(zip(dataset.prior_names, dataset.prior_stats))}
    for name, (mean, std) in stats.items():
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"{path}: the statistics stats/{name}/mean, std are not finite and positive "
                             f"(mean {np.ravel(mean)}, std {np.ravel(std)}): NaN or inf in the train split; "
                             "rebuild the store")


def _resume(run: Run, ckpt_path: Path) -> None:
    """Continue from `ckpt_path` when it matches the run's settings; move a stale one aside."""
    if not ckpt_path.exists():
        return
    state = load_checkpoint(ckpt_path, map_location=run.ctx.device)
    found = {key: state.get(key) for key in run.resume_key}
    if run.ctx.distributed:
        dist.barrier()  # every rank has read the checkpoint before rank 0 may move it
    if found != run.resume_key:
        if is_main(run.ctx):
            stale = _stale_name(ckpt_path, state.get("config_hash"))
            ckpt_path.rename(stale)
            log.warning("%s was written with other settings (%s, now %s): moved to %s; %s starts from step 0",
                        ckpt_path, found, run.resume_key, stale, run.stage)
        if run.ctx.distributed:
            dist.barrier()
        return
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    run.step = int(state["step"])
    log.info("resumed %s from step %d (%s)", run.stage, run.step, ckpt_path)


def _stale_name(ckpt_path: Path, digest: str | None) -> Path:
    """`<ckpt>.stale-<hash>`, with a counter when that name is taken (nothing is overwritten)."""
    base = f"{ckpt_path}.stale-{digest or 'unknown'}"
    candidate, n = Path(base), 1
    while candidate.exists():
        candidate, n = Path(f"{base}.{n}"), n + 1
    return candidate


def _loop(run: Run, ckpt_path: Path, logdir: str, checkpoint_every: int) -> None:
    """Optimiser steps from `run.step` to the stage's total, with checkpoints, logs and progress on rank 0."""
    total = run.cfg.steps
    main = is_main(run.ctx)
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(logdir)
    progress = tqdm(total=total, initial=run.step, desc=f"train {run.stage}", disable=not main, mininterval=5)
    autocast = bf16_autocast(run.ctx.device, run.cfg.amp)
    epoch = run.step // max(1, len(run.loader))
    run.model.train()
    try:
        while run.step < total:
            run.sampler.set_epoch(epoch)
            for batch in run.loader:
                if run.step >= total:
                    break
                loss, grad_norm, terms = _step(run, to_device(batch, run.ctx.device), autocast)
                progress.update()
                if writer is not None and run.step % 10 == 0:
                    for name, value in {"loss": loss, "grad_norm": grad_norm, **terms}.items():
                        writer.add_scalar(f"{run.stage}/{name}", float(value), run.step)
                    writer.add_scalar(f"{run.stage}/lr", run.scheduler.get_last_lr()[0], run.step)
                    progress.set_postfix(loss=f"{float(loss):.4f}")
                if main and (run.step % checkpoint_every == 0 or run.step == total):
                    _save_checkpoint(run, ckpt_path)
            epoch += 1
    finally:
        progress.close()
        if writer is not None:
            writer.close()


def _step(run: Run, batch: dict, autocast: torch.autocast) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One optimiser step; raises :class:`TrainingDiverged` (before updating) on a non-finite loss or gradient."""
    with autocast:
        loss, terms = _stage_loss(run, batch)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise TrainingDiverged(
            f"{run.stage} training diverged at step {run.step + 1}: loss {float(loss.detach()):.4g}, gradient norm "
            f"{float(grad_norm):.4g}. Likely causes: NaN or inf in the inputs or statistics of {run.train_path}, "
            f"or a learning rate too high (train.lr = {run.cfg.lr:g}). No model file was written.")
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    run.step += 1
    return loss.detach(), grad_norm, terms


def _stage_loss(run: Run, batch: dict) -> tuple[torch.Tensor, dict]:
    """Loss of one batch where the truth is present: physics-aware data fit (deterministic) or EDM denoising (residual)."""
    mask = truth_mask(batch)
    if run.stage == "deterministic":
        pred = run.net(batch["lr_up"], batch["static"], batch["priors"])
        return run.physics(pred[:, 0], batch["hr"][:, 0], batch.get("z"), mask[:, 0])
    with torch.no_grad():
        det = run.deterministic(batch["lr_up"], batch["static"], batch["priors"])
    r = run.model.scale(batch["hr"] - det)
    loss = masked_mean(edm_loss(run.net, r, run.model.condition(det, batch), batch["priors"]), mask)
    return loss, {"edm": loss.detach()}


def _save_checkpoint(run: Run, ckpt_path: Path) -> None:
    save_checkpoint(ckpt_path, {
        **run.resume_key, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "ema": None if run.ema is None else run.ema.state_dict(),
        "rng": rng_state(), "step": run.step,
    })


def _finish(run: Run, val_path: str, out_path: str, ckpt_path: Path, config: dict, logdir: str) -> dict:
    """Validate the final weights (EMA for the residual model), write the model file, drop the checkpoint (rank 0)."""
    if not is_main(run.ctx):
        return {}
    final = run.ema.module if run.stage == "residual" else run.model
    metrics = validate(run.stage, final, run.deterministic, val_path, list(run.cfg.prior_names), run.ctx.device)
    log.info("%s validation: %s", run.stage, metrics)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(logdir) as writer:
        for name, value in metrics.items():
            writer.add_scalar(f"{run.stage}/val_{name}", value, run.step)
    save_checkpoint(out_path, {
        "stage": run.stage,
        "model": final.state_dict(),
        "arch": final.arch,
        "levels": torch.from_numpy(run.levels),
        "prior_names": list(run.cfg.prior_names),
        "config": config,
        "train_config": asdict(run.cfg),
        "config_hash": run.cfg.hash,
        "step": run.step,
        "val": metrics,
        "geodiff_version": __version__,
    })
    ckpt_path.unlink(missing_ok=True)
    return metrics


@torch.no_grad()
def validate(stage, model, deterministic, val_path, prior_names, device) -> dict[str, float]:
    """Scores (K) on the validation store where the truth is present.

    Deterministic stage: ``rmse_K``, the U-Net's RMSE. Residual stage: the RMSE of the
    denoised residual, D(r̃ + σ n; σ) − r̃ (EDM eq. 2, scaled units r̃ = r/s_l) brought back
    to K, at each σ of :data:`VALIDATION_SIGMAS` (``denoise_rmse_K_sigma<σ>``) and over all
    of them (``denoise_rmse_K``); the noise n ~ N(0, I) is drawn from :data:`VALIDATION_SEED`.
    """
    dataset = StoreDataset(val_path, prior_names)
    std = torch.from_numpy(dataset.t_std).to(device)
    model.eval()
    if stage == "deterministic":
        sq, count = 0.0, 0.0
        for batch in DataLoader(dataset, batch_size=8):
            batch = to_device(batch, device)
            mask = truth_mask(batch)
            err = (model(batch["lr_up"], batch["static"], batch["priors"]) - batch["hr"]) * mask
            sq += float(((err[:, 0] * std) ** 2).sum())
            count += float(mask.sum())
        return {"rmse_K": math.sqrt(sq / count)}
    generator = torch.Generator(device).manual_seed(VALIDATION_SEED)
    sq = dict.fromkeys(VALIDATION_SIGMAS, 0.0)
    count = 0.0
    for batch in DataLoader(dataset, batch_size=8):
        batch = to_device(batch, device)
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
