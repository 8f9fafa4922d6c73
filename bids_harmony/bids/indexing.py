"""The pybids index of the input dataset, and the queries run against it.

Checks that the input is a BIDS dataset with messages a user can act on, builds
the one :class:`bids.BIDSLayout` of a run, and reads ``--bids-filter-file``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bids import BIDSLayout, BIDSLayoutIndexer
from bids.exceptions import PyBIDSError
from bids.layout import Query

from bids_harmony.bids.scan import IGNORE, DatasetScan, scan_dataset
from bids_harmony.errors import InputDatasetError

LOGGER = logging.getLogger(__name__)

DWI_QUERY: Mapping[str, Any] = {
    "subject": Query.ANY,
    "datatype": "dwi",
    "suffix": "dwi",
    "extension": [".nii.gz", ".nii"],
}
"""The pybids query of the dMRI runs; a filter file's ``dwi`` entry updates it."""

NAME_ENTITIES_SKIPPED = frozenset({"suffix", "extension", "datatype"})
"""pybids entities that are not ``key-value`` pairs of a file name."""

FILTER_QUERIES = ("dwi",)
"""Top-level keys a ``--bids-filter-file`` may hold."""

_SHORT_KEYS = {
    "sub": "subject",
    "ses": "session",
    "acq": "acquisition",
    "dir": "direction",
    "rec": "reconstruction",
    "ce": "ceagent",
}
_REQUIRED_DESCRIPTION = ("Name", "BIDSVersion")


def check_dataset(bids_dir: str | os.PathLike[str], *, validate: bool = True) -> tuple[Path, dict]:
    """Check that ``bids_dir`` is a BIDS dataset and read its description.

    Parameters
    ----------
    bids_dir : path-like
    validate : bool
        Also require the mandatory ``Name`` and ``BIDSVersion`` fields.

    Returns
    -------
    root : Path
        Absolute path of the dataset.
    description : dict
        Contents of ``dataset_description.json``.

    Raises
    ------
    InputDatasetError
        Naming the path and what is missing.
    """
    root = Path(bids_dir).expanduser().absolute()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise InputDatasetError(
            f"The BIDS directory {root} {what}. Pass the top folder of a BIDS dataset "
            "(the one holding dataset_description.json and the sub-* folders)."
        )
    target = root / "dataset_description.json"
    if not target.is_file():
        hint = (
            f" {root.name} looks like a participant folder; pass its parent {root.parent}."
            if root.name.startswith("sub-")
            else " Pass the dataset's top folder, or add the file, e.g. "
            '{"Name": "My study", "BIDSVersion": "1.9.0"}.'
        )
        raise InputDatasetError(f"{root} is not a BIDS dataset: {target.name} is missing.{hint}")
    try:
        description = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputDatasetError(f"Cannot read {target}: {err}.") from err
    except json.JSONDecodeError as err:
        raise InputDatasetError(
            f"{target} is not valid JSON ({err.msg} at line {err.lineno}, column "
            f"{err.colno}). Fix the syntax (e.g. trailing commas, unquoted keys)."
        ) from err
    if not isinstance(description, dict):
        raise InputDatasetError(f"{target} must hold a JSON object, not {type(description)}.")
    missing = [key for key in _REQUIRED_DESCRIPTION if key not in description]
    if missing and validate:
        raise InputDatasetError(
            f"{target} lacks the mandatory field(s) {', '.join(missing)}. Add them (e.g. "
            '"Name": "My study", "BIDSVersion": "1.9.0") or pass --skip-bids-validation.'
        )
    return root, description


def index_dataset(
    root: Path,
    description: Mapping[str, Any],
    *,
    validate: bool = True,
    database_dir: str | os.PathLike[str] | None = None,
    scan: DatasetScan | None = None,
) -> BIDSLayout:
    """Index the dataset with pybids.

    Symlink loops and JSON files pybids cannot read are not indexed (see
    :mod:`bids_harmony.bids.scan`): a malformed sidecar would stop pybids, a loop
    would keep it walking for hours.

    Parameters
    ----------
    root : Path
        From :func:`check_dataset`.
    description : mapping
        The dataset description; a ``DatasetType: derivative`` dataset (e.g. QSIPrep
        outputs) is indexed with the derivatives entities and without validation.
    validate : bool
        Index only files with valid BIDS names (pybids' own validation).
    database_dir : path-like, optional
        Write the index (SQLite) there instead of keeping it in memory.  It is
        rebuilt on every call; use a directory per run (e.g. in the work directory).
    scan : DatasetScan, optional
        From :func:`~bids_harmony.bids.scan.scan_dataset`; scanned here if not given.

    Returns
    -------
    BIDSLayout
    """
    derivative = description.get("DatasetType") == "derivative"
    if scan is None:
        scan = scan_dataset(root)
    indexer = BIDSLayoutIndexer(
        validate=validate and not derivative, ignore=[*IGNORE, *scan.ignore]
    )
    kwargs: dict[str, Any] = {}
    if database_dir is not None:
        database = Path(database_dir).absolute()
        database.mkdir(parents=True, exist_ok=True)
        kwargs = {"database_path": database, "reset_database": True}
    try:
        return BIDSLayout(
            root, validate=validate, is_derivative=derivative, indexer=indexer, **kwargs
        )
    except (PyBIDSError, ValueError) as err:
        raise InputDatasetError(
            f"pybids cannot index {root}: {err} Fix the dataset, or pass "
            "--skip-bids-validation if the problem is only BIDS compliance."
        ) from err


