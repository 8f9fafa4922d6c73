"""The DKI 3D hierarchical CNN (methods/dki_cnn): network, inputs, training, method."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from bids_harmony.dmri import sh
from bids_harmony.errors import BadGradientsError
from bids_harmony.methods.base import Harmonizes, TrainsFrom
from bids_harmony.methods.dki_cnn import (
    MAP_NAMES,
    DkiCnn,
    DkiCnnMethod,
    DkiCnnModel,
    InputSpec,
    TrainingRecipe,
    dki_inputs,
    dki_inputs_from_sh,
    fit_dki_cnn,
    hemisphere_directions,
    predict_maps,
)
from bids_harmony.methods.dki_cnn.synthetic import gradient_table, synthetic_subject

SPEC = InputSpec((1000.0, 2000.0))  # the default: 32 directions, order 6, S0 channel
TINY = TrainingRecipe(patch_size=8, batch_size=4, patches_per_subject=4, max_epochs=40,
                      width=32, lr=3e-3, early_stop_patience=8)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy CI machine, threads waiting on each other cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference_forward(net: DkiCnn, x: torch.Tensor) -> torch.Tensor:
    """The network written with Conv3d, as the paper describes it."""
    x = F.pad(x, (1,) * 6)
    x = (x - net.input_mean.view(1, -1, 1, 1, 1)) / net.input_std.view(1, -1, 1, 1, 1)
    h = F.relu(net.conv(x))
    for layer in net.shared:
        h = F.relu(layer(h))
    return torch.cat([net.head_shallow(h), net.head_deep(F.relu(net.deep_hidden(h)))], 1)


def test_network_shapes_heads_and_parameter_count():
    net = DkiCnn(65)  # the paper's widths with our 2 shared layers
    expected = (65 * 27 * 150 + 150) + 3 * (150 * 150 + 150) + (150 * 3 + 3) + (150 * 5 + 5)
    assert net.n_parameters() == expected == 332_558
    assert net.head_shallow.out_channels == 3 and net.head_deep.out_channels == 5
    assert len(net.layer_list()) == 3 + net.n_shared

    small = DkiCnn(7, width=16, n_shared=2, generator=torch.Generator().manual_seed(3)).eval()
    x = torch.rand(2, 7, 5, 6, 4)
    out = small(x)
    assert out.shape == (2, 8, 5, 6, 4)
    assert small(x, pad=False).shape == (2, 8, 3, 4, 2)
    torch.testing.assert_close(out, _reference_forward(small, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small(x, pad=False), out[:, :, 1:-1, 1:-1, 1:-1], atol=1e-5,
                               rtol=1e-5)  # fmt: skip
    # the deep head has one more hidden layer: changing it moves FA..KFA, not MD/AD/RD
    with torch.no_grad():
        small.deep_hidden.weight.mul_(2.0)
    changed = small(x)
    torch.testing.assert_close(changed[:, :3], out[:, :3])
    assert not torch.allclose(changed[:, 3:], out[:, 3:])


def test_network_config_round_trip_and_refusals():
    net = DkiCnn(12, width=20, n_shared=3, dropout=0.2)
    again = DkiCnn.from_config(json.loads(json.dumps(net.config())))
    assert again.config() == net.config()
    with pytest.raises(ValueError, match="not a DkiCnn"):
        DkiCnn.from_config({"class": "HarpNet"})
    with pytest.raises(ValueError, match="newer"):
        DkiCnn.from_config({**net.config(), "version": 99})
    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(1, 11, 4, 4, 4))


def test_hemisphere_directions_are_spread():
    d = hemisphere_directions(32)
    assert np.allclose(np.linalg.norm(d, axis=1), 1) and (d[:, 2] > 0).all()
    cos = np.abs(d @ d.T) - np.eye(32)
    assert cos.max() < np.cos(np.deg2rad(12))  # no two axes closer than 12 degrees
    basis, _ = sh.sh_basis(d, 6)
    assert np.linalg.cond(basis) < 10  # 32 points hold the 28 order-6 coefficients


def _subject(seed: int, n_directions=(30, 30), snr=np.inf, shape=(6, 6, 5)):
    return synthetic_subject(np.random.default_rng(seed), shape, snr=snr,
                             n_directions=n_directions,
                             params_rng=np.random.default_rng(100))  # fmt: skip


def test_inputs_do_not_depend_on_volume_order():
    s = _subject(0, snr=40.0)
    x = dki_inputs(s.data, s.bvals, s.bvecs, s.mask, SPEC)
    assert x.shape == s.mask.shape + (SPEC.n_channels,) and SPEC.n_channels == 65
    assert x.dtype == np.float32 and np.all(x[~s.mask] == 0)
    order = np.random.default_rng(1).permutation(s.bvals.size)
    y = dki_inputs(s.data[..., order], s.bvals[order], s.bvecs[order], s.mask, SPEC)
    np.testing.assert_allclose(y, x, atol=1e-5)


def test_inputs_do_not_depend_on_the_gradient_table():
    a = _subject(1, n_directions=(30, 30))
    b = _subject(2, n_directions=(64, 45))  # same subject, another scanner's table
    assert not np.allclose(a.bvecs[2:32], b.bvecs[2:32])
    xa = dki_inputs(a.data, a.bvals, a.bvecs, a.mask, SPEC)
    xb = dki_inputs(b.data, b.bvals, b.bvecs, b.mask, SPEC)
    m = a.mask
    assert np.abs(xa[m] - xb[m]).max() < 0.02  # attenuations in [0, 1]
    assert np.abs(xa[m] - xb[m]).mean() < 0.003
    # and they are the signal: the b1000 channels follow the model at the fixed directions
    assert 0.05 < xa[m][:, :32].mean() < 0.8 and xa[m][:, 32:64].mean() < xa[m][:, :32].mean()


def test_inputs_from_sh_coefficients_match_inputs_from_dwis():
    s = _subject(3, n_directions=(50, 50), snr=30.0)
    fits = sh.fit_shells(s.data, s.bvals, s.bvecs, mask=s.mask)
    assert [f.order for f in fits] == [8, 8]
    b0 = s.data[..., s.bvals < 50].mean(-1)
    from_sh = dki_inputs_from_sh({f.bval: f.coeffs for f in fits}, SPEC, mean_b0=b0, mask=s.mask)
    np.testing.assert_array_equal(from_sh, dki_inputs(s.data, s.bvals, s.bvecs, s.mask, SPEC))
    no_s0 = dataclasses.replace(SPEC, s0="none")
    x = dki_inputs_from_sh({f.bval: f.coeffs for f in fits}, no_s0, mask=s.mask)
    np.testing.assert_array_equal(x, from_sh[..., :-1])
    assert np.median(from_sh[..., -1][s.mask]) == pytest.approx(1.0)


def test_inputs_refuse_a_missing_shell_and_bad_specs():
    s = _subject(4)
    with pytest.raises(BadGradientsError, match="needs shell b3000.*b1000"):
        dki_inputs(s.data, s.bvals, s.bvecs, s.mask, (1000.0, 3000.0))
    with pytest.raises(ValueError, match="cannot hold order 6"):
        InputSpec((1000.0,), n_directions=20)
    assert InputSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))) == SPEC


def _smooth_problem(n_subjects: int, seed: int = 0, shape=(12, 12, 12), channels: int = 6):
    """Inputs: smooth fields; labels: a fixed smooth function of a voxel's inputs."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(channels, 8))
    inputs, labels, masks = [], [], []
    for _ in range(n_subjects):
        x = np.stack([gaussian_filter(rng.normal(size=shape), 1.0) for _ in range(channels)], -1)
        x = (x / x.std()).astype(np.float32)
        z = np.tanh(0.5 * x @ mix)
        scale = np.where(np.arange(8) < 3, 1e-3, 1.0)  # diffusivities in mm^2/s
        labels.append(((0.8 + 0.3 * z) * scale).astype(np.float32))
        inputs.append(x)
        masks.append(np.ones(shape, bool))
    return inputs, labels, masks


