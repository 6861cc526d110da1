"""The settings of a training run, read once from the validated config.

:data:`STAGE_KEYS` lists, per stage, the config keys that shape its model and nothing
else; :func:`stage_config` selects them and :func:`stage_hash` hashes them. That one
hash is the training rule's params (the workflow passes exactly :func:`stage_config`),
the resumable checkpoint's key and the model file's ``config_hash``, so a model is
matched to its run by ``config.resolved.yaml``. :class:`TrainConfig` holds the stage's
settings typed; :class:`RunSettings` holds what only decides where and how safely the run
happens (device, checkpoint interval), outside the hash; the command line may set it.

The defaults live in ``workflow/schemas/config.schema.yaml`` only: the config given here
is the one validated against it (defaults filled in, as the workflow passes it, or a
run's ``config.resolved.yaml``). A missing key is an error naming the key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from geodiff.config_keys import config_value
from geodiff.provenance import config_hash

STAGES = ("deterministic", "residual")
_SHARED = ("seed", "priors.names", "model.use_priors", "model.depth", "model.position", "model.norm", "train.batch_size", "train.lr",
           "train.grad_clip", "train.amp", "train.crop")
STAGE_KEYS = {
    "deterministic": (*_SHARED, "model.width", "loss", "train.deterministic_steps"),
    "residual": (*_SHARED, "model.residual_width", "train.residual_steps", "train.ema_decay"),
}
"""Dotted config keys that shape each stage's model. The residual model also depends on the
deterministic model, through its input file (whose digest its checkpoint records)."""


def stage_config(config: dict, stage: str) -> dict:
    """The keys of :data:`STAGE_KEYS` for `stage`, nested as in `config` (a deep copy).

    Selecting from its own result gives it back, so the rule's params (this dict) and
    the full config give the same :func:`stage_hash`.
    """
    if stage not in STAGE_KEYS:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    out: dict = {}
    for key in STAGE_KEYS[stage]:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = copy.deepcopy(config_value(config, key))
    return out


def stage_hash(config: dict, stage: str) -> str:
    """`config_hash` of :func:`stage_config`: what the model file, the checkpoint and the run's
    ``config.resolved.yaml`` record for `stage`."""
    return config_hash(stage_config(config, stage))


@dataclass(frozen=True)
class TrainConfig:
    """The settings that shape one stage's model (:data:`STAGE_KEYS`); the other stage's are None."""

    stage: str  # deterministic | residual
    hash: str  # stage_hash of the config it was read from
    seed: int  # seed of initialisation and data shuffling (rank r uses seed + r)
    prior_names: tuple[str, ...]  # priors fed to the networks; empty when model.use_priors is false
    width: int  # channels at the finest scale of this stage's U-Net
    depth: int  # lat/lon down-sampling steps of the U-Net
    position: str  # what the networks know of a cell's position (model.position: none | latlon)
    norm: str  # feature normalisation of the U-Nets (model.norm: group | local)
    batch_size: int  # samples per optimiser step on each rank
    lr: float  # peak learning rate (AdamW, warm-up then cosine decay)
    steps: int  # optimiser steps of this stage
    grad_clip: float  # gradient-norm clip
    amp: bool  # bfloat16 autocast where the hardware computes in bfloat16 natively
    crop: int | None  # side of the random square training patches, fine cells (None: whole fields)
    loss_weights: dict[str, float] | None  # weight of each PhysicsLoss term (deterministic only)
    charbonnier_eps: float | None  # ε of every Charbonnier penalty, scaled units (deterministic only)
    loss_ramp: tuple[float, float] | None  # training fractions over which the physics weights ramp in (deterministic only)
    ema_decay: float | None  # EMA decay of the diffusion model's weights (residual only)

    @classmethod
    def from_config(cls, config: dict, stage: str) -> TrainConfig:
        """Read `stage`'s settings from a validated config or from its :func:`stage_config`."""
        keys = stage_config(config, stage)
        get = lambda key: config_value(keys, key)  # noqa: E731
        crop = get("train.crop")
        deterministic = stage == "deterministic"
        return cls(
            stage=stage,
            hash=config_hash(keys),
            seed=int(get("seed")),
            prior_names=tuple(get("priors.names")) if get("model.use_priors") else (),
            width=int(get("model.width" if deterministic else "model.residual_width")),
            depth=int(get("model.depth")),
            position=str(get("model.position")),
            norm=str(get("model.norm")),
            batch_size=int(get("train.batch_size")),
            lr=float(get("train.lr")),
            steps=int(get(f"train.{stage}_steps")),
            grad_clip=float(get("train.grad_clip")),
            amp=bool(get("train.amp")),
            crop=None if crop is None else int(crop),
            loss_weights={term: float(get(f"loss.{term}.weight"))
                          for term in ("charbonnier", "stability", "gradient", "coupling")} if deterministic else None,
            charbonnier_eps=float(get("loss.charbonnier.eps")) if deterministic else None,
            loss_ramp=tuple(float(f) for f in get("loss.ramp")) if deterministic else None,
            ema_decay=None if deterministic else float(get("train.ema_decay")),
        )


@dataclass(frozen=True)
class RunSettings:
    """Settings of one run that never change the trained model (outside :func:`stage_hash`)."""

    device: str  # auto | cpu | cuda
    checkpoint_every: int  # optimiser steps between resumable checkpoints
    keep_checkpoints: int  # newest checkpoints kept in <model>.ckpt/

    @classmethod
    def resolve(cls, config: dict, device: str | None = None, checkpoint_every: int | None = None,
                keep_checkpoints: int | None = None) -> RunSettings:
        """Command-line values first, then the config's train.device / train.checkpoint_every /
        train.keep_checkpoints (a validated config has them); neither is an error naming the key
        (the schema holds the defaults).

        The workflow keeps these out of the training params (changing them must not retrain)
        and passes them on the command line.
        """
        given = {"device": device, "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints}
        values = {name: value if value is not None else config_value(config, f"train.{name}")
                  for name, value in given.items()}
        for name in ("checkpoint_every", "keep_checkpoints"):
            if int(values[name]) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {values[name]}")
        return cls(str(values["device"]), int(values["checkpoint_every"]), int(values["keep_checkpoints"]))
