"""BIDS-Derivatives naming, sidecars and the dataset description.

File names follow BIDS 1.9 and BEP016 (diffusion derivatives)::

    sub-01/ses-GE1/dwi/sub-01_ses-GE1_space-dwi_desc-preproc_dwi.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_space-dwi_desc-brain_mask.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b1000_model-tensor_param-fa_dwimap.nii.gz

Per-shell maps carry the shell in the ``acq`` entity: the shell label (``b1000``)
appended to the raw run's own ``acq`` label unless that label already is the
shell label (``acq-b1000`` raw run, single shell).  The sidecar always records
the shell b-value in ``ShellBValue`` so nothing depends on parsing names.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_harmony import CODE_URL, __version__
from bids_harmony.bids import io

BIDS_VERSION = "1.9.0"
PIPELINE_NAME = "bids_harmony"

#: Entity keys in the order BIDS (and BEP016 for model/param) puts them in names.
ENTITY_ORDER = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part",
    "space", "desc", "model", "param",
)  # fmt: skip

#: pybids entity names of raw file names, mapped to their short keys.
PYBIDS_KEYS = {
    "subject": "sub",
    "session": "ses",
    "task": "task",
    "acquisition": "acq",
    "ceagent": "ce",
    "reconstruction": "rec",
    "direction": "dir",
    "run": "run",
    "echo": "echo",
    "part": "part",
}

#: Packages whose versions are recorded in every sidecar.
RECORDED_PACKAGES = ("bids_harmony", "dipy", "nibabel", "numpy", "scipy", "nipype", "pybids")


def bids_name(entities: Mapping[str, str | None], suffix: str, extension: str) -> str:
    """Compose a BIDS file name from short entity keys.

    >>> bids_name({"sub": "01", "desc": "preproc", "space": "dwi"}, "dwi", ".nii.gz")
    'sub-01_space-dwi_desc-preproc_dwi.nii.gz'
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{key}-{entities[key]}" for key in ENTITY_ORDER if entities.get(key)]
    return "_".join([*parts, suffix]) + extension


def raw_entities(entities: Mapping[str, Any]) -> dict[str, str]:
    """Short-key entities of a raw file from pybids entities (others dropped)."""
    return {
        PYBIDS_KEYS[name]: str(value)
        for name, value in entities.items()
        if name in PYBIDS_KEYS and value is not None
    }


def shell_acq(raw_acq: str | None, shell_label: str, n_shells: int) -> str:
    """``acq`` label of a per-shell map.

    >>> shell_acq(None, "b1000", 1), shell_acq("b1000", "b1000", 1), shell_acq("ms", "b2000", 2)
    ('b1000', 'b1000', 'msb2000')
    """
    if raw_acq is None:
        return shell_label
    if raw_acq == shell_label and n_shells == 1:
        return raw_acq
    return f"{raw_acq}{shell_label}"


def session_dir(entities: Mapping[str, str], datatype: str = "dwi") -> Path:
    """Relative folder of a subject/session in a BIDS tree."""
    parts = [f"sub-{entities['sub']}"]
    if entities.get("ses"):
        parts.append(f"ses-{entities['ses']}")
    return Path(*parts, datatype)


def software_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers we write."""
    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def bids_uri(dataset: str, relpath: str | os.PathLike[str]) -> str:
    """A BIDS URI such as ``bids:raw:sub-01/dwi/sub-01_dwi.nii.gz``."""
    return f"bids:{dataset}:{Path(relpath).as_posix()}"


@dataclass(frozen=True)
class Derivative:
    """One output file to place in the derivatives dataset.

    Attributes
    ----------
    source : Path
        File produced in the work directory.
    relpath : Path
        Destination relative to the output directory.
    sidecar : dict or None
        JSON sidecar written next to an image (same stem, ``.json``).
    companions : dict
        Extra files that share the stem, keyed by extension (``.bval``...).
    """

    source: Path
    relpath: Path
    sidecar: Mapping[str, Any] | None = None
    companions: Mapping[str, Path] = field(default_factory=dict)


def sidecar_path(relpath: Path) -> Path:
    """The ``.json`` path sharing the stem of an image path."""
    name = relpath.name
    for ext in (".nii.gz", ".nii", ".tsv"):
        if name.endswith(ext):
            return relpath.with_name(name[: -len(ext)] + ".json")
    raise ValueError(f"no sidecar convention for {name}")


def write_derivatives(output_dir: Path, derivatives: list[Derivative]) -> list[Path]:
    """Copy derivatives into place atomically; companions first, sidecar last.

    The sidecar is written last so a file whose sidecar exists is complete.
    """
    written = []
    for item in derivatives:
        dest = output_dir / item.relpath
        stem = sidecar_path(item.relpath).with_suffix("")
        for ext, src in item.companions.items():
            written.append(io.copy_file(src, output_dir / stem.with_suffix(ext)))
        written.append(io.copy_file(item.source, dest))
        if item.sidecar is not None:
            written.append(io.write_json(output_dir / sidecar_path(item.relpath), item.sidecar))
    return written


def dataset_description(
    bids_dir: Path,
    *,
    container: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``dataset_description.json`` content of our derivatives dataset."""
    generated_by: dict[str, Any] = {
        "Name": PIPELINE_NAME,
        "Version": __version__,
        "CodeURL": CODE_URL,
        "Description": "Harmonization of multi-site diffusion MRI (HARP and baselines).",
    }
    if container is None:
        container = detect_container()
    if container:
        generated_by["Container"] = dict(container)
    return {
        "Name": "bids_harmony derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [{"URL": Path(bids_dir).resolve().as_uri()}],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        "HowToAcknowledge": "Cite the HARP paper (Jeong et al., 2026) and bids_harmony.",
    }


def detect_container() -> dict[str, str] | None:
    """Describe the container we run in, from variables our images set."""
    image = os.environ.get("BIDS_HARMONY_CONTAINER_IMAGE")
    if os.environ.get("SINGULARITY_NAME") or os.environ.get("APPTAINER_NAME"):
        return {"Type": "singularity", **({"Tag": image} if image else {})}
    if image or Path("/.dockerenv").exists():
        return {"Type": "docker", **({"Tag": image} if image else {})}
    return None


def write_dataset_description(output_dir: Path, bids_dir: Path) -> Path:
    """Write ``dataset_description.json``, keeping one from an earlier run.

    An existing description from another pipeline means the output directory
    belongs to someone else; we refuse rather than mixing datasets.
    """
    import json

    from bids_harmony.errors import OutputDirectoryError

    path = Path(output_dir) / "dataset_description.json"
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise OutputDirectoryError(f"{path}: unreadable ({err}); move it away.") from err
        names = [g.get("Name") for g in existing.get("GeneratedBy", []) if isinstance(g, dict)]
        if PIPELINE_NAME not in names:
            raise OutputDirectoryError(
                f"{path} describes a dataset generated by {names or 'another tool'}, not "
                f"{PIPELINE_NAME}; choose an empty or bids_harmony output directory."
            )
        return path
    return io.write_json(path, dataset_description(bids_dir))
