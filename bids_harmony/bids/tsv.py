"""A tolerant reader of the BIDS tab-separated tables the app reads.

``participants.tsv`` and ``--site-map`` files are often written by spreadsheets,
which add a byte-order mark, Windows line ends, trailing tabs or blank lines.  None
of these change what the table says, so :func:`read_tsv` accepts them; what makes
the table ambiguous (an undecodable byte, a duplicate or empty column name, a value
without a column) is an :class:`~bids_harmony.errors.InputDatasetError` naming the
file and the line.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bids_harmony.errors import InputDatasetError

MISSING = "n/a"
"""The BIDS missing value; read as None."""

Row = dict[str, "str | None"]


@dataclass(frozen=True)
class TsvTable:
    """A tab-separated table as read by :func:`read_tsv`.

    Attributes
    ----------
    path : Path
        The file it was read from (for messages).
    columns : tuple of str
        Column names, in file order.
    rows : tuple of dict
        One ``{column: value}`` per non-blank data row, with every column present.
        Values are stripped strings; ``n/a`` is None and missing trailing cells are
        ``""``.
    lines : tuple of int
        The line of the file each row starts on (1-based), for messages.
    """

    path: Path
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    lines: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def numbered(self) -> Iterator[tuple[int, Row]]:
        """``(line, row)`` pairs, for messages that point at a line."""
        return zip(self.lines, self.rows, strict=True)


def read_tsv(path: str | os.PathLike[str], *, what: str = "Table", hint: str = "") -> TsvTable:
    """Read a BIDS TSV file with a header row.

    Tolerated, as they do not change the table: a UTF-8 byte-order mark, ``\\r\\n``
    or ``\\r`` line ends, blank lines, whitespace around cells, trailing tabs and
    empty cells beyond the last column, and rows shorter than the header.  Cells may
    be quoted with ``"`` (BIDS: to hold a tab).

    Parameters
    ----------
    path : path-like
    what : str
        How messages name the file, e.g. ``"Site map"``.
    hint : str
        Appended to error messages: how to fix the file or avoid reading it.

    Returns
    -------
    TsvTable
        An empty file gives no columns and no rows.

    Raises
    ------
    InputDatasetError
        Naming the file (and the line where it applies) if it is missing or
        unreadable, not UTF-8, has an empty or duplicate column name, or a row with
        a value beyond the last column.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "participants.tsv"
    >>> text = "\\ufeffparticipant_id\\tage\\t\\r\\nsub-01\\tn/a\\t\\r\\n\\r\\n"
    >>> _ = path.write_text(text, encoding="utf-8", newline="")
    >>> table = read_tsv(path)
    >>> table.columns, table.rows
    (('participant_id', 'age'), ({'participant_id': 'sub-01', 'age': None},))
    """
    path = Path(path)
    tail = f" {hint}" if hint else ""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputDatasetError(f"{what} {path} does not exist.{tail}") from None
    except OSError as err:
        raise InputDatasetError(f"Cannot read {what.lower()} {path}: {err}.{tail}") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputDatasetError(
            f"{what} {path}, line {line}: byte {raw[err.start]:#04x} is not UTF-8. Save the "
            f"file as UTF-8 (spreadsheets: 'UTF-8 tab-separated text').{tail}"
        ) from err
    columns: tuple[str, ...] | None = None
    rows: list[Row] = []
    lines: list[int] = []
    for line, cells in _records(text, what, path, tail):
        if not any(cells):
            continue  # blank line, or only tabs
        if columns is None:
            columns = _header(cells, line, what, path, tail)
            continue
        extra = [(i, c) for i, c in enumerate(cells) if i >= len(columns) and c]
        if extra:
            index, value = extra[0]
            raise InputDatasetError(
                f"{what} {path}, line {line}: the value {value!r} in column {index + 1} has no "
                f"column name (the header has {len(columns)} columns). Check the tabs of "
                f"that line, or name the column in the header.{tail}"
            )
        cells = cells + [""] * (len(columns) - len(cells))
        rows.append({name: _value(cell) for name, cell in zip(columns, cells, strict=False)})
        lines.append(line)
    return TsvTable(path=path, columns=columns or (), rows=tuple(rows), lines=tuple(lines))


def _records(text: str, what: str, path: Path, tail: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line, stripped cells)`` of each record; a quoted cell may span lines."""
    # newline="" keeps \r, \r\n and \n apart for the csv module, which ends a record
    # at any of them and counts physical lines in ``line_num``.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    start = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputDatasetError(
                f"{what} {path}, line {reader.line_num}: {err}. Check the quotes of "
                f"that line.{tail}"
            ) from err
        if reader.line_num > start and any("\n" in c or "\r" in c for c in record):
            # An unclosed quote would otherwise swallow the rest of the file silently.
            raise InputDatasetError(
                f'{what} {path}, line {start}: a value opened with a double quote (") '
                f"runs to line {reader.line_num}. Close the quote, or remove it.{tail}"
            )
        yield start, [cell.strip() for cell in record]
        start = reader.line_num + 1


def _header(cells: list[str], line: int, what: str, path: Path, tail: str) -> tuple[str, ...]:
    while cells and not cells[-1]:
        cells = cells[:-1]  # trailing tabs
    for index, name in enumerate(cells):
        if not name:
            raise InputDatasetError(
                f"{what} {path}, line {line}: column {index + 1} of the header has no "
                f"name. Name it, or remove the column.{tail}"
            )
        if name in cells[:index]:
            raise InputDatasetError(
                f"{what} {path}, line {line}: the column {name!r} appears twice in the "
                f"header. Rename or remove one of them.{tail}"
            )
    return tuple(cells)


def _value(cell: str) -> str | None:
    return None if cell.lower() == MISSING else cell
