"""Locks that keep two runs from writing the same work directory or outputs.

Two runs of a level on the same participant collide in Nipype's work directory
(one replaces a node folder the other is reading) and in the participant's
derivatives.  After its input checks and before its first write, a level takes
one lock per *key* (:func:`level_keys`: ``sub-<label>`` for every participant of
the participant level, ``train``, ``group``) in two places:

``WORK/locks/<key>.lock``
    guards Nipype's cache;
``OUT/logs/locks/<key>.lock``
    guards the outputs, also against a run with another work directory
    (``logs/`` is in the output's ``.bidsignore``).

A lock is a small JSON file (PID, host, start time, command line, level) created
with ``O_CREAT | O_EXCL``: of two runs racing for it exactly one gets it.  A run
that finds a lock held stops with exit code 2 (:class:`~bids_harmony.errors.LockError`)
naming the holder.  A lock left on this host by a process that no longer exists
(killed with SIGKILL, a crashed node) is taken over with a warning; one from
another host cannot be checked and is refused.  A level releases its locks when
it returns or raises (:func:`releases_locks`); the CLI and interpreter exit do so
too, as a backstop (:func:`release_locks`).  Lock folders the locks created are
removed again when they are left empty, so a run stopped by a held lock leaves
nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bids_harmony.config import Config
from bids_harmony.errors import LockError
from bids_harmony.workflows.execution import LOGS_DIR

if TYPE_CHECKING:
    from bids_harmony.bids.discovery import Study

LOGGER = logging.getLogger(__name__)

LOCKS_DIR = "locks"
#: An unreadable lock file younger than this (s) may be one another run is writing.
GRACE_S = 60.0
#: Tries to create a lock file that keeps being released or taken over meanwhile.
ATTEMPTS = 100

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Holder:
    """The content of a lock file: who holds it."""

    pid: int
    host: str
    started: str
    command: str
    level: str
    #: Tells this process's lock apart from a later one of the same PID.
    token: str = ""

    @classmethod
    def current(cls, level: str) -> Holder:
        """This process, running ``level``."""
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now().astimezone().isoformat(timespec="seconds"),
            command=shlex.join(sys.argv),
            level=level,
            token=uuid.uuid4().hex,
        )

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The holder written in ``path``; None when empty, unreadable or malformed.

        Raises
        ------
        FileNotFoundError
            The lock was released meanwhile.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                started=str(data["started"]),
                command=str(data.get("command", "")),
                level=str(data.get("level", "")),
                token=str(data.get("token", "")),
            )
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def describe(self) -> str:
        """``PID 123 on host since 2024-…, level participant, command: …``."""
        return (f"PID {self.pid} on {self.host} since {self.started}, level {self.level}, "
                f"command: {self.command}")  # fmt: skip


@dataclasses.dataclass
class _Held:
    """A lock this process took: its token, and the folders creating it made."""

    token: str
    pid: int
    created: list[Path]


#: Lock files held by this process.
_HELD: dict[Path, _Held] = {}
_atexit_registered = False


def level_keys(config: Config, study: Study) -> list[str]:
    """The lock keys of a run: ``sub-<label>`` per participant, or the level's name."""
    if config.analysis_level == "participant":
        return sorted(f"sub-{label}" for label in set(study.subjects))
    return [config.analysis_level]


