"""One walk of the input dataset before pybids indexes it.

pybids follows directory symlinks without looking for loops (one loop multiplies
the index up to the 40-link limit of the kernel, two loops never finish) and stops
on the first JSON file it cannot decode, wherever it is.  :func:`scan_dataset`
finds both in a single walk, so that :func:`bids_harmony.bids.indexing.index_dataset`
can tell pybids to skip them (:attr:`DatasetScan.ignore`), and
:func:`check_sidecars` decides, once the runs are selected, which malformed files
matter: those a selected run reads are errors, the others warnings.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bids_harmony.bids.labels import SessionKey
from bids_harmony.errors import InputDatasetError

LOGGER = logging.getLogger(__name__)

IGNORE: tuple[str | re.Pattern[str], ...] = (
    "code",
    "derivatives",
    "sourcedata",
    "stimuli",
    "models",
    # Only dwi/, fmap/ and anat/ matter here; skip the rest to index large datasets fast.
    re.compile(
        r"^/sub-[^/]+/(ses-[^/]+/)?(func|beh|eeg|meg|ieeg|pet|perf|micr|nirs|motion|mrs)(/|$)"
    ),
)
"""Paths (relative to the dataset root) and patterns that are not indexed.

Patterns are matched against ``/`` + the path relative to the root, as pybids does."""

_NOT_READ = ("dataset_description.json", "layout_config.json")  # read by other code
_SHOWN = 10


@dataclass(frozen=True)
class BadJson:
    """A JSON file pybids could not read.

    Attributes
    ----------
    path : Path
        Absolute path (under the dataset root, symlinks not resolved).
    problem : str
        What is wrong, e.g. ``invalid JSON: Expecting ',' delimiter at line 3, column 5``.
    """

    path: Path
    problem: str


@dataclass(frozen=True)
class SkippedLink:
    """A symlinked folder that is not walked.

    Attributes
    ----------
    path : Path
        The link.
    target : Path
        Its resolved target.
    loop : bool
        True when the target holds the link (a loop), False when it is a folder
        walked already by another path.
    """

    path: Path
    target: Path
    loop: bool


@dataclass(frozen=True)
class DatasetScan:
    """What one walk of the dataset found (see :func:`scan_dataset`).

    Attributes
    ----------
    root : Path
    skipped_links : tuple of SkippedLink
    bad_json : tuple of BadJson
    unreadable : tuple of Path
        Folders that could not be listed.
    dwi_sessions : frozenset of SessionKey
        ``(subject, session)`` of every ``*_dwi.nii[.gz]`` image in a ``dwi`` folder.
    n_files : int
        Files seen, for logs and benchmarks.
    """

    root: Path
    skipped_links: tuple[SkippedLink, ...] = ()
    bad_json: tuple[BadJson, ...] = ()
    unreadable: tuple[Path, ...] = ()
    dwi_sessions: frozenset[SessionKey] = field(default_factory=frozenset)
    n_files: int = 0

    @property
    def ignore(self) -> tuple[re.Pattern[str], ...]:
        """Extra pybids ``ignore`` entries: the skipped links, folders and JSON files.

        One pattern for all of them, as pybids tries every pattern on every path.
        """
        paths = [*(s.path for s in self.skipped_links), *self.unreadable]
        paths += [bad.path for bad in self.bad_json]
        if not paths:
            return ()
        alternatives = "|".join(re.escape(self.relative(p)) for p in paths)
        return (re.compile(rf"^/(?:{alternatives})(?:/|$)"),)

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, with ``/`` (``.`` for the root itself)."""
        return path.relative_to(self.root).as_posix()


