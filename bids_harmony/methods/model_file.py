"""Model files of every harmonization method: safetensors tensors plus a JSON card.

A model ``<stem>`` (``models/<method>_src-<S>_tgt-<T>``) is two files side by side:

``<stem>.safetensors``
    The tensors (float32 unless the method says otherwise), readable without
    executing code.  Written atomically (temporary file in the same folder,
    then ``os.replace``).  Pickle is never used.
``<stem>.json``
    The model card.  :func:`save_tensors` writes these entries itself:

    ``format`` / ``format_version``
        :data:`FORMAT` / :data:`FORMAT_VERSION` (cards of HARP models written
        before methods shared this module say ``"bids_harmony.harp"`` / 1 and
        are read as method ``harp``).
    ``method``
        The registered method name (:mod:`bids_harmony.methods.registry`).
    ``weights_file``
        Name of the tensor file (no folder).
    ``sha256``
        SHA-256 of the tensor file, verified by :func:`load_tensors`.
    ``tensors``
        Tensor name → shape, checked on load.

    plus everything the method and the caller put in ``card`` (sites, the
    method's configuration, training data, SH convention, recipe, wall time,
    versions, seed).  Values are made plain JSON: NumPy scalars and arrays
    become numbers and lists, NaN and infinities become ``null``.

The card is written after the tensors, so a model whose card exists is complete.
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

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "ModelFileError", "load_tensors", "model_paths", "save_tensors",
    "sh_convention",
]  # fmt: skip

FORMAT = "bids_harmony.model"
FORMAT_VERSION = 1
#: Formats of older cards and the method they imply.
LEGACY_FORMATS = {"bids_harmony.harp": "harp"}
NORMALIZATION = "E = clip(S / mean(b0), 0, 1) ** (b_ref / b)"
RESERVED = ("format", "format_version", "method", "weights_file", "sha256", "tensors")
#: ``expect`` keys that name ``sh_convention`` entries under another name.
ALIASES = {"sh_basis": "basis", "sh_legacy": "legacy"}
_FLOAT_KEYS = ("b_ref", "lambda_lb")


class ModelFileError(BidsHarmonyError, ValueError):
    """A model file is missing, damaged, or does not fit the data."""


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


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray | torch.Tensor],
    card: Mapping[str, Any],
    *,
    method: str,
    keep_float64: bool = False,
) -> Path:
    """Write a model's tensors and card atomically.

    Parameters
    ----------
    path : path-like
        Stem, or the ``.safetensors``/``.json`` path; the folder is created.
    tensors : mapping of str to array
        Named arrays; NumPy arrays are converted to torch tensors (float64 to
        float32, other dtypes kept).
    card : mapping
        Card entries (JSON-serializable after NumPy conversion); must not use
        the names in :data:`RESERVED`.
    method : str
        The method's registered name, recorded as ``card["method"]``.
    keep_float64 : bool
        Store float64 arrays as float64 (statistical models whose estimates must apply
        exactly as fitted, e.g. ComBat's), not float32.

    Returns
    -------
    Path
        The ``.safetensors`` file.
    """
    clash = sorted(set(card) & set(RESERVED))
    if clash:
        raise ValueError(f"card entries {clash} are written by save_tensors itself")
    weights_path, card_path = model_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    plain = {name: _as_tensor(value, keep_float64) for name, value in tensors.items()}
    # One metadata entry: safetensors writes its metadata map in no fixed order, and
    # a model file must be byte-identical for identical training.
    metadata = {"format": json.dumps({"format": FORMAT, "method": method}, sort_keys=True)}
    with atomic_path(weights_path, durable=True) as tmp:
        save_file(plain, str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "weights_file": weights_path.name,
        "sha256": digest,
        "tensors": {k: list(v.shape) for k, v in plain.items()},
        **jsonable(dict(card)),
    }
    text = json.dumps(full, indent=2, allow_nan=False) + "\n"
    with atomic_path(card_path, durable=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    os.chmod(weights_path, 0o644)  # like every other derivative (mkstemp makes 0600)
    os.chmod(card_path, 0o644)
    logger.info("Wrote %s model %s (sha256 %s).", method, weights_path, digest[:12])
    return weights_path


def load_tensors(
    path: str | os.PathLike[str],
    *,
    method: str | None = None,
    expect: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a model written by :func:`save_tensors`.

    Parameters
    ----------
    path : path-like
        Stem, or the ``.safetensors``/``.json`` path.
    method : str, optional
        The method the model must belong to.
    expect : mapping, optional
        Values the card must hold.  ``sh_order``, ``basis`` (alias
        ``sh_basis``), ``legacy`` (``sh_legacy``), ``b_ref``, ``normalization``
        and ``lambda_lb`` are looked up in ``card["sh_convention"]``, other keys
        at the top of the card (e.g. ``source_site``).  Floats compare with a
        relative tolerance of 1e-9.

    Returns
    -------
    tensors : dict of str to torch.Tensor
        On the CPU, as stored.
    card : dict

    Raises
    ------
    ModelFileError
        Missing, truncated or corrupt file; card missing, invalid or not matching
        the tensors (SHA-256, names and shapes); another method's model; or a
        card that differs from ``expect``.  No code from the file is run.
    """
    weights_path, card_path = model_paths(path)
    what = f"{method} model" if method else "model"
    if not weights_path.is_file():
        raise ModelFileError(
            f"{what} weights {weights_path} not found; train one with the 'train' "
            "analysis level or check the --model path."
        )
    card = _read_card(card_path)
    found_method = card.get("method") or LEGACY_FORMATS.get(str(card.get("format")), "")
    if method is not None and found_method != method:
        raise ModelFileError(
            f"{card_path}: a model of method {found_method!r}, not {method!r}; give a "
            f"{method} model (models/{method}_src-<S>_tgt-<T>.safetensors)."
        )
    card["method"] = found_method
    payload = weights_path.read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(payload).hexdigest()
    if card["sha256"] != digest:
        raise ModelFileError(
            f"{weights_path} does not match its model card {card_path.name}: SHA-256 "
            f"{digest[:12]}… instead of {str(card['sha256'])[:12]}…; the file was modified, "
            "truncated or replaced. Copy both files again or retrain the model."
        )
    try:
        tensors = load_safetensors(payload)
    except (SafetensorError, ValueError) as err:
        raise ModelFileError(
            f"{weights_path} is not a readable safetensors file ({err}); retrain the model."
        ) from err
    listed = card.get("tensors")
    if isinstance(listed, Mapping):
        found = {k: list(v.shape) for k, v in tensors.items()}
        wanted = {k: list(v) for k, v in listed.items()}
        if found != wanted:
            diff = sorted(k for k in found.keys() | wanted.keys() if found.get(k) != wanted.get(k))
            raise ModelFileError(
                f"{weights_path}: tensors {diff[:4]} differ from those listed in "
                f"{card_path.name}; the two files do not belong together."
            )
    check_expect(card, expect or {}, card_path)
    return dict(tensors), card


def _read_card(card_path: Path) -> dict[str, Any]:
    if not card_path.is_file():
        raise ModelFileError(
            f"model card {card_path} not found: a model is the .safetensors file plus "
            "its .json card, written together by the 'train' level; copy both."
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(f"model card {card_path} is not valid JSON ({err}).") from err
    if not isinstance(card, dict):
        raise ModelFileError(f"model card {card_path} is not a JSON object.")
    missing = [k for k in ("sha256",) if k not in card]
    if missing:
        raise ModelFileError(
            f"model card {card_path} lacks {missing}; it was not written by save_model."
        )
    fmt = card.get("format", FORMAT)
    if (fmt != FORMAT and fmt not in LEGACY_FORMATS) or int(
        card.get("format_version", 1)
    ) > FORMAT_VERSION:
        raise ModelFileError(
            f"model card {card_path} has format {card.get('format')!r} version "
            f"{card.get('format_version')}; this bids_harmony reads {FORMAT} <= {FORMAT_VERSION}."
        )
    return card


def check_expect(card: Mapping[str, Any], expect: Mapping[str, Any], card_path: Path) -> None:
    """Raise :class:`ModelFileError` unless ``card`` holds the ``expect`` values (see
    :func:`load_tensors`)."""
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


def _as_tensor(value: np.ndarray | torch.Tensor, keep_float64: bool = False) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    if tensor.dtype == torch.float64 and not keep_float64:
        tensor = tensor.to(torch.float32)
    # a copy: safetensors refuses tensors that share memory (e.g. two views of one array)
    return tensor.contiguous().clone()


def jsonable(value: Any) -> Any:
    """Plain-JSON copy: NumPy and torch values to Python, tuples to lists, NaN/Inf to None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
