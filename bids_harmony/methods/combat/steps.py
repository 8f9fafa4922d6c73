"""Steps shared by the ComBat variants (:mod:`.model`, :mod:`.covbat`, :mod:`.longitudinal`).

The checks of the data and of the site labels at fit and apply time, the design
:math:`[\\text{site one-hot} \\mid X]`, the grand intercept, the features dropped for
want of a residual, the column blocks that bound temporary arrays, and each site's
(shrunken) effects from standardized data.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from bids_harmony.methods.combat.design import (
    CovariateEncoding,
    CovariatesLike,
    check_design_rank,
)
from bids_harmony.methods.combat.eb import nonparametric_eb, parametric_eb, site_estimates
from bids_harmony.methods.combat.errors import (
    CombatInputError,
    SmallSiteWarning,
    TooFewSamplesError,
    UnseenSiteError,
)
from bids_harmony.methods.combat.untouched import Untouched

EbVariant = Literal["parametric", "nonparametric", "none"]
EB_VARIANTS: tuple[str, ...] = ("parametric", "nonparametric", "none")
#: Fewer samples per site than this draw a :class:`SmallSiteWarning`: the rule of thumb
#: of the ComBat literature for reliable site estimates is about 20-25.
MIN_RELIABLE_SAMPLES = 20
#: Features processed at once (bounds the temporary arrays of the fit and of the apply).
CHUNK = 65_536


def check_eb(value: object, what: str = "eb") -> None:
    """Raise :class:`CombatInputError` unless ``value`` is one of :data:`EB_VARIANTS`."""
    if value not in EB_VARIANTS:
        raise CombatInputError(f"{what} must be one of {EB_VARIANTS}; got {value!r}.")


def text_labels(
    values: Sequence[object] | np.ndarray, n_samples: int, what: str = "site"
) -> np.ndarray:
    """The ``what`` (site, subject) of each sample as text, ``(n_samples,)`` of object."""
    labels = np.asarray(values)
    if labels.shape != (n_samples,):
        raise CombatInputError(
            f"{what}s has shape {labels.shape}; expected ({n_samples},), one {what} per sample."
        )
    return np.array([str(s) for s in labels], dtype=object)


def as_samples_by_features(data: np.ndarray, what: str = "data") -> np.ndarray:
    """``data`` as a 2-D array of numbers (not copied), or :class:`CombatInputError`."""
    array = np.asarray(data)
    if array.ndim != 2:
        raise CombatInputError(
            f"{what} must be (n_samples, n_features); got shape {array.shape} (reshape maps "
            "to one row per session)."
        )
    if array.dtype.kind not in "biuf":
        raise CombatInputError(f"{what} must be numbers; got dtype {array.dtype}.")
    return array


class FitSites(NamedTuple):
    """The sites of a fit (see :func:`prepare_sites`)."""

    names: tuple[str, ...]
    index: np.ndarray
    counts: np.ndarray
    ref: str | None
    ref_index: int | None


def prepare_sites(
    sites: Sequence[object] | np.ndarray,
    n_samples: int,
    ref_site: object | None,
    *,
    stacklevel: int = 2,
) -> FitSites:
    """Check the site labels of a fit: ``(names, index, counts, ref, ref_index)``.

    ``names`` sorted; ``index`` (n_samples,), each sample's site in them; ``counts`` per site;
    ``ref`` the reference site as text and ``ref_index`` its position in ``names``, or
    None.  Raises :class:`TooFewSamplesError` (fewer than two sites, a site of one
    sample) or :class:`CombatInputError` (an unknown ``ref_site``); warns
    :class:`SmallSiteWarning` for small sites.
    """
    labels = text_labels(sites, n_samples)
    site_names, site_index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    names = tuple(str(s) for s in site_names)
    if len(names) < 2:
        raise TooFewSamplesError(
            f"ComBat needs samples of at least two sites; got only site {names}."
        )
    few = [f"{s} ({c})" for s, c in zip(names, counts, strict=True) if c < 2]
    if few:
        raise TooFewSamplesError(
            f"site(s) {', '.join(few)} have fewer than 2 samples: ComBat cannot estimate a "
            "site's scale from one sample. Add samples or leave those sites out."
        )
    ref = None if ref_site is None else str(ref_site)
    if ref is not None and ref not in names:
        raise CombatInputError(f"reference site {ref!r} is not among the sites {list(names)}.")
    small = [f"{s} ({c})" for s, c in zip(names, counts, strict=True)
             if c < MIN_RELIABLE_SAMPLES]  # fmt: skip
    if small:
        warnings.warn(
            f"ComBat: site(s) {', '.join(small)} have fewer than {MIN_RELIABLE_SAMPLES} "
            "samples; their site effects are poorly estimated (the literature's rule of "
            "thumb is 20-25 per site).",
            SmallSiteWarning,
            stacklevel=stacklevel,
        )
    ref_index = None if ref is None else names.index(ref)
    return FitSites(names, site_index, counts, ref, ref_index)


def site_design(
    covariates: CovariatesLike,
    site_index: np.ndarray,
    n_sites: int,
    *,
    categorical: Sequence[str | int] = (),
    smooth: Sequence[str | int] = (),
    smooth_df: int,
) -> tuple[CovariateEncoding, np.ndarray, np.ndarray]:
    """``(encoding, x, design)``: the covariates' encoding and columns ``x``, and the
    design ``[site one-hot | x]``, checked for full column rank."""
    n_samples = site_index.shape[0]
    encoding = CovariateEncoding.from_covariates(
        covariates, n_samples, categorical=categorical, smooth=smooth, smooth_df=smooth_df
    )
    x = encoding.encode(covariates, n_samples)
    onehot = (site_index[:, None] == np.arange(n_sites)).astype(float)
    check_design_rank(onehot, x, encoding.column_names)
    return encoding, x, np.hstack([onehot, x])


def grand_intercept(site_coef: np.ndarray, counts: np.ndarray, ref_index: int | None) -> np.ndarray:
    """:math:`\\hat\\alpha`: the site intercepts ``site_coef`` (n_sites, n_features)
    weighted by the sites' sample counts, or the reference site's."""
    n_sites = len(counts)
    weights = counts / counts.sum() if ref_index is None else np.eye(n_sites)[ref_index]
    return weights @ site_coef


def drop_no_residual(
    exact: np.ndarray, reason: np.ndarray, keep: np.ndarray, *arrays: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Mark the features ``keep[exact]`` :attr:`Untouched.NO_RESIDUAL` in ``reason`` (in
    place): ``(keep, *arrays)`` without them, ``arrays`` indexed over ``keep`` on
    their last axis."""
    if not exact.any():
        return (keep, *arrays)
    reason[keep[exact]] = Untouched.NO_RESIDUAL
    return (keep[~exact], *(a[..., ~exact] for a in arrays))