def scan_dataset(
    root: str | os.PathLike[str], *, ignore: Iterable[str | re.Pattern[str]] = IGNORE
) -> DatasetScan:
    """Walk the dataset once: symlink loops, unreadable JSON files, dMRI sessions.

    Directory symlinks are followed, except those whose target is a folder already
    walked (a loop, or a second path to the same folder), which are skipped with a
    warning.  Real folders are walked before symlinked ones, so a folder is walked
    by its own path rather than through a link.  Every ``.json`` file is parsed,
    except ``dataset_description.json`` (checked by
    :func:`bids_harmony.bids.indexing.check_dataset`).

    Parameters
    ----------
    root : path-like
        Dataset root (absolute, as :func:`~bids_harmony.bids.indexing.check_dataset`
        returns it).
    ignore : iterable of str or compiled pattern
        Folders and patterns not walked (as given to pybids); dot-files are never
        walked, as pybids never indexes them.

    Returns
    -------
    DatasetScan

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "sub-01" / "dwi").mkdir(parents=True)
    >>> _ = (root / "sub-01" / "dwi" / "sub-01_dwi.json").write_text('{"EchoTime": 0.1,}')
    >>> (root / "sub-01" / "loop").symlink_to("..")
    >>> scan = scan_dataset(root)
    >>> [b.problem for b in scan.bad_json]
    ['invalid JSON: Expecting property name enclosed in double quotes at line 1, column 18']
    >>> [(s.path.name, s.loop) for s in scan.skipped_links]
    [('loop', True)]
    """
    root = Path(root).absolute()
    patterns = [_as_pattern(p) for p in ignore]
    walker = _Walker(root, patterns)
    walker.walk()
    scan = DatasetScan(
        root=root,
        skipped_links=tuple(walker.skipped),
        bad_json=tuple(walker.bad_json),
        unreadable=tuple(walker.unreadable),
        dwi_sessions=frozenset(walker.dwi_sessions),
        n_files=walker.n_files,
    )
    for link in scan.skipped_links:
        what = (
            "a loop: it points to a folder that holds it"
            if link.loop
            else "a second path to a folder already indexed"
        )
        LOGGER.warning(
            "Skipping the symbolic link %s -> %s: %s. Remove the link if it is not needed.",
            link.path,
            link.target,
            what,
        )
    return scan


def check_sidecars(scan: DatasetScan, runs: Iterable[str | os.PathLike[str]]) -> None:
    """Stop on a malformed sidecar of a selected run; warn about the other bad JSON files.

    A JSON file applies to a run when it is in the run's folder or a folder above
    it (up to the root), ends with the run's suffix (``_dwi.json``) and its name
    entities are a subset of the run's (BIDS inheritance), e.g. its own
    ``sub-01_ses-A_dwi.json`` or a top-level ``dwi.json``.

    Parameters
    ----------
    scan : DatasetScan
    runs : iterable of path-like
        Images of the selected runs, under ``scan.root``.

    Raises
    ------
    InputDatasetError
        Naming each malformed sidecar, its problem and the run that reads it.
    """
    if not scan.bad_json:
        return
    by_folder: dict[str, list[tuple[str, frozenset[str], BadJson]]] = defaultdict(list)
    for bad in scan.bad_json:
        name = _name_entities(bad.path.name[: -len(".json")])
        if name is not None:
            by_folder[scan.relative(bad.path.parent)].append((*name, bad))
    used: dict[BadJson, Path] = {}
    for run in runs:
        run = Path(run)
        image = _name_entities(_stem(run.name))
        if image is None:
            continue
        suffix, entities = image
        try:
            folder = scan.relative(run.parent)
        except ValueError:  # not under the root: inherits nothing from it
            continue
        while True:
            for json_suffix, json_entities, bad in by_folder.get(folder, ()):
                if json_suffix == suffix and json_entities <= entities:
                    used.setdefault(bad, run)
            if folder == ".":
                break
            folder = os.path.dirname(folder) or "."
    others = [bad for bad in scan.bad_json if bad not in used]
    if others:
        LOGGER.warning(
            "Skipped %d malformed JSON file(s) that no selected run reads: %s.",
            len(others),
            _listing(f"{bad.path} ({bad.problem})" for bad in others),
        )
    if used:
        raise InputDatasetError(
            "Malformed JSON sidecar(s) of selected runs: "
            + _listing(f"{bad.path} ({bad.problem}), read by {run}" for bad, run in used.items())
            + ". Fix the file (one JSON object, UTF-8 without byte-order mark; look for a "
            "trailing comma or a missing quote or brace) or leave the run out "
            "(--participant-label, --bids-filter-file)."
        )


