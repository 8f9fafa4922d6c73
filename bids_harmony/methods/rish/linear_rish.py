r"""LinearRISH: harmonization by RISH-template scaling (Karayumak et al. 2019).

The baseline of the HARP paper (§2.5).  Each site is summarized by a template:
the voxel-wise mean, over its subjects registered to a common space, of the
rotation-invariant SH features (:func:`~bids_harmony.dmri.bands.rish_features`)

.. math:: \mathrm{RISH}_l = \sum_{m=-l}^{l} c_{lm}^2 .

The source site is mapped to the target site by one scale per voxel and order
band,

.. math:: s_l(x) = \sqrt{\frac{\mathbb{E}[\mathrm{RISH}_l^\mathrm{target}](x)}
                              {\mathbb{E}[\mathrm{RISH}_l^\mathrm{source}](x)}},
          \qquad c'_{lm}(x) = s_l(x)\, c_{lm}(x),

so that a scaled source subject has the target's expected band energies.

Everything here lives in the common (template) space; registering subjects to
it and warping the scale maps back to each subject's space are done elsewhere.
Karayumak et al. clean division artefacts at the brain edge with a median filter
of the outliers of a skull ring; here the scales are guarded instead (see
:func:`rish_scale_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bids_harmony.dmri.bands import band_slices, order_from_n_coeffs

DEFAULT_EPS = 1e-6
DEFAULT_MAX_SCALE = 3.0

__all__ = ["DEFAULT_EPS", "DEFAULT_MAX_SCALE", "LinearRISH", "apply_rish_scales",
           "rish_scale_maps", "site_template"]  # fmt: skip


def site_template(
    rish_maps: np.ndarray | Sequence[np.ndarray], masks: np.ndarray | Sequence | None = None
) -> np.ndarray:
    r"""Mean RISH features of one site's subjects, in a common space.

    .. math:: T_l(x) = \frac{1}{|V(x)|} \sum_{s \in V(x)} \mathrm{RISH}_{s,l}(x)

    with :math:`V(x)` the subjects whose mask contains :math:`x` and whose value
    is finite (per band).  Subjects are accumulated one at a time, so a list of
    per-subject arrays or a memory map works without a full float64 copy.

    Parameters
    ----------
    rish_maps : ndarray, shape (S, X, Y, Z, n_bands), or sequence of S (X, Y, Z, n_bands)
    masks : ndarray of bool, shape (S, X, Y, Z), or sequence of S (X, Y, Z), optional
        Voxels where each subject is valid (all voxels when omitted).

    Returns
    -------
    ndarray, shape (X, Y, Z, n_bands), float64
        NaN where no subject is valid.
    """
    n_subjects = _n_subjects(rish_maps, "rish_maps", "(S, X, Y, Z, n_bands)", 5)
    if masks is not None and _n_subjects(masks, "masks", "(S, X, Y, Z)", 4) != n_subjects:
        raise ValueError(f"masks has {len(masks)} subjects, rish_maps {n_subjects}.")
    total = count = shape = None
    for s in range(n_subjects):
        rish = np.asarray(rish_maps[s], dtype=float)
        if shape is None:
            shape = rish.shape
            if rish.ndim != 4 or rish.shape[-1] < 1:
                raise ValueError(f"each subject's RISH map must be (X, Y, Z, n_bands), got "
                                 f"{rish.shape}.")  # fmt: skip
            total, count = np.zeros(shape), np.zeros(shape, dtype=np.int64)
        elif rish.shape != shape:
            raise ValueError(f"subject {s} has RISH maps of shape {rish.shape}, subject 0 {shape}.")
        valid = np.isfinite(rish)
        if masks is not None:
            mask = np.asarray(masks[s])
            if mask.shape != shape[:-1]:
                raise ValueError(f"mask {s} has shape {mask.shape}, the RISH maps {shape[:-1]}.")
            valid &= mask.astype(bool)[..., None]
        total += np.where(valid, rish, 0.0)
        count += valid
    mean = np.full(shape, np.nan)
    np.divide(total, count, out=mean, where=count > 0)
    return mean


def rish_scale_maps(
    template_target: np.ndarray,
    template_source: np.ndarray,
    *,
    eps: float = DEFAULT_EPS,
    max_scale: float | None = DEFAULT_MAX_SCALE,
) -> np.ndarray:
    r"""Per-band scales mapping the source template onto the target template.

    .. math:: s_l = \min\!\left(\sqrt{T_l / S_l},\; s_\max\right)

    with two guards:

    * :math:`s_l = 1` (leave the band alone) where :math:`S_l \le \varepsilon
      \sum_k S_k` (the source band holds a negligible fraction of the voxel's
      energy, including all-zero voxels, where the ratio is undefined) or where
      either template is not finite (NaN: no subject);
    * ``max_scale`` (default 3, i.e. 9x in energy) caps the ratio.  Genuine
      inter-scanner differences of band energies are far smaller; larger ratios
      come from a near-empty source band at the brain edge or in CSF after
      registration, which would amplify noise.  ``None`` disables the cap.

    Negative template values (interpolation overshoot) count as 0.  The relative
    ``eps`` (default 1e-6) makes the guard independent of the signal's units and
    is far below the energy of any band in real data (the noise alone gives more).

    Parameters
    ----------
    template_target, template_source : ndarray, shape (..., n_bands)
        Mean RISH features of the two sites (:func:`site_template`).

    Returns
    -------
    ndarray, shape (..., n_bands), float64
        Finite scales in ``[0, max_scale]``.
    """
    target = np.asarray(template_target, dtype=float)
    source = np.asarray(template_source, dtype=float)
    if target.shape != source.shape or target.ndim < 1:
        raise ValueError(f"target and source templates differ in shape: {target.shape} vs "
                         f"{source.shape}.")  # fmt: skip
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    if max_scale is not None and not max_scale > 0:
        raise ValueError(f"max_scale must be > 0 or None, got {max_scale}.")
    missing = ~(np.isfinite(target) & np.isfinite(source))
    target = np.clip(np.where(missing, 0.0, target), 0.0, None)
    source = np.clip(np.where(missing, 0.0, source), 0.0, None)
    floor = eps * source.sum(axis=-1, keepdims=True)
    usable = (source > floor) & ~missing
    scales = np.ones(target.shape)
    np.divide(target, source, out=scales, where=usable)
    np.sqrt(scales, out=scales)
    if max_scale is not None:
        np.minimum(scales, max_scale, out=scales)
    return scales


def apply_rish_scales(coeffs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    r"""Scale each order band of SH coefficients: :math:`c'_{lm} = s_l c_{lm}`.

    Parameters
    ----------
    coeffs : ndarray, shape (..., n_coeffs)
        Even SH of any order (1, 6, 15, 28 or 45 coefficients for orders 0-8).
    scales : ndarray, shape (..., n_bands)
        Leading dimensions broadcast against those of ``coeffs``.  Bands beyond
        the coefficients' order are ignored (order-8 scales apply to order-4
        data); fewer bands than the order needs is an error.

    Returns
    -------
    ndarray, shape of the broadcast, dtype of ``coeffs`` (at least float32)
    """
    coeffs = np.asarray(coeffs)
    scales = np.asarray(scales)
    if coeffs.ndim < 1 or scales.ndim < 1:
        raise ValueError("coeffs and scales need a last (coefficient / band) axis.")
    try:
        order = order_from_n_coeffs(coeffs.shape[-1])
    except ValueError as err:
        raise ValueError(f"coeffs: {err}") from None
    slices = band_slices(order)
    if scales.shape[-1] < len(slices):
        raise ValueError(f"order {order} has {len(slices)} bands but only {scales.shape[-1]} "
                         "scales were given.")  # fmt: skip
    try:
        np.broadcast_shapes(coeffs.shape[:-1], scales.shape[:-1])
    except ValueError:
        raise ValueError(f"coeffs {coeffs.shape} and scales {scales.shape} do not broadcast "
                         "over their leading (voxel) dimensions.") from None  # fmt: skip
    dtype = np.result_type(coeffs.dtype, np.float32)
    band_of_coeff = np.repeat(np.arange(len(slices)), [s.stop - s.start for s in slices])
    return coeffs.astype(dtype, copy=False) * scales[..., band_of_coeff].astype(dtype)


class LinearRISH:
    """LinearRISH harmonization from a source site to a target site.

    :meth:`fit` builds the two site templates (:func:`site_template`) and the
    scale maps (:func:`rish_scale_maps`); :meth:`transform` scales coefficients
    (:func:`apply_rish_scales`).  Both work in the common space of the templates:
    to harmonize a subject in its native space, warp :attr:`scales_` there
    (elsewhere: this class does no registration) and call
    :func:`apply_rish_scales`.

    Parameters
    ----------
    eps, max_scale : float
        See :func:`rish_scale_maps`.

    Attributes
    ----------
    scales_ : ndarray, shape (X, Y, Z, n_bands)
        Scale maps, after :meth:`fit`.
    template_source_, template_target_ : ndarray, shape (X, Y, Z, n_bands)
        Site templates, NaN where no subject is valid.
    """

    def __init__(
        self, *, eps: float = DEFAULT_EPS, max_scale: float | None = DEFAULT_MAX_SCALE
    ) -> None:
        self.eps = eps
        self.max_scale = max_scale
        self.scales_: np.ndarray | None = None
        self.template_source_: np.ndarray | None = None
        self.template_target_: np.ndarray | None = None

    def fit(
        self,
        source_rish: np.ndarray | Sequence[np.ndarray],
        target_rish: np.ndarray | Sequence[np.ndarray],
        source_masks: np.ndarray | Sequence | None = None,
        target_masks: np.ndarray | Sequence | None = None,
    ) -> LinearRISH:
        """Templates and scale maps from the RISH maps of both sites' subjects.

        Parameters
        ----------
        source_rish : ndarray, shape (S_src, X, Y, Z, n_bands)
        target_rish : ndarray, shape (S_tgt, X, Y, Z, n_bands)
            The two sites may have different numbers of subjects.
        source_masks, target_masks : ndarray of bool, shape (S, X, Y, Z), optional

        Returns
        -------
        LinearRISH
            ``self``.
        """
        source = site_template(source_rish, source_masks)
        target = site_template(target_rish, target_masks)
        if source.shape != target.shape:
            raise ValueError(f"source templates {source.shape} and target templates "
                             f"{target.shape} differ (space or number of bands).")  # fmt: skip
        self.template_source_, self.template_target_ = source, target
        self.scales_ = rish_scale_maps(target, source, eps=self.eps, max_scale=self.max_scale)
        return self

    def transform(self, coeffs: np.ndarray) -> np.ndarray:
        """Harmonize SH coefficients in the common space: ``(X, Y, Z, n_coeffs)``."""
        if self.scales_ is None:
            raise RuntimeError("LinearRISH.transform() called before fit().")
        coeffs = np.asarray(coeffs)
        if coeffs.shape[:-1] != self.scales_.shape[:-1]:
            raise ValueError(f"coeffs {coeffs.shape} are not on the template grid "
                             f"{self.scales_.shape[:-1]}.")  # fmt: skip
        return apply_rish_scales(coeffs, self.scales_)


def _n_subjects(maps, name: str, expected: str, ndim: int) -> int:
    """Number of subjects of an (S, ...) array or sequence; ValueError if malformed."""
    if isinstance(maps, np.ndarray):
        if maps.ndim != ndim:
            raise ValueError(f"{name} must have shape {expected}, got {maps.shape}.")
    elif not isinstance(maps, Sequence):
        raise ValueError(f"{name} must be an array of shape {expected} or a list of subjects.")
    if len(maps) == 0:
        raise ValueError(f"{name} has no subjects.")
    return len(maps)
