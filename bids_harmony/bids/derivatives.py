"""BIDS-Derivatives naming, sidecars and the dataset description.

File names follow BIDS 1.9 and BEP016 (diffusion derivatives)::

    sub-01/ses-GE1/dwi/sub-01_ses-GE1_space-dwi_desc-preproc_dwi.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_space-dwi_desc-brain_mask.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b1000_model-tensor_param-fa_dwimap.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_desc-harp_dwi.nii.gz
    sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b1000_desc-harp_model-tensor_param-fa_dwimap.nii.gz

Harmonized outputs carry the method's name in ``desc`` (``desc-harp``,
``desc-rish``, ...).  Every participant-level name is composed by
:class:`RunNames`, which the writer (:mod:`bids_harmony.bids.outputs`, the
LinearRISH step of the group level) and the reader
(:class:`bids_harmony.bids.reader.RunOutputs`) share.

Per-shell maps carry the shell in the ``acq`` entity: the shell label (``b1000``)
appended to the raw run's own ``acq`` label unless that label already is the
shell label (``acq-b1000`` raw run, single shell).  The sidecar always records
the shell b-value in ``ShellBValue`` so nothing depends on parsing names.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
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

#: Packages whose versions are recorded in every sidecar (torch runs HARP; reading its
#: version from the installed metadata does not import it).
RECORDED_PACKAGES = (
    "bids_harmony", "dipy", "nibabel", "numpy", "scipy", "nipype", "pybids", "torch",
)  # fmt: skip


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


#: Per-shell maps of the participant level: kind -> (``model``, ``param``) entities.
SHELL_MAPS = {
    "sh": ("sh", "coeffs"),
    "fa": ("tensor", "fa"),
    "md": ("tensor", "md"),
    "gfa": ("csd", "gfa"),
}


#: Maps of the DKI fit (:mod:`bids_harmony.dmri.dki`), one ``param`` each; the fit uses
#: every shell, so their names carry the run's own ``acq``, no shell label.
DKI_PARAMS = ("md", "ad", "rd", "fa", "mk", "ak", "rk", "kfa")


def check_method(method: str) -> str:
    """A harmonization method's name as used in ``desc`` (a BIDS label).

    >>> check_method("harp")
    'harp'
    """
    if not (isinstance(method, str) and method.isascii() and method.isalnum()):
        raise ValueError(f"method {method!r}: not a BIDS label (letters and digits only)")
    if method in ("preproc", "brain"):
        raise ValueError(f"method {method!r}: reserved for unharmonized outputs")
    return method


@dataclass(frozen=True)
class RunNames:
    """Names of the participant-level derivatives of one run (no file access).

    Paths are relative to the derivatives root; ``method=None`` means the
    unharmonized output, a method name (``"harp"``, ``"rish"``) the output of
    that harmonization method (``desc-<method>``).

    Attributes
    ----------
    entities : mapping of str to str
        Short-key entities of the raw run (:func:`raw_entities`).
    n_shells : int
        Diffusion-weighted shells of the raw run (decides the per-shell ``acq``,
        see :func:`shell_acq`).

    Examples
    --------
    >>> names = RunNames({"sub": "01", "ses": "GE1", "acq": "multishell"}, 2)
    >>> names.dwi().as_posix()
    'sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-multishell_space-dwi_desc-preproc_dwi.nii.gz'
    >>> names.map("b1000", "tensor", "fa", "harp").name
    'sub-01_ses-GE1_acq-multishellb1000_desc-harp_model-tensor_param-fa_dwimap.nii.gz'
    """

    entities: Mapping[str, str]
    n_shells: int

    @classmethod
    def of_run(cls, run: Any) -> RunNames:
        """Names of a discovered run (:class:`bids_harmony.bids.discovery.DwiRun`)."""
        return cls(raw_entities(run.entities), len(run.shells))

    @property
    def folder(self) -> Path:
        """The run's folder, e.g. ``sub-01/ses-GE1/dwi``."""
        return session_dir(self.entities)

    @property
    def prefix(self) -> str:
        """The run's entities as in its names, e.g. ``sub-01_ses-GE1_acq-multishell``."""
        return bids_name(self.entities, "", "").rstrip("_")

    def _path(self, entities: Mapping[str, str | None], suffix: str, extension: str) -> Path:
        return self.folder / bids_name(entities, suffix, extension)

    def dwi(self, method: str | None = None, extension: str = ".nii.gz") -> Path:
        """Preprocessed DWI series (``method=None``) or one harmonized by ``method``."""
        if method is None:
            return self._path({**self.entities, "space": "dwi", "desc": "preproc"}, "dwi",
                              extension)  # fmt: skip
        return self._path({**self.entities, "desc": check_method(method)}, "dwi", extension)

    def mask(self, extension: str = ".nii.gz") -> Path:
        """Brain (or phantom) mask."""
        return self._path({**self.entities, "space": "dwi", "desc": "brain"}, "mask", extension)

    def map(
        self,
        shell: str,
        model: str,
        param: str,
        method: str | None = None,
        extension: str = ".nii.gz",
    ) -> Path:
        """A per-shell ``dwimap`` (``shell``: label such as ``b1000``)."""
        entities = {
            **self.entities,
            "acq": shell_acq(self.entities.get("acq"), shell, self.n_shells),
            "desc": None if method is None else check_method(method),
            "model": model,
            "param": param,
        }
        return self._path(entities, "dwimap", extension)

    def shell_map(
        self, shell: str, kind: str, method: str | None = None, extension: str = ".nii.gz"
    ) -> Path:
        """A per-shell map by kind: ``sh``, ``fa``, ``md`` or ``gfa`` (:data:`SHELL_MAPS`)."""
        return self.map(shell, *SHELL_MAPS[kind], method, extension)

    def dki_map(self, param: str, method: str | None = None, extension: str = ".nii.gz") -> Path:
        """A DKI map of the whole run (all shells): ``model-dki_param-<param>``.

        >>> RunNames({"sub": "01", "ses": "A", "acq": "ms"}, 2).dki_map("mk").name
        'sub-01_ses-A_acq-ms_model-dki_param-mk_dwimap.nii.gz'
        """
        if param not in DKI_PARAMS:
            raise ValueError(f"no DKI map {param!r}; the maps: {', '.join(DKI_PARAMS)}")
        entities = {
            **self.entities,
            "desc": None if method is None else check_method(method),
            "model": "dki",
            "param": param,
        }
        return self._path(entities, "dwimap", extension)

    def scales(self, shell: str, method: str, extension: str = ".nii.gz") -> Path:
        """Per-band scale maps of a method (``model-<method>_param-scales``)."""
        return self.map(shell, check_method(method), "scales", method, extension)

    def space_map(self, shell: str, kind: str, space: str, method: str | None = None) -> Path:
        """A per-shell map resampled to a template (``space-<space>``), e.g. for ComBat."""
        model, param = SHELL_MAPS[kind]
        entities = {
            **self.entities, "acq": shell_acq(self.entities.get("acq"), shell, self.n_shells),
            "space": space, "desc": None if method is None else check_method(method),
            "model": model, "param": param,
        }  # fmt: skip
        return self._path(entities, "dwimap", ".nii.gz")

    def regions(self, space: str, method: str) -> Path:
        """Region means of the run's maps, before and after ``method`` (``.tsv``)."""
        return self._path(
            {**self.entities, "space": space, "desc": check_method(method)}, "regions", ".tsv"
        )


