"""HARP network: layout, parameter count, bounds, band scaling (methods.harp.network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bids_harmony.methods.harp import HarpNet, apply_band_scales
from bids_harmony.methods.harp.network import band_index

PAPER_HIDDEN = (160, 240, 320, 360, 480, 520, 600)


def _randomize_head(net: HarpNet, seed: int = 0, std: float = 0.3) -> HarpNet:
    """The head starts at zero (identity); give it weights so that scales vary."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.head.weight.normal_(0.0, std, generator=gen)
        net.head.bias.normal_(0.0, std, generator=gen)
    return net


def _sh_like(n: int, n_coeffs: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_coeffs, generator=gen) * 0.05
    x[:, 0] = 1.0 + torch.rand(n, generator=gen)
    return x


def test_paper_network_shape_and_parameter_count():
    net = HarpNet()
    # weights: 45->160, 160->240, (240+45)->320, 320->360, (360+45)->480, 480->520,
    # (520+45)->600, 600->5; biases: one per unit
    weights = (
        45 * 160 + 160 * 240 + 285 * 320 + 320 * 360 + 405 * 480 + 480 * 520 + 565 * 600 + 600 * 5
    )
    biases = 160 + 240 + 320 + 360 + 480 + 520 + 600 + 5
    assert weights + biases == 1_040_685
    assert sum(p.numel() for p in net.parameters()) == weights + biases
    assert net.n_coeffs == 45 and net.n_bands == 5
    assert net(_sh_like(7, 45)).shape == (7, 5)


def test_skip_layers_have_the_input_in_their_fan_in():
    net = HarpNet()
    assert net.fan_ins() == [45, 160, 240 + 45, 320, 360 + 45, 480, 520 + 45]
    assert [layer.out_features for layer in net.layers] == list(PAPER_HIDDEN)
    assert (net.head.in_features, net.head.out_features) == (600, 5)


def test_forward_equals_the_authors_conv2d_layout():
    """Slow reference: the same weights as 1x1 Conv2d on an NCHW batch, [x, h] concat."""
    net = _randomize_head(HarpNet(generator=torch.Generator().manual_seed(5)))
    x = _sh_like(6 * 7, 45, seed=1)
    image = x.T.reshape(1, 45, 6, 7)  # one "slice" of 6 x 7 voxels
    h = image
    with torch.no_grad():
        for i, layer in enumerate(net.layers, start=1):
            if i in (3, 5, 7):
                h = torch.cat([image, h], dim=1)
            h = F.relu(F.conv2d(h, layer.weight[:, :, None, None], layer.bias))
        ref = torch.tanh(F.conv2d(h, net.head.weight[:, :, None, None], net.head.bias)) * 0.1 + 1
        out = net(x)
    torch.testing.assert_close(out, ref.reshape(5, -1).T, rtol=1e-5, atol=1e-6)


def test_untrained_network_is_the_identity():
    net = HarpNet()
    x = _sh_like(10, 45)
    with torch.no_grad():
        assert torch.equal(net(x), torch.ones(10, 5))
        assert torch.equal(net.harmonize(x), x)


