"""HARP model files: the network's weights and architecture through :mod:`..model_file`.

The card holds ``architecture`` (``HarpNet.config()``, what
:meth:`HarpNet.from_config` rebuilds) beside the generic entries of
:func:`~bids_harmony.methods.model_file.save_tensors`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bids_harmony.methods.harp.network import HarpNet
from bids_harmony.methods.model_file import (
    ModelFileError,
    check_expect,
    load_tensors,
    model_paths,
    save_tensors,
)

METHOD = "harp"

__all__ = ["load_model", "save_model"]


def save_model(path: str | os.PathLike[str], model: HarpNet, card: Mapping[str, Any]) -> Path:
    """Write a HARP network and its card; returns the ``.safetensors`` file.

    ``card`` must not hold ``architecture`` (written from the network) or the
    names reserved by :func:`~bids_harmony.methods.model_file.save_tensors`.
    """
    if "architecture" in card:
        raise ValueError("card entries ['architecture'] are written by save_model itself")
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    return save_tensors(path, state, {"architecture": model.config(), **card}, method=METHOD)


def load_model(
    path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None
) -> tuple[HarpNet, dict[str, Any]]:
    """Load and verify a HARP model (see :func:`~..model_file.load_tensors` for ``expect``).

    Returns
    -------
    model : HarpNet
        In eval mode, on the CPU.
    card : dict

    Raises
    ------
    ModelFileError
        Anything :func:`load_tensors` refuses; a card without an architecture or
        with one the tensors do not fit; an SH order that contradicts the network.
    """
    # the card's own consistency first, then whether it fits the data (clearer messages)
    state, card = load_tensors(path, method=METHOD)
    card_path = model_paths(path)[1]
    card_name = card_path.name
    if "architecture" not in card:
        raise ModelFileError(f"model card {card_name} lacks ['architecture']; it was not "
                             "written by save_model.")  # fmt: skip
    try:
        model = HarpNet.from_config(card["architecture"])
    except (TypeError, ValueError, AttributeError) as err:
        raise ModelFileError(f"{card_name}: invalid architecture ({err}).") from err
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        details = ", ".join(
            f"{k}: file {found.get(k)}, architecture {expected.get(k)}" for k in diff[:4]
        )
        raise ModelFileError(
            f"{path}: the tensors do not fit the architecture in {card_name} ({details}). "
            "The two files do not belong together; retrain the model."
        )
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    convention = card.get("sh_convention")
    if isinstance(convention, Mapping) and "sh_order" in convention:
        if int(convention["sh_order"]) != model.sh_order:
            raise ModelFileError(
                f"{card_name}: sh_convention says order {convention['sh_order']} but the "
                f"network takes order {model.sh_order}; the card is inconsistent."
            )
    check_expect(card, expect or {}, card_path)
    return model.eval(), card
