"""Covariates of sessions (age, sex, ...) from ``participants.tsv`` and ``sessions.tsv``.

A cohort method such as ComBat keeps the effects of biological covariates while it
removes site effects, so it needs each session's value of each covariate.  BIDS keeps
them in two places: ``participants.tsv`` (one row per participant: ``sex``,
``age`` at a single visit...) and ``sub-<label>/sub-<label>_sessions.tsv`` (one row
per session: ``age`` at each visit in a longitudinal study).  A value in
``sessions.tsv`` wins over the participant's.

Values that all parse as numbers make a numeric covariate; any other value makes
the covariate categorical (text).  A missing column or a missing value (``n/a``,
empty, absent row) is an error that names the files searched and the sessions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from bids_harmony.bids.labels import strip_prefix
from bids_harmony.bids.tsv import TsvTable, read_tsv
from bids_harmony.errors import InputDatasetError

__all__ = ["CovariateError", "SessionKey", "read_covariates", "sessions_file"]

#: ``(subject, session)`` labels without prefixes; session None when the dataset has none.
SessionKey = tuple[str, "str | None"]


class CovariateError(InputDatasetError):
    """A covariate that is missing, or has missing values, for selected sessions."""


def sessions_file(bids_dir: Path, subject: str) -> Path:
    """``sub-<label>/sub-<label>_sessions.tsv``."""
    return Path(bids_dir) / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"


def _participants(bids_dir: Path) -> tuple[TsvTable | None, dict[str, dict[str, str | None]]]:
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return None, {}
    table = read_tsv(path, what="Participants table",
                     hint="Fix the file (tab-separated, UTF-8).")  # fmt: skip
    if "participant_id" not in table.columns:
        raise CovariateError(
            f"{path} has no participant_id column (found: {list(table.columns)}); covariates "
            "are read per participant_id."
        )
    rows = {strip_prefix(row["participant_id"], "sub-"): row for row in table.rows
            if row["participant_id"]}  # fmt: skip
    return table, rows


def _sessions(bids_dir: Path, subject: str) -> tuple[TsvTable | None, dict[str, dict]]:
    path = sessions_file(bids_dir, subject)
    if not path.is_file():
        return None, {}
    table = read_tsv(path, what="Sessions table", hint="Fix the file (tab-separated, UTF-8).")
    if "session_id" not in table.columns:
        raise CovariateError(
            f"{path} has no session_id column (found: {list(table.columns)}); session "
            "covariates are read per session_id."
        )
    return table, {strip_prefix(row["session_id"], "ses-"): row for row in table.rows
                   if row["session_id"]}  # fmt: skip


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _label(key: SessionKey) -> str:
    subject, session = key
    return f"sub-{subject}" + (f" ses-{session}" if session else "")


def read_covariates(
    bids_dir: Path, sessions: Sequence[SessionKey], names: Iterable[str]
) -> dict[str, list[float] | list[str]]:
    """The value of each covariate for each session, in the order of ``sessions``.

    Parameters
    ----------
    bids_dir : Path
        The BIDS dataset.
    sessions : sequence of (subject, session)
        Labels without ``sub-``/``ses-``.
    names : iterable of str
        Column names, e.g. ``("age", "sex")``.

    Returns
    -------
    dict
        ``{name: values}``: floats when every value is a number, else text.

    Raises
    ------
    CovariateError
        A column in neither table, or sessions without a value (listed, with the
        files searched and what to do).
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    ptable, prow = _participants(bids_dir)
    stables: dict[str, tuple[TsvTable | None, dict]] = {}
    for subject, _ in sessions:
        if subject not in stables:
            stables[subject] = _sessions(bids_dir, subject)
    columns = set(ptable.columns if ptable else ())
    for table, _ in stables.values():
        columns |= set(table.columns if table else ())
    where = "participants.tsv" + (" and the sessions.tsv files" if any(
        t for t, _ in stables.values()) else "")  # fmt: skip
    absent = [n for n in names if n not in columns]
    if absent:
        found = sorted(columns - {"participant_id", "session_id"})
        raise CovariateError(
            f"covariate column(s) {', '.join(absent)} not found in {where} of {bids_dir} "
            f"(columns there: {', '.join(found) or 'none'}). Add the column (one value per "
            "participant, or per session in sub-<label>/sub-<label>_sessions.tsv) or leave "
            "the covariate out."
        )
    out: dict[str, list[float] | list[str]] = {}
    for name in names:
        raw: list[str | None] = []
        for key in sessions:
            subject, session = key
            value = None
            srows = stables[subject][1]
            if session is not None and session in srows:
                value = srows[session].get(name)
            if not value:
                value = (prow.get(subject) or {}).get(name)
            raw.append(value or None)
        missing = [_label(k) for k, v in zip(sessions, raw, strict=True) if v is None]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more"
                                               if len(missing) > 10 else "")  # fmt: skip
            raise CovariateError(
                f"covariate '{name}' has no value for {len(missing)} session(s): {shown} "
                f"(searched {where} of {bids_dir}; 'n/a' and empty cells count as missing). "
                "Fill in the values, or leave those sessions or the covariate out."
            )
        numbers = [_as_number(v) for v in raw if v is not None]
        if all(n is not None for n in numbers):
            out[name] = [float(n) for n in numbers]  # type: ignore[arg-type]
        else:
            out[name] = [str(v) for v in raw]
    return out
