"""The two GeoDiff models: per-level residual scaling of the diffusion model, bfloat16 autocast."""

from __future__ import annotations

import torch

from geodiff.model.edm import sample_ensemble
from geodiff.model.networks import ResidualModel, residual_scale
from geodiff.device import bf16_autocast


class OffsetModel(torch.nn.Module):
    """A 'deterministic model' ŷ = x + offset, so the residual y − ŷ is known."""

    def __init__(self, offset: torch.Tensor) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, lr_up, static, priors):
        return lr_up + self.offset


def batches(n_levels: int, level_rms: torch.Tensor, count: int = 6) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        lr_up = torch.randn(4, 1, n_levels, 12, 10, generator=gen)
        noise = torch.randn(4, 1, n_levels, 12, 10, generator=gen) * level_rms[:, None, None]
        out.append({"lr_up": lr_up, "hr": lr_up + noise, "static": torch.zeros(4, 2, 12, 10), "priors": torch.empty(0)})
    return out


def test_residual_scale_is_the_rms_per_level():
    rms = torch.tensor([2.0, 1.0, 0.25])
    s = residual_scale(OffsetModel(torch.zeros(())), batches(3, rms), "cpu")
    assert s.shape == (3,)
    torch.testing.assert_close(s, rms, rtol=0.05, atol=0)


def test_residual_scale_ignores_missing_truth():
    """Where hr_mask is 0 the truth holds a placeholder (here 1000): the scale is the RMS of the present points."""
    rms = torch.tensor([2.0, 1.0, 0.25])
    data = batches(3, rms)
    gen = torch.Generator().manual_seed(1)
    sq, n = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for batch in data:
        mask = (torch.rand(batch["hr"].shape, generator=gen) > 0.3).float()
        r = (batch["hr"] - batch["lr_up"]).double()
        sq += (r**2 * mask).sum(dim=(0, 1, 3, 4))
        n += mask.sum(dim=(0, 1, 3, 4))
        batch["hr"] = torch.where(mask > 0, batch["hr"], torch.full_like(batch["hr"], 1000.0))
        batch["hr_mask"] = mask
    s = residual_scale(OffsetModel(torch.zeros(())), data, "cpu")
    torch.testing.assert_close(s.double(), (sq / n).sqrt(), rtol=1e-5, atol=0)


def test_scale_round_trip_and_unit_variance():
    model = ResidualModel(n_levels=3, n_priors=0, width=8, depth=1, position="none", norm="group")
    model.r_scale.copy_(torch.tensor([2.0, 1.0, 0.25]))
    r = torch.randn(5, 1, 3, 6, 7) * model.r_scale[:, None, None]
    torch.testing.assert_close(model.unscale(model.scale(r)), r)
    scaled = model.scale(r)
    torch.testing.assert_close(scaled.std(dim=(0, 1, 3, 4)), torch.ones(3), rtol=0.15, atol=0)
    assert model.sigma_data == 1.0


def test_untrained_residual_model_draws_the_residual_spread_per_level():
    """An untrained denoiser is D = c_skip x, the exact denoiser of N(0, 1) in scaled units;
    unscaled, its draws have the training residual's RMS at each level, not one global σd."""
    torch.manual_seed(0)
    model = ResidualModel(n_levels=3, n_priors=0, width=8, depth=1, position="none", norm="group").eval()
    model.r_scale.copy_(torch.tensor([2.0, 1.0, 0.25]))
    cond = torch.randn(2, 4, 3, 8, 8)
    draws = model.unscale(sample_ensemble(model, cond, None, members=64, num_steps=18,
                                          generator=torch.Generator().manual_seed(1)))
    assert draws.shape == (64, 2, 1, 3, 8, 8)
    torch.testing.assert_close(draws.std(dim=(0, 1, 2, 4, 5)), model.r_scale, rtol=0.03, atol=0)


def test_bf16_autocast_runs_in_bf16_when_on_and_never_when_not_requested():
    off = bf16_autocast("cpu", requested=False)
    with off:
        y = torch.nn.functional.linear(torch.randn(3, 4), torch.randn(5, 4))
    assert y.dtype == torch.float32
    on = bf16_autocast("cpu")
    assert on.fast_dtype == torch.bfloat16
    with on:  # where the context says it is on, the op really computes in bfloat16
        y = torch.nn.functional.linear(torch.randn(3, 4), torch.randn(5, 4))
    assert y.dtype == (torch.bfloat16 if on._enabled else torch.float32)
