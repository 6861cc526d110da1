"""Training losses: exact values, zero for a perfect prediction, gradients pointing downhill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geodiff.constants import G, KAPPA, R_D
from geodiff.model.losses import PhysicsLoss, charbonnier, coupling_loss, gradient_loss, ramp_factor, stability_loss
from geodiff.physics.thermo import hypsometric_height

LEVELS = torch.tensor([1000.0, 925.0, 850.0, 700.0, 500.0, 300.0, 200.0], dtype=torch.float64)
PROFILE = torch.tensor([288.0, 284.0, 280.0, 270.0, 252.0, 229.0, 218.0], dtype=torch.float64)
WEIGHTS = {"charbonnier": 1.0, "stability": 0.1, "gradient": 0.1, "coupling": 0.05}


def columns(batch: int = 2, h: int = 5, w: int = 6, noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Stable temperature columns [B, L, H, W] in K (float64)."""
    gen = torch.Generator().manual_seed(seed)
    return PROFILE.reshape(1, -1, 1, 1) + noise * torch.randn(batch, LEVELS.numel(), h, w, generator=gen, dtype=torch.float64)


def stability_numpy(t: np.ndarray, p_hpa: np.ndarray) -> np.ndarray:
    """Independent σ = −(R_d T/p) ∂ln θ/∂p in J kg-1 Pa-2 with numpy's second-order gradient, levels on axis −3."""
    p = p_hpa[:, None, None] * 100.0
    log_theta = np.log(t * (1000.0 / p_hpa[:, None, None]) ** KAPPA)
    return -(R_D * t / p) * np.gradient(log_theta, p_hpa * 100.0, axis=-3, edge_order=2)


def descends(fn, pred: torch.Tensor, target: torch.Tensor, step: float = 1e-3) -> bool:
    """True when a small step along −∇ lowers fn(pred, target)."""
    pred = pred.clone().requires_grad_(True)
    value = fn(pred, target)
    (grad,) = torch.autograd.grad(value, pred)
    return float(fn(pred.detach() - step * grad / grad.abs().max(), target)) < float(value)