def lock_paths(config: Config, key: str) -> tuple[Path, Path]:
    """``(WORK/locks/<key>.lock, OUT/logs/locks/<key>.lock)``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        raise ValueError(f"lock key {key!r} is not a plain file name")
    return (
        Path(config.work_dir).absolute() / LOCKS_DIR / f"{key}.lock",
        Path(config.output_dir).absolute() / LOGS_DIR / LOCKS_DIR / f"{key}.lock",
    )


def hold_locks(config: Config, keys: Iterable[str]) -> list[Path]:
    """Lock ``keys`` in the work and the output directory for this process: all or none.

    Keys are taken in sorted order, each in the work directory first; a lock this
    process already holds counts as taken.  On a held lock, those taken by this
    call are released again before the error propagates.

    Returns
    -------
    list of Path
        The lock files.

    Raises
    ------
    LockError
        Another live run holds one of them, or a lock file cannot be created.
    """
    holder = Holder.current(config.analysis_level)
    paths = list(dict.fromkeys(p for key in sorted(set(keys)) for p in lock_paths(config, key)))
    taken: list[Path] = []
    try:
        for path in paths:
            if path in _HELD and _HELD[path].pid == os.getpid():
                continue
            _HELD[path] = _acquire(path, holder)
            taken.append(path)
    except BaseException:
        release_locks(taken)
        raise
    _register_atexit()
    if taken:
        LOGGER.debug("Locked %s", ", ".join(map(str, taken)))
    return paths


def release_locks(paths: Iterable[Path] | None = None) -> None:
    """Release locks this process holds (every one by default).

    A lock file is removed only while it still holds this process's token (never
    a lock another run took over); empty folders its creation made go with it.
    In a forked child the parent's locks are dropped from the child's record
    without touching the files.
    """
    chosen = list(_HELD) if paths is None else [Path(p) for p in paths if Path(p) in _HELD]
    folders: set[Path] = set()
    for path in chosen:
        held = _HELD.pop(path)
        if held.pid != os.getpid():
            continue
        try:
            current = Holder.read(path)
        except FileNotFoundError:
            current = None
        if current is not None and current.token == held.token:
            path.unlink(missing_ok=True)
        elif path.exists():
            LOGGER.warning("Lock %s is no longer this run's (%s); leaving it in place.", path,
                           current.describe() if current else "unreadable")  # fmt: skip
        folders.update(held.created)
    # Deepest first; a folder another lock or any output still uses is not empty.
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def releases_locks(func: _F) -> _F:
    """Decorate a level: the locks it takes with :func:`hold_locks` go when it ends.

    Whether it returns, raises or is interrupted; locks held before the call are
    kept.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_HELD)
        try:
            return func(*args, **kwargs)
        finally:
            release_locks([path for path in _HELD if path not in before])

    return wrapper  # type: ignore[return-value]


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(release_locks)
        _atexit_registered = True


def _missing_folders(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _acquire(path: Path, holder: Holder) -> _Held:
    """Create the lock file ``path`` for ``holder``, taking over a stale one."""
    created = _missing_folders(path.parent)
    for _ in range(ATTEMPTS):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # released meanwhile: try again
                _take_over(path)
            continue
        except FileNotFoundError:  # another run removed the emptied lock folder
            continue
        except OSError as err:
            raise LockError(f"cannot create the lock file {path}: {err.strerror}.") from err
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(dataclasses.asdict(holder), indent=2) + "\n")
        except OSError as err:
            path.unlink(missing_ok=True)
            raise LockError(f"cannot write the lock file {path}: {err.strerror}.") from err
        return _Held(token=holder.token, pid=holder.pid, created=created)
    raise LockError(f"the lock file {path} kept changing while this run tried to take it; "
                    "another run is taking it. Rerun when that run has finished.")  # fmt: skip


def _take_over(path: Path) -> None:
    """Remove ``path`` if its lock is stale (with a warning), else raise :class:`LockError`.

    Two runs that both find the same stale lock must not both take it over (the
    second would delete the first one's new lock), so the removal happens under
    a second lock, ``<key>.lock.break``, after reading the file again.
    """
    _stale_reason(path, Holder.read(path))
    breaker = path.with_name(path.name + ".break")
    try:
        os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        # Another run is taking it over right now, or died doing so long ago.
        with contextlib.suppress(FileNotFoundError):
            if time.time() - breaker.stat().st_mtime > GRACE_S:
                breaker.unlink()
        time.sleep(0.05)
        return
    try:
        reason = _stale_reason(path, Holder.read(path))
        LOGGER.warning("Taking over the stale lock %s: %s.", path, reason)
        path.unlink()
    finally:
        breaker.unlink(missing_ok=True)


def _stale_reason(path: Path, holder: Holder | None) -> str:
    """Why the lock in ``path`` may be taken over; :class:`LockError` when it may not."""
    remedy = f"Wait for that run to finish or, if that process is gone, delete {path}."
    if holder is None:
        age = time.time() - path.stat().st_mtime
        if age < GRACE_S:
            raise LockError(f"the lock file {path} holds no readable lock yet: another run "
                            f"may be taking it right now. {remedy}")  # fmt: skip
        return f"the file is empty or unreadable and {age:.0f} s old"
    here = socket.gethostname()
    if holder.host != here:
        raise LockError(
            f"{path} is locked by another bids-harmony run: {holder.describe()}. Host "
            f"{holder.host} is not this one ({here}), so whether that process still runs "
            f"cannot be checked from here. {remedy}"
        )
    if holder.pid == os.getpid():
        return (f"its PID {holder.pid} is this process's, which did not take it "
                f"(an earlier process with the same PID: {holder.describe()})")  # fmt: skip
    if _alive(holder.pid):
        raise LockError(f"{path} is locked by another bids-harmony run: {holder.describe()}. "
                        f"{remedy}")  # fmt: skip
    return f"process {holder.pid} no longer exists ({holder.describe()})"


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True
