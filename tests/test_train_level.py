"""The train level's handling of excluded phantom pairs (no files: arrays and messages)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bids_harmony.bids.phantom_pairs import TrainingDataError
from bids_harmony.config import Config
from bids_harmony.interfaces.harp_training import check_enough, training_rows
from bids_harmony.interfaces.phantom_pairs import PairArrays

REASON = ("attenuation correlation 0.41 before and 0.52 after registration (needs >= 0.70): "
          "not the same phantom")  # fmt: skip


def _pair(label: str):
    scan = SimpleNamespace(label=label)
    return SimpleNamespace(source=scan, target=SimpleNamespace(label=label + " tgt"))


def _arrays(n: int, rescan: bool = True, excluded: str = "") -> PairArrays:
    rng = np.random.default_rng(n)
    rows = rng.normal(size=(n, 45)).astype(np.float32)
    validation = np.arange(n) % 5 == 0
    return PairArrays(rows, rows * 1.01, rows + 0.01 if rescan else None, {"homogeneous": n},
                      validation=validation, excluded=excluded)  # fmt: skip


def test_all_pairs_failing_registration_is_one_clear_error():
    pairs = [_pair("a"), _pair("b")]
    empty = np.zeros((0, 45), np.float32)
    arrays = [PairArrays(empty, empty, None, {}, excluded=REASON)] * 2
    config = Config(bids_dir=".", output_dir=".", analysis_level="train", work_dir=".")
    with pytest.raises(TrainingDataError, match="do not look like the same object"):
        check_enough(pairs, arrays, 0, config.min_train_voxels, "GE", "Prisma")


def test_too_few_voxels_says_how_many_of_what(tmp_path):
    pairs = [_pair("a"), _pair("b")]
    empty = np.zeros((0, 45), np.float32)
    arrays = [_arrays(30), PairArrays(empty, empty, None, {}, excluded=REASON)]
    config = Config(bids_dir=".", output_dir=".", analysis_level="train", work_dir=".")
    with pytest.raises(TrainingDataError) as info:
        check_enough(pairs, arrays, 24, config.min_train_voxels, "GE", "Prisma")
    message = str(info.value)
    assert "24 training voxels" in message and "1 excluded" in message
    assert str(config.min_train_voxels) in message


def test_rows_split_every_pair_into_training_and_validation_blocks(caplog):
    arrays = [_arrays(50), _arrays(40), _arrays(10, rescan=False),
              PairArrays(np.zeros((0, 45), np.float32), np.zeros((0, 45), np.float32), None, {},
                         excluded=REASON)]  # fmt: skip
    data = training_rows(arrays, 45)
    # the pair without a rescan is left out (the noise-aware loss needs one), with a warning
    assert "no usable source rescan" in caplog.text
    assert len(data["train"]["source"]) == 40 + 32 and len(data["val"]["source"]) == 10 + 8
    assert data["train"]["source_rescan"] is not None