def check_pooling(eb: str, n_keep: int) -> None:
    """Empirical Bayes needs at least two harmonized features (none is fine)."""
    if eb != "none" and 0 < n_keep < 2:
        raise CombatInputError(
            "empirical Bayes pools the site effects of several features; only one feature "
            "can be harmonized here. Use eb='none'."
        )


def estimate_site_effects(
    z: np.ndarray,
    site_index: np.ndarray,
    n_sites: int,
    ref_index: int | None,
    *,
    eb: str = "parametric",
    mean_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Each site's :math:`(\\gamma^*_i, \\delta^{2*}_i)` from standardized data ``z``
    (n_samples, n_features): ``(gamma_star, delta2_star)``, each (n_sites, n_features),
    0 and 1 for the reference site (the target: no effect to remove)."""
    gamma_star = np.zeros((n_sites, z.shape[1]))
    delta2_star = np.ones((n_sites, z.shape[1]))
    for i in range(n_sites):
        if i == ref_index or z.shape[1] == 0:
            continue
        zi = z[site_index == i]
        if eb == "parametric":
            gamma_star[i], delta2_star[i] = parametric_eb(zi, mean_only=mean_only)
        elif eb == "nonparametric":
            gamma_star[i], delta2_star[i] = nonparametric_eb(zi, mean_only=mean_only)
        else:
            gamma_star[i], delta2_star[i] = site_estimates(zi, mean_only=mean_only)
    return gamma_star, delta2_star


def expand(values: np.ndarray, keep: np.ndarray, n_features: int, fill: float) -> np.ndarray:
    """``values`` over the features ``keep`` (last axis) spread to all ``n_features``,
    ``fill`` elsewhere."""
    out = np.full(values.shape[:-1] + (n_features,), fill)
    out[..., keep] = values
    return out


def chunks(n_features: int) -> list[slice]:
    """Column blocks that bound the temporary arrays to (n_samples, CHUNK)."""
    return [slice(start, start + CHUNK) for start in range(0, n_features, CHUNK)]


def check_apply_inputs(
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    fitted_sites: tuple[str, ...],
    n_fitted: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check samples to harmonize against a fit: ``(data, labels, site_index)``.

    Raises :class:`CombatInputError` (shape, another number of features) or
    :class:`UnseenSiteError` (a site not in ``fitted_sites``)."""
    data = as_samples_by_features(data)
    n_samples, n_features = data.shape
    if n_features != n_fitted:
        raise CombatInputError(
            f"data has {n_features} features; the ComBat model was fitted on "
            f"{n_fitted} (same features, same order)."
        )
    labels = text_labels(sites, n_samples)
    unseen = sorted(set(labels) - set(fitted_sites))
    if unseen:
        raise UnseenSiteError(
            f"ComBat cannot harmonize an unseen site: {', '.join(unseen)} "
            f"{'was' if len(unseen) == 1 else 'were'} not in the fit (fitted sites: "
            f"{', '.join(fitted_sites)}). Its site effect was never estimated; refit the "
            "model with samples of that site included."
        )
    position = {site: i for i, site in enumerate(fitted_sites)}
    site_index = np.array([position[s] for s in labels], dtype=np.intp)
    return data, labels, site_index


def moved_rows(labels: np.ndarray, ref_site: str | None) -> np.ndarray:
    """The samples that harmonization changes: all but the reference site's."""
    return np.flatnonzero(labels != ref_site) if ref_site else np.arange(len(labels))


def output_dtype(data: np.ndarray) -> np.dtype:
    """Harmonized data keep ``data``'s floating dtype (``float64`` for integers)."""
    return data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
