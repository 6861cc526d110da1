"""Training losses of the deterministic U-Net: Charbonnier data fit and physics terms.

Every term is a Charbonnier penalty (Charbonnier, Blanc-Féraud, Aubert & Barlaud
1994, "Two deterministic half-quadratic regularization algorithms for computed
imaging"), shifted so that a perfect prediction costs exactly 0:

    ρ(e) = √(e² + ε²) − ε,   ρ(0) = 0,   ρ'(e) = e/√(e² + ε²)  (sign of the error).

The data terms act on normalised temperatures; the physics terms on temperatures in K
(``PhysicsLoss`` de-normalises with the per-level stats, t_K = x · std[L] + mean[L]) and
compare their diagnostics in scaled units so that every term is O(1). Levels are on
axis −3 ([..., L, H, W]), ordered surface-upward, with pressures in hPa.

Ramp-in: with ``ramp = (a, b)`` the physics terms' weights are scaled by
r(f) = clip((f − a)/(b − a), 0, 1) at training progress f = step/steps: the data term fits
alone until a, the physics terms reach their full weight at b (curriculum; Bengio, Louradour,
Collobert & Weston 2009). ``(0, 0)`` gives r = 1 throughout.

Missing truth: every term takes an optional `mask` shaped like the target (1 where
the truth is present, 0 where it is missing) and averages over the present points
only; a vertical term (stability, coupling) drops a column where any level is missing,
a gradient term a difference whose either end is. Masked points must hold finite
values (the loader fills them): a loss on NaN times 0 would still be NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from geodiff.constants import G, PHYSICS_TERMS
from geodiff.physics.thermo import layer_thickness, potential_temperature, static_stability

log = logging.getLogger(__name__)

SIGMA_SCALE = 1e-6
"""Typical tropospheric static stability, J kg-1 Pa-2: σ is compared in these units."""
THICKNESS_SCALE = 10.0
"""Layer thickness errors are compared in units of 10 m (≈ 2 K of layer-mean error over 1000-850 hPa)."""
TERMS = ("charbonnier", "stability", "gradient", "coupling")
"""Loss terms PhysicsLoss knows, in the order they are evaluated."""
DEFAULT_EPS = 0.01
"""ε of the Charbonnier penalty in the term functions' signatures (the config's loss.charbonnier.eps in training)."""


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Σ m x / Σ m over the elements (mask broadcast to x), the plain mean without a mask; 0 when Σ m = 0."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def column_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[..., L, H, W] mask -> [..., 1, H, W]: 1 where every level of the column is present."""
    return None if mask is None else mask.amin(dim=-3, keepdim=True)


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = DEFAULT_EPS,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean ρ(ŷ − y) over the present elements, ρ(e) = √(e² + ε²) − ε: 0 for ŷ = y, ≈ |ŷ − y| for |ŷ − y| ≫ ε.

    Evaluated as the equal e²/(√(e² + ε²) + ε), which has no cancellation and is exactly 0
    at e = 0. Needs ε > 0.
    """
    if not eps > 0:
        raise ValueError(f"Charbonnier eps must be > 0, got {eps}")
    e2 = (pred - target) ** 2
    return masked_mean(e2 / ((e2 + eps**2).sqrt() + eps), mask)


def stability_of(t: torch.Tensor, p_hpa: torch.Tensor) -> torch.Tensor:
    """Static stability σ = −(R_d T/p) ∂ln θ/∂p of temperature `t` (K, [..., L, H, W]) on the levels
    `p_hpa`, J kg-1 Pa-2, in the dtype of `t` (:func:`geodiff.physics.thermo.static_stability` of its θ)."""
    return static_stability(t, potential_temperature(t, p_hpa), p_hpa)


def stability_loss(t_pred: torch.Tensor, t_true: torch.Tensor, p_hpa: torch.Tensor, eps: float = DEFAULT_EPS,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Charbonnier on static stability, ρ(σ(ŷ)/σ₀ − σ(y)/σ₀), σ₀ = 1e-6 J kg-1 Pa-2, over complete columns.

    σ = −(R_d T/p) ∂ln θ/∂p (Bluestein 1992, eq. 4.3.6; :func:`geodiff.physics.thermo.static_stability`).
    t_pred, t_true: temperature in K [..., L, H, W]; p_hpa: level pressures [L], hPa.
    """
    sigma_pred = stability_of(t_pred, p_hpa) / SIGMA_SCALE
    sigma_true = stability_of(t_true, p_hpa) / SIGMA_SCALE
    return charbonnier(sigma_pred, sigma_true, eps, column_mask(mask))


def instability(t: torch.Tensor, p_hpa: torch.Tensor, sigma_ref: torch.Tensor) -> torch.Tensor:
    """max(−σ(T)/σ_ref, 0)² per point where σ_ref > 0 (0 elsewhere): how statically unstable a field
    is where a reference (the coarse input) is stable, in units of the reference stability (the
    sampler's stability guidance removes it).

    σ as in :func:`stability_loss`; t: temperature in K [..., L, H, W]; sigma_ref: J kg-1 Pa-2,
    broadcastable to t. Returns the shape of t broadcast with sigma_ref.
    """
    sigma = stability_of(t, p_hpa)
    stable = sigma_ref > 0
    return (-sigma / torch.where(stable, sigma_ref, 1.0)).clamp_min(0.0) ** 2 * stable


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = DEFAULT_EPS,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """½ [ρ(Δ_lat ŷ − Δ_lat y) + ρ(Δ_lon ŷ − Δ_lon y)], forward differences along axes −2 (lat) and −1 (lon).

    Differences are per grid step (index space), in the units of the inputs; a difference
    counts where both of its points are present.
    """
    m_lat = None if mask is None else mask[..., 1:, :] * mask[..., :-1, :]
    m_lon = None if mask is None else mask[..., 1:] * mask[..., :-1]
    d_lat = charbonnier(pred.diff(dim=-2), target.diff(dim=-2), eps, m_lat)
    d_lon = charbonnier(pred.diff(dim=-1), target.diff(dim=-1), eps, m_lon)
    return 0.5 * (d_lat + d_lon)


