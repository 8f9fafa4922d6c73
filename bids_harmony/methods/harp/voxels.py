r"""HARP training voxels and the validation split.

Training voxels
---------------
A phantom voxel trains the network when, in the source grid (target and rescans
already resampled there, :mod:`bids_harmony.interfaces.phantom_pairs`), it is

1. inside every mask (source, target and the rescans given);
2. finite in every coefficient map (resampling marks voxels outside the moving
   field of view with NaN);
3. of tissue-like :math:`C_{00}` at *both* sites, by one of two rules:

   ``"window"`` (the authors' code, default)
       :math:`1 < C_{00} < 2`;
   ``"percentile"`` (the paper)
       :math:`C_{00}` above the ``percentile``-th (30th) percentile of in-vivo
       source :math:`C_{00}` samples (``invivo_c00``, e.g. brain-mask voxels of
       the source site's human sessions);
4. in the *interior* of the voxels passing steps 1–3: ``erode`` voxels (default
   1) are peeled off every boundary (26-neighbourhood).  Voxels on a vial wall
   mix the vial with the bath, and each scanner mixes them differently (its own
   point-spread function and slice profile, plus the interpolation of the
   registration).  That difference is a property of the phantom's geometry,
   not of the tissue HARP is applied to; learned from edge voxels, it biased
   the scales of simulated human white matter by about 2 % (l = 0 and 2).
   The erosion is *scaled to the object*: each connected component (a vial, a
   tube, the bath) loses at most what leaves its core, so a vial 3-5 voxels
   across keeps its centre instead of vanishing;
5. not *partial-volume*: walls between two materials that both pass the C00
   rule (e.g. a vial and an ice-water bath) are not boundaries of the
   selection.  A voxel is dropped when, at either site, its C00 is more than
   ``PV_SIGMAS`` robust noise standard deviations above the minimum *and* below
   the maximum of its 3×3×3 neighbourhood (:func:`partial_volume_voxels`).

The window is on the scale of our coefficients (:mod:`bids_harmony.dmri.sh`):
:math:`E' = (S/\bar S_0)^{1000/b} \in [0, 1]` in the real, even, legacy
``descoteaux07`` basis, where :math:`Y_{00} = 1/(2\sqrt\pi)` and all other
functions integrate to zero, so
:math:`C_{00} = 2\sqrt\pi\,\overline{E'} \le 2\sqrt\pi \approx 3.54`.
The authors' coefficients (``*_sphhar_norm1000``, dipy ``QballModel`` basis)
follow the same convention, so their window applies unchanged: it keeps voxels
whose mean normalized signal :math:`\overline{E'}` lies in ``(0.28, 0.56)``,
i.e. mean diffusivities of about 0.6–1.3 µm²/ms at :math:`b_\mathrm{ref} = 1000`
(white/grey-matter-like vials), and drops free water (:math:`C_{00} \approx 0.5`
for the phantom bath at 2 µm²/ms) and background.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bids_harmony.bids.phantom_pairs import TrainingDataError

logger = logging.getLogger(__name__)

#: The authors' C00 window (exclusive bounds).
C00_WINDOW = (1.0, 2.0)
#: The paper's percentile of in-vivo source C00.
C00_PERCENTILE = 30.0
#: Voxels peeled off the boundary of the selection (partial volume with the bath).
ERODE = 1
#: Partial-volume test: largest C00 deviation from the neighbourhood median, in noise SDs.
PV_SIGMAS = 3.0
#: Fewest training voxels a real pair must give.
MIN_VOXELS = 1000
RULES = ("window", "percentile")

__all__ = [
    "C00_PERCENTILE",
    "C00_WINDOW",
    "ERODE",
    "MIN_VOXELS",
    "PV_SIGMAS",
    "RULES",
    "VoxelSelection",
    "block_validation",
    "component_counts",
    "partial_volume_voxels",
    "scaled_erosion",
    "c00_bounds",
    "check_voxel_count",
    "select_training_voxels",
    "voxel_selection",
]


@dataclass(frozen=True)
class VoxelSelection:
    """Training voxels of a pair and how many survived each step.

    Attributes
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    counts : mapping of str to int
        Voxels left after each step, in order: ``grid`` (all), ``mask``,
        ``finite``, ``window`` (the C00 rule, whichever it is), ``interior``,
        ``homogeneous``.
    components : list of dict
        :func:`component_counts` of the C00-rule voxels.
    c00_bounds : tuple of float
        Exclusive lower and upper C00 bounds applied at both sites.
    """

    mask: np.ndarray
    counts: Mapping[str, int] = field(default_factory=dict)
    c00_bounds: tuple[float, float] = C00_WINDOW
    components: list[dict[str, object]] = field(default_factory=list)

    @property
    def n_voxels(self) -> int:
        """Number of selected voxels."""
        return int(np.count_nonzero(self.mask))


def c00_bounds(
    rule: str = "window",
    *,
    c00_window: tuple[float, float] = C00_WINDOW,
    invivo_c00: np.ndarray | None = None,
    percentile: float = C00_PERCENTILE,
) -> tuple[float, float]:
    """Exclusive C00 bounds of a selection rule (see the module docstring).

    >>> c00_bounds("window")
    (1.0, 2.0)
    >>> c00_bounds("percentile", invivo_c00=np.arange(101.0), percentile=30.0)
    (30.0, inf)
    """
    if rule == "window":
        low, high = (float(v) for v in c00_window)
        if not low < high:
            raise ValueError(f"c00_window must be (low, high) with low < high, got {c00_window}.")
        return low, high
    if rule == "percentile":
        if invivo_c00 is None:
            raise ValueError('rule="percentile" needs invivo_c00 samples of in-vivo source C00.')
        samples = np.asarray(invivo_c00, dtype=float).ravel()
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            raise TrainingDataError("the in-vivo C00 samples are empty or all non-finite.")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be within [0, 100], got {percentile}.")
        return float(np.percentile(samples, percentile)), float("inf")
    raise ValueError(f"unknown voxel rule {rule!r}; choose from {RULES}.")


def voxel_selection(
    source_coeffs: np.ndarray,
    target_coeffs: np.ndarray,
    source_mask: np.ndarray,
    target_mask: np.ndarray,
    *,
    rule: str = "window",
    c00_window: tuple[float, float] = C00_WINDOW,
    invivo_c00: np.ndarray | None = None,
    percentile: float = C00_PERCENTILE,
    rescans: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    erode: int = ERODE,
    partial_volume: bool = True,
) -> VoxelSelection:
    """Training voxels of a pair with the count after each step (no minimum enforced).

    Parameters
    ----------
    source_coeffs, target_coeffs : ndarray, shape (X, Y, Z, C)
        SH coefficients on the same (source) grid; ``[..., 0]`` is C00.
    source_mask, target_mask : ndarray, shape (X, Y, Z)
        Nonzero inside.
    rule, c00_window, invivo_c00, percentile
        The C00 rule, see :func:`c00_bounds`.
    rescans : sequence of (coeffs, mask)
        Further scans on the same grid (rescans) that must be inside their mask
        and finite too; the C00 rule is not applied to them.
    erode : int
        Voxels peeled off the boundary of each component (0 keeps the edges).
    partial_volume : bool
        Drop partial-volume voxels between materials (step 5).

    Returns
    -------
    VoxelSelection
    """
    source = np.asarray(source_coeffs)
    target = np.asarray(target_coeffs)
    if source.ndim != 4 or target.shape != source.shape:
        raise ValueError(
            f"coefficient maps must be 4-D with equal shapes, got {source.shape} and "
            f"{target.shape}."
        )
    maps = [source, target, *(np.asarray(c) for c, _ in rescans)]
    masks = [source_mask, target_mask, *(m for _, m in rescans)]
    grid = source.shape[:3]
    for arr in maps:
        if arr.shape != source.shape:
            raise ValueError(f"rescan coefficients {arr.shape} do not match {source.shape}.")
    for mask in masks:
        if np.shape(mask) != grid:
            raise ValueError(f"mask shape {np.shape(mask)} does not match the grid {grid}.")
    low, high = c00_bounds(
        rule, c00_window=c00_window, invivo_c00=invivo_c00, percentile=percentile
    )
    keep = np.ones(grid, dtype=bool)
    counts = {"grid": int(keep.size)}
    for mask in masks:
        keep &= np.asarray(mask) != 0
    counts["mask"] = int(keep.sum())
    for arr in maps:
        keep &= np.all(np.isfinite(arr), axis=-1)
    counts["finite"] = int(keep.sum())
    for arr in (source, target):
        c00 = arr[..., 0]
        with np.errstate(invalid="ignore"):
            keep &= (c00 > low) & (c00 < high)
    counts["window"] = int(keep.sum())
    if erode < 0:
        raise ValueError(f"erode must be >= 0, got {erode}.")
    window = keep
    keep = scaled_erosion(keep, erode)
    counts["interior"] = int(keep.sum())
    if partial_volume:
        for arr in (source, target):
            keep &= ~partial_volume_voxels(arr[..., 0], keep)
    counts["homogeneous"] = int(keep.sum())
    return VoxelSelection(mask=keep, counts=counts, c00_bounds=(low, high),
                          components=component_counts(window, keep))  # fmt: skip


def scaled_erosion(selection: np.ndarray, erode: int) -> np.ndarray:
    """Peel ``erode`` voxels off each connected component, keeping at least its core.

    Parameters
    ----------
    selection : ndarray of bool, shape (X, Y, Z)
    erode : int
        Voxels peeled (26-neighbourhood, chessboard depth); the array border is
        not an edge (phantom cylinders run through the field of view).

    Returns
    -------
    ndarray of bool
        Per component, the voxels deeper than ``erode``; a component with none
        keeps its deepest voxels (its core).
    """
    selection = np.asarray(selection, dtype=bool)
    if erode <= 0 or not selection.any():
        return selection.copy()
    padded = np.pad(selection, 1, mode="edge")  # the border is not an edge
    depth = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1, 1:-1]
    labels, n = ndimage.label(selection, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return selection.copy()
    deepest = ndimage.maximum(depth, labels, index=np.arange(1, n + 1))
    need = np.minimum(erode + 1, np.asarray(deepest))  # per component
    threshold = np.zeros(n + 1)
    threshold[1:] = need
    return selection & (depth >= threshold[labels]) & (labels > 0)


def partial_volume_voxels(c00: np.ndarray, selection: np.ndarray) -> np.ndarray:
    """Voxels of ``selection`` whose C00 lies between two materials (module step 5).

    A voxel on a wall mixes the materials on either side, so its C00 is well
    inside the range of its 3×3×3 neighbourhood; an interior voxel is at one end
    of that range, within noise.  (A median test would not see a wall: the
    median of a ramp is its middle.)

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
        True where ``C00 - min > k σ`` and ``max - C00 > k σ`` over the
        neighbourhood, ``k = PV_SIGMAS``, with the robust noise SD ``σ`` of the
        residual to the neighbourhood median over the selection.
    """
    c00 = np.nan_to_num(np.asarray(c00, dtype=np.float64), nan=0.0)
    selection = np.asarray(selection, dtype=bool)
    out = np.zeros(selection.shape, dtype=bool)
    if selection.sum() < 10:
        return out
    residual = (c00 - ndimage.median_filter(c00, size=3, mode="nearest"))[selection]
    sigma = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    if sigma <= 0:
        sigma = 1e-6 * max(float(np.abs(c00[selection]).max()), 1e-12)
    low = ndimage.minimum_filter(c00, size=3, mode="nearest")
    high = ndimage.maximum_filter(c00, size=3, mode="nearest")
    margin = PV_SIGMAS * sigma
    out[selection] = ((c00 - low > margin) & (high - c00 > margin))[selection]
    return out


def component_counts(window: np.ndarray, kept: np.ndarray) -> list[dict[str, object]]:
    """Per connected component of the C00-rule voxels: size, kept voxels, centroid.

    Components are vials, tubes or a bath region (26-connected), largest first.
    """
    labels, n = ndimage.label(np.asarray(window, bool), structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, index)
    kept_n = ndimage.sum_labels(np.asarray(kept, bool), labels, index)
    centres = ndimage.center_of_mass(np.ones(labels.shape), labels, index)
    rows = [
        {"voxels": int(sz), "kept": int(k), "centroid_vox": [round(float(c), 1) for c in ctr]}
        for sz, k, ctr in zip(sizes, kept_n, centres, strict=True)
    ]
    rows.sort(key=lambda r: -r["voxels"])
    for i, row in enumerate(rows, 1):
        row["component"] = i
    return rows


def block_validation(shape: tuple[int, ...], *, block: int = 4, fraction: float = 0.2,
                     seed: int = 0) -> np.ndarray:
    """Validation voxels: whole ``block``-voxel cubes of the grid drawn with ``seed``.

    Every vial, tube, phantom, shell and protocol then contributes to both
    training and validation, and the validation voxels are not the immediate
    neighbours of training voxels (blocks, not single voxels).  The draw depends
    only on the block coordinates, so pairs sharing a source grid agree.

    Returns
    -------
    ndarray of bool, shape ``shape[:3]``
    """
    shape = tuple(int(s) for s in shape[:3])
    n_blocks = tuple(-(-s // block) for s in shape)
    draw = np.random.default_rng(seed).random(n_blocks) < fraction
    idx = np.ix_(*(np.arange(s) // block for s in shape))
    return draw[idx]


def check_voxel_count(selection: VoxelSelection, min_voxels: int, what: str = "the pair") -> None:
    """Raise :class:`TrainingDataError` when fewer than ``min_voxels`` voxels are selected.

    The message gives the count after each step, so the user sees which step
    removed the voxels.
    """
    if selection.n_voxels >= min_voxels:
        return
    counts = selection.counts
    low, high = selection.c00_bounds
    raise TrainingDataError(
        f"{what}: only {selection.n_voxels} training voxel(s), {min_voxels} needed. Voxels "
        f"left after each step: {counts.get('grid', 0)} in the grid, {counts.get('mask', 0)} "
        f"inside all masks, {counts.get('finite', 0)} finite, {counts.get('window', 0)} with "
        f"{low:g} < C00 < {high:g} at both sites, {counts.get('interior', 0)} off the edges, "
        f"{counts.get('homogeneous', counts.get('interior', 0))} not partial-volume. "
        "Check the phantom masks and registration, the C00 rule, or --phantom-erode."
    )


def select_training_voxels(
    source_coeffs: np.ndarray,
    target_coeffs: np.ndarray,
    source_mask: np.ndarray,
    target_mask: np.ndarray,
    *,
    rule: str = "window",
    c00_window: tuple[float, float] = C00_WINDOW,
    invivo_c00: np.ndarray | None = None,
    percentile: float = C00_PERCENTILE,
    erode: int = ERODE,
    min_voxels: int = MIN_VOXELS,
    partial_volume: bool = True,
) -> np.ndarray:
    """Boolean mask of the HARP training voxels of a pair (see the module docstring).

    Parameters
    ----------
    source_coeffs, target_coeffs : ndarray, shape (X, Y, Z, C)
        SH coefficients on the source grid.
    source_mask, target_mask : ndarray, shape (X, Y, Z)
    rule : {"window", "percentile"}
    c00_window : tuple of float
        Exclusive C00 bounds of ``rule="window"``.
    invivo_c00 : ndarray, optional
        In-vivo source C00 samples, required by ``rule="percentile"``.
    percentile : float
        Percentile of ``invivo_c00`` used as the lower bound.
    erode : int
        Voxels peeled off the boundary of the selection.
    min_voxels : int
        Fewest voxels accepted.
    partial_volume : bool
        Drop partial-volume voxels between materials.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    TrainingDataError
        Fewer than ``min_voxels`` voxels (the message counts each step).
    """
    selection = voxel_selection(
        source_coeffs,
        target_coeffs,
        source_mask,
        target_mask,
        rule=rule,
        c00_window=c00_window,
        invivo_c00=invivo_c00,
        percentile=percentile,
        erode=erode,
        partial_volume=partial_volume,
    )
    check_voxel_count(selection, min_voxels)
    return selection.mask
