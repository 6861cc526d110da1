"""UNet3D: shapes on odd grids, the zero-convolution prior branch, encodings and noise conditioning."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from geodiff.model.unet import NORM_WINDOW, LocalGroupNorm, UNet3D, ZeroConv, level_channels


def randomise_head(net: UNet3D, seed: int = 0) -> None:
    """Give the zero-initialised output convolution random weights, as after training,
    so that the output depends on every internal feature."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.head[-1].weight.copy_(0.1 * torch.randn(net.head[-1].weight.shape, generator=gen))


@pytest.mark.parametrize(
    ("shape", "depth", "n_levels"),
    [((8, 37, 45), 2, None), ((5, 9, 31), 3, 5), ((4, 16, 16), 2, 4), ((1, 5, 3), 1, None)],
)
def test_output_shape_on_odd_grids(shape, depth, n_levels):
    torch.manual_seed(0)
    net = UNet3D(3, 2, prior_channels=2, width=8, depth=depth, noise_channels=8, n_levels=n_levels)
    randomise_head(net)
    out = net(torch.randn(2, 3, *shape), torch.randn(2, 2, *shape), torch.randn(2))
    assert out.shape == (2, 2, *shape)
    assert torch.isfinite(out).all()


def test_untrained_network_returns_zero():
    """The output convolution starts at zero: ŷ = x + U(x) starts as the input, D = c_skip x."""
    net = UNet3D(2, 1, width=8, depth=1)
    assert torch.equal(net(torch.randn(1, 2, 4, 7, 9)), torch.zeros(1, 1, 4, 7, 9))


def test_prior_branch_changes_the_output_by_exactly_zero_at_init():
    torch.manual_seed(1)
    net = UNet3D(3, 1, prior_channels=2, width=8, depth=2)
    randomise_head(net)
    x, priors = torch.randn(2, 3, 5, 13, 11), 5.0 * torch.randn(2, 2, 5, 13, 11)
    without = net(x, None)
    assert float(without.abs().max()) > 0  # the comparison is not between two zero fields
    assert torch.equal(net(x, priors), without)
    assert torch.equal(net(x, torch.zeros_like(priors)), without)


def test_zero_convs_get_gradients_after_one_optimiser_step():
    """At step 0 the head and the zero convs are zero; after one step the zero convs receive
    non-zero gradients and the priors start to change the output."""
    torch.manual_seed(2)
    net = UNet3D(3, 1, prior_channels=2, width=8, depth=2)
    x, priors, target = torch.randn(2, 3, 4, 13, 11), torch.randn(2, 2, 4, 13, 11), torch.randn(2, 1, 4, 13, 11)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    ((net(x, priors) - target) ** 2).mean().backward()
    opt.step()
    opt.zero_grad()
    ((net(x, priors) - target) ** 2).mean().backward()
    assert len(net.zero_convs) == 3
    for zc in net.zero_convs:
        assert isinstance(zc, ZeroConv)
        assert float(zc.weight.grad.abs().sum()) > 0
        assert torch.count_nonzero(zc.weight) == 0  # still zero: only one step taken, by the head
    opt.step()
    assert not torch.equal(net(x, priors), net(x, None))


def test_zero_conv_is_zero_and_linear():
    zc = ZeroConv(4, 3)
    assert zc.weight.shape == (3, 4, 1, 1, 1)
    assert torch.equal(zc(torch.randn(1, 4, 2, 3, 3)), torch.zeros(1, 3, 2, 3, 3))


def test_level_encoding():
    like = torch.zeros(2, 1, 3, 5, 4)
    lev = level_channels(like)
    assert lev.shape == (2, 2, 3, 5, 4)
    torch.testing.assert_close(lev[0, :, 1, 0, 0], torch.tensor([1.0, 0.0]), atol=1e-7, rtol=0)


def test_with_local_norm_nothing_ties_the_network_to_a_position_in_the_field():
    """Shifting the input by a multiple of 2^depth cells shifts the output by as much, away from the
    edges, to float32 rounding (1e-4): the same field gives the same answer wherever it lies in the box, in a
    training patch or in an inference tile. (GroupNorm, whose statistics span the whole field, moved it
    by 8 % of its spread, and the encoding of the position in the box this replaced by 70 %.)"""
    torch.manual_seed(0)
    net = UNet3D(1, 1, width=8, depth=2, norm="local")
    randomise_head(net)
    x = torch.randn(1, 1, 3, 192, 192)
    out, shifted = net(x), net(torch.roll(x, shifts=(8, 12), dims=(3, 4)))
    inner = (..., slice(88, 104), slice(88, 104))  # beyond the reach (receptive field, norm windows) of edges and seams
    torch.testing.assert_close(torch.roll(out, shifts=(8, 12), dims=(3, 4))[inner], shifted[inner], rtol=0, atol=5e-4)


def test_local_group_norm_takes_its_statistics_from_the_neighbourhood():
    """Brute force, point by point: the mean and variance of the point's group over every level and the
    NORM_WINDOW x NORM_WINDOW cells around it that lie in the field."""
    norm = LocalGroupNorm(4)  # 4 groups of 1 channel
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 5.0))
        norm.bias.fill_(0.5)
    x = 3.0 + 2.0 * torch.randn(2, 4, 3, 9, 10, dtype=torch.float64)
    half, v = NORM_WINDOW // 2, x.numpy()
    expected = np.empty(x.shape)
    for b, c, i, j in np.ndindex(2, 4, 9, 10):
        near = v[b, c, :, max(i - half, 0) : i + half + 1, max(j - half, 0) : j + half + 1]
        expected[b, c, :, i, j] = (v[b, c, :, i, j] - near.mean()) / np.sqrt(near.var() + 1e-5) * (c + 1) + 0.5
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)  # float32 statistics


def test_learned_level_embedding_is_used_and_checked():
    torch.manual_seed(3)
    net = UNet3D(1, 1, width=8, depth=1, n_levels=5)
    randomise_head(net)
    x = torch.randn(1, 1, 5, 6, 6)
    net(x).sum().backward()
    assert float(net.level_embed.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="5 levels"):
        net(torch.randn(1, 1, 4, 6, 6))


def test_noise_labels_condition_the_output():
    torch.manual_seed(4)
    net = UNet3D(2, 1, width=8, depth=1, noise_channels=16)
    randomise_head(net)
    x = torch.randn(2, 2, 3, 8, 8)
    a, b = net(x, noise_labels=torch.tensor([-1.0, -1.0])), net(x, noise_labels=torch.tensor([1.0, 1.0]))
    assert float((a - b).abs().max()) > 1e-4
    torch.testing.assert_close(net(x, noise_labels=torch.tensor(-1.0)), a)  # one label for the whole batch
    with pytest.raises(ValueError, match="noise_labels"):
        net(x)
