"""The GeoDiff networks, EDM diffusion and losses against their defining formulas."""

import math

import numpy as np
import pytest
import torch

from geodiff.model.edm import EMA, EDMPrecond, edm_loss, edm_sampler, sample_ensemble
from geodiff.model.losses import PhysicsLoss, charbonnier, coupling_loss, gradient_loss, stability_loss
from geodiff.model.unet import UNet3D
from geodiff.physics.thermo import hypsometric_height

torch.manual_seed(0)
LEVELS = torch.tensor([1000.0, 850.0, 700.0, 500.0, 300.0])


def test_prior_branch_changes_nothing_at_init_then_learns():
    net = UNet3D(3, 1, prior_channels=2, width=8, depth=2)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)  # a trained head, so the output depends on features
    x, priors = torch.randn(2, 3, 5, 12, 12), torch.randn(2, 2, 5, 12, 12)
    assert torch.equal(net(x, priors), net(x, None))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    target = torch.randn(2, 1, 5, 12, 12)
    for _ in range(2):  # after one optimiser step the zero convolutions receive gradients
        opt.zero_grad()
        ((net(x, priors) - target) ** 2).mean().backward()
        opt.step()
    assert all(float(zc.weight.grad.abs().sum()) > 0 for zc in net.zero_convs)
    assert not torch.equal(net(x, priors), net(x, None))


@pytest.mark.parametrize("shape", [(5, 37, 45), (3, 16, 16), (8, 9, 31)])
def test_output_shape_for_odd_grids(shape):
    net = UNet3D(2, 1, prior_channels=1, width=8, depth=2, noise_channels=8)
    out = net(torch.randn(2, 2, *shape), torch.randn(2, 1, *shape), torch.randn(2))
    assert out.shape == (2, 1, *shape)


def test_edm_preconditioning_matches_the_paper():
    """c_skip, c_out, c_in, c_noise of EDM Table 1, read through a network that returns its input."""
    sd = 0.7

    class Probe(torch.nn.Module):
        def forward(self, x, priors, noise_labels):
            self.seen = (x[:, :1].clone(), noise_labels.clone())
            return torch.ones_like(x[:, :1])

    D = EDMPrecond(Probe(), sigma_data=sd)
    x, sigma = torch.full((1, 1, 1, 2, 2), 2.0), torch.tensor([3.0])
    out = D(x, sigma, torch.zeros(1, 1, 1, 2, 2))
    c_skip, c_out, c_in = sd**2 / (9 + sd**2), 3 * sd / math.sqrt(9 + sd**2), 1 / math.sqrt(9 + sd**2)
    torch.testing.assert_close(D.net.seen[0], x * c_in)
    torch.testing.assert_close(D.net.seen[1], torch.tensor([math.log(3.0) / 4]))
    torch.testing.assert_close(out, c_skip * x + c_out)


def test_denoiser_is_identity_as_sigma_vanishes():
    D = EDMPrecond(UNet3D(2, 1, width=8, depth=1, noise_channels=8), sigma_data=0.5)
    torch.nn.init.normal_(D.net.head[-1].weight, std=1.0)
    x = torch.randn(2, 1, 3, 8, 8)
    torch.testing.assert_close(D(x, torch.full((2,), 1e-6), torch.randn(2, 1, 3, 8, 8)), x, atol=1e-4, rtol=0)


class ExactGaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(μ, s²): D(x; σ) = μ + s²/(s² + σ²) (x − μ)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, mu: float, s: float) -> None:
        super().__init__()
        self.mu, self.sigma_data = mu, s

    def forward(self, x, sigma, cond, priors=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1, 1)
        return self.mu + self.sigma_data**2 / (self.sigma_data**2 + sigma**2) * (x - self.mu)