def load_bids_filters(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file`` (fMRIPrep style).

    The file is a JSON object ``{"dwi": {<pybids entity>: <value>, ...}}``; values
    may be strings, numbers, lists (any of), ``null`` (entity absent) or ``"*"``
    (entity present with any value).  Example::

        {"dwi": {"acquisition": "b1000", "run": 1}}

    Returns
    -------
    dict
        The parsed JSON (plain, serializable).

    Raises
    ------
    InputDatasetError
        Naming the file, if it is missing, not valid JSON, or has unknown keys.
    """
    path = Path(path)
    try:
        filters = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDatasetError(f"BIDS filter file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputDatasetError(f"Cannot read BIDS filter file {path}: {err}.") from err
    except json.JSONDecodeError as err:
        raise InputDatasetError(
            f"BIDS filter file {path} is not valid JSON ({err.msg} at line {err.lineno}, "
            f'column {err.colno}). Example: {{"dwi": {{"acquisition": "b1000"}}}}.'
        ) from err
    check_filters(filters, source=f"BIDS filter file {path}")
    return filters


def check_filters(filters: Any, *, source: str = "BIDS filters") -> None:
    """Check the structure of BIDS filters (see :func:`load_bids_filters`)."""
    example = 'Example: {"dwi": {"acquisition": "b1000"}}.'
    if not isinstance(filters, dict):
        raise InputDatasetError(f"{source} must be a JSON object. {example}")
    unknown = sorted(set(filters) - set(FILTER_QUERIES))
    if unknown:
        raise InputDatasetError(
            f"{source} has unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(FILTER_QUERIES)}. {example}"
        )
    for key, value in filters.items():
        if not isinstance(value, dict):
            raise InputDatasetError(f"{source}: {key!r} must map entity names to values. {example}")


def filter_query(layout: BIDSLayout, filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`DWI_QUERY` updated with the ``dwi`` filters, as pybids arguments.

    Raises
    ------
    InputDatasetError
        If a filter names an entity that pybids does not know.
    """
    query = dict(DWI_QUERY)
    if not filters:
        return query
    check_filters(filters)
    dwi = filters.get("dwi", {})
    known = set(layout.get_entities())
    unknown = sorted(set(dwi) - known)
    if unknown:
        hints = [f"{k!r} -> {_SHORT_KEYS[k]!r}" for k in unknown if k in _SHORT_KEYS]
        hint = f" Use pybids entity names ({', '.join(hints)})." if hints else ""
        raise InputDatasetError(
            f"BIDS filters: unknown entity {', '.join(map(repr, unknown))}.{hint} Known: "
            f"{', '.join(sorted(known))}."
        )
    query.update({name: _as_query(value) for name, value in dwi.items()})
    return query


def _as_query(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_query(v) for v in value]
    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def stem(name: str) -> str:
    """File name without its extension (``.nii.gz`` counts as one).

    >>> stem("sub-01_dwi.nii.gz"), stem("sub-01_dwi.nii")
    ('sub-01_dwi', 'sub-01_dwi')
    """
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]


def nothing_found(root: Path, query: Mapping[str, Any], *, validate: bool) -> str:
    """Message for a query that matched no dMRI run: what was searched, what to try."""
    shown = {k: v for k, v in query.items() if k not in DWI_QUERY or v != DWI_QUERY[k]}
    what = f" matching {shown}" if shown else ""
    message = f"No dMRI runs found in {root}: searched sub-*/[ses-*/]dwi/*_dwi.nii[.gz]{what}."
    on_disk = [
        p
        for p in sorted(root.glob("sub-*/**/*_dwi.nii*"))
        if p.name.endswith(("_dwi.nii", "_dwi.nii.gz"))
    ]
    if shown:
        message += " Check the participant/session labels and the BIDS filter file."
    elif on_disk and validate:
        message += (
            f" {len(on_disk)} file(s) such as {on_disk[0]} were skipped because they are "
            "not valid BIDS; fix their names or pass --skip-bids-validation."
        )
    elif not on_disk:
        message += " The dataset holds no *_dwi.nii[.gz] images in a dwi/ folder."
    return message