class _Walker:
    """State of one walk; real folders first, symlinked ones when none is left."""

    def __init__(self, root: Path, patterns: list[re.Pattern[str]]) -> None:
        self.root, self.patterns = root, patterns
        self.visited = {os.path.realpath(root)}
        self.pending: list[tuple[str, str, str]] = [(str(root), "", os.path.realpath(root))]
        self.links: deque[tuple[str, str, str]] = deque()
        self.skipped: list[SkippedLink] = []
        self.bad_json: list[BadJson] = []
        self.unreadable: list[Path] = []
        self.dwi_sessions: set[SessionKey] = set()
        self.n_files = 0

    def walk(self) -> None:
        while self.pending or self.links:
            if self.pending:
                self._list(*self.pending.pop())
                continue
            link, rel, holder = self.links.popleft()
            target = os.path.realpath(link)
            if target in self.visited:
                loop = holder == target or holder.startswith(target.rstrip(os.sep) + os.sep)
                self.skipped.append(SkippedLink(Path(link), Path(target), loop))
                continue
            self.visited.add(target)
            self._list(link, rel, target)

    def _list(self, path: str, rel: str, real: str) -> None:
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            LOGGER.warning("Cannot list the folder %s (%s); it is not indexed.", path, err)
            if rel:
                self.unreadable.append(Path(path))
            return
        for entry in entries:
            child = f"{rel}/{entry.name}"
            if entry.name.startswith(".") or any(p.search(child) for p in self.patterns):
                continue
            if _is_dir(entry):
                if entry.is_symlink():
                    self.links.append((entry.path, child, real))
                else:
                    self.visited.add(os.path.join(real, entry.name))
                    self.pending.append((entry.path, child, os.path.join(real, entry.name)))
            else:
                self._file(entry, child)

    def _file(self, entry: os.DirEntry[str], rel: str) -> None:
        self.n_files += 1
        name = entry.name
        if name.endswith(".json") and not (rel.count("/") == 1 and name in _NOT_READ):
            problem = _json_problem(entry)
            if problem is not None:
                self.bad_json.append(BadJson(Path(entry.path), problem))
        elif name.endswith(("_dwi.nii.gz", "_dwi.nii")) and rel.rsplit("/", 2)[-2] == "dwi":
            pairs = dict(p.split("-", 1) for p in _stem(name).split("_") if "-" in p)
            if "sub" in pairs:
                self.dwi_sessions.add((pairs["sub"], pairs.get("ses")))


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. a link to itself (ELOOP): pybids sees a file, so do we
        return False


def _json_problem(entry: os.DirEntry[str]) -> str | None:
    """Why pybids could not use this JSON file as metadata; None if it can."""
    if entry.is_symlink() and not os.path.exists(entry.path):
        return (
            "a broken symbolic link (a DataLad/git-annex file not retrieved? run "
            "'datalad get' on it)"
        )
    try:
        raw = Path(entry.path).read_bytes()
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return f"not UTF-8: byte {raw[err.start]:#04x} on line {line}"
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    if not isinstance(content, dict):
        return f"holds a JSON {type(content).__name__}, not an object"
    return None


def _as_pattern(entry: str | re.Pattern[str]) -> re.Pattern[str]:
    # pybids turns a path into "^/<path>.*": a prefix of the path relative to the root.
    if isinstance(entry, re.Pattern):
        return entry
    return re.compile("^/" + re.escape(Path(entry).as_posix().strip("/")))


def _name_entities(stem: str) -> tuple[str, frozenset[str]] | None:
    """(suffix, ``key-value`` parts) of a BIDS name; None if it is not one."""
    *pairs, suffix = stem.split("_")
    if any("-" not in pair for pair in pairs):
        return None
    return suffix, frozenset(pairs)


def _stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    more = f"; and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more
