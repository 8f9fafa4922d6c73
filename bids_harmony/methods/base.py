"""The contract every harmonization method fulfils.

A method is a small object (one instance per method, held by
:mod:`bids_harmony.methods.registry`) that says

- its ``name`` (the ``desc-`` entity of its outputs and the ``train --method``
  value), a ``title`` and a ``description`` (the methods paragraph, with its
  ``references``);
- what it trains from (:class:`TrainsFrom`) and what it harmonizes
  (:class:`Harmonizes`);
- ``fit(...)`` → model and ``apply(model, ...)`` → harmonized array, on NumPy
  arrays only (no files, no Nipype);
- how its model becomes named tensors and a JSON configuration
  (``to_tensors``/``from_tensors``), so that :meth:`HarmonizationMethod.save`
  and :meth:`HarmonizationMethod.load` store every method the same way
  (:mod:`bids_harmony.methods.model_file`: safetensors + JSON card, never pickle).

Levels that read BIDS data, register images and write derivatives call these;
a method never touches files itself.
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import numpy as np

from bids_harmony.bids.citation import Reference
from bids_harmony.methods.model_file import load_tensors, save_tensors

__all__ = ["Config", "Example", "HarmonizationMethod", "Harmonizes", "Reference", "TrainsFrom"]

ModelT = TypeVar("ModelT")

#: JSON-serializable configuration of a model (its ``config`` card entry).
Config = dict[str, object]


class TrainsFrom(str, enum.Enum):
    """The data a method learns from."""

    PHANTOM_PAIRS = "phantom pairs"
    TRAVELING_SUBJECTS = "traveling subjects"
    COHORT = "cohort"
    MATCHED_SCANS = "matched scans"
    UNPAIRED_SCANS = "unpaired scans"


class Harmonizes(str, enum.Enum):
    """What a method's ``apply`` changes."""

    SH = "DWI signal (SH coefficients)"
    PARAMETER_MAPS = "parameter maps"
    STRUCTURAL = "structural images"
    FEATURES = "feature tables"


@dataclass
class Example:
    """A tiny synthetic problem of a method (tests, docs): fit on it, then apply.

    ``truth`` is what ``apply(fit(source, target, **fit_options), data,
    **apply_options)`` should approach, when the method can recover it.
    """

    source: np.ndarray
    target: np.ndarray
    fit_options: dict[str, object]
    data: np.ndarray
    apply_options: dict[str, object]
    truth: np.ndarray | None = None


class HarmonizationMethod(ABC, Generic[ModelT]):
    """Base class of every harmonization method (see the module docstring)."""

    name: ClassVar[str]
    title: ClassVar[str]
    trains_from: ClassVar[TrainsFrom]
    harmonizes: ClassVar[Harmonizes]
    description: ClassVar[str]
    references: ClassVar[tuple[Reference, ...]] = ()

    @abstractmethod
    def fit(self, source: np.ndarray, target: np.ndarray, **options: object) -> ModelT:
        """Learn the mapping from ``source`` to ``target`` arrays (shapes per method)."""

    @abstractmethod
    def apply(self, model: ModelT, data: np.ndarray, **options: object) -> np.ndarray:
        """Harmonize ``data`` (a source-site array) with a fitted ``model``."""

    @abstractmethod
    def to_tensors(self, model: ModelT) -> tuple[dict[str, np.ndarray], Config]:
        """Named arrays and a JSON configuration that :meth:`from_tensors` inverts."""

    @abstractmethod
    def from_tensors(self, tensors: Mapping[str, np.ndarray], config: Config) -> ModelT:
        """Rebuild a model from :meth:`to_tensors` output."""

    @abstractmethod
    def example(self, seed: int = 0) -> Example:
        """A tiny synthetic problem with a known site effect (seconds to fit)."""

    def save(self, model: ModelT, path: str | os.PathLike[str], card: Mapping[str, object]) -> Path:
        """Write ``model`` and ``card`` as a model file; returns the ``.safetensors`` path."""
        tensors, config = self.to_tensors(model)
        return save_tensors(path, tensors, {"config": config, **card}, method=self.name)

    def load(
        self, path: str | os.PathLike[str], *, expect: Mapping[str, object] | None = None
    ) -> tuple[ModelT, dict[str, object]]:
        """Read a model file written by :meth:`save` (verified; no code executed)."""
        tensors, card = load_tensors(path, method=self.name, expect=expect)
        arrays = {k: v.numpy() for k, v in tensors.items()}
        config = card.get("config")
        return self.from_tensors(arrays, config if isinstance(config, dict) else {}), card

    def methods_text(self) -> str:
        """The methods paragraph with its citations (Markdown)."""
        refs = "".join(f"\n- {r.markdown()}" for r in self.references)
        return f"**{self.title}** (`{self.name}`). {self.description}" + (
            f"\n\nReferences:{refs}" if refs else ""
        )
