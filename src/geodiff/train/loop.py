"""The training loop shared by both stages: deterministic U-Net and EDM residual model.

Runs alone, under torchrun, srun or mpirun (see `geodiff.train.distributed`), with
gradient clipping, AMP (bfloat16) on GPUs and bfloat16-capable CPUs, EMA weights for the
diffusion model, TensorBoard logs and tqdm progress on rank 0, and atomic resumable
checkpoints that carry everything needed to continue.

The run is the same whatever the number of ranks: ``train.batch_size`` is the global
batch, split evenly across the W ranks; :class:`geodiff.train.sampler.EpochSampler` gives
them together the samples one process would take; every random draw of a sample (its
crop, its diffusion noise) comes from its own seed (:func:`geodiff.data.loader.sample_seed`),
and DDP averages the ranks' gradients. W ranks end with the weights of one process up to
float32 rounding of the sums (tests/test_scale_out.py states the tolerance).

Checkpoints go to `<out>.ckpt/step-<step>_epoch-<epoch>.pt` every ``checkpoint_every``
steps and at the last step; the last ``keep_checkpoints`` are kept (also after the run,
so that ``geodiff evaluate --model_path --epoch_num`` can score them). A rerun resumes
from the newest readable one, mid-epoch included, and ends bit-identical on CPU to a run
that was never killed: weights, EMA, optimiser, schedule and the data order are restored,
and no draw depends on a global random generator.

A checkpoint is resumed only when it was written with the same training settings
(:func:`geodiff.train.config.stage_hash`), on the same training store (its SHA-256: data, grid,
levels and priors) and, for the residual stage, with the same deterministic model;
otherwise the folder is moved aside to `<out>.ckpt.stale-<its hash>` (never deleted) and the
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
from torch.utils.data import DataLoader
from tqdm import tqdm

from geodiff import __version__
from geodiff.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from geodiff.data.loader import StoreDataset
from geodiff.data.store import store_info
from geodiff.device import batch_to, bf16_autocast
from geodiff.model.edm import EMA, edm_loss, per_sample_normal
from geodiff.model.losses import PhysicsLoss, masked_mean
from geodiff.model.networks import build_model, load_model, residual_scale, truth_mask
from geodiff.train.config import STAGES, RunSettings, TrainConfig
from geodiff.train.checkpoints import checkpoint_dir, checkpoint_name, checkpoints
from geodiff.train.distributed import DistContext, cleanup, init_distributed, is_main
from geodiff.train.sampler import EpochSampler
from geodiff.train.validation import validate

log = logging.getLogger(__name__)

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
    sampler: EpochSampler
    batches_per_epoch: int  # optimiser steps per pass over the training data
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
    keep_checkpoints: int | None = None,
) -> dict:
    """Train one stage and write its model file (rank 0); returns final validation metrics.

    `config` is the validated config (see :mod:`geodiff.train.config`); `device`,
    `checkpoint_every` and `keep_checkpoints` override its train.* keys of the same names.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    if stage == "residual" and deterministic_path is None:
        raise ValueError("the residual stage needs the deterministic model file (deterministic_path)")
    cfg = TrainConfig.from_config(config, stage)
    settings = RunSettings.resolve(config, device, checkpoint_every, keep_checkpoints)
    ctx = init_distributed(settings.device)
    try:
        run = _build(stage, cfg, ctx, train_path, deterministic_path)
        ckpt_dir = checkpoint_dir(out_path)
        _resume(run, ckpt_dir)
        _loop(run, ckpt_dir, logdir, settings)
        return _finish(run, val_path, out_path, config, logdir)
    finally:
        cleanup()


