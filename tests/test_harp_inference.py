"""HARP inference: harmonize_sh and HarpPredictor (bids_harmony.methods.harp.inference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_harmony.errors import BadImageError
from bids_harmony.methods.harp import (
    HarpNet,
    HarpPredictor,
    apply_band_scales,
    harmonize_sh,
    save_model,
)
from bids_harmony.methods.harp.inference import BLOCK


def _model(order: int = 8, **kwargs) -> HarpNet:
    net = HarpNet(order, generator=torch.Generator().manual_seed(7), **kwargs)
    with torch.no_grad():  # a head that makes the scales vary (|z| ~ 1)
        net.head.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(8))
        net.head.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(9))
    return net


def _coeffs(shape: tuple[int, ...], n_coeffs: int = 45, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 0.05, size=shape + (n_coeffs,)).astype(np.float32)
    out[..., 0] = rng.uniform(1.0, 2.0, size=shape)
    return out


def _reference(net: HarpNet, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))).numpy()


@pytest.fixture(scope="module")
def model() -> HarpNet:
    return _model(hidden=(64, 96, 128, 96, 64, 48, 32))


def test_harmonize_sh_leading_shape_and_mask(model):
    coeffs = _coeffs((4, 5, 3))
    mask = np.zeros((4, 5, 3), dtype=bool)
    mask[1:3, ::2] = True
    coeffs[~mask] *= 7.0  # outside the mask: anything, left untouched
    out, scales = harmonize_sh(model, coeffs, mask=mask, precision="float32")
    assert out.shape == coeffs.shape and out.dtype == np.float32
    assert scales.shape == (4, 5, 3, 5) and scales.dtype == np.float32
    np.testing.assert_array_equal(out[~mask], coeffs[~mask])
    np.testing.assert_array_equal(scales[~mask], 1.0)
    ref = _reference(model, coeffs[mask])
    np.testing.assert_allclose(scales[mask], ref, rtol=1e-6)
    np.testing.assert_allclose(out[mask], apply_band_scales(coeffs[mask], ref), rtol=1e-6)
    assert np.ptp(scales[mask], axis=0).min() > 1e-3  # the scales really vary


def test_predictor_chunks_equal_one_shot(model):
    coeffs = _coeffs((2 * BLOCK + 123,), seed=1)
    one_shot = HarpPredictor(model, precision="float32").predict_scales(coeffs)
    chunked = HarpPredictor(model, chunk_size=777, precision="float32").predict_scales(coeffs)
    np.testing.assert_allclose(chunked, one_shot, rtol=1e-6)
    np.testing.assert_allclose(one_shot, _reference(model, coeffs), rtol=1e-6)
    mask = np.arange(coeffs.shape[0]) % 3 > 0
    a = HarpPredictor(model, chunk_size=1000, precision="float32").harmonize(coeffs, mask=mask)
    b = HarpPredictor(model, precision="float32").harmonize(coeffs, mask=mask)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)


@pytest.mark.parametrize(
    ("order", "kwargs"),
    [(8, {}), (6, {"hidden": (20, 30, 40), "skip_into": (2,)}), (2, {"skip_into": ()})],
)
def test_fused_kernel_matches_forward_for_other_layouts(order, kwargs):
    net = _model(order, **kwargs)
    coeffs = _coeffs((300,), n_coeffs=net.n_coeffs, seed=2)
    scales = HarpPredictor(net, precision="float32").predict_scales(coeffs)
    np.testing.assert_allclose(scales, _reference(net, coeffs), rtol=1e-6)


def test_reduced_precision(model):
    coeffs = _coeffs((3000,), seed=3)
    ref = _reference(model, coeffs)
    errors = {}
    for precision in ("bfloat16", "mixed", "auto"):
        predictor = HarpPredictor(model, precision=precision)
        out, scales = predictor.harmonize(coeffs)
        errors[predictor.precision_used] = np.max(np.abs(scales - ref) / ref)
        np.testing.assert_allclose(out, apply_band_scales(coeffs, scales), rtol=1e-6)
    assert errors["bfloat16"] < 1e-3 and errors["mixed"] < errors["bfloat16"]
    # "auto" calibrates: whatever it picks is within the tolerance (1e-4)
    assert errors[predictor.precision_used] < 1e-4


def test_auto_precision_falls_back_to_float32_when_bf16_is_not_accurate(model):
    predictor = HarpPredictor(model, precision="auto", tolerance=1e-12)
    scales = predictor.predict_scales(_coeffs((500,), seed=4))
    assert predictor.precision_used == "float32"
    np.testing.assert_allclose(scales, _reference(model, _coeffs((500,), seed=4)), rtol=1e-6)


def test_threads_are_restored(model):
    before = torch.get_num_threads()
    HarpPredictor(model, n_threads=1).predict_scales(_coeffs((10,)))
    assert torch.get_num_threads() == before


def test_bad_inputs(model):
    predictor = HarpPredictor(model)
    with pytest.raises(ValueError, match="pad_coeffs"):
        predictor.harmonize(_coeffs((5,), n_coeffs=28))
    with pytest.raises(ValueError, match="mask"):
        predictor.harmonize(_coeffs((5,)), mask=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="floating"):
        predictor.harmonize(np.ones((5, 45), dtype=np.int32))
    coeffs = _coeffs((6,))
    coeffs[2, 4] = np.nan
    with pytest.raises(BadImageError, match="1 voxels"):
        predictor.harmonize(coeffs)
    mask = np.ones(6, dtype=bool)
    mask[2] = False
    out, _ = predictor.harmonize(coeffs, mask=mask)  # NaN outside the mask is left alone
    assert np.isnan(out[2, 4]) and np.isfinite(np.delete(out, 2, axis=0)).all()
    with pytest.raises(ValueError, match="precision"):
        HarpPredictor(model, precision="float16")
    with pytest.raises(TypeError):
        HarpPredictor(torch.nn.Linear(45, 5))


def test_empty_inputs(model):
    out, scales = harmonize_sh(model, np.zeros((0, 45), np.float32))
    assert out.shape == (0, 45) and scales.shape == (0, 5)
    out, scales = harmonize_sh(model, _coeffs((3,)), mask=np.zeros(3, dtype=bool))
    np.testing.assert_array_equal(scales, 1.0)


def test_from_file(model, tmp_path):
    path = save_model(tmp_path / "harp", model, {"sh_convention": {"sh_order": 8}})
    predictor = HarpPredictor.from_file(path, expect={"sh_order": 8}, precision="float32")
    assert predictor.card["sha256"]
    coeffs = _coeffs((20,))
    np.testing.assert_allclose(
        predictor.predict_scales(coeffs), _reference(model, coeffs), rtol=1e-6
    )


@pytest.mark.parametrize("inputs", ["coefficients", "rish"])
def test_predictor_applies_the_centre_and_the_inputs_of_the_model(inputs):
    net = HarpNet(inputs=inputs, centre=[0.9, 1.1, 1.0, 1.02, 1.0])
    torch.nn.init.normal_(net.head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    x = torch.randn(300, 45, generator=torch.Generator().manual_seed(2))
    x[:, 0] += 2.0
    with torch.no_grad():
        expected = net(x).numpy()
    got = HarpPredictor(net, precision="float32").predict_scales(x.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert abs(np.median(got[:, 0]) - 0.9) < 0.1  # around the centre, not around 1
