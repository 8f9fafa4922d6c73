"""HARP model files: safetensors weights plus a JSON model card.

A model ``<stem>`` is two files side by side:

``<stem>.safetensors``
    The weights (``HarpNet.state_dict()``, float32), readable without executing
    code.  Written atomically (temporary file in the same folder, then
    ``os.replace``).
``<stem>.json``
    The model card.  Written by :func:`save_model` with these entries:

    ``format`` / ``format_version``
        ``"bids_harmony.harp"`` / :data:`FORMAT_VERSION`.
    ``weights_file``
        Name of the weights file (no folder).
    ``sha256``
        SHA-256 of the weights file, verified by :func:`load_model`.
    ``architecture``
        ``HarpNet.config()``: what :meth:`HarpNet.from_config` rebuilds.
    ``tensors``
        Tensor name → shape.
    ``sh_convention`` (supplied by the caller; see :func:`sh_convention`)
        ``{"basis", "legacy", "sh_order", "b_ref", "normalization",
        "lambda_lb"}``: what a coefficient means.  :func:`load_model` compares
        it with ``expect``.

    plus everything else the caller puts in ``card`` (sites, training
    sessions, voxel counts, recipe, loss curves, wall time, versions, seed).
    Values are made plain JSON: NumPy scalars and arrays become numbers and
    lists, NaN and infinities become ``null``.

The card is written after the weights, so a pair whose card exists is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from bids_harmony.bids.io import atomic_path, sha256_file
from bids_harmony.dmri import sh
from bids_harmony.errors import BidsHarmonyError
from bids_harmony.methods.harp.network import HarpNet

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "ModelFileError", "load_model", "model_paths", "save_model",
    "sh_convention",
]  # fmt: skip

FORMAT = "bids_harmony.harp"
FORMAT_VERSION = 1
NORMALIZATION = "E = clip(S / mean(b0), 0, 1) ** (b_ref / b)"
RESERVED = ("format", "format_version", "weights_file", "sha256", "architecture", "tensors")
#: ``expect`` keys that name ``sh_convention`` entries under another name.
ALIASES = {"sh_basis": "basis", "sh_legacy": "legacy"}
_FLOAT_KEYS = ("b_ref", "lambda_lb")


class ModelFileError(BidsHarmonyError, ValueError):
    """A HARP model file is missing, damaged, or does not fit the data."""


def sh_convention(sh_order: int = sh.MAX_ORDER) -> dict[str, Any]:
    """The ``sh_convention`` card entry of coefficients fitted by :mod:`bids_harmony.dmri.sh`.

    >>> sorted(sh_convention(8))
    ['b_ref', 'basis', 'lambda_lb', 'legacy', 'normalization', 'sh_order']
    """
    return {
        "basis": sh.SH_BASIS,
        "legacy": sh.SH_LEGACY,
        "sh_order": int(sh_order),
        "b_ref": sh.B_REF,
        "normalization": NORMALIZATION,
        "lambda_lb": sh.LB_LAMBDA,
    }


def model_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a stem or either file's path."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_model(path: str | os.PathLike[str], model: HarpNet, card: Mapping[str, Any]) -> Path:
    """Write a model's weights and card atomically.

    Parameters
    ----------
    path : path-like
        Stem, or the ``.safetensors``/``.json`` path; the folder is created.
    model : HarpNet
    card : mapping
        Caller's card entries (JSON-serializable after NumPy conversion); must
        not use the names in :data:`RESERVED`.

    Returns
    -------
    Path
        The ``.safetensors`` file.
    """
    clash = sorted(set(card) & set(RESERVED))
    if clash:
        raise ValueError(f"card entries {clash} are written by save_model itself")
    weights_path, card_path = model_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    metadata = {"format": FORMAT, "architecture": json.dumps(model.config(), sort_keys=True)}
    with atomic_path(weights_path, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights_file": weights_path.name,
        "sha256": digest,
        "architecture": model.config(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        **_jsonable(dict(card)),
    }
    text = json.dumps(full, indent=2, allow_nan=False) + "\n"
    with atomic_path(card_path, durable=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logger.info("Wrote HARP model %s (sha256 %s).", weights_path, digest[:12])
    return weights_path


def load_model(
    path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None
) -> tuple[HarpNet, dict[str, Any]]:
    """Load and verify a model written by :func:`save_model`.

    Parameters
    ----------
    path : path-like
        Stem, or the ``.safetensors``/``.json`` path.
    expect : mapping, optional
        Values the card must hold.  ``sh_order``, ``basis`` (alias
        ``sh_basis``), ``legacy`` (``sh_legacy``), ``b_ref``, ``normalization``
        and ``lambda_lb`` are looked up in ``card["sh_convention"]``, other keys
        at the top of the card (e.g. ``source_site``).  Floats compare with a
        relative tolerance of 1e-9.

    Returns
    -------
    model : HarpNet
        In eval mode, on the CPU.
    card : dict

    Raises
    ------
    ModelFileError
        Missing, truncated or corrupt file; card missing, invalid or not
        matching the weights (SHA-256, architecture, tensor names and shapes);
        or a card that differs from ``expect``.  No code from the file is run.
    """
    weights_path, card_path = model_paths(path)
    if not weights_path.is_file():
        raise ModelFileError(
            f"HARP model weights {weights_path} not found; train one with the 'train' "
            "analysis level or check the --model path."
        )
    card = _read_card(card_path)
    payload = weights_path.read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(payload).hexdigest()
    if card["sha256"] != digest:
        raise ModelFileError(
            f"{weights_path} does not match its model card {card_path.name}: SHA-256 "
            f"{digest[:12]}… instead of {str(card['sha256'])[:12]}…; the file was modified, "
            "truncated or replaced. Copy both files again or retrain the model."
        )
    try:
        state = load_safetensors(payload)
    except (SafetensorError, ValueError) as err:
        raise ModelFileError(
            f"{weights_path} is not a readable safetensors file ({err}); retrain the model."
        ) from err
    try:
        model = HarpNet.from_config(card["architecture"])
    except (TypeError, ValueError, AttributeError) as err:
        raise ModelFileError(f"{card_path}: invalid architecture ({err}).") from err
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        details = ", ".join(
            f"{k}: file {found.get(k)}, architecture {expected.get(k)}" for k in diff[:4]
        )
        raise ModelFileError(
            f"{weights_path}: the tensors do not fit the architecture in {card_path.name} "
            f"({details}). The two files do not belong together; retrain the model."
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    convention = card.get("sh_convention")
    if isinstance(convention, Mapping) and "sh_order" in convention:
        if int(convention["sh_order"]) != model.sh_order:
            raise ModelFileError(
                f"{card_path}: sh_convention says order {convention['sh_order']} but the "
                f"network takes order {model.sh_order}; the card is inconsistent."
            )
    _check_expect(card, expect or {}, card_path)
    return model.eval(), card


def _read_card(card_path: Path) -> dict[str, Any]:
    if not card_path.is_file():
        raise ModelFileError(
            f"model card {card_path} not found: a HARP model is the .safetensors file plus "
            "its .json card, written together by the 'train' level; copy both."
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(f"model card {card_path} is not valid JSON ({err}).") from err
    if not isinstance(card, dict):
        raise ModelFileError(f"model card {card_path} is not a JSON object.")
    missing = [k for k in ("sha256", "architecture") if k not in card]
    if missing:
        raise ModelFileError(
            f"model card {card_path} lacks {missing}; it was not written by save_model."
        )
    if card.get("format", FORMAT) != FORMAT or int(card.get("format_version", 1)) > FORMAT_VERSION:
        raise ModelFileError(
            f"model card {card_path} has format {card.get('format')!r} version "
            f"{card.get('format_version')}; this bids_harmony reads {FORMAT} <= {FORMAT_VERSION}."
        )
    return card


def _check_expect(card: Mapping[str, Any], expect: Mapping[str, Any], card_path: Path) -> None:
    convention = card.get("sh_convention")
    convention = convention if isinstance(convention, Mapping) else {}
    for key, wanted in expect.items():
        name = ALIASES.get(key, key)
        if name in ("basis", "legacy", "sh_order", "b_ref", "normalization", "lambda_lb"):
            where, holder = f"sh_convention.{name}", convention
        else:
            where, holder = name, card
        if name not in holder:
            raise ModelFileError(
                f"{card_path}: the model card does not record {where} (expected {wanted!r}); "
                "it cannot be checked against this data. Retrain the model."
            )
        if not _same(holder[name], wanted, name in _FLOAT_KEYS):
            raise ModelFileError(
                f"{card_path}: the model was trained with {where} = {holder[name]!r} but this "
                f"data has {wanted!r}. Fit the coefficients with the model's convention or "
                "train a model for this one."
            )


def _same(a: Any, b: Any, is_float: bool) -> bool:
    if is_float or (isinstance(a, float) and isinstance(b, float)):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and a == b
    return a == b


def _jsonable(value: Any) -> Any:
    """Plain-JSON copy: NumPy and torch values to Python, tuples to lists, NaN/Inf to None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
