"""Training losses: Charbonnier data fit and physics terms, each switchable and weighted.

Temperatures reach the physics terms in K (de-normalised with the per-level stats);
every term is a Charbonnier penalty ρ(e) = √(e² + ε²) − ε, zero for a perfect prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from geodiff.constants import G
from geodiff.physics.thermo import layer_thickness, static_stability

SIGMA_SCALE = 1e-6
"""Typical static stability, J kg-1 Pa-2: σ is compared in these units."""
THICKNESS_SCALE = 10.0
"""Thickness errors are compared in units of 10 m."""


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """mean √((ŷ − y)² + ε²) − ε  (Charbonnier et al. 1994), in the units of the inputs."""
    return ((pred - target) ** 2 + eps**2).sqrt().mean() - eps


def stability_loss(t_pred: torch.Tensor, t_true: torch.Tensor, p_hpa: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Charbonnier on the static stability σ(ŷ) vs σ(y), σ in units of 1e-6 J kg-1 Pa-2; T in K [..., L, H, W]."""
    return charbonnier(static_stability(t_pred, p_hpa) / SIGMA_SCALE, static_stability(t_true, p_hpa) / SIGMA_SCALE, eps)


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Charbonnier on horizontal finite differences along lat (-2) and lon (-1)."""
    return sum(charbonnier(pred.diff(dim=d), target.diff(dim=d), eps) for d in (-2, -1)) / 2


def coupling_loss(t_pred: torch.Tensor, z_true: torch.Tensor, p_hpa: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Hypsometric consistency: layer thickness from the predicted layer-mean T (K) against the
    thickness (z_{k+1} − z_k)/g from the true geopotential z (m2 s-2), in units of 10 m."""
    from_t = layer_thickness(t_pred, p_hpa)
    from_z = (z_true[..., 1:, :, :] - z_true[..., :-1, :, :]) / G
    return charbonnier(from_t / THICKNESS_SCALE, from_z / THICKNESS_SCALE, eps)


class PhysicsLoss(nn.Module):
    """Σ_term weight · term on [B, L, H, W] normalised predictions; terms with weight 0 are skipped."""

    def __init__(self, cfg: dict, levels_hpa, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.cfg = {name: dict(term) for name, term in cfg.items()}
        self.register_buffer("p", torch.as_tensor(levels_hpa, dtype=torch.float32))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1))

    def weight(self, name: str) -> float:
        return float(self.cfg.get(name, {}).get("weight", 0.0))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, z: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        eps = float(self.cfg.get("charbonnier", {}).get("eps", 0.01))
        terms = {}
        if self.weight("charbonnier"):
            terms["charbonnier"] = charbonnier(pred, target, eps)
        if self.weight("gradient"):
            terms["gradient"] = gradient_loss(pred, target, eps)
        t_pred, t_true = pred * self.std + self.mean, target * self.std + self.mean
        if self.weight("stability"):
            terms["stability"] = stability_loss(t_pred.double(), t_true.double(), self.p.double(), eps).float()
        if self.weight("coupling") and z is not None:
            terms["coupling"] = coupling_loss(t_pred, z, self.p, eps)
        total = sum(self.weight(name) * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