def heun_variance_factor(s: float, num_steps: int, sigma_max: float = 80.0, sigma_min: float = 0.002, rho: float = 7.0) -> float:
    """Closed form of what Heun on the EDM schedule does to the variance of N(μ, s²): the ODE
    dx/dσ = (x − μ) σ/(s² + σ²) is linear, so every step multiplies (x − μ) by a known factor."""
    t = [(sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(num_steps)] + [0.0]
    a = lambda u: u / (s * s + u * u)  # noqa: E731
    factor = 1.0
    for i in range(num_steps):
        h = t[i + 1] - t[i]
        factor *= 1 + h * (0.5 * a(t[i]) + 0.5 * a(t[i + 1]) * (1 + h * a(t[i]))) if i < num_steps - 1 else 1 + h * a(t[i])
    return (factor * sigma_max / s) ** 2


@pytest.mark.parametrize("num_steps", [18, 64])
def test_sampler_reproduces_a_gaussian(num_steps):
    """Exact Gaussian denoiser: the mean within 2 % at 18 steps; the variance matches the Heun
    discretisation's closed form to 2 %, which EDM's 18-step schedule puts 10 % above s² and
    64 steps within 1 % of it (the discretisation error, not the sampler, sets the gap)."""
    mu, s = 1.5, 0.8
    gen = torch.Generator().manual_seed(1)
    x = edm_sampler(ExactGaussianDenoiser(mu, s), torch.zeros(40000, 1, 1, 1, 1), num_steps=num_steps, generator=gen)
    assert float(x.mean()) == pytest.approx(mu, rel=0.02)
    expected = heun_variance_factor(s, num_steps) * s**2
    assert float(x.var()) == pytest.approx(expected, rel=0.02)
    assert expected == pytest.approx(s**2, rel=0.11 if num_steps == 18 else 0.01)


def test_ensemble_members_are_independent_draws():
    D = EDMPrecond(UNet3D(2, 1, width=8, depth=1, noise_channels=8), sigma_data=0.5)
    cond = torch.randn(3, 1, 2, 8, 8)
    ens = sample_ensemble(D, cond, None, members=4, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert ens.shape == (4, 3, 1, 2, 8, 8)
    assert float((ens[0] - ens[1]).abs().mean()) > 0.01


def test_edm_loss_weighting():
    """λ(σ)·E‖D − y‖² is 1 in expectation when D returns the best constant-free guess c_skip x (F = 0)."""
    D = EDMPrecond(UNet3D(2, 1, width=8, depth=1, noise_channels=8), sigma_data=1.0)  # head is zero: F = 0
    y = torch.randn(4096, 1, 1, 2, 2)
    loss = edm_loss(D, y, torch.zeros_like(y))
    # with F = 0: D = c_skip (y + n); λ E(c_skip(y+n) − y)² = λ σ² σd²/(σ² + σd²) = 1 for unit-variance y
    assert float(loss.mean()) == pytest.approx(1.0, rel=0.1)


def test_ema_tracks_the_average():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.5)
    ema.updates = 100  # past warm-up
    with torch.no_grad():
        model.weight.fill_(2.0)
    start = float(ema.module.weight)
    ema.update(model)
    assert float(ema.module.weight) == pytest.approx(0.5 * start + 1.0)


def stable_column(batch=2, h=4, w=5):
    t = torch.tensor([288.0, 278.0, 268.0, 252.0, 230.0]).reshape(1, 5, 1, 1)
    return (t + torch.randn(batch, 5, h, w)).double()


@pytest.mark.parametrize("loss", ["charbonnier", "gradient", "stability"])
def test_losses_zero_for_perfect_prediction_and_descend(loss):
    y = stable_column()
    fn = {"charbonnier": charbonnier, "gradient": gradient_loss,
          "stability": lambda a, b: stability_loss(a, b, LEVELS.double())}[loss]
    assert float(fn(y, y)) == pytest.approx(0.0, abs=1e-9)
    pred = (y + torch.randn_like(y)).requires_grad_(True)
    value = fn(pred, y)
    value.backward()
    stepped = pred.detach() - 1e-3 * pred.grad / pred.grad.abs().max()
    assert float(fn(stepped, y)) < float(value)
    if loss == "charbonnier":  # gradient sign is the sign of the error
        assert torch.all(torch.sign(pred.grad) == torch.sign(pred.detach() - y))


def test_coupling_loss_zero_for_hypsometric_geopotential():
    t = stable_column()
    z = 9.80665 * hypsometric_height(t, LEVELS.double(), z_bottom=100.0)
    assert float(coupling_loss(t, z, LEVELS.double())) == pytest.approx(0.0, abs=1e-7)
    warm = (t + 2.0).requires_grad_(True)  # too warm: layers too thick
    coupling_loss(warm, z, LEVELS.double()).backward()
    assert float(warm.grad.sum()) > 0


def test_physics_loss_combines_weighted_terms():
    mean, std = torch.tensor([280.0, 270, 260, 250, 230]), torch.full((5,), 5.0)
    cfg = {"charbonnier": {"weight": 1.0, "eps": 0.01}, "stability": {"weight": 0.0}, "gradient": {"weight": 0.5}, "coupling": {"weight": 0.0}}
    loss = PhysicsLoss(cfg, LEVELS, mean, std)
    y = torch.randn(2, 5, 4, 4)
    total, terms = loss(y + 0.3, y)
    assert set(terms) == {"charbonnier", "gradient"}
    torch.testing.assert_close(total, terms["charbonnier"] + 0.5 * terms["gradient"])
    assert float(loss(y, y)[0]) == pytest.approx(0.0, abs=1e-6)
