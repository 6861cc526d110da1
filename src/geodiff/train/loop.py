"""The training loop shared by both stages: deterministic U-Net and EDM residual model.

Runs alone, under torchrun, srun or mpirun (see `geodiff.train.distributed`), with a
DistributedSampler, gradient clipping, AMP (bfloat16) on GPUs and bfloat16-capable CPUs, EMA weights for the
diffusion model, TensorBoard logs and tqdm progress on rank 0, and atomic resumable
checkpoints (`<out>.ckpt`) that carry everything needed to continue.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from geodiff import __version__
from geodiff.data.loader import StoreDataset, store_info
from geodiff.model.edm import EMA, edm_loss
from geodiff.model.losses import PhysicsLoss
from geodiff.model.networks import build_model, load_model, residual_scale
from geodiff.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from geodiff.device import bf16_autocast
from geodiff.train.distributed import DistContext, cleanup, init_distributed, is_main

log = logging.getLogger(__name__)

STAGES = ("deterministic", "residual")


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


def train(
    stage: str,
    train_path: str,
    val_path: str,
    out_path: str,
    logdir: str,
    config: dict,
    deterministic_path: str | None = None,
) -> dict:
    """Train one stage and write its model file (rank 0); returns final validation metrics."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    tcfg = config["train"]
    ctx = init_distributed(tcfg.get("device", "auto"))
    try:
        return _train(stage, train_path, val_path, out_path, logdir, config, deterministic_path, ctx)
    finally:
        cleanup()


def _train(stage, train_path, val_path, out_path, logdir, config, deterministic_path, ctx: DistContext) -> dict:
    tcfg = config["train"]
    seed_everything(int(config["seed"]) + ctx.rank)
    use_priors = bool(config["model"].get("use_priors", True))
    prior_names = list(config["priors"]["names"]) if use_priors else []
    info = store_info(train_path)
    dataset = StoreDataset(train_path, prior_names, crop=tcfg.get("crop"))
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=int(config["seed"]), drop_last=True)
    batch_size = min(int(tcfg["batch_size"]), len(dataset) // ctx.world_size)
    loader = DataLoader(dataset, batch_size, sampler=sampler, drop_last=True, num_workers=1, persistent_workers=True)
    device = ctx.device
    total_steps = int(tcfg[f"{stage}_steps"])

    stats = dataset.t_mean.ravel(), dataset.t_std.ravel()
    model = build_model(stage, config, n_levels=len(info["levels"]), n_priors=len(prior_names))
    model.t_mean.copy_(torch.from_numpy(stats[0]))
    model.t_std.copy_(torch.from_numpy(stats[1]))
    deterministic = None
    if stage == "residual":
        deterministic = load_model(deterministic_path, device).eval()
        model.r_scale.copy_(residual_scale(deterministic, loader, device))
        log.info("residual RMS per level (normalised units): %s", model.r_scale.cpu().numpy().round(3))
    model.prior_names = prior_names
    model = model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None) if ctx.distributed else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(tcfg["lr"]), weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, total_steps))
    ema = EMA(model, decay=float(tcfg.get("ema_decay", 0.999)))
    autocast = bf16_autocast(device, bool(tcfg.get("amp", True)))
    physics = PhysicsLoss(config["loss"], info["levels"], torch.from_numpy(stats[0]), torch.from_numpy(stats[1])).to(device)

    ckpt_path = Path(f"{out_path}.ckpt")
    step = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        log.info("resumed %s from step %d (%s)", stage, step, ckpt_path)

    writer = None
    if is_main(ctx):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(logdir)
    progress = tqdm(total=total_steps, initial=step, desc=f"train {stage}", disable=not is_main(ctx), mininterval=5)
    epoch = step // max(1, len(loader))
    model.train()
    while step < total_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            if step >= total_steps:
                break
            batch = to_device(batch, device)
            with autocast:
                loss, terms = _stage_loss(stage, ddp, deterministic, physics, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg.get("grad_clip", 1.0)))
            optimizer.step()
            scheduler.step()
            ema.update(model)
            step += 1
            progress.update()
            if writer is not None and step % 10 == 0:
                writer.add_scalar(f"{stage}/loss", loss.item(), step)
                writer.add_scalar(f"{stage}/grad_norm", grad_norm.item(), step)
                writer.add_scalar(f"{stage}/lr", scheduler.get_last_lr()[0], step)
                for name, value in terms.items():
                    writer.add_scalar(f"{stage}/{name}", float(value), step)
                progress.set_postfix(loss=f"{loss.item():.4f}")
            if is_main(ctx) and (step % int(tcfg.get("checkpoint_every", 250)) == 0 or step == total_steps):
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "ema": ema.state_dict(), "rng": rng_state(), "step": step,
                })
        epoch += 1
    progress.close()

    final = ema.module if stage == "residual" else model
    metrics = {}
    if is_main(ctx):
        metrics = validate(stage, final, deterministic, val_path, prior_names, device)
        log.info("%s validation: %s", stage, metrics)
        for name, value in metrics.items():
            writer.add_scalar(f"{stage}/val_{name}", value, step)
        writer.close()
        save_checkpoint(out_path, {
            "stage": stage,
            "model": final.state_dict(),
            "arch": final.arch,
            "levels": torch.from_numpy(info["levels"]),
            "prior_names": prior_names,
            "config": config,
            "step": step,
            "val": metrics,
            "geodiff_version": __version__,
        })
        ckpt_path.unlink(missing_ok=True)
    return metrics


def _stage_loss(stage, net, deterministic, physics, batch):
    """Loss of one batch: physics-aware data fit (deterministic) or EDM denoising (residual)."""
    if stage == "deterministic":
        pred = net(batch["lr_up"], batch["static"], batch["priors"])
        return physics(pred[:, 0], batch["hr"][:, 0], batch.get("z"))
    with torch.no_grad():
        det = deterministic(batch["lr_up"], batch["static"], batch["priors"])
    model = getattr(net, "module", net)
    loss = edm_loss(net, model.scale(batch["hr"] - det), model.condition(det, batch), batch["priors"]).mean()
    return loss, {"edm": loss.detach()}


@torch.no_grad()
def validate(stage, model, deterministic, val_path, prior_names, device) -> dict[str, float]:
    """RMSE (K) on the validation store: of the U-Net, or of the residual model's one-step denoising."""
    dataset = StoreDataset(val_path, prior_names)
    std = torch.from_numpy(dataset.t_std).to(device)
    sq, count = 0.0, 0
    model.eval()
    for batch in DataLoader(dataset, batch_size=8):
        batch = to_device(batch, device)
        if stage == "deterministic":
            pred = model(batch["lr_up"], batch["static"], batch["priors"])
        else:
            pred = deterministic(batch["lr_up"], batch["static"], batch["priors"])
        sq += float((((pred - batch["hr"])[:, 0] * std) ** 2).sum())
        count += batch["hr"].numel()
    return {"rmse_K": math.sqrt(sq / count)}
