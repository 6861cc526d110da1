"""The settings of a training run, read once from the validated config.

:class:`TrainConfig` holds every setting that shapes a trained model; its
:attr:`TrainConfig.hash` goes into the resumable checkpoint and the model file, so a
checkpoint of other settings is never resumed. :class:`RunSettings` holds what only
decides where and how safely the run happens (device, checkpoint interval): it is
kept out of the hash, and the command line may set it.

The defaults live in ``workflow/schemas/config.schema.yaml``: the config given here
is the one validated against it (defaults filled in, as the workflow passes it, or a
run's ``config.resolved.yaml``). A missing key is an error naming the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from geodiff.provenance import config_hash

STAGES = ("deterministic", "residual")
DEFAULT_DEVICE = "auto"
"""Device when neither the command line nor the config sets one."""
DEFAULT_CHECKPOINT_EVERY = 250
"""Checkpoint interval when neither the command line nor the config sets one: the schema's default."""


def config_value(config: dict, key: str) -> Any:
    """The value of dotted `key` (``"train.lr"``) in `config`; a missing key raises naming it."""
    node: Any = config
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:i]) or "the top level"
            raise KeyError(f"config key {key!r} is missing ({part!r} not in {where}); pass the config validated "
                           "against workflow/schemas/config.schema.yaml, which fills in every default")
        node = node[part]
    return node


@dataclass(frozen=True)
class TrainConfig:
    """Every setting that shapes a trained model (both stages)."""

    seed: int  # seed of initialisation and data shuffling (rank r uses seed + r)
    prior_names: tuple[str, ...]  # priors fed to the networks; empty when model.use_priors is false
    width: int  # channels at the finest scale of the deterministic U-Net
    residual_width: int  # channels at the finest scale of the diffusion model's U-Net
    depth: int  # lat/lon down-sampling steps of both U-Nets
    charbonnier_weight: float  # weight of the Charbonnier data-fit term
    stability_weight: float  # weight of the static-stability term
    gradient_weight: float  # weight of the horizontal-gradient term
    coupling_weight: float  # weight of the hypsometric-coupling term
    charbonnier_eps: float  # ε of every Charbonnier penalty (scaled units of each term)
    batch_size: int  # samples per optimiser step on each rank
    lr: float  # peak learning rate (AdamW, warm-up then cosine decay)
    deterministic_steps: int  # optimiser steps of the U-Net
    residual_steps: int  # optimiser steps of the diffusion model
    ema_decay: float  # EMA decay of the diffusion model's weights
    grad_clip: float  # gradient-norm clip
    amp: bool  # bfloat16 autocast where the hardware computes in bfloat16 natively
    crop: int | None  # side of the random square training patches, fine cells (None: whole fields)

    @classmethod
    def from_config(cls, config: dict) -> TrainConfig:
        """Read the training settings from a validated config (see the module docstring)."""
        get = lambda key: config_value(config, key)  # noqa: E731
        crop = get("train.crop")
        return cls(
            seed=int(get("seed")),
            prior_names=tuple(get("priors.names")) if get("model.use_priors") else (),
            width=int(get("model.width")),
            residual_width=int(get("model.residual_width")),
            depth=int(get("model.depth")),
            charbonnier_weight=float(get("loss.charbonnier.weight")),
            stability_weight=float(get("loss.stability.weight")),
            gradient_weight=float(get("loss.gradient.weight")),
            coupling_weight=float(get("loss.coupling.weight")),
            charbonnier_eps=float(get("loss.charbonnier.eps")),
            batch_size=int(get("train.batch_size")),
            lr=float(get("train.lr")),
            deterministic_steps=int(get("train.deterministic_steps")),
            residual_steps=int(get("train.residual_steps")),
            ema_decay=float(get("train.ema_decay")),
            grad_clip=float(get("train.grad_clip")),
            amp=bool(get("train.amp")),
            crop=None if crop is None else int(crop),
        )

    @property
    def hash(self) -> str:
        """Hash of every field (:func:`geodiff.provenance.config_hash`): equal hashes, equal training."""
        return config_hash(asdict(self))

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each term of :class:`geodiff.model.losses.PhysicsLoss`."""
        return {"charbonnier": self.charbonnier_weight, "stability": self.stability_weight,
                "gradient": self.gradient_weight, "coupling": self.coupling_weight}

    def steps(self, stage: str) -> int:
        """Optimiser steps of `stage`."""
        return self.deterministic_steps if stage == "deterministic" else self.residual_steps

    def network_width(self, stage: str) -> int:
        """Channels at the finest U-Net scale of `stage`."""
        return self.width if stage == "deterministic" else self.residual_width


@dataclass(frozen=True)
class RunSettings:
    """Settings of one run that never change the trained model (outside :attr:`TrainConfig.hash`)."""

    device: str  # auto | cpu | cuda
    checkpoint_every: int  # optimiser steps between resumable checkpoints

    @classmethod
    def resolve(cls, config: dict, device: str | None = None, checkpoint_every: int | None = None) -> RunSettings:
        """Command-line values first, then the config's train.device / train.checkpoint_every, then the defaults.

        The workflow keeps both out of the training config (changing them must not retrain)
        and passes them on the command line.
        """
        train = config.get("train", {})
        device = device if device is not None else train.get("device", DEFAULT_DEVICE)
        every = checkpoint_every if checkpoint_every is not None else train.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
        if int(every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {every}")
        return cls(str(device), int(every))
