"""Every registered harmonization method fulfils the contract of methods/base.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_harmony.methods import registry
from bids_harmony.methods.base import HarmonizationMethod, Harmonizes, TrainsFrom
from bids_harmony.methods.model_file import ModelFileError

METHODS = registry.all_methods()
_FITTED: dict[str, object] = {}


def _fit(method: HarmonizationMethod):
    """The method's example and its fitted model (fitted once per module: the DKI CNN's
    example trains a network)."""
    if method.name not in _FITTED:
        ex = method.example(seed=0)
        _FITTED[method.name] = (ex, method.fit(ex.source, ex.target, **ex.fit_options))
    return _FITTED[method.name]


def test_registry_lists_every_method_by_name():
    assert tuple(m.name for m in METHODS) == registry.METHOD_NAMES
    assert len(set(registry.METHOD_NAMES)) == len(METHODS)
    table = registry.describe_methods()
    for m in METHODS:
        assert m.name in table and m.trains_from.value in table
    with pytest.raises(registry.UnknownMethodError, match="available: harp, rish"):
        registry.get_method("combat-gam")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_method_declares_what_it_is(method: HarmonizationMethod):
    # a CLI word: lower-case letters and digits, words joined by hyphens (dki-cnn)
    assert all(w.isalnum() and w.isascii() for w in method.name.split("-"))
    assert method.name.islower()
    assert isinstance(method.trains_from, TrainsFrom)
    assert isinstance(method.harmonizes, Harmonizes)
    assert len(method.description) > 80 and method.references
    text = method.methods_text()
    assert method.title in text and method.references[0].text in text


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_fit_save_load_apply_round_trip(method: HarmonizationMethod, tmp_path):
    ex, model = _fit(method)
    before = method.apply(model, ex.data, **ex.apply_options)
    shape = ex.data.shape if ex.truth is None else ex.truth.shape
    assert before.shape == shape and np.all(np.isfinite(before))
    if ex.truth is not None and ex.truth.shape == ex.data.shape:
        # the site effect is learned: closer to the truth than the raw data
        err_raw = np.mean((ex.data - ex.truth) ** 2)
        err_fit = np.mean((before - ex.truth) ** 2)
        assert err_fit < 0.5 * err_raw, (err_fit, err_raw)
    elif ex.truth is not None:  # maps of another kind (DKI CNN): better than their means
        axes = tuple(range(ex.truth.ndim - 1))
        scale = np.std(ex.truth, axis=axes) + 1e-12
        err_mean = np.mean(((ex.truth - ex.truth.mean(axis=axes)) / scale) ** 2)
        err_fit = np.mean(((before - ex.truth) / scale) ** 2)
        assert err_fit < 0.5 * err_mean, (err_fit, err_mean)

    path = method.save(model, tmp_path / f"{method.name}_src-A_tgt-B", {"source_site": "A",
                                                                         "target_site": "B"})
    assert path.name == f"{method.name}_src-A_tgt-B.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["method"] == method.name and card["source_site"] == "A"
    for key in ("format", "format_version", "sha256", "tensors", "weights_file"):
        assert key in card
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle

    loaded, card2 = method.load(path, expect={"source_site": "A"})
    after = method.apply(loaded, ex.data, **ex.apply_options)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)
    assert card2["target_site"] == "B"


def test_a_model_of_one_method_is_refused_by_another(tmp_path):
    harp, rish = registry.get_method("harp"), registry.get_method("rish")
    ex = rish.example()
    path = rish.save(rish.fit(ex.source, ex.target), tmp_path / "m", {})
    with pytest.raises(ModelFileError, match="method 'rish', not 'harp'"):
        harp.load(path)


def test_cli_lists_methods_and_offers_them(capsys):
    from bids_harmony.cli.parser import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["--list-methods"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "phantom pairs" in out and "traveling subjects" in out
    args = build_parser().parse_args(["in", "out", "train", "--method", "rish"])
    assert args.method == "rish"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["in", "out", "group", "--methods", "nope"])


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_the_same_model_gives_byte_identical_files(method: HarmonizationMethod, tmp_path):
    _, model = _fit(method)
    first = method.save(model, tmp_path / "a", {"seed": 0}).read_bytes()
    for _ in range(3):  # safetensors' metadata map has no fixed order: one entry only
        assert method.save(model, tmp_path / "b", {"seed": 0}).read_bytes() == first