def test_training_lowers_the_held_out_error_and_is_deterministic():
    inputs, labels, masks = _smooth_problem(5)
    net, history = fit_dki_cnn(inputs[:4], labels[:4], masks[:4], held_out=[3], seed=0,
                               recipe=TINY)  # fmt: skip
    assert history.held_out == [3] and history.training_subjects == [0, 1, 2]
    assert np.isfinite(history.val_loss).all() and history.stopped
    assert min(history.val_loss) < 0.5 * history.val_loss[0]
    truth = labels[4]
    pred = predict_maps(net, inputs[4])
    assert pred.shape == truth.shape
    train = np.concatenate([y.reshape(-1, 8) for y in labels[:3]])
    baseline = np.mean(((train.mean(0) - truth) / train.std(0)) ** 2)
    error = np.mean(((pred - truth) / train.std(0)) ** 2)
    assert error < 0.25 * baseline, (error, baseline)

    short = dataclasses.replace(TINY, max_epochs=2)
    a, ha = fit_dki_cnn(inputs[:3], labels[:3], held_out=[2], seed=5, recipe=short)
    b, hb = fit_dki_cnn(inputs[:3], labels[:3], held_out=[2], seed=5, recipe=short)
    c, _ = fit_dki_cnn(inputs[:3], labels[:3], held_out=[2], seed=6, recipe=short)
    assert ha.train_loss == hb.train_loss and ha.val_loss == hb.val_loss
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(a.conv.weight, c.conv.weight)


def test_training_refuses_bad_data():
    from bids_harmony.methods.dki_cnn import DkiTrainingError

    inputs, labels, masks = _smooth_problem(2, shape=(6, 6, 6))
    with pytest.raises(DkiTrainingError, match="every subject is held out"):
        fit_dki_cnn(inputs, labels, held_out=[0, 1], recipe=TINY)
    with pytest.raises(DkiTrainingError, match="labels"):
        fit_dki_cnn(inputs, [y[..., :5] for y in labels], recipe=TINY)
    with pytest.raises(DkiTrainingError, match="training voxels"):
        fit_dki_cnn(inputs, labels, [np.zeros((6, 6, 6), bool)] * 2, recipe=TINY)