def _build(stage: str, cfg: TrainConfig, ctx: DistContext, train_path: str, deterministic_path: str | None) -> Run:
    """Data, model (with the store's statistics), optimiser, schedule, EMA and loss of a fresh run."""
    seed_everything(cfg.seed)  # the initial weights: DDP also broadcasts rank 0's
    prior_names = list(cfg.prior_names)
    dataset = StoreDataset(train_path, prior_names, crop=cfg.crop, seed=cfg.seed, position=cfg.position)
    _check_stats(train_path, dataset)
    sampler = EpochSampler(dataset, ctx.world_size, ctx.rank, seed=cfg.seed)
    batch_size = min(rank_batch_size(cfg.batch_size, ctx.world_size), len(sampler))
    loader = DataLoader(dataset, batch_size, sampler=sampler, drop_last=True, num_workers=1, persistent_workers=True)
    levels = store_info(train_path)["levels"]
    mean, std = torch.from_numpy(dataset.t_mean.ravel()), torch.from_numpy(dataset.t_std.ravel())

    model = build_model(stage, len(levels), len(prior_names), cfg.width, cfg.depth, cfg.position, cfg.norm)
    model.t_mean.copy_(mean)
    model.t_std.copy_(std)
    model.prior_names = prior_names
    deterministic = None
    resume_key = {"config_hash": cfg.hash, "train_sha256": file_digest(train_path)}  # same settings, same data
    if stage == "residual":
        deterministic = load_model(deterministic_path, ctx.device).eval()
        model.r_scale.copy_(residual_scale(deterministic, DataLoader(dataset, batch_size * ctx.world_size), ctx.device))
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
        physics = PhysicsLoss(cfg.loss_weights, cfg.charbonnier_eps, levels, mean, std, cfg.loss_ramp).to(ctx.device)
    else:
        ema = EMA(model, decay=cfg.ema_decay)
    return Run(stage, cfg, ctx, train_path, loader, sampler, len(loader), levels, model, net, optimizer, scheduler,
               ema, physics, deterministic, resume_key)


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch ``train.batch_size``; it must split evenly."""
    if batch_size % world_size:
        raise ValueError(f"train.batch_size = {batch_size} (the global batch) does not split evenly across "
                         f"{world_size} ranks: choose a multiple of {world_size}")
    return batch_size // world_size


def _check_stats(path: str, dataset: StoreDataset) -> None:
    """Refuse normalisation statistics that are not finite, or standard deviations that are not positive."""
    stats = {"t": (dataset.t_mean, dataset.t_std), **dict(zip(dataset.prior_names, dataset.prior_stats))}
    for name, (mean, std) in stats.items():
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"{path}: the statistics stats/{name}/mean, std are not finite and positive "
                             f"(mean {np.ravel(mean)}, std {np.ravel(std)}): NaN or inf in the train split; "
                             "rebuild the store")


def _latest_state(ckpt_dir: Path, device: str) -> dict | None:
    """The newest readable checkpoint in `ckpt_dir` (an unreadable one is logged and skipped), or None."""
    for _, _, path in reversed(checkpoints(ckpt_dir)):
        try:
            return load_checkpoint(path, map_location=device)
        except CheckpointError as err:
            log.warning("skipping an unreadable checkpoint: %s", err)
    return None


def _resume(run: Run, ckpt_dir: Path) -> None:
    """Continue from the newest checkpoint in `ckpt_dir` when it matches the run's settings; move a stale folder aside."""
    state = _latest_state(ckpt_dir, run.ctx.device)
    if state is None:
        return
    found = {key: state.get(key) for key in run.resume_key}
    if run.ctx.distributed:
        dist.barrier()  # every rank has read the checkpoint before rank 0 may move it
    if found != run.resume_key:
        if is_main(run.ctx):
            stale = _stale_name(ckpt_dir, state.get("config_hash"))
            ckpt_dir.rename(stale)
            log.warning("%s was written with other settings (%s, now %s): moved to %s; %s starts from step 0",
                        ckpt_dir, found, run.resume_key, stale, run.stage)
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
    log.info("resumed %s from step %d (%s)", run.stage, run.step, ckpt_dir)


def _stale_name(ckpt_dir: Path, digest: str | None) -> Path:
    """`<ckpt>.stale-<hash>`, with a counter when that name is taken (nothing is overwritten)."""
    base = f"{ckpt_dir}.stale-{digest or 'unknown'}"
    candidate, n = Path(base), 1
    while candidate.exists():
        candidate, n = Path(f"{base}.{n}"), n + 1
    return candidate


def _loop(run: Run, ckpt_dir: Path, logdir: str, settings: RunSettings) -> None:
    """Optimiser steps from `run.step` to the stage's total, with checkpoints, logs and progress on rank 0.

    Epoch e (from 0) takes steps e·n to (e+1)·n - 1 (n batches per epoch); a resumed run
    starts its epoch at the sample the killed one had reached.
    """
    total = run.cfg.steps
    main = is_main(run.ctx)
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(logdir)
    progress = tqdm(total=total, initial=run.step, desc=f"train {run.stage}", disable=not main, mininterval=5)
    autocast = bf16_autocast(run.ctx.device, run.cfg.amp)
    epoch, done = divmod(run.step, run.batches_per_epoch)
    run.model.train()
    try:
        while run.step < total:
            run.sampler.set_epoch(epoch, skip=done * run.loader.batch_size)
            done = 0
            for batch in run.loader:
                if run.step >= total:
                    break
                loss, grad_norm, terms = _step(run, batch_to(batch, run.ctx.device), autocast)
                progress.update()
                if writer is not None and run.step % 10 == 0:
                    for name, value in {"loss": loss, "grad_norm": grad_norm, **terms}.items():
                        writer.add_scalar(f"{run.stage}/{name}", float(value), run.step)
                    writer.add_scalar(f"{run.stage}/lr", run.scheduler.get_last_lr()[0], run.step)
                    progress.set_postfix(loss=f"{float(loss):.4f}")
                if main and (run.step % settings.checkpoint_every == 0 or run.step == total):
                    _save_checkpoint(run, ckpt_dir, epoch + 1, settings.keep_checkpoints)
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
        return run.physics(pred[:, 0], batch["hr"][:, 0], batch.get("z"), mask[:, 0], run.step / run.cfg.steps)
    with torch.no_grad():
        det = run.deterministic(batch["lr_up"], batch["static"], batch["priors"])
    r = run.model.scale(batch["hr"] - det)
    normal = per_sample_normal(batch["seed"], run.ctx.device)  # the sample's own noise, whatever its rank
    loss = masked_mean(edm_loss(run.net, r, run.model.condition(det, batch), batch["priors"], normal=normal), mask)
    return loss, {"edm": loss.detach()}


def _save_checkpoint(run: Run, ckpt_dir: Path, epoch: int, keep: int) -> None:
    """Write the run's state after its current step (taken in `epoch`, from 1); keep the newest `keep` checkpoints."""
    save_checkpoint(ckpt_dir / checkpoint_name(run.step, epoch), {
        **run.resume_key, "arch": run.model.arch, "prior_names": list(run.cfg.prior_names),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "ema": None if run.ema is None else run.ema.state_dict(), "rng": rng_state(), "step": run.step,
        "epoch": epoch,
    })
    for _, _, old in checkpoints(ckpt_dir)[:-keep]:
        old.unlink()


def _finish(run: Run, val_path: str, out_path: str, config: dict, logdir: str) -> dict:
    """Validate the final weights (EMA for the residual model) and write the model file (rank 0)."""
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
    return metrics
