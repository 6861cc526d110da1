"""The two GeoDiff models as trainable modules, their construction from config and loading.

* `DeterministicModel`: ŷ = x + U(x, statics, priors), with x the normalised
  interpolated coarse temperature (the U-Net learns the correction to the input).
* `ResidualModel`: the EDM-preconditioned denoiser D(r̃; σ, cond, priors) of the
  residual r = y − ŷ, conditioned on cond = [ŷ, x, statics]. It works on r̃ = r/s_l,
  the residual scaled by its training RMS s_l at each level, so σd = 1 holds at every
  level (the residual is several times larger near the ground than aloft).

Both carry their normalisation stats (`t_mean`, `t_std`, K, per level) as buffers and
an `arch` dict from which `load_model` rebuilds them: a model file is data, never code.
"""

from __future__ import annotations

import torch
from torch import nn

from geodiff.constants import POSITION_CHANNELS, STATICS
from geodiff.model.edm import EDMPrecond
from geodiff.model.unet import UNet3D
from geodiff.checkpoint import load_checkpoint


def static_channels(position: str) -> int:
    """Channels of the `static` input: the :data:`STATICS` and the position encoding of config ``model.position``."""
    if position not in POSITION_CHANNELS:
        raise ValueError(f"model.position must be one of {sorted(POSITION_CHANNELS)}, not {position!r}")
    return len(STATICS) + POSITION_CHANNELS[position]


def broadcast_static(static: torch.Tensor, n_levels: int) -> torch.Tensor:
    """[B, S, H, W] statics -> [B, S, L, H, W], the same at every level."""
    return static.unsqueeze(2).expand(-1, -1, n_levels, -1, -1)


class _Normalised(nn.Module):
    def __init__(self, n_levels: int) -> None:
        super().__init__()
        self.register_buffer("t_mean", torch.zeros(n_levels))
        self.register_buffer("t_std", torch.ones(n_levels))
        self.prior_names: list[str] = []

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [..., L, H, W] -> K."""
        return x * self.t_std[:, None, None] + self.t_mean[:, None, None]


class DeterministicModel(_Normalised):
    """ŷ = x + U-Net([x, statics], priors), all [B, 1, L, H, W] in normalised units."""

    def __init__(self, n_levels: int, n_priors: int, width: int, depth: int, position: str, norm: str) -> None:
        super().__init__(n_levels)
        self.arch = dict(stage="deterministic", n_levels=n_levels, n_priors=n_priors, width=width, depth=depth,
                         position=position, norm=norm)
        self.net = UNet3D(1 + static_channels(position), 1, prior_channels=n_priors, width=width, depth=depth, norm=norm)

    def forward(self, lr_up: torch.Tensor, static: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
        x = torch.cat([lr_up, broadcast_static(static, lr_up.shape[2])], dim=1)
        return lr_up + self.net(x, priors if priors.numel() else None)


class ResidualModel(_Normalised):
    """EDM denoiser of the scaled residual: D(r̃; σ) with conditioning [ŷ, x, statics] and priors.

    `r_scale` [L] (normalised units) is the per-level RMS s_l of the training residual;
    :meth:`scale` and :meth:`unscale` map r ↔ r̃ = r/s_l, whose σd is 1.
    """

    sigma_data = 1.0

    def __init__(self, n_levels: int, n_priors: int, width: int, depth: int, position: str, norm: str) -> None:
        super().__init__(n_levels)
        self.arch = dict(stage="residual", n_levels=n_levels, n_priors=n_priors, width=width, depth=depth,
                         position=position, norm=norm)
        self.register_buffer("r_scale", torch.ones(n_levels))
        n_cond = 2 + static_channels(position)
        net = UNet3D(1 + n_cond, 1, prior_channels=n_priors, width=width, depth=depth, noise_channels=width, norm=norm)
        self.precond = EDMPrecond(net, sigma_data=self.sigma_data)
        self.sigma_min, self.sigma_max = self.precond.sigma_min, self.precond.sigma_max

    def scale(self, r: torch.Tensor) -> torch.Tensor:
        """Residual [..., L, H, W] (normalised units) -> r̃ = r/s_l."""
        return r / self.r_scale[:, None, None]

    def unscale(self, r: torch.Tensor) -> torch.Tensor:
        """r̃ [..., L, H, W] -> residual in normalised units."""
        return r * self.r_scale[:, None, None]

    @staticmethod
    def condition(deterministic: torch.Tensor, batch: dict) -> torch.Tensor:
        """[ŷ, x, statics] as [B, 2 + S, L, H, W]."""
        lr_up = batch["lr_up"]
        return torch.cat([deterministic, lr_up, broadcast_static(batch["static"], lr_up.shape[2])], dim=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, priors: torch.Tensor | None = None) -> torch.Tensor:
        return self.precond(x, sigma, cond, priors if priors is not None and priors.numel() else None)


def build_model(stage: str, n_levels: int, n_priors: int, width: int, depth: int, position: str, norm: str) -> nn.Module:
    """A fresh model of `stage` ("deterministic" or "residual") with a U-Net of `width`, `depth` and
    normalisation `norm` (config ``model.norm``), and the static channels of `position` (``model.position``)."""
    if stage == "deterministic":
        return DeterministicModel(n_levels, n_priors, width, depth, position, norm)
    if stage == "residual":
        return ResidualModel(n_levels, n_priors, width, depth, position, norm)
    raise ValueError(f"unknown model stage {stage!r}: deterministic | residual")


def load_model(path: str, device: str = "cpu") -> nn.Module:
    """Rebuild a model from its file (weights-only load) with its stats and prior names."""
    state = load_checkpoint(path, map_location=device)
    return model_from_state(state, state["model"]).to(device)


def model_from_state(state: dict, weights: dict) -> nn.Module:
    """The network of a model file or training checkpoint (its ``arch`` and ``prior_names``) holding `weights`."""
    arch = dict(state["arch"])
    stage = arch.pop("stage")
    model = DeterministicModel(**arch) if stage == "deterministic" else ResidualModel(**arch)
    model.load_state_dict(weights)
    model.prior_names = list(state["prior_names"])
    return model


def truth_mask(batch: dict) -> torch.Tensor:
    """`hr_mask` of a batch (1 where the truth is present, 0 where missing), all ones without one."""
    return batch["hr_mask"] if "hr_mask" in batch else torch.ones_like(batch["hr"])


@torch.no_grad()
def residual_scale(deterministic: nn.Module, loader, device: str, max_batches: int = 20) -> torch.Tensor:
    """Per-level RMS [L] of the residual y − ŷ where the truth is present, over training batches (normalised units)."""
    sq, n = 0.0, 0.0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        mask = truth_mask(batch)
        r = (batch["hr"] - deterministic(batch["lr_up"], batch["static"], batch["priors"])) * mask
        sq = sq + (r**2).sum(dim=(0, 1, 3, 4))
        n = n + mask.sum(dim=(0, 1, 3, 4))
    return (sq / n).sqrt().clamp_min(1e-3)