def test_predict_maps_is_chunk_independent_masked_and_physical():
    net = DkiCnn(5, width=8, generator=torch.Generator().manual_seed(1)).eval()
    net.set_output_scaling([0.8, 1.2, 0.6, 0.4, 1.0, 0.8, 1.2, 0.4], [0.5] * 8)
    x = np.random.default_rng(0).random((7, 6, 9, 5), dtype=np.float32)
    whole = predict_maps(net, x, chunk_slices=9)
    np.testing.assert_allclose(predict_maps(net, x, chunk_slices=2), whole, atol=1e-6)
    with torch.inference_mode():
        raw = net.predict(torch.from_numpy(x).permute(3, 0, 1, 2)[None])[0].permute(1, 2, 3, 0)
    np.testing.assert_allclose(whole[..., :3], np.maximum(raw[..., :3].numpy(), 0) / 1000,
                               rtol=1e-5, atol=1e-9)  # fmt: skip
    assert whole.min() >= 0 and whole[..., [3, 7]].max() <= 1
    mask = np.zeros((7, 6, 9), bool)
    mask[2:5, 1:4, 3:8] = True
    masked = predict_maps(net, x, mask=mask, chunk_slices=9)
    assert np.all(masked[~mask] == 0)
    np.testing.assert_array_equal(masked[mask], whole[mask])


def test_method_declares_what_it_is():
    method = DkiCnnMethod()
    assert method.name == "dki-cnn"
    assert method.trains_from is TrainsFrom.TRAVELING_SUBJECTS
    assert method.harmonizes is Harmonizes.PARAMETER_MAPS
    assert len(method.description) > 80 and "Tong" in method.references[0].text
    assert method.references[0].text in method.methods_text()


def test_method_fit_apply_tensors_round_trip_and_save_load(tmp_path):
    method = DkiCnnMethod()
    spec = InputSpec((1000.0, 2000.0), n_directions=16, sh_order=4, s0="none")
    rng = np.random.default_rng(0)
    inputs = rng.random((3, 6, 6, 6, spec.n_channels), dtype=np.float32)
    labels = np.tile(
        np.array([8e-4, 1.2e-3, 6e-4, 0.4, 1.0, 0.8, 1.2, 0.4], np.float32), (3, 6, 6, 6, 1)
    ) * rng.uniform(0.9, 1.1, (3, 6, 6, 6, 1)).astype(np.float32)
    recipe = dataclasses.replace(TINY, max_epochs=2, width=12)
    model = method.fit(inputs, labels, held_out=[2], seed=0, recipe=recipe, spec=spec)
    assert isinstance(model, DkiCnnModel) and model.training["epochs"] == 2
    maps = method.apply(model, inputs[0])
    assert maps.shape == (6, 6, 6, len(MAP_NAMES)) and np.isfinite(maps).all()

    tensors, config = method.to_tensors(model)
    assert {"conv.weight", "output_mean", "output_std", "input_directions"} <= set(tensors)
    config = json.loads(json.dumps(config))  # the card is plain JSON
    assert config["inputs"]["n_channels"] == spec.n_channels
    assert config["outputs"]["network_units_per_physical_unit"][:3] == [1000.0] * 3
    assert config["training"]["recipe"]["optimizer"] == "adam"
    rebuilt = method.from_tensors(tensors, config)
    tensors2, config2 = method.to_tensors(rebuilt)
    assert config2 == config and tensors2.keys() == tensors.keys()
    for key in tensors:
        np.testing.assert_array_equal(tensors2[key], tensors[key])
    np.testing.assert_array_equal(method.apply(rebuilt, inputs[0]), maps)

    path = method.save(model, tmp_path / "dki-cnn_src-A_tgt-B", {"source_site": "A"})
    loaded, card = method.load(path, expect={"source_site": "A"})
    assert card["method"] == "dki-cnn" and card["config"]["architecture"]["class"] == "DkiCnn"
    assert loaded.spec == spec and loaded.recipe == recipe
    np.testing.assert_array_equal(method.apply(loaded, inputs[0]), maps)
    with pytest.raises(ValueError, match="input directions"):
        method.from_tensors({**tensors, "input_directions": tensors["input_directions"] * 0},
                            config)  # fmt: skip


def test_example_is_a_traveling_subject_problem():
    ex = DkiCnnMethod().example(seed=0)
    assert ex.source.ndim == 5 and ex.target.shape == ex.source.shape[:4] + (8,)
    assert ex.data.shape[:3] == ex.truth.shape[:3] and ex.truth.shape[-1] == 8
    assert ex.fit_options["held_out"] == [3]
    mask = ex.apply_options["mask"]
    assert 0.2 < ex.truth[mask][:, 4].mean() < 2.0  # MK
    assert 5e-4 < ex.truth[mask][:, 0].mean() < 1.2e-3  # MD in mm^2/s


def test_gradient_tables_of_the_simulator_differ_per_scanner():
    a = gradient_table(np.random.default_rng(0))
    b = gradient_table(np.random.default_rng(1))
    assert a[0].tolist() == b[0].tolist() and not np.allclose(a[1], b[1])
