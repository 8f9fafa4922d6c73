"""HARP training: recipes, determinism, noise-aware loss (bids_harmony.methods.harp.train)."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from bids_harmony.methods.harp import (
    DEFAULT_RECIPE,
    PAPER_RECIPE,
    HarpTrainingError,
    TrainingRecipe,
    train_harp,
)
from bids_harmony.methods.harp.synthetic import synthetic_pairs

SMALL = {"hidden": (32,) * 7}  # the paper's layout, narrow: fast on two CPU cores
GAINS = (1.04, 0.97, 0.95, 0.94, 0.96)


def _recipe(**changes) -> TrainingRecipe:
    base = dataclasses.replace(
        DEFAULT_RECIPE, iterations=60, batch_size=256, eval_every=20, lr=3e-3, warmup=5
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny test networks gain nothing from threads, and lose much on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(60_000, rng=np.random.default_rng(0), gains=GAINS, snr=40.0)


@pytest.fixture(scope="module")
def learned(pairs):
    """The same short training with the noise-aware loss and with plain MSE."""
    recipe = _recipe(iterations=300, batch_size=1024, eval_every=100)
    kwargs = dict(source_rescan=pairs.source_rescan, architecture=SMALL, progress=False)
    aware = train_harp(pairs.source, pairs.target, recipe=recipe, **kwargs)
    plain = train_harp(
        pairs.source, pairs.target, recipe=dataclasses.replace(recipe, noise_aware=False), **kwargs
    )
    return aware, plain


def test_paper_recipe_is_the_papers():
    assert (PAPER_RECIPE.optimizer, PAPER_RECIPE.lr, PAPER_RECIPE.iterations) == (
        "adam",
        1e-6,
        40_000,
    )
    assert PAPER_RECIPE.lr_schedule == "constant" and not PAPER_RECIPE.noise_aware
    assert PAPER_RECIPE.batch_size == 2 * 146 * 146
    assert DEFAULT_RECIPE.noise_aware and DEFAULT_RECIPE.iterations < PAPER_RECIPE.iterations


def test_learning_rate_schedules():
    cosine = TrainingRecipe(lr=1e-3, iterations=100, warmup=10, min_lr_ratio=0.01)
    assert cosine.lr_at(5) == pytest.approx(5e-4)
    assert cosine.lr_at(10) == pytest.approx(1e-3)
    assert cosine.lr_at(100) == pytest.approx(1e-5)
    assert all(cosine.lr_at(i) >= cosine.lr_at(i + 1) for i in range(10, 100))
    step = TrainingRecipe(lr=1.0, iterations=100, lr_schedule="step")
    assert [step.lr_at(i) for i in (1, 60, 61, 85, 86)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert TrainingRecipe(lr=0.5, lr_schedule="constant").lr_at(999) == 0.5


@pytest.mark.parametrize(
    "bad", [{"optimizer": "sgd"}, {"lr_schedule": "poly"}, {"lr": 0.0}, {"iterations": 0},
            {"val_fraction": 1.0}, {"identity_prior": -1.0}],
)  # fmt: skip
def test_invalid_recipes(bad):
    with pytest.raises(ValueError):
        TrainingRecipe(**bad)


def test_noise_aware_loss_recovers_the_gains(learned, pairs):
    aware, _ = learned
    assert aware.objective == "noise_aware" and aware.val_objective == "noise_aware"
    scales = np.array(aware.final_val_scales)
    # l = 0, 2, 4 are well measured; l = 6 is 90 % noise: a few % is the sampling limit
    np.testing.assert_allclose(scales[:3], GAINS[:3], rtol=0.01)
    np.testing.assert_allclose(scales[3], GAINS[3], rtol=0.04)
    # l = 8 is pure noise at b = 1000 contrast: held at 1 rather than guessed
    assert aware.held_bands == (8,) and scales[4] == pytest.approx(1.0, abs=1e-6)
    assert aware.noise_fraction[4] > 0.95 and aware.noise_fraction[0] < 1e-3


def test_plain_mse_shrinks_the_noisy_orders(learned):
    _, plain = learned
    assert plain.objective == "mse" and plain.held_bands == ()
    scales = np.array(plain.final_val_scales)
    np.testing.assert_allclose(scales[:2], GAINS[:2], rtol=0.01)  # strong signal: fine
    # regression dilution: l = 4 (11 % noise), 6 and 8 collapse onto the lower bound 0.9
    assert scales[2] < GAINS[2] - 0.03 and scales[3] < GAINS[3] - 0.03
    assert scales[4] == pytest.approx(0.9, abs=0.01)


def test_same_seed_gives_identical_weights(pairs):
    def run(seed):
        recipe = _recipe(iterations=15, seed=seed)
        result = train_harp(
            pairs.source[:3000], pairs.target[:3000], source_rescan=pairs.source_rescan[:3000],
            recipe=recipe, architecture=SMALL, progress=False,
        )  # fmt: skip
        return result.model.state_dict(), result.history

    (a, hist_a), (b, hist_b), (c, _) = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert hist_a["train_total"] == hist_b["train_total"]
    assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])


def test_result_and_history(pairs):
    recipe = _recipe(iterations=45, eval_every=20)
    result = train_harp(
        pairs.source[:4000], pairs.target[:4000], source_rescan=pairs.source_rescan[:4000],
        recipe=recipe, architecture=SMALL, progress=True,
    )  # fmt: skip
    history = result.history
    assert history["iteration"] == [20, 40, 45]
    for key in ("lr", "elapsed_s", "train_total", "train_l8", "val_total", "val_l0",
                "val_mse_total", "val_scale_l4"):  # fmt: skip
        assert len(history[key]) == 3, key
    assert result.n_train == 3600 and result.n_val == 400
    assert math.isfinite(result.final_val_loss) and result.iterations_run == 45
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"
    assert result.wall_time_s > 0 and result.summary()["recipe"]["iterations"] == 45


def test_valid_mask_and_explicit_validation_set(pairs):
    n = 5000
    source, target = pairs.source[:n].copy(), pairs.target[:n].copy()
    valid = np.arange(n) % 5 != 0
    source[~valid] = np.nan  # invalid voxels may hold anything
    result = train_harp(
        source, target, valid=valid, val_source=pairs.source[n : n + 700],
        val_target=pairs.target[n : n + 700], val_valid=np.arange(700) < 600,
        recipe=_recipe(iterations=10), architecture=SMALL, progress=False,
    )  # fmt: skip
    assert result.n_train == 4000 and result.n_val == 600
    assert result.objective == "mse" and result.val_objective == "mse"  # no rescan given


def test_without_rescan_falls_back_to_mse_with_a_warning(pairs, caplog):
    with caplog.at_level(logging.WARNING, logger="bids_harmony.methods.harp.train"):
        result = train_harp(
            pairs.source[:2000], pairs.target[:2000], recipe=_recipe(iterations=5),
            architecture=SMALL, progress=False,
        )  # fmt: skip
    assert result.objective == "mse"
    assert "regression dilution" in caplog.text


def test_callback_and_time_limit_stop_early(pairs):
    seen = []

    def callback(iteration, metrics):
        seen.append(iteration)
        return iteration >= 20

    kwargs = dict(recipe=_recipe(iterations=200, eval_every=10), architecture=SMALL, progress=False)
    result = train_harp(pairs.source[:2000], pairs.target[:2000], callback=callback, **kwargs)
    assert seen == [10, 20] and result.iterations_run == 20
    result = train_harp(pairs.source[:2000], pairs.target[:2000], time_limit_s=0.0, **kwargs)
    assert result.iterations_run == 1 and result.history["iteration"] == [1]


def test_bad_inputs(pairs):
    kwargs = dict(recipe=_recipe(iterations=2), architecture=SMALL, progress=False)
    with pytest.raises(HarpTrainingError, match="valid training voxel"):
        train_harp(pairs.source[:50], pairs.target[:50], **kwargs)
    broken = pairs.source[:1000].copy()
    broken[3, 7] = np.inf
    with pytest.raises(HarpTrainingError, match="NaN or Inf"):
        train_harp(broken, pairs.target[:1000], **kwargs)
    with pytest.raises(ValueError, match="order"):
        train_harp(pairs.source[:1000], pairs.target[:1000], sh_order=6, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        train_harp(pairs.source[:1000], pairs.target[:999], **kwargs)
    with pytest.raises(ValueError, match="val_target"):
        train_harp(pairs.source[:1000], pairs.target[:1000], val_source=pairs.source[:10], **kwargs)


def test_centred_training_keeps_held_bands_at_one(pairs):
    from bids_harmony.methods.harp.baseline import fit_band_scales

    baseline = fit_band_scales(pairs.source, pairs.target, pairs.source_rescan)
    # the noise-debiased global scale recovers the simulated gains of the measurable bands
    np.testing.assert_allclose(baseline[:3], GAINS[:3], rtol=0.01)
    result = train_harp(
        pairs.source[:4000], pairs.target[:4000], source_rescan=pairs.source_rescan[:4000],
        recipe=_recipe(iterations=30), architecture=SMALL, progress=False,
        centre=[1.05, 1.05, 1.05, 1.05, 1.05],
    )  # fmt: skip
    centre = result.model.centre.tolist()
    for ell, value in zip((0, 2, 4, 6, 8), centre, strict=True):
        assert value == pytest.approx(1.0 if ell in result.held_bands else 1.05)
    assert 8 in result.held_bands


def test_a_band_the_target_does_not_share_is_held(pairs):
    """The source's own l=2 artefact (e.g. on an isotropic phantom) has no learnable gain."""
    target = pairs.target[:4000].copy()
    rng = np.random.default_rng(3)
    target[:, 1:6] = target[rng.permutation(4000), 1:6]  # l=2 no longer the same voxels
    result = train_harp(
        pairs.source[:4000], target, source_rescan=pairs.source_rescan[:4000],
        recipe=_recipe(iterations=20), architecture=SMALL, progress=False,
    )  # fmt: skip
    assert 2 in result.held_bands and 0 not in result.held_bands