def test_charbonnier_values_and_gradient_sign():
    assert float(charbonnier(torch.tensor([3.0]), torch.tensor([0.0]), eps=4.0)) == pytest.approx(1.0)  # √(9 + 16) − 4
    # mean over elements: errors (0, 3, −4) with ε = 1 -> (0 + √10 − 1 + √17 − 1)/3
    pred, target = torch.tensor([1.0, 3.0, -4.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    value = charbonnier(pred, target, eps=1.0)
    assert float(value) == pytest.approx((np.sqrt(10) + np.sqrt(17) - 2) / 3, rel=1e-14)
    with pytest.raises(ValueError, match="eps"):
        charbonnier(torch.ones(1), torch.ones(1), eps=0.0)
    y = columns()
    assert float(charbonnier(y, y)) == 0.0
    pred = (y + torch.randn_like(y)).requires_grad_(True)
    charbonnier(pred, y).backward()
    assert torch.equal(torch.sign(pred.grad), torch.sign(pred.detach() - y))
    assert descends(charbonnier, y + torch.randn_like(y), y)


def test_gradient_loss_values():
    y = columns()
    assert float(gradient_loss(y, y)) == 0.0
    assert float(gradient_loss(y + 3.0, y)) == pytest.approx(0.0, abs=1e-12)  # an offset has no gradient error
    ramp = 0.2 * torch.arange(6, dtype=torch.float64)  # +0.2 per lon step, nothing along lat
    eps = 0.01
    expected = 0.5 * (0.0 + (np.sqrt(0.2**2 + eps**2) - eps))
    assert float(gradient_loss(y + ramp, y, eps)) == pytest.approx(expected, rel=1e-12)
    assert descends(gradient_loss, y + torch.randn_like(y), y)


def test_stability_loss_against_an_independent_sigma():
    t_true, t_pred = columns(seed=1), columns(seed=2)
    p = LEVELS.numpy()
    d_sigma = (stability_numpy(t_pred.numpy(), p) - stability_numpy(t_true.numpy(), p)) / 1e-6
    expected = np.mean(np.sqrt(d_sigma**2 + 0.01**2)) - 0.01
    assert float(stability_loss(t_pred, t_true, LEVELS)) == pytest.approx(expected, rel=1e-9)
    assert 0.1 < expected < 10.0  # σ in units of 1e-6 J kg-1 Pa-2 is O(1)
    assert float(stability_loss(t_true, t_true, LEVELS)) == 0.0
    assert descends(lambda a, b: stability_loss(a, b, LEVELS), t_pred, t_true)


def test_coupling_loss_zero_for_hypsometric_z_and_exact_for_a_warm_bias():
    # an isothermal column at T0 has the closed-form geopotential z(p) = g z_b + R_d T0 ln(p_0/p)
    t0, z_b = 250.0, 120.0
    t = torch.full_like(columns(), t0)
    p = LEVELS.numpy()
    z = torch.as_tensor(G * z_b + R_D * t0 * np.log(p[0] / p), dtype=t.dtype).reshape(-1, 1, 1).expand_as(t)
    assert float(coupling_loss(t, z, LEVELS)) == pytest.approx(0.0, abs=1e-9)
    # +ΔT everywhere thickens layer k by R_d ΔT/g ln(p_k/p_{k+1}) m, independent of T
    dT, eps = 1.5, 0.01
    dz = R_D * dT / G * np.log(LEVELS.numpy()[:-1] / LEVELS.numpy()[1:]) / 10.0
    expected = np.mean(np.sqrt(dz**2 + eps**2)) - eps
    warm = (t + dT).requires_grad_(True)
    value = coupling_loss(warm, z, LEVELS, eps)
    assert float(value) == pytest.approx(expected, rel=1e-9)
    value.backward()
    assert bool((warm.grad >= 0).all()) and float(warm.grad.sum()) > 0  # too warm: cooling lowers the loss
    assert descends(lambda a, b: coupling_loss(a, b, LEVELS), t + torch.randn_like(t), z)
    with pytest.raises(ValueError, match="shape"):
        coupling_loss(t, z[:1], LEVELS)


def normalised(t_k: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((t_k - mean[:, None, None]) / std[:, None, None]).float()


def test_physics_loss_denormalises_and_weights_the_terms():
    mean, std = PROFILE.clone(), torch.linspace(6.0, 3.0, LEVELS.numel(), dtype=torch.float64)
    loss = PhysicsLoss(WEIGHTS, 0.01, LEVELS.numpy(), mean.float(), std.float())
    t_true, t_pred = columns(seed=3), columns(seed=4)
    z = (G * hypsometric_height(t_true, LEVELS, z_bottom=50.0)).float()
    x_true, x_pred = normalised(t_true, mean, std), normalised(t_pred, mean, std)

    total, terms = loss(x_pred, x_true, z)
    assert set(terms) == {"charbonnier", "stability", "gradient", "coupling"}
    t_pred_back, t_true_back = loss.denormalise(x_pred), loss.denormalise(x_true)
    torch.testing.assert_close(t_pred_back, t_pred, atol=1e-4, rtol=0)
    reference = {
        "charbonnier": charbonnier(x_pred, x_true, 0.01),
        "gradient": gradient_loss(x_pred, x_true, 0.01),
        "stability": stability_loss(t_pred_back, t_true_back, LEVELS, 0.01),
        "coupling": coupling_loss(t_pred_back, z.double(), LEVELS, 0.01),
    }
    for name, value in reference.items():
        torch.testing.assert_close(terms[name], value.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(total, sum(WEIGHTS[n] * terms[n] for n in terms))

    zero, zero_terms = loss(x_true, x_true, z)
    assert float(zero) == pytest.approx(0.0, abs=1e-5)  # z is float32: the coupling term is 0 up to rounding
    assert all(float(v) < 1e-5 for v in zero_terms.values())


def test_physics_loss_skips_terms_and_gradients_point_downhill():
    mean, std = PROFILE.float(), torch.full((LEVELS.numel(),), 5.0)
    loss = PhysicsLoss({**WEIGHTS, "gradient": 0.0, "stability": 0.5}, 0.1, LEVELS, mean, std)
    x_true = normalised(columns(seed=5), PROFILE, std.double())
    x_pred = (x_true + 0.3 * torch.randn_like(x_true)).requires_grad_(True)
    total, terms = loss(x_pred, x_true)  # no z: coupling skipped; gradient has weight 0
    assert set(terms) == {"charbonnier", "stability"}
    reference = charbonnier(x_pred, x_true, 0.1) + 0.5 * stability_loss(loss.denormalise(x_pred), loss.denormalise(x_true), LEVELS, 0.1)
    torch.testing.assert_close(total, reference.float())
    assert total.dtype == torch.float32
    total.backward()
    stepped = x_pred.detach() - 1e-3 * x_pred.grad / x_pred.grad.abs().max()
    assert float(loss(stepped, x_true)[0]) < float(total)
    with pytest.raises(ValueError, match="unknown loss terms"):
        PhysicsLoss({"tv": 1.0}, 0.01, LEVELS, mean, std)


def test_masked_terms_average_over_the_present_truth_only():
    """Missing truth (mask 0) holds garbage: each term equals its numpy value over the present points
    (complete columns for σ and thickness, differences with both ends present), and the gradient is
    finite everywhere and 0 where only missing truth is involved."""
    mean, std = PROFILE.float(), torch.full((LEVELS.numel(),), 5.0)
    loss = PhysicsLoss(WEIGHTS, 0.01, LEVELS, mean, std)
    t_true, t_pred = columns(seed=6), columns(seed=7)
    z = (G * hypsometric_height(t_true, LEVELS, z_bottom=50.0)).float()
    mask = torch.ones_like(t_true)
    mask[0, 2, 1, 3] = 0.0  # one missing value: its column and its neighbours' differences drop out
    mask[1, :, 4, :] = 0.0  # a missing row of the second sample
    garbage = torch.where(mask > 0, t_true, torch.full_like(t_true, 1.0e4))
    x_true, x_pred = normalised(garbage, PROFILE, std.double()), normalised(t_pred, PROFILE, std.double())
    x_pred.requires_grad_(True)
    total, terms = loss(x_pred, x_true, torch.where(mask > 0, z, torch.zeros_like(z)), mask)

    m, eps = mask.numpy() > 0, 0.01
    rho = lambda e: np.sqrt(e**2 + eps**2) - eps  # noqa: E731
    xp, xt = x_pred.detach().numpy().astype(np.float64), x_true.numpy().astype(np.float64)
    expected = {"charbonnier": rho(xp - xt)[m].mean()}
    lat = (m[..., 1:, :] & m[..., :-1, :])
    lon = (m[..., 1:] & m[..., :-1])
    expected["gradient"] = 0.5 * (rho(np.diff(xp, axis=-2) - np.diff(xt, axis=-2))[lat].mean()
                                  + rho(np.diff(xp, axis=-1) - np.diff(xt, axis=-1))[lon].mean())
    complete = m.all(axis=-3, keepdims=True)
    tp, tt = t_pred.numpy(), t_true.numpy()
    d_sigma = (stability_numpy(tp, LEVELS.numpy()) - stability_numpy(tt, LEVELS.numpy())) / 1e-6
    expected["stability"] = rho(d_sigma)[np.broadcast_to(complete, d_sigma.shape)].mean()
    log_p = np.log(LEVELS.numpy())
    dz_t = R_D * 0.5 * (tp[:, 1:] + tp[:, :-1]) / G * (log_p[:-1] - log_p[1:])[:, None, None]
    dz_z = np.diff(z.double().numpy(), axis=-3) / G
    expected["coupling"] = rho((dz_t - dz_z) / 10.0)[np.broadcast_to(complete, dz_t.shape)].mean()
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=2e-4), name
    total.backward()
    assert bool(torch.isfinite(x_pred.grad).all())
    assert float(x_pred.grad[1, :, 4, :].abs().max()) == 0.0  # a row missing at every level feeds no term
    only_charbonnier = PhysicsLoss({"charbonnier": 1.0}, 0.01, LEVELS, mean, std)
    x = x_pred.detach().clone().requires_grad_(True)
    only_charbonnier(x, x_true, mask=mask)[0].backward()
    assert float(x.grad[mask == 0].abs().max()) == 0.0 and float(x.grad[mask > 0].abs().min()) > 0


def test_ramp_scales_the_physics_weights_only():
    """r(f) = clip((f − a)/(b − a), 0, 1): the total at progress f equals the data term plus r(f) times
    the physics terms evaluated without a ramp; before a only the data term is evaluated."""
    assert [ramp_factor(f, (0.5, 0.75)) for f in (0.0, 0.5, 0.625, 0.75, 1.0)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert ramp_factor(0.0, (0.0, 0.0)) == 1.0 and ramp_factor(0.29, (0.3, 0.3)) == 0.0 == 1.0 - ramp_factor(0.3, (0.3, 0.3))
    with pytest.raises(ValueError, match="ramp"):
        ramp_factor(0.5, (0.6, 0.4))
    mean, std = PROFILE.float(), torch.full((LEVELS.numel(),), 5.0)
    t_true, t_pred = columns(seed=8), columns(seed=9)
    z = (G * hypsometric_height(t_true, LEVELS, z_bottom=50.0)).float()
    x_true, x_pred = normalised(t_true, PROFILE, std.double()), normalised(t_pred, PROFILE, std.double())
    plain = PhysicsLoss(WEIGHTS, 0.01, LEVELS, mean, std)
    ramped = PhysicsLoss(WEIGHTS, 0.01, LEVELS, mean, std, ramp=(0.5, 0.75))
    _, terms = plain(x_pred, x_true, z)
    physics = sum(WEIGHTS[n] * terms[n] for n in ("stability", "gradient", "coupling"))
    for progress, r in ((0.2, 0.0), (0.6, 0.4), (0.9, 1.0)):
        total, ramped_terms = ramped(x_pred, x_true, z, progress=progress)
        torch.testing.assert_close(total, terms["charbonnier"] + r * physics)
    assert set(ramped(x_pred, x_true, z, progress=0.2)[1]) == {"charbonnier"}