def coupling_loss(t_pred: torch.Tensor, z_true: torch.Tensor, p_hpa: torch.Tensor, eps: float = DEFAULT_EPS,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hypsometric consistency, ρ((ΔZ_T − ΔZ_z)/10 m) over the L − 1 layers of complete columns.

    ΔZ_T,k = (R_d T̄_k/g) ln(p_k/p_{k+1}) from the predicted layer-mean temperature
    (:func:`geodiff.physics.thermo.layer_thickness`), ΔZ_z,k = (z_{k+1} − z_k)/g from the
    true geopotential. t_pred in K, z_true in m2 s-2, both [..., L, H, W]; p_hpa [L], hPa.
    """
    if z_true.shape != t_pred.shape:
        raise ValueError(f"coupling_loss: z {tuple(z_true.shape)} and t {tuple(t_pred.shape)} differ in shape")
    dz_t = layer_thickness(t_pred, p_hpa)
    dz_z = (z_true[..., 1:, :, :] - z_true[..., :-1, :, :]) / G
    return charbonnier(dz_t / THICKNESS_SCALE, dz_z / THICKNESS_SCALE, eps, column_mask(mask))


def ramp_factor(progress: float, ramp: tuple[float, float]) -> float:
    """r(f) = clip((f − a)/(b − a), 0, 1) for ramp (a, b), 0 ≤ a ≤ b; a step at a when a = b (1 from f = a on)."""
    start, end = ramp
    if not 0.0 <= start <= end:
        raise ValueError(f"loss ramp needs 0 <= start <= end, got {ramp}")
    if progress >= end:
        return 1.0
    if progress <= start:
        return 0.0
    return (progress - start) / (end - start)


class PhysicsLoss(nn.Module):
    """Total loss Σ_k w_k · term_k of the terms whose weight is non-zero.

    forward(pred_norm, target_norm, z=None, mask=None, progress=1.0) on normalised
    temperatures [..., L, H, W] returns (total, {term: detached value}); coupling needs z
    (m2 s-2, shaped like pred) and is skipped without it; `mask` (1 present, 0 missing
    truth, shaped like the target) restricts every term to the present truth; `progress`
    (step/steps) sets the ramp factor of the physics weights. Physics terms are evaluated
    in float64; a term whose ramped weight is 0 is not evaluated.
    """

    def __init__(
        self,
        weights: Mapping[str, float],  # term name (one of TERMS) -> weight w_k
        eps: float,  # ε of every term's Charbonnier penalty
        levels_hpa: Any,  # level pressures [L], hPa, surface upward
        mean: torch.Tensor,  # per-level mean of the temperature [L], K
        std: torch.Tensor,  # per-level standard deviation of the temperature [L], K
        ramp: tuple[float, float] = (0.0, 0.0),  # training fractions (a, b) over which the physics weights rise 0 -> 1
    ) -> None:
        super().__init__()
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {TERMS}")
        self.weights = {name: float(weights[name]) for name in TERMS if name in weights}
        self.eps = float(eps)
        self.ramp = (float(ramp[0]), float(ramp[1]))
        ramp_factor(1.0, self.ramp)  # checks the ramp
        self.register_buffer("p_hpa", torch.as_tensor(levels_hpa, dtype=torch.float64).reshape(-1))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).reshape(-1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1, 1))
        log.info("loss terms: %s", {name: w for name, w in self.weights.items() if w})

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [..., L, H, W] -> K (float64): t_K = x · std[L] + mean[L]."""
        return x.double() * self.std + self.mean

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, z: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, progress: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = ramp_factor(progress, self.ramp)
        weights = {name: w * r if name in PHYSICS_TERMS else w for name, w in self.weights.items()}
        active = {name for name, w in weights.items() if w != 0.0}
        if z is None:
            active.discard("coupling")
        terms: dict[str, torch.Tensor] = {}
        if "charbonnier" in active:
            terms["charbonnier"] = charbonnier(pred, target, self.eps, mask)
        if "gradient" in active:
            terms["gradient"] = gradient_loss(pred, target, self.eps, mask)
        if active & {"stability", "coupling"}:
            t_pred = self.denormalise(pred)
            if "stability" in active:
                t_true = self.denormalise(target)
                terms["stability"] = stability_loss(t_pred, t_true, self.p_hpa, self.eps, mask).to(pred.dtype)
            if "coupling" in active:
                terms["coupling"] = coupling_loss(t_pred, z.double(), self.p_hpa, self.eps, mask).to(pred.dtype)
        total = sum((weights[name] * value for name, value in terms.items()), pred.new_zeros(()))
        return total, {name: value.detach() for name, value in terms.items()}
