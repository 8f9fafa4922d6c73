"""Reading and checking one dMRI run: NIfTI header, gradient files, sidecar metadata.

``.bval``/``.bvec`` files follow the BIDS inheritance principle: the file that
applies to an image is the nearest one, walking up from the image's folder to the
dataset root, whose name entities are a subset of the image's (the most specific
first).  :class:`GradientFiles` indexes them with one pybids query, so looking up
every run stays linear in the size of the dataset.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
from bids import BIDSLayout
from bids.layout import BIDSFile
from nibabel.filebasedimages import ImageFileError

from bids_harmony.bids.gradients_io import read_gradients
from bids_harmony.bids.indexing import NAME_ENTITIES_SKIPPED, stem
from bids_harmony.dmri.gradients import group_shells, validate_gradients
from bids_harmony.errors import BadGradientsError, BadImageError, InputDatasetError


class GradientFiles:
    """The ``.bval``/``.bvec`` files of a dataset, for inheritance look-ups.

    Parameters
    ----------
    layout : BIDSLayout
    """

    def __init__(self, layout: BIDSLayout) -> None:
        self.root = Path(layout.root)
        self._files: dict[tuple[Path, str], list[tuple[dict[str, str], Path]]] = defaultdict(list)
        query = {"suffix": "dwi", "extension": [".bval", ".bvec"]}
        for file in layout.get(return_type="object", invalid_filters="error", **query):
            path = Path(file.path)
            extension = str(file.get_entities(metadata=False)["extension"])
            self._files[(path.parent, extension)].append((name_entities(file), path))

    def nearest(self, dwi: Path, entities: Mapping[str, str], extension: str) -> Path:
        """The ``extension`` file (``.bval`` or ``.bvec``) that applies to ``dwi``.

        Raises
        ------
        BadGradientsError
            If there is none, or two equally specific ones in one folder.
        """
        folder = dwi.parent
        while True:
            found = [
                (len(own), path)
                for own, path in self._files.get((folder, extension), [])
                if all(entities.get(key) == value for key, value in own.items())
            ]
            found.sort(key=lambda item: -item[0])
            if len(found) > 1 and found[0][0] == found[1][0]:
                raise BadGradientsError(
                    f"{found[0][1]} and {found[1][1]} both apply to {dwi}; BIDS inheritance "
                    "needs one most specific file. Rename or remove one."
                )
            if found:
                return found[0][1]
            if folder == self.root or folder == folder.parent:
                break
            folder = folder.parent
        raise BadGradientsError(
            f"No {extension} file for {dwi}. Expected {dwi.with_name(stem(dwi.name))}"
            f"{extension} next to the image, or an inherited one in a parent folder (e.g. "
            f"sub-<label>/sub-<label>_dwi{extension} or dwi{extension} at the dataset "
            "root). Add the file (dcm2niix writes it next to the image)."
        )


def name_entities(file: BIDSFile) -> dict[str, str]:
    """The ``key-value`` entities of a file name, with pybids names and string values."""
    return {
        name: str(value)
        for name, value in file.get_entities(metadata=False).items()
        if name not in NAME_ENTITIES_SKIPPED
    }


def read_run(
    layout: BIDSLayout,
    file: BIDSFile,
    gradient_files: GradientFiles,
    *,
    b_tolerance: float,
    b0_threshold: float,
) -> dict[str, Any]:
    """Everything about one run except its site and phantom status.

    Returns
    -------
    dict
        The :class:`~bids_harmony.bids.discovery.DwiRun` fields but ``site`` and
        ``is_phantom``.
    """
    dwi = Path(file.path)
    entities = name_entities(file)
    shape = _image_shape(dwi)
    bval = gradient_files.nearest(dwi, entities, ".bval")
    bvec = gradient_files.nearest(dwi, entities, ".bvec")
    bvals, bvecs = read_gradients(bval, bvec)
    try:
        bvals, bvecs = validate_gradients(
            bvals,
            bvecs,
            shape[3],
            name=f"{dwi} (gradients {_relative(bval, dwi)}, {_relative(bvec, dwi)})",
            b0_threshold=b0_threshold,
        )
    except BadGradientsError as err:
        raise BadGradientsError(
            f"{err} Fix the .bval/.bvec files, or leave the run out with --bids-filter-file."
        ) from err
    bvals.setflags(write=False)
    bvecs.setflags(write=False)
    shells = group_shells(bvals, b_tolerance=b_tolerance, b0_threshold=b0_threshold)
    sidecar = dwi.with_name(stem(dwi.name) + ".json")
    return {
        "subject": entities["subject"],
        "session": entities.get("session"),
        "dwi": dwi,
        "bval": bval,
        "bvec": bvec,
        "sidecar": sidecar if sidecar.is_file() else None,
        "metadata": dict(layout.get_metadata(file.path)),
        "entities": entities,
        "n_volumes": shape[3],
        "shape": shape,
        "bvals": bvals,
        "bvecs": bvecs,
        "shells": tuple(s.bval for s in shells),
    }


def check_unique(files: list[BIDSFile]) -> None:
    """One run must not be stored twice (``.nii`` and ``.nii.gz``)."""
    seen: dict[str, str] = {}
    for file in files:
        key = stem(file.path)
        if key in seen:
            raise InputDatasetError(
                f"The run {key} is stored twice: {seen[key]} and {file.path}. Delete one."
            )
        seen[key] = file.path


def _relative(path: Path, dwi: Path) -> str:
    """``path`` as written relative to the folder of ``dwi`` when possible."""
    return os.path.relpath(path, dwi.parent)


def _image_shape(path: Path) -> tuple[int, ...]:
    """Shape from the NIfTI header (no data load); must be 4-D with ≥ 2 volumes."""
    try:
        shape = tuple(int(n) for n in nib.load(path).shape)
    except (ImageFileError, OSError, EOFError, ValueError) as err:
        raise BadImageError(
            f"Cannot read the NIfTI header of {path}: {err}. Re-export the image (e.g. "
            "with dcm2niix) or leave the run out with --bids-filter-file."
        ) from err
    if len(shape) != 4 or shape[3] < 2:
        what = (
            "a single 3-D volume" if len(shape) == 3 or shape[3:] == (1,) else (f"{len(shape)}-D")
        )
        raise BadImageError(
            f"{path} is {what} (shape {shape}); a diffusion run is a 4-D image with one "
            "volume per gradient direction (b0s included). Convert the full series, or "
            "leave the run out with --bids-filter-file."
        )
    return shape