def group_map_name(stem: str, condition: str, metric: str) -> str:
    """Group-level standard-error map of one condition (``interharp``, ...) and metric.

    >>> group_map_name("src-GE_tgt-Prisma_b1000", "inter_harp", "FA")
    'src-GE_tgt-Prisma_b1000_desc-interharp_stat-stderr_fa.nii.gz'
    """
    return f"{stem}_desc-{condition.replace('_', '')}_stat-stderr_{metric.lower()}.nii.gz"


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


#: ``HowToAcknowledge`` when the caller gives none (the levels give the references,
#: :func:`bids_harmony.workflows.references.how_to_acknowledge`).
ACKNOWLEDGE_FALLBACK = (
    f"Cite bids_harmony (CITATION.cff at {CODE_URL}) and the references listed in logs/CITATION.md."
)


def dataset_description(
    bids_dir: Path,
    *,
    container: Mapping[str, str] | None = None,
    acknowledge: str | None = None,
) -> dict[str, Any]:
    """The ``dataset_description.json`` content of our derivatives dataset.

    ``container`` defaults to :func:`detect_container`; ``acknowledge`` (the
    ``HowToAcknowledge`` text, with the references) to :data:`ACKNOWLEDGE_FALLBACK`.
    """
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
        "HowToAcknowledge": acknowledge or ACKNOWLEDGE_FALLBACK,
    }


#: Files that exist only inside a Docker container.
DOCKER_ENV_FILE = Path("/.dockerenv")
#: Control groups of this process; under Docker (cgroup v1) they name ``docker``.
CGROUP_FILE = Path("/proc/self/cgroup")


def in_docker() -> bool:
    """Whether this process runs inside a Docker container."""
    if DOCKER_ENV_FILE.exists():
        return True
    try:
        return "docker" in CGROUP_FILE.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def in_virtualenv() -> bool:
    """Whether Python runs from a virtual environment (``python -m venv``, virtualenv)."""
    return sys.prefix != sys.base_prefix


def detect_container() -> dict[str, str] | None:
    """``GeneratedBy[].Container`` of the dataset description, or None outside one.

    Apptainer and Singularity set ``APPTAINER_CONTAINER`` / ``SINGULARITY_CONTAINER``
    (the image path) inside every container they run.  Docker is recognized by
    ``/.dockerenv`` or its control group; but a user's own virtual environment
    inside some Docker-based machine is not our image, so a virtual environment
    counts as a container only when ``BIDS_HARMONY_CONTAINER_IMAGE`` (set by our
    Dockerfile, whose package lives in ``/opt/venv``) says so.
    """
    image = os.environ.get("BIDS_HARMONY_CONTAINER_IMAGE")
    for variable, kind in (("APPTAINER_CONTAINER", "apptainer"),
                           ("SINGULARITY_CONTAINER", "singularity")):  # fmt: skip
        path = os.environ.get(variable)
        if path:
            return {"Type": kind, "Tag": image or Path(path).name}
    if not in_docker() or (in_virtualenv() and not image):
        return None
    return {"Type": "docker", **({"Tag": image} if image else {})}


def write_dataset_description(
    output_dir: Path, bids_dir: Path, *, acknowledge: str | None = None
) -> Path:
    """Write ``dataset_description.json``, keeping one from an earlier run.

    An existing description from another pipeline means the output directory
    belongs to someone else; we refuse rather than mixing datasets.
    ``acknowledge``: the ``HowToAcknowledge`` text (see :func:`dataset_description`).
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
    return io.write_json(path, dataset_description(bids_dir, acknowledge=acknowledge))
