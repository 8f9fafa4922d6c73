"""The reader of participant-level derivatives, next to the writer.

Everything that needs "the FA map of this run, shell and method" asks a
:class:`RunOutputs`; it composes names with the writer's
:class:`~bids_harmony.bids.derivatives.RunNames`, so a name is spelled in one
place only.

Conventions
-----------
* ``method=None`` is the unharmonized output; a method name (``"harp"``,
  ``"rish"``, ...) is the output of that harmonization method (``desc-<method>``).
* A shell is given by its label (``"b1000"``) or b-value (``1000.0``); a shell
  the raw run does not have raises :class:`ValueError` naming the run's shells.
* Lookups return the absolute :class:`~pathlib.Path` of a *complete* file, or
  ``None`` when it is absent; with ``required=True`` they raise
  :class:`~bids_harmony.errors.MissingOutputError` naming the expected file
  instead.  Complete means the image and its JSON sidecar (and the gradient
  files of a DWI series) exist: the writer writes the sidecar last
  (:func:`~bids_harmony.bids.derivatives.write_derivatives`), so a file without
  its sidecar was interrupted.
* ``RunOutputs.names`` gives the expected paths (relative to ``root``) without
  looking at the disk, for writers and messages.

Examples
--------
>>> from pathlib import Path
>>> out = RunOutputs.from_entities("/out", {"sub": "01", "ses": "GE1"}, [1000.0, 2000.0])
>>> out.shell_labels
('b1000', 'b2000')
>>> out.names.shell_map("b1000", "fa", "harp").name
'sub-01_ses-GE1_acq-b1000_desc-harp_model-tensor_param-fa_dwimap.nii.gz'
>>> out.map("b1000", "tensor", "fa") is None  # nothing written there
True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_harmony.bids.derivatives import DKI_PARAMS, SHELL_MAPS, RunNames, sidecar_path
from bids_harmony.dmri.gradients import shell_label
from bids_harmony.errors import MissingOutputError

#: Extensions of the gradient files that come with a DWI series.
GRADIENTS = (".bval", ".bvec")


@dataclass(frozen=True)
class DwiFiles:
    """A DWI series with its gradient table and sidecar (absolute paths)."""

    dwi: Path
    bval: Path
    bvec: Path
    sidecar: Path


@dataclass(frozen=True)
class RunOutputs:
    """The participant-level derivatives of one run in a derivatives dataset.

    Build it with :meth:`of_run` (a discovered run) or :meth:`from_entities`.

    Attributes
    ----------
    root : Path
        Root of the derivatives dataset (the participant level's output folder).
    names : RunNames
        The writer's names of this run, relative to ``root``.
    shell_labels : tuple of str
        Labels of the raw run's diffusion-weighted shells (``b1000``, ...),
        by increasing b-value.
    """

    root: Path
    names: RunNames
    shell_labels: tuple[str, ...]

    @classmethod
    def of_run(cls, derivatives_dir: str | os.PathLike[str], run: Any) -> RunOutputs:
        """Outputs of a discovered run (:class:`bids_harmony.bids.discovery.DwiRun`)."""
        return cls(
            Path(derivatives_dir),
            RunNames.of_run(run),
            tuple(shell_label(b) for b in run.shells),
        )

    @classmethod
    def from_entities(
        cls,
        derivatives_dir: str | os.PathLike[str],
        entities: Mapping[str, str],
        shells: Sequence[float],
    ) -> RunOutputs:
        """Outputs of a run given by short-key entities and its shells' b-values."""
        labels = tuple(shell_label(b) for b in sorted(shells))
        return cls(Path(derivatives_dir), RunNames(dict(entities), len(labels)), labels)

    @property
    def folder(self) -> Path:
        """Absolute folder of the run's outputs."""
        return self.root / self.names.folder

    # -- lookups -------------------------------------------------------------------------

    def _complete(
        self, relpath: Path, companions: Iterable[str] = (), *, required: bool = False
    ) -> Path | None:
        path = self.root / relpath
        needed = [path, self.root / sidecar_path(relpath)]
        needed += [self.root / sidecar_path(relpath).with_suffix(ext) for ext in companions]
        absent = [p.name for p in needed if not p.is_file()]
        if not absent:
            return path
        if required:
            raise MissingOutputError(
                f"{path}: {'missing' if absent[0] == path.name else 'incomplete'} (no "
                f"{', '.join(absent)}); run (or re-run) the participant level for "
                f"{self.names.prefix}."
            )
        return None

    def _label(self, shell: str | float) -> str:
        label = shell if isinstance(shell, str) else shell_label(shell)
        if label not in self.shell_labels:
            raise ValueError(
                f"{self.names.prefix} has no shell {label}; its shells: "
                f"{', '.join(self.shell_labels) or 'none'}."
            )
        return label

    def dwi(self, method: str | None = None, *, required: bool = False) -> DwiFiles | None:
        """Preprocessed (``method=None``) or harmonized DWI with ``.bval``/``.bvec``."""
        relpath = self.names.dwi(method)
        path = self._complete(relpath, GRADIENTS, required=required)
        if path is None:
            return None
        stem = self.root / sidecar_path(relpath)
        return DwiFiles(path, stem.with_suffix(".bval"), stem.with_suffix(".bvec"), stem)

    def preproc(self, *, required: bool = False) -> DwiFiles | None:
        """The preprocessed DWI (``space-dwi_desc-preproc``), as ``dwi(None)``."""
        return self.dwi(None, required=required)

    def mask(self, *, required: bool = False) -> Path | None:
        """Brain (or phantom) mask."""
        return self._complete(self.names.mask(), required=required)

    def map(
        self,
        shell: str | float,
        model: str,
        param: str,
        method: str | None = None,
        *,
        required: bool = False,
    ) -> Path | None:
        """A per-shell map, e.g. ``map("b1000", "tensor", "fa")``, ``("csd", "gfa")``."""
        relpath = self.names.map(self._label(shell), model, param, method)
        return self._complete(relpath, required=required)

    def shell_map(
        self, shell: str | float, kind: str, method: str | None = None, *, required: bool = False
    ) -> Path | None:
        """A per-shell map by kind: ``sh``, ``fa``, ``md`` or ``gfa``."""
        return self.map(shell, *SHELL_MAPS[kind], method, required=required)

    def sh(
        self, shell: str | float, method: str | None = None, *, required: bool = False
    ) -> Path | None:
        """SH coefficients of one shell (``model-sh_param-coeffs``)."""
        return self.shell_map(shell, "sh", method, required=required)

    def scales(
        self, shell: str | float, method: str = "harp", *, required: bool = False
    ) -> Path | None:
        """Per-band scale maps of a method (HARP: ``desc-harp_model-harp_param-scales``)."""
        return self._complete(self.names.scales(self._label(shell), method), required=required)

    def dki_map(
        self, param: str, method: str | None = None, *, required: bool = False
    ) -> Path | None:
        """A DKI map of the run (all shells), e.g. ``dki_map("mk")``: ``model-dki_param-mk``."""
        return self._complete(self.names.dki_map(param, method), required=required)

    def dki_maps(self, method: str | None = None) -> dict[str, Path]:
        """The complete DKI maps of ``method``, by param (empty when DKI was not fitted)."""
        found = {param: self.dki_map(param, method) for param in DKI_PARAMS}
        return {param: path for param, path in found.items() if path is not None}

    def shells(self, method: str | None = None, kinds: Iterable[str] = ("sh",)) -> list[str]:
        """Labels of the shells whose ``kinds`` maps (default: SH) of ``method`` all exist."""
        kinds = tuple(kinds)
        return [
            label
            for label in self.shell_labels
            if all(self.shell_map(label, kind, method) is not None for kind in kinds)
        ]

    def shell_maps(self, kind: str = "sh", method: str | None = None) -> dict[str, Path]:
        """The complete per-shell maps of one kind, by shell label (absent shells left out)."""
        found = {label: self.shell_map(label, kind, method) for label in self.shell_labels}
        return {label: path for label, path in found.items() if path is not None}

    def methods(self) -> list[str]:
        """Methods with a harmonized DWI, per-shell SH map or DKI MK map of this run, sorted."""
        patterns = [self.names.dwi("METHOD"), self.names.dki_map("mk", "METHOD")]
        patterns += [self.names.shell_map(label, "sh", "METHOD") for label in self.shell_labels]
        found = set()
        for pattern in patterns:
            head, tail = pattern.name.split("METHOD")
            for path in (self.root / pattern.parent).glob(f"{head}*{tail}"):
                label = path.name[len(head) : len(path.name) - len(tail)]
                if label.isascii() and label.isalnum():
                    found.add(label)
        return sorted(found)

    def files(self) -> list[Path]:
        """Every complete output of the run: images, sidecars and gradient files.

        Covers the preprocessed DWI and mask, each shell's maps, the DKI maps and,
        for every method of :meth:`methods`, its DWI, maps and scale maps.
        """
        out: list[Path] = []

        def add(path: Path | None, companions: Iterable[str] = ()) -> None:
            if path is not None:
                out.append(path)
                stem = sidecar_path(path)
                out.extend([stem, *(stem.with_suffix(ext) for ext in companions)])

        for method in [None, *self.methods()]:
            add(self._complete(self.names.dwi(method), GRADIENTS), GRADIENTS)
            for label in self.shell_labels:
                for kind in SHELL_MAPS:
                    add(self.shell_map(label, kind, method))
                if method is not None:
                    add(self.scales(label, method))
            for path in self.dki_maps(method).values():
                add(path)
        add(self.mask())
        return sorted(out)
