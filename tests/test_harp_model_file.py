"""HARP model files: safetensors + JSON card (bids_harmony.methods.model_file)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bids_harmony.errors import BidsHarmonyError
from bids_harmony.methods.harp import HarpNet, ModelFileError, load_model, save_model, sh_convention

EXPECT = {"sh_order": 8, "basis": "descoteaux07", "legacy": True, "b_ref": 1000}


def _model(**kwargs) -> HarpNet:
    net = HarpNet(hidden=(16,) * 7, generator=torch.Generator().manual_seed(4), **kwargs)
    with torch.no_grad():
        net.head.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))
    return net


def _card(**extra):
    return {
        "source_site": "GE",
        "target_site": "Prisma",
        "sh_convention": sh_convention(8),
        "training": {"history": {"val_total": [0.5, float("nan")]}, "voxels": np.int64(1200)},
        "seed": 0,
        **extra,
    }


@pytest.fixture
def saved(tmp_path):
    net = _model()
    path = save_model(tmp_path / "models" / "harp_src-GE_tgt-Prisma", net, _card())
    return net, path


def test_round_trip_gives_identical_outputs(saved):
    net, path = saved
    assert path.name == "harp_src-GE_tgt-Prisma.safetensors" and path.is_file()
    loaded, card = load_model(path.with_suffix(""), expect=EXPECT)
    x = torch.rand(64, 45) + torch.tensor([1.0] + [0.0] * 44)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert not loaded.training
    assert card["architecture"] == net.config() and len(card["sha256"]) == 64
    assert card["weights_file"] == path.name and card["tensors"]["head.weight"] == [5, 16]
    assert card["source_site"] == "GE" and card["training"]["voxels"] == 1200
    assert card["training"]["history"]["val_total"] == [0.5, None]  # NaN is not JSON
    assert set(card["sh_convention"]) == {
        "basis", "legacy", "sh_order", "b_ref", "normalization", "lambda_lb",
    }  # fmt: skip
    # every spelling of the path works, and no temporary files are left behind
    for spelling in (path, path.with_suffix(".json"), str(path.with_suffix(""))):
        load_model(spelling)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "harp_src-GE_tgt-Prisma.json", "harp_src-GE_tgt-Prisma.safetensors",
    ]  # fmt: skip


def test_overwrite_replaces_both_files(saved):
    _, path = saved
    other = _model(sh_order=6)
    save_model(path, other, {**_card(), "sh_convention": sh_convention(6)})
    loaded, card = load_model(path, expect={"sh_order": 6})
    assert loaded.n_coeffs == 28 and card["architecture"]["sh_order"] == 6


@pytest.mark.parametrize(
    ("expect", "key"),
    [({"sh_order": 6}, "sh_order"), ({"b_ref": 2000.0}, "b_ref"),
     ({"basis": "tournier07"}, "basis"), ({"sh_basis": "tournier07"}, "basis"),
     ({"sh_legacy": False}, "legacy"), ({"legacy": 1}, "legacy"),
     ({"target_site": "Skyra"}, "target_site")],
)  # fmt: skip
def test_refuses_a_card_that_does_not_fit_the_data(saved, expect, key):
    _, path = saved
    with pytest.raises(ModelFileError, match=key) as err:
        load_model(path, expect=expect)
    assert str(path.with_suffix(".json")) in str(err.value)
    assert isinstance(err.value, BidsHarmonyError) and isinstance(err.value, ValueError)


def test_accepts_equal_values_of_other_types(saved):
    _, path = saved
    load_model(path, expect={"b_ref": 1000, "sh_order": 8.0, "lambda_lb": 1e-5, "legacy": True})


def test_refuses_a_card_without_the_expected_entry(tmp_path):
    path = save_model(tmp_path / "m", _model(), {"source_site": "GE"})
    load_model(path)  # no expectations: fine
    with pytest.raises(ModelFileError, match="does not record sh_convention.sh_order"):
        load_model(path, expect={"sh_order": 8})


def test_refuses_a_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(path)


def test_refuses_a_sha_mismatch(saved):
    _, path = saved
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(path)


def test_refuses_a_corrupt_file_even_with_a_matching_card(saved):
    import hashlib

    _, path = saved
    garbage = b"\xff" * 64 + path.read_bytes()[64:]
    path.write_bytes(garbage)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["sha256"] = hashlib.sha256(garbage).hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(path)


def test_refuses_weights_that_do_not_fit_the_architecture(saved):
    _, path = saved
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["architecture"]["hidden"] = [16] * 6 + [17]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="do not fit the architecture"):
        load_model(path)
    card["architecture"] = {"class": "Other"}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="invalid architecture"):
        load_model(path)


def test_refuses_missing_or_broken_cards_and_missing_weights(saved, tmp_path):
    _, path = saved
    card_path = path.with_suffix(".json")
    card_path.write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    card_path.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="not a JSON object"):
        load_model(path)
    card_path.unlink()
    with pytest.raises(ModelFileError, match="model card .* not found"):
        load_model(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nowhere.safetensors")


def test_reserved_card_entries_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        save_model(tmp_path / "m", _model(), {"sha256": "x"})
    assert not list(tmp_path.iterdir())


def test_model_files_are_readable_by_all_whatever_the_umask(tmp_path):
    # A restrictive umask (shared clusters) must not make models private: other users
    # of the output dataset load them; atomic writes would otherwise give 0600.
    previous = os.umask(0o077)
    try:
        path = save_model(tmp_path / "models" / "harp_src-GE_tgt-Prisma", _model(), _card())
    finally:
        os.umask(previous)
    for file in (path, path.with_suffix(".json")):
        assert file.stat().st_mode & 0o777 == 0o644, file
