"""Covariates as a design matrix: numeric columns as they are, categorical ones one-hot.

ComBat keeps the effects of the covariates it is given (age, sex, diagnosis): their
columns :math:`X` enter the regression beside the site indicators and their fitted
effect :math:`X\\hat\\beta` is added back after the site effect is removed.  A
categorical covariate with levels :math:`l_0 < l_1 < \\dots` (sorted as text) becomes
one indicator column per level but the first, the reference level, whose effect the
site intercepts absorb (the coding of Johnson et al., 2007 and of Fortin et al., 2017).
A *smooth* numeric covariate (ComBat-GAM, Pomponio et al., 2020) becomes the columns of
a natural cubic spline basis whose knots are placed at fit time and stored with the
encoding (:mod:`.splines`), so that new samples get the same basis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_harmony.methods.combat.errors import CombatInputError, ConfoundedCovariateError
from bids_harmony.methods.combat.splines import DEFAULT_DF, natural_spline_basis, quantile_knots

__all__ = ["CovariateEncoding", "CovariatesLike", "check_design_rank", "covariate_columns"]

#: Covariates as a 2-D array ``(n_samples, k)`` (columns ``x0``, ``x1``, ...), a 1-D
#: array (one column ``x0``), or a mapping of name to column (a dict, a pandas
#: DataFrame); ``None`` for none.
CovariatesLike = np.ndarray | Mapping[str, Any] | Any | None


def covariate_columns(covariates: CovariatesLike, n_samples: int) -> dict[str, np.ndarray]:
    """The covariates as named 1-D columns of length ``n_samples``.

    Raises
    ------
    CombatInputError
        A column whose length is not ``n_samples``, or an array of more than 2 dims.
    """
    if covariates is None:
        return {}
    if hasattr(covariates, "keys"):  # a dict or a pandas DataFrame
        columns = {str(name): np.asarray(covariates[name]) for name in covariates.keys()}
    else:
        array = np.asarray(covariates)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise CombatInputError(
                f"covariates must be (n_samples, k) or one column; got shape {array.shape}."
            )
        if array.shape[0] != n_samples:
            raise CombatInputError(
                f"covariates have {array.shape[0]} rows but the data has {n_samples} samples."
            )
        columns = {f"x{i}": array[:, i] for i in range(array.shape[1])}
    for name, column in columns.items():
        if column.shape != (n_samples,):
            raise CombatInputError(
                f"covariate {name!r} has shape {column.shape}; expected ({n_samples},), "
                "one value per sample."
            )
    return columns


def _is_numeric(column: np.ndarray) -> bool:
    if column.dtype.kind in "iuf":
        return True
    if column.dtype.kind != "O":  # bool, str: categories
        return False
    try:
        column.astype(np.float64)
    except (TypeError, ValueError):
        return False
    return not any(isinstance(v, (bool, np.bool_, str)) for v in column)


def _numbers(column: np.ndarray, name: str) -> np.ndarray:
    """A numeric covariate as finite ``float64``."""
    try:
        values = column.astype(np.float64)
    except (TypeError, ValueError):
        raise CombatInputError(
            f"covariate {name!r} was numeric at fit time; got non-numbers."
        ) from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise CombatInputError(
            f"covariate {name!r} is missing or not finite for sample(s) "
            f"{bad[:10].tolist()}; ComBat needs every covariate of every sample."
        )
    return values


def _as_text(column: np.ndarray, name: str) -> np.ndarray:
    missing = [i for i, v in enumerate(column) if v is None or v == "" or
               (isinstance(v, float) and not np.isfinite(v))]  # fmt: skip
    if missing:
        raise CombatInputError(
            f"covariate {name!r} has no value for sample(s) {missing[:10]}; ComBat needs "
            "every covariate of every sample (drop those samples or the covariate)."
        )
    return np.array([str(v) for v in column], dtype=object)


@dataclass(frozen=True)
class CovariateEncoding:
    """How covariates become the columns of the design matrix.

    Attributes
    ----------
    names : tuple of str
        Covariate names, in the order of the design's columns.
    levels : tuple of (tuple of str) or None
        Per covariate: ``None`` for a numeric one, else its levels as text, sorted;
        the first is the reference level (no column of its own).
    knots : tuple of (tuple of float) or None
        Per covariate: ``None`` for a linear or categorical one, else the knots of its
        natural spline (:mod:`.splines`, ``len(knots) - 1`` columns); empty: none smooth.
    """

    names: tuple[str, ...] = ()
    levels: tuple[tuple[str, ...] | None, ...] = ()
    knots: tuple[tuple[float, ...] | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.knots:  # no smooth covariate: one None per name
            object.__setattr__(self, "knots", (None,) * len(self.names))
        if len(self.knots) != len(self.names):
            raise CombatInputError(f"covariate encoding with {len(self.names)} names and "
                                   f"{len(self.knots)} knot lists.")  # fmt: skip

    @property
    def smooth(self) -> tuple[str, ...]:
        """Names of the smooth covariates."""
        return tuple(n for n, k in zip(self.names, self.knots, strict=True) if k is not None)

    @classmethod
    def from_covariates(
        cls,
        covariates: CovariatesLike,
        n_samples: int,
        *,
        categorical: Sequence[str | int] = (),
        smooth: Sequence[str | int] = (),
        smooth_df: int = DEFAULT_DF,
    ) -> CovariateEncoding:
        """Infer the encoding: columns of numbers are numeric, others categorical.

        ``categorical`` forces columns (by name, or by index for an array) to be
        categorical, e.g. a sex coded 0/1 or a scanner software version.  ``smooth``
        names numeric columns whose effect is a natural cubic spline of ``smooth_df``
        columns with knots at their quantiles (ComBat-GAM).
        """
        columns = covariate_columns(covariates, n_samples)
        forced = {f"x{c}" if isinstance(c, int) else str(c) for c in categorical}
        smooth_names = {f"x{c}" if isinstance(c, int) else str(c) for c in smooth}
        for what, chosen in (("categorical", forced), ("smooth", smooth_names)):
            unknown = sorted(chosen - set(columns))
            if unknown:
                raise CombatInputError(
                    f"{what} covariate(s) {unknown} are not among the covariates {sorted(columns)}."
                )
        levels: list[tuple[str, ...] | None] = []
        knots: list[tuple[float, ...] | None] = []
        for name, column in columns.items():
            categorical_column = name in forced or not _is_numeric(column)
            if name in smooth_names and categorical_column:
                raise CombatInputError(
                    f"covariate {name!r} is categorical; only a numeric covariate can have "
                    "a smooth effect."
                )
            levels.append(tuple(sorted(set(_as_text(column, name)))) if categorical_column
                          else None)  # fmt: skip
            knots.append(None)
            if name in smooth_names:
                values = _numbers(column, name)
                knots[-1] = tuple(float(k) for k in quantile_knots(values, smooth_df, name=name))
        return cls(tuple(columns), tuple(levels), tuple(knots))

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the design's columns: ``age``, ``sex[M]`` (level ``M`` against the
        reference level), ``s(age)1`` ... ``s(age)5`` (a smooth covariate's basis)."""
        out: list[str] = []
        for name, levels, knots in zip(self.names, self.levels, self.knots, strict=True):
            if knots is not None:
                out += [f"s({name}){j}" for j in range(1, len(knots))]
            elif levels is None:
                out.append(name)
            else:
                out += [f"{name}[{lev}]" for lev in levels[1:]]
        return tuple(out)

    def encode(self, covariates: CovariatesLike, n_samples: int) -> np.ndarray:
        """The covariate columns of the design matrix.

        Parameters
        ----------
        covariates : array or mapping or None
            Same columns as at fit time.
        n_samples : int

        Returns
        -------
        ndarray, shape (n_samples, n_columns)
            ``float64``; ``n_columns = len(column_names)``.

        Raises
        ------
        CombatInputError
            Other covariates than at fit time, a missing or non-finite value, or a
            level not seen at fit time.
        """
        columns = covariate_columns(covariates, n_samples)
        if tuple(columns) != self.names:
            raise CombatInputError(
                f"the covariates are {list(columns)}; the model was fitted with "
                f"{list(self.names)} (same names, same order)."
            )
        parts = [np.zeros((n_samples, 0))]
        encodings = zip(columns.items(), self.levels, self.knots, strict=True)
        for (name, column), levels, knots in encodings:
            if levels is None:
                values = _numbers(column, name)
                if knots is None:
                    parts.append(values[:, None])
                else:  # the fit's knots: new samples get the same basis
                    parts.append(natural_spline_basis(values, np.array(knots)))
                continue
            text = _as_text(column, name)
            unseen = sorted(set(text) - set(levels))
            if unseen:
                raise CombatInputError(
                    f"covariate {name!r} has level(s) {unseen} that the fit did not see "
                    f"(levels: {list(levels)}); its effect is unknown for them."
                )
            parts.append((text[:, None] == np.array(levels[1:], dtype=object)).astype(float))
        return np.hstack(parts)

    def to_config(self) -> dict[str, object]:
        """JSON-ready description (``from_config`` inverts it); ``smooth`` (the knots)
        only when a covariate is smooth, so that linear encodings read as before."""
        config: dict[str, object] = {
            "names": list(self.names),
            "levels": [None if lv is None else list(lv) for lv in self.levels],
        }
        if self.smooth:
            config["smooth"] = [None if k is None else list(k) for k in self.knots]
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CovariateEncoding:
        """Inverse of :meth:`to_config`."""
        names = tuple(str(n) for n in config.get("names", ()))
        levels = tuple(None if lv is None else tuple(str(v) for v in lv)
                       for lv in config.get("levels", ()))  # fmt: skip
        if len(names) != len(levels):
            raise CombatInputError(f"covariate encoding with {len(names)} names and "
                                   f"{len(levels)} level lists.")  # fmt: skip
        knots = tuple(None if k is None else tuple(float(v) for v in k)
                      for k in config.get("smooth") or ())  # fmt: skip
        return cls(names, levels, knots)


def check_design_rank(
    site_columns: np.ndarray, covariate_design: np.ndarray, column_names: Sequence[str]
) -> None:
    """Raise when a covariate column is a combination of the site indicators and the
    columns before it: ordinary least squares cannot separate its effect from site's.

    Parameters
    ----------
    site_columns : ndarray, shape (n_samples, n_sites)
        One-hot site indicators.
    covariate_design : ndarray, shape (n_samples, n_columns)
    column_names : sequence of str
        Names of the covariate columns (for the message).

    Raises
    ------
    ConfoundedCovariateError
    """
    design = site_columns
    rank = np.linalg.matrix_rank(design)
    for j, name in enumerate(column_names):
        design = np.hstack([design, covariate_design[:, j : j + 1]])
        new_rank = np.linalg.matrix_rank(design)
        if new_rank == rank:
            raise ConfoundedCovariateError(
                f"covariate column {name!r} is confounded with site (or with the covariates "
                "before it): within every site it is constant or a combination of the other "
                "columns, so the design matrix is rank-deficient and its effect cannot be "
                "separated from the site effect. Drop it, or add samples that vary it "
                "within sites."
            )
        rank = new_rank
