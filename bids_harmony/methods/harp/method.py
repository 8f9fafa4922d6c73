"""HARP as a :class:`~bids_harmony.methods.base.HarmonizationMethod`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bids_harmony.methods.base import (
    Config,
    Example,
    HarmonizationMethod,
    Harmonizes,
    Reference,
    TrainsFrom,
)
from bids_harmony.methods.harp.inference import harmonize_sh
from bids_harmony.methods.harp.model import load_model, save_model
from bids_harmony.methods.harp.network import HarpNet
from bids_harmony.methods.harp.synthetic import synthetic_pairs
from bids_harmony.methods.harp.train import TrainingRecipe, train_harp

JEONG = Reference(
    short="Jeong et al., 2026",
    text="Jeong H, Liu Q, Keenan KE, Wilde EA, Schneider W, Pathak S, Zuccolotto A, "
    "O'Donnell LJ, Ning L, Rathi Y. HARP: HARmonizing in-vivo diffusion MRI using "
    "Phantom-only training. arXiv:2603.06696 (2026).",
)


class HarpMethod(HarmonizationMethod[HarpNet]):
    """Phantom-trained voxel-wise network scaling SH coefficients per order band.

    ``fit(source, target, source_rescan=..., recipe=..., ...)`` takes paired
    phantom voxels ``(N, n_coeffs)`` (see :func:`train_harp` for every option)
    and returns the network; ``apply(model, coeffs, mask=...)`` harmonizes a
    coefficient map ``(..., n_coeffs)``.
    """

    name = "harp"
    title = "HARP"
    trains_from = TrainsFrom.PHANTOM_PAIRS
    harmonizes = Harmonizes.SH
    description = (
        "HARP mapped the diffusion signal of a source scanner onto that of a target "
        "scanner with a voxel-wise neural network trained on phantom scans only: for "
        "every shell, the network predicted from a voxel's spherical-harmonic (SH) "
        "coefficients one multiplicative scale per SH order band (bounded to 1 ± 0.1), "
        "which multiplied the source coefficients of that band. Trained on registered "
        "phantom scans of the two scanners, the network was then applied to the in-vivo "
        "scans of the source scanner, whose diffusion-weighted images were rebuilt from "
        "the scaled coefficients."
    )
    references = (JEONG,)

    def fit(self, source: np.ndarray, target: np.ndarray, **options: object) -> HarpNet:
        recipe = options.pop("recipe", None)
        kwargs = dict(options)
        if isinstance(recipe, TrainingRecipe):
            kwargs["recipe"] = recipe
        kwargs.setdefault("progress", False)
        return train_harp(source, target, **kwargs).model  # type: ignore[arg-type]

    def apply(self, model: HarpNet, data: np.ndarray, **options: object) -> np.ndarray:
        mask = options.get("mask")
        harmonized, _ = harmonize_sh(model, data, mask=None if mask is None else np.asarray(mask))
        return harmonized

    def to_tensors(self, model: HarpNet) -> tuple[dict[str, np.ndarray], Config]:
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        return state, dict(model.config())

    def from_tensors(self, tensors: Mapping[str, np.ndarray], config: Config) -> HarpNet:
        model = HarpNet.from_config(config)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()})
        return model.eval()

    def example(self, seed: int = 0) -> Example:
        rng = np.random.default_rng(seed)
        pairs = synthetic_pairs(2000, rng=rng, sh_order=4, snr=200.0, gains=(1.0, 1.15, 0.85))
        recipe = TrainingRecipe(iterations=150, batch_size=256, eval_every=50, seed=seed)
        fit = {"source_rescan": pairs.source_rescan, "recipe": recipe, "sh_order": 4}
        return Example(pairs.source, pairs.target, fit, pairs.source, {}, truth=pairs.target)

    # HARP cards keep the network under "architecture" (older model files too).
    def save(
        self, model: HarpNet, path: str | os.PathLike[str], card: Mapping[str, object]
    ) -> Path:
        return save_model(path, model, card)

    def load(
        self, path: str | os.PathLike[str], *, expect: Mapping[str, object] | None = None
    ) -> tuple[HarpNet, dict[str, object]]:
        return load_model(path, expect=expect)
