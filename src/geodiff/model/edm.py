"""EDM diffusion (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): preconditioning, training loss, Heun sampler, ensembles, EMA.

GeoDiff applies it to the residual r = y − ŷ of the deterministic U-Net, conditioned
on channels `cond` (CorrDiff, Mardani et al. 2024).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EDMPrecond(nn.Module):
    """D(x; σ) = c_skip(σ) x + c_out(σ) F([c_in(σ) x, cond]; c_noise(σ))  (EDM Table 1)."""

    def __init__(
        self,
        net: nn.Module,  # F: UNet3D with noise conditioning, input channels 1 + cond
        sigma_data: float = 0.5,  # standard deviation of the data (here: the residual)
        sigma_min: float = 0.002,  # smallest noise level the sampler uses
        sigma_max: float = 80.0,  # largest noise level the sampler uses
    ) -> None:
        super().__init__()
        self.net, self.sigma_data, self.sigma_min, self.sigma_max = net, sigma_data, sigma_min, sigma_max

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, priors: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.net(torch.cat([c_in * x, cond.expand(x.shape[0], -1, -1, -1, -1)], dim=1), priors, c_noise.flatten())
        return c_skip * x + c_out * F_x


def edm_loss(D: nn.Module, y: torch.Tensor, cond: torch.Tensor, priors: torch.Tensor | None = None,
             P_mean: float = -1.2, P_std: float = 1.2) -> torch.Tensor:
    """Per-element λ(σ) ‖D(y + n; σ) − y‖², ln σ ~ N(P_mean, P_std²), λ = (σ² + σd²)/(σ σd)²  (EDM eq. 8)."""
    sd = D.sigma_data
    rnd_normal = torch.randn([y.shape[0], 1, 1, 1, 1], device=y.device)
    sigma = (rnd_normal * P_std + P_mean).exp()
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    n = torch.randn_like(y) * sigma
    D_yn = D(y + n, sigma, cond, priors)
    return weight * (D_yn - y) ** 2


@torch.no_grad()
def edm_sampler(D: nn.Module, cond: torch.Tensor, priors: torch.Tensor | None = None, num_steps: int = 18,
                sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
                S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
                generator: torch.Generator | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Heun second-order sampler with optional churn (EDM Algorithm 2). Returns x_0 shaped like
    one channel of `cond` (or `shape`)."""
    shape = shape or (cond.shape[0], 1, *cond.shape[2:])
    sigma_min, sigma_max = max(sigma_min, D.sigma_min), min(sigma_max, D.sigma_max)
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=cond.device)
    t_steps = (sigma_max ** (1 / rho) + step_indices / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])  # t_N = 0
    noise = lambda: torch.randn(shape, generator=generator, device=cond.device, dtype=torch.float64)  # noqa: E731
    x_next = noise() * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # increase noise temporarily (churn)
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * noise() if gamma > 0 else x_cur
        # Euler step
        denoised = D(x_hat.float(), t_hat.float(), cond, priors).double()
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # second-order correction
        if i < num_steps - 1:
            denoised = D(x_next.float(), t_next.float(), cond, priors).double()
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.float()


@torch.no_grad()
def sample_ensemble(D: nn.Module, cond: torch.Tensor, priors: torch.Tensor | None, members: int, **sampler_kwargs) -> torch.Tensor:
    """M independent draws for every conditioning sample, batched: returns [M, B, 1, L, H, W]."""
    b = cond.shape[0]
    cond_m = cond.repeat(members, *([1] * (cond.dim() - 1)))
    priors_m = priors.repeat(members, *([1] * (priors.dim() - 1))) if priors is not None and priors.numel() else priors
    x = edm_sampler(D, cond_m, priors_m, **sampler_kwargs)
    return x.reshape(members, b, *x.shape[1:])


class EMA:
    """Exponential moving average of a module's parameters (buffers copied), with warm-up
    decay min(decay, (1 + n)/(10 + n)) over the n updates so far."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        self.module.load_state_dict(state["module"])
