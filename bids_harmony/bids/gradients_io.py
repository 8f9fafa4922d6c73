"""Read BIDS/FSL gradient files (``.bval``, ``.bvec``).

BIDS stores b-values as one row of numbers and b-vectors as three rows (x, y, z)
with one column per volume, both whitespace-separated.  The checks against the
image (volume count, unit vectors, b0 present) live in
:func:`bids_harmony.dmri.gradients.validate_gradients`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from bids_harmony.errors import BadGradientsError


def read_gradients(
    bval_path: str | os.PathLike[str], bvec_path: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.bval``/``.bvec`` pair.

    Parameters
    ----------
    bval_path, bvec_path : path-like

    Returns
    -------
    bvals : ndarray of float, shape (n,)
    bvecs : ndarray of float, shape (n, 3)
        One vector per row (the transpose of the file layout).

    Raises
    ------
    BadGradientsError
        Naming the file, if it is missing, unreadable, empty, not numeric, has the
        wrong number of rows, or the two files disagree on the number of volumes.
    """
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    bvals = _read_table(bval_path, rows=1, what="b-values")
    bvecs = _read_table(bvec_path, rows=3, what="b-vectors")
    if bvals.shape[1] != bvecs.shape[1]:
        raise BadGradientsError(
            f"{bval_path} has {bvals.shape[1]} b-values but {bvec_path} has "
            f"{bvecs.shape[1]} b-vectors; both files need one entry per volume."
        )
    return bvals[0], bvecs.T.copy()


def read_bvals(bval_path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.bval`` file alone (e.g. next to a field map), shape (n,).

    Raises
    ------
    BadGradientsError
        As :func:`read_gradients` does for the ``.bval`` file.
    """
    return _read_table(Path(bval_path), rows=1, what="b-values")[0]


def _read_table(path: Path, *, rows: int, what: str) -> np.ndarray:
    layout = "one row" if rows == 1 else f"{rows} rows (x, y, z)"
    fmt = f"A BIDS {path.suffix or 'gradient'} file holds {layout} of {what}, one column per volume"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadGradientsError(f"Gradient file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadGradientsError(f"Cannot read gradient file {path}: {err}.") from err
    if not text.strip():
        raise BadGradientsError(f"Gradient file {path} is empty. {fmt}.")
    try:
        table = np.loadtxt(io.StringIO(text), dtype=float, ndmin=2)
    except ValueError as err:
        raise BadGradientsError(
            f"Gradient file {path} is not a numeric table ({err}). {fmt}, separated "
            "by spaces; fix or regenerate the file (e.g. with dcm2niix)."
        ) from err
    if table.size == 0:
        raise BadGradientsError(f"Gradient file {path} is empty. {fmt}.")
    if table.shape[0] != rows:
        hint = ""
        if table.shape[1] == rows:
            hint = " It looks transposed (one volume per row); transpose it."
        raise BadGradientsError(
            f"Gradient file {path} has {table.shape[0]} row(s) and {table.shape[1]} "
            f"column(s). {fmt}.{hint}"
        )
    return table
