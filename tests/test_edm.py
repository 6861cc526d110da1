"""EDM (Karras et al. 2022) against its formulas: preconditioning, loss weighting, Heun sampler
on an exactly known Gaussian, batched ensembles and EMA."""

from __future__ import annotations

import math

import pytest
import torch

from geodiff.model.edm import SAMPLERS, EMA, EDMPrecond, edm_loss, edm_sampler, edm_time_steps, sample_ensemble, scaled_sampler
from geodiff.model.unet import UNet3D


class Probe(torch.nn.Module):
    """F that records what it is given and returns a fixed field F = 2 − 3 x_in[channel 0]."""

    def forward(self, x, priors, noise_labels):
        self.x_in, self.noise_labels, self.priors = x.clone(), noise_labels.clone(), priors
        return 2.0 - 3.0 * x[:, :1]


def test_preconditioning_coefficients_match_table_1():
    """σd = 0.5 and σ = (0.5, 2): hand-computed c_skip, c_out, c_in, c_noise."""
    D = EDMPrecond(Probe(), sigma_data=0.5)
    x = torch.tensor([1.0, -2.0]).reshape(2, 1, 1, 1, 1).expand(2, 1, 2, 3, 3).double()
    cond = torch.full((2, 2, 2, 3, 3), 7.0, dtype=torch.float64)
    D_x = D(x, torch.tensor([0.5, 2.0]), cond, priors="p")
    # σ = 0.5: c_skip = 0.25/0.5 = 0.5, c_out = 0.25/√0.5, c_in = 1/√0.5, c_noise = ln(0.5)/4
    # σ = 2:   c_skip = 0.25/4.25, c_out = 1/√4.25, c_in = 1/√4.25, c_noise = ln(2)/4
    c_skip = torch.tensor([0.5, 0.25 / 4.25], dtype=torch.float64)
    c_out = torch.tensor([0.25 / math.sqrt(0.5), 1.0 / math.sqrt(4.25)], dtype=torch.float64)
    c_in = torch.tensor([1.0 / math.sqrt(0.5), 1.0 / math.sqrt(4.25)], dtype=torch.float64)
    torch.testing.assert_close(D.net.noise_labels, torch.tensor([-0.17328679513998632, 0.17328679513998632], dtype=torch.float64))
    torch.testing.assert_close(D.net.x_in[:, 0, 0, 0, 0], c_in * torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(D.net.x_in[:, 1:], cond)  # conditioning channels are passed unscaled
    assert D.net.priors == "p"
    F_x = 2.0 - 3.0 * c_in * torch.tensor([1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(D_x[:, 0, 0, 0, 0], c_skip * torch.tensor([1.0, -2.0], dtype=torch.float64) + c_out * F_x)
    assert float(c_skip[0]) == 0.5 and float(c_in[0] * c_out[0]) == pytest.approx(0.5)


def test_scalar_sigma_and_broadcast_cond():
    D = EDMPrecond(Probe(), sigma_data=1.0)
    x = torch.randn(3, 1, 2, 4, 4)
    D(x, 1.0, torch.zeros(1, 2, 2, 4, 4))
    assert D.net.x_in.shape == (3, 3, 2, 4, 4)
    torch.testing.assert_close(D.net.noise_labels, torch.zeros(1))  # ln(1)/4, one label for the batch


def test_denoiser_limits():
    """σ → 0: D(x) → x (c_skip → 1, c_out → 0); σ → ∞: D(x) → σd F (c_skip → 0, c_out → σd)."""
    torch.manual_seed(0)
    net = UNet3D(3, 1, width=8, depth=1, noise_channels=8)
    torch.nn.init.normal_(net.head[-1].weight, std=1.0)
    D = EDMPrecond(net, sigma_data=0.5)
    x, cond = torch.randn(2, 1, 3, 8, 8), torch.randn(2, 2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(D(x, torch.full((2,), 1e-7), cond), x, atol=1e-5, rtol=0)
        F_x = net(torch.cat([x / 1e6, cond], dim=1), None, torch.full((2,), math.log(1e6) / 4))
        assert float(F_x.abs().max()) > 0.1
        torch.testing.assert_close(D(x, torch.full((2,), 1e6), cond), 0.5 * F_x, atol=1e-5, rtol=1e-5)


class Recorder(torch.nn.Module):
    """Denoiser returning y for every input, so the loss isolates the weighting; records σ."""

    sigma_data = 0.5

    def __init__(self, y):
        super().__init__()
        self.y, self.sigmas = y, []

    def forward(self, x, sigma, cond, priors=None):
        self.sigmas.append(sigma.flatten())
        return torch.zeros_like(x)


def test_loss_sigma_distribution_and_weight():
    """ln σ ~ N(P_mean, P_std²), one σ per sample; λ(σ)(0 − y)² with y = 1 is λ = (σ² + σd²)/(σ σd)²."""
    torch.manual_seed(1)
    y = torch.ones(20000, 1, 1, 1, 2)
    D = Recorder(y)
    loss = edm_loss(D, y, torch.zeros_like(y), P_mean=-1.2, P_std=1.2)
    sigma = D.sigmas[0]
    assert sigma.shape == (20000,)
    assert float(sigma.log().mean()) == pytest.approx(-1.2, abs=0.03)
    assert float(sigma.log().std()) == pytest.approx(1.2, rel=0.02)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(loss[:, 0, 0, 0, 0], weight)
    torch.testing.assert_close(loss[:, 0, 0, 0, 1], weight)  # same σ for all elements of a sample
    loss2 = edm_loss(D, y, torch.zeros_like(y), sigma_data=1.0)  # explicit σd overrides D.sigma_data
    sigma2 = D.sigmas[1]
    torch.testing.assert_close(loss2[:, 0, 0, 0, 0], (sigma2**2 + 1.0) / sigma2**2)


def test_loss_is_one_in_expectation_for_f_zero():
    """F = 0 (untrained head): D = c_skip (y + n) and λ E[(D − y)²] = λ σ² σd²/(σ² + σd²) = 1 for Var y = σd²."""
    torch.manual_seed(2)
    D = EDMPrecond(UNet3D(2, 1, width=8, depth=1, noise_channels=8), sigma_data=2.0)
    y = 2.0 * torch.randn(8192, 1, 1, 2, 2)
    with torch.no_grad():
        loss = edm_loss(D, y, torch.zeros_like(y))
    assert float(loss.mean()) == pytest.approx(1.0, rel=0.05)


class ExactGaussianDenoiser(torch.nn.Module):
    """Exact denoiser of data ~ N(μ, s²) per element: D(x; σ) = μ + s²/(s² + σ²) (x − μ).

    `sigma_data` is the σd a network would be preconditioned with (s unless given).
    """

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, s: float, sigma_data: float | None = None) -> None:
        super().__init__()
        self.s = s
        self.sigma_data = s if sigma_data is None else sigma_data

    def forward(self, x, sigma, cond, priors=None):
        mu = cond[:, :1]  # μ is read from the conditioning, so ensembles can be told apart
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1, 1)
        return mu + self.s**2 / (self.s**2 + sigma**2) * (x - mu)


def heun_variance_ratio(s: float, num_steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0) -> float:
    """Var(x_0)/s² of EDM's own Heun sampler (:func:`edm_sampler`) for N(μ, s²), in closed form.

    With the exact denoiser the ODE is linear, dx/dt = a(t)(x − μ), a(t) = t/(s² + t²); an Euler
    step multiplies x − μ by 1 + h a(t_i), a Heun step by 1 + h[a(t_i) + a(t_{i+1})(1 + h a(t_i))]/2,
    h = t_{i+1} − t_i. Starting from Var = σmax², Var(x_0) = (σmax Π factors)².
    """
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    t = [(hi + i / (num_steps - 1) * (lo - hi)) ** rho for i in range(num_steps)]
    t.append(0.0)
    a = lambda u: u / (s * s + u * u)  # noqa: E731
    factor = 1.0
    for i in range(num_steps):
        h = t[i + 1] - t[i]
        factor *= 1 + h * a(t[i]) if i == num_steps - 1 else 1 + 0.5 * h * (a(t[i]) + a(t[i + 1]) * (1 + h * a(t[i])))
    return (sigma_max * factor / s) ** 2


def test_time_steps_follow_eq_5():
    t = edm_time_steps(18)
    assert t.shape == (19,) and t.dtype == torch.float64
    assert float(t[0]) == pytest.approx(80.0) and float(t[17]) == pytest.approx(0.002) and float(t[18]) == 0.0
    # ρ = 7 interpolates linearly in t^(1/7)
    torch.testing.assert_close(t[:18] ** (1 / 7), torch.linspace(80 ** (1 / 7), 0.002 ** (1 / 7), 18, dtype=torch.float64))


N_SAMPLES = 30000
"""Independent samples per sampler test (below torch's parallel grain size, so single-threaded and fast)."""


@pytest.mark.parametrize("s", [0.3, 0.5, 0.8, 1.0, 1.2])
def test_sampler_reproduces_a_gaussian_in_18_steps(s):
    """Mean and variance of N(μ, s²) within 2 % in 18 steps, for a denoiser preconditioned with σd = 1.

    The mean is exactly μ (1 − √Var/σmax) in expectation, since x starts from N(0, σmax²)
    rather than N(μ, σmax² + s²); that 1/80 shift is inside the 2 %."""
    mu = 1.5
    x = scaled_sampler(ExactGaussianDenoiser(s, sigma_data=1.0), torch.full((N_SAMPLES, 1, 1, 1, 1), mu), num_steps=18,
                       generator=torch.Generator().manual_seed(0))
    assert x.shape == (N_SAMPLES, 1, 1, 1, 1)
    assert float(x.mean()) == pytest.approx(mu, rel=0.02)
    assert float(x.var()) == pytest.approx(s**2, rel=0.02)


def test_edm_sampler_follows_its_closed_form():
    """EDM's own Heun steps (x against t) match their closed-form variance, 9.8 % above s² in 18 steps.

    That excess is the step size on EDM's schedule (σ ∈ [0.002, 80], ρ = 7), which is why the
    default sampler steps in the scaled variables instead; it shrinks to 2.7 % at 32 steps."""
    mu, s = 1.5, 0.8
    x = edm_sampler(ExactGaussianDenoiser(s), torch.full((N_SAMPLES, 1, 1, 1, 1), mu), num_steps=18,
                    generator=torch.Generator().manual_seed(0))
    ratio = heun_variance_ratio(s, 18)
    assert ratio == pytest.approx(1.0981, abs=1e-3)
    assert heun_variance_ratio(s, 32) == pytest.approx(1.027, abs=1e-3)
    expected_mean = mu * (1 - s * math.sqrt(ratio) / 80.0)
    assert float(x.mean()) == pytest.approx(expected_mean, abs=3 * s * math.sqrt(ratio / N_SAMPLES))
    assert float(x.var()) == pytest.approx(ratio * s**2, rel=0.02)


@pytest.mark.parametrize(("sampler", "num_steps", "churn"), [("edm", 64, 0.0), ("edm", 128, 10.0), ("scaled", 64, 10.0)])
def test_sampler_converges_to_the_gaussian(sampler, num_steps, churn):
    """With finer steps the deterministic and the stochastic (S_churn > 0) sampler reproduce μ and s² within 2 %."""
    mu, s = 1.5, 0.8
    x = SAMPLERS[sampler](ExactGaussianDenoiser(s, sigma_data=1.0), torch.full((N_SAMPLES, 1, 1, 1, 1), mu),
                          num_steps=num_steps, S_churn=churn, generator=torch.Generator().manual_seed(1))
    assert float(x.mean()) == pytest.approx(mu, rel=0.02)
    assert float(x.var()) == pytest.approx(s**2, rel=0.02)


def test_ensemble_rejects_an_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler 'vp'"):
        sample_ensemble(ExactGaussianDenoiser(0.5), torch.zeros(2, 1, 1, 1, 1), None, members=2, sampler="vp")


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampler_is_reproducible_with_a_generator(sampler):
    D, cond = ExactGaussianDenoiser(0.5), torch.zeros(4, 1, 2, 3, 3)
    a = SAMPLERS[sampler](D, cond, num_steps=5, S_churn=1.0, generator=torch.Generator().manual_seed(3))
    b = SAMPLERS[sampler](D, cond, num_steps=5, S_churn=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4, 1, 2, 3, 3) and a.dtype == torch.float32


def test_ensemble_layout_is_member_first():
    """Member m of sample b draws from N(μ_b, s²): [M, B, 1, L, H, W], independent members."""
    mus = torch.tensor([-5.0, 0.0, 5.0]).reshape(3, 1, 1, 1, 1)
    cond = mus.expand(3, 2, 2, 4, 4).contiguous()
    ens = sample_ensemble(ExactGaussianDenoiser(0.5), cond, None, members=200, num_steps=18,
                          generator=torch.Generator().manual_seed(4))
    assert ens.shape == (200, 3, 1, 2, 4, 4)
    torch.testing.assert_close(ens.mean(dim=(0, 2, 3, 4, 5)), mus.flatten(), atol=0.05, rtol=0)
    corr = torch.corrcoef(ens[:, 1].reshape(200, -1))
    assert float((corr - torch.eye(200)).abs().max()) < 0.7  # members are not copies of each other


def test_ensemble_with_a_network_and_priors():
    torch.manual_seed(5)
    net = UNet3D(3, 1, prior_channels=1, width=8, depth=1, noise_channels=8)
    D = EDMPrecond(net, sigma_data=0.5)
    ens = sample_ensemble(D, torch.randn(2, 2, 3, 5, 7), torch.randn(2, 1, 3, 5, 7), members=3, num_steps=3,
                          generator=torch.Generator().manual_seed(0))
    assert ens.shape == (3, 2, 1, 3, 5, 7)
    assert float((ens[0] - ens[1]).abs().mean()) > 0.01


def test_ema_average_warm_up_and_state_dict():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n = 1: β = min(0.9, 2/11)
    assert float(ema.module.weight) == pytest.approx(1 - 2 / 11)
    ema.updates = 1000  # past warm-up: β = 0.9
    with torch.no_grad():
        model.weight.fill_(3.0)
    before = float(ema.module.weight)
    ema.update(model)
    assert float(ema.module.weight) == pytest.approx(0.9 * before + 0.1 * 3.0)
    assert not ema.module.weight.requires_grad
    other = EMA(torch.nn.Linear(1, 1, bias=False))
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1001 and other.decay == 0.9
    assert torch.equal(other.module.weight, ema.module.weight)