@pytest.mark.parametrize("bound", [0.1, 0.25])
def test_scales_stay_within_the_bound_for_huge_inputs(bound):
    net = _randomize_head(HarpNet(hidden=(16,) * 7, scale_bound=bound), std=50.0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(500, 45, generator=gen) * torch.logspace(-3, 8, 500)[:, None]
    with torch.no_grad():
        scales = net(x)
    assert torch.isfinite(scales).all()
    assert scales.min() >= 1 - bound and scales.max() <= 1 + bound
    assert scales.min() < 1 - bound / 2 and scales.max() > 1 + bound / 2  # bounds reachable


@pytest.mark.parametrize(("order", "n_coeffs", "n_bands"), [(6, 28, 4), (4, 15, 3), (2, 6, 2)])
def test_lower_orders(order, n_coeffs, n_bands):
    net = HarpNet(sh_order=order)
    assert (net.n_coeffs, net.n_bands) == (n_coeffs, n_bands)
    assert net.fan_ins() == [
        n_coeffs,
        160,
        240 + n_coeffs,
        320,
        360 + n_coeffs,
        480,
        520 + n_coeffs,
    ]
    assert net(_sh_like(3, n_coeffs)).shape == (3, n_bands)
    with pytest.raises(ValueError, match="shape"):
        net(_sh_like(3, 45))


def test_config_round_trip_rebuilds_the_same_function():
    net = _randomize_head(HarpNet(sh_order=6, hidden=(8, 12, 16), skip_into=(3,), scale_bound=0.2))
    config = net.config()
    assert config["hidden"] == [8, 12, 16] and config["skip_into"] == [3]
    twin = HarpNet.from_config(config)
    twin.load_state_dict(net.state_dict())
    x = _sh_like(5, 28)
    with torch.no_grad():
        assert torch.equal(twin(x), net(x))
    with pytest.raises(ValueError, match="n_bands"):
        HarpNet.from_config({**config, "n_bands": 5})
    with pytest.raises(ValueError, match="class"):
        HarpNet.from_config({**config, "class": "Other"})
    with pytest.raises(ValueError, match="lacks"):
        HarpNet.from_config({k: v for k, v in config.items() if k != "hidden"})


@pytest.mark.parametrize(
    "kwargs",
    [{"hidden": ()}, {"skip_into": (1,)}, {"skip_into": (8,)}, {"scale_bound": 0.0},
     {"scale_bound": 1.5}, {"sh_order": 3}],
)  # fmt: skip
def test_invalid_architectures(kwargs):
    with pytest.raises(ValueError):
        HarpNet(**kwargs)


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = HarpNet(hidden=(8,) * 7, generator=torch.Generator().manual_seed(1))
    b = HarpNet(hidden=(8,) * 7, generator=torch.Generator().manual_seed(1))
    c = HarpNet(hidden=(8,) * 7, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    assert torch.equal(HarpNet().layers[0].weight, HarpNet().layers[0].weight)


def test_band_index():
    assert band_index(8).tolist() == [0] + [1] * 5 + [2] * 9 + [3] * 13 + [4] * 17
    assert band_index(2).tolist() == [0, 1, 1, 1, 1, 1]


def test_apply_band_scales_hand_example():
    coeffs = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # order 2: l=0 [0:1], l=2 [1:6]
    out = apply_band_scales(coeffs, np.array([2.0, 0.5]))
    np.testing.assert_array_equal(out, [2.0, 1.0, 1.5, 2.0, 2.5, 3.0])
    out_t = apply_band_scales(torch.tensor(coeffs), torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), [2.0, 1.0, 1.5, 2.0, 2.5, 3.0])


def test_apply_band_scales_leading_shapes_and_order_8():
    rng = np.random.default_rng(0)
    coeffs = rng.normal(size=(2, 3, 45))
    scales = rng.uniform(0.9, 1.1, size=(2, 3, 5))
    out = apply_band_scales(coeffs, scales, sh_order=8)
    for band, sl in enumerate(
        [slice(0, 1), slice(1, 6), slice(6, 15), slice(15, 28), slice(28, 45)]
    ):
        np.testing.assert_allclose(out[..., sl], coeffs[..., sl] * scales[..., band : band + 1])
    # one scale vector for every voxel broadcasts
    per_coeff = scales[0, 0][band_index(8)]
    np.testing.assert_allclose(apply_band_scales(coeffs, scales[0, 0]), coeffs * per_coeff)
    with pytest.raises(ValueError, match="bands"):
        apply_band_scales(coeffs, scales[..., :4])
    with pytest.raises(ValueError, match="order"):
        apply_band_scales(coeffs, scales, sh_order=6)
    with pytest.raises(ValueError):
        apply_band_scales(rng.normal(size=(3, 44)), scales)


def test_centre_scales_the_output_and_round_trips_through_the_config():
    net = HarpNet(centre=[0.98, 1.02, 1.0, 1.0, 1.0])
    x = torch.randn(7, 45)
    # the head starts at zero: an untrained centred network applies its centre
    torch.testing.assert_close(net(x), torch.tensor([[0.98, 1.02, 1.0, 1.0, 1.0]] * 7))
    again = HarpNet.from_config(net.config())
    torch.testing.assert_close(again.centre, net.centre)
    assert "centre" not in net.state_dict()  # the tensor file keeps its keys
    old = {k: v for k, v in net.config().items() if k != "centre"} | {"version": 1}
    torch.testing.assert_close(HarpNet.from_config(old).centre, torch.ones(5))
    with pytest.raises(ValueError, match="centre"):
        HarpNet(centre=[1.0, 1.0])


def test_rish_inputs_are_rotation_invariant_and_clamped_to_the_phantom_range():
    from scipy.spatial.transform import Rotation

    from bids_harmony.dmri.sh_rotation import rotate_sh

    low, high = [1.0, 0.0, 0.0, 0.0, 0.0], [2.0, 0.3, 0.1, 0.05, 0.05]
    net = HarpNet(inputs="rish", input_range=(low, high), hidden=(16, 16), skip_into=(2,))
    torch.nn.init.normal_(net.head.weight, std=0.5)
    x = torch.randn(50, 45, generator=torch.Generator().manual_seed(0)) * 0.1
    x[:, 0] = torch.linspace(0.5, 3.0, 50)
    q = Rotation.from_euler("xyz", [30, -40, 70], degrees=True).as_matrix()
    turned = torch.from_numpy(rotate_sh(x.double().numpy(), q)).float()
    torch.testing.assert_close(net(x), net(turned), atol=1e-5, rtol=0)
    feats = net.features(x)
    assert feats[:, 0].min() == 1.0 and feats[:, 0].max() == 2.0
    # below the phantom's C00 range the network sees the lowest C00 it was trained on
    assert (feats[:10, 0] == 1.0).all() and (feats[-10:, 0] == 2.0).all()
    again = HarpNet.from_config(net.config())
    torch.testing.assert_close(again.input_low, net.input_low)
    with pytest.raises(ValueError, match="input_range"):
        HarpNet(input_range=(low, high))
