r"""DKI of single-shell runs of one session combined (shells acquired as separate series).

Which runs are combined is decided by :func:`bids_harmony.bids.dki_runs.plan_dki`;
here the arrays of those runs become one DKI fit (:func:`combined_dki_fit`):

1. **b0 normalisation** -- each run's diffusion-weighted volumes are divided by
   *its own* mean b0,

   .. math:: E_r(b, \mathbf g) = S_r(b, \mathbf g) / \bar S_{0,r},

   so what differs between series acquired minutes apart (receiver gain, echo
   time, the coil's calibration, any b0 scaling) cancels voxel by voxel
   (:func:`normalise_by_b0`).  This is the signal model's own normalisation:
   DKI fits :math:`\log S_0` per voxel, which a joint fit of raw runs could not
   do when the runs' :math:`S_0` differ.
2. **Alignment** -- the head moves between series: the other runs are rigidly
   registered to the first (lowest-b) run on their mean b0 images (the caller's
   transforms, e.g. :func:`bids_harmony.registration.rigid.register_rigid`), and
   their normalised volumes are resampled (trilinear) onto the first run's grid.
3. **Gradient rotation** -- a resampled run's b-vectors are expressed in the
   first run's frame: :math:`\mathbf g_\mathrm{ref} = Q^T \mathbf g`, with
   :math:`Q` the b-vector direction map of the rigid transform
   (:func:`bids_harmony.dmri.sh_rotation.direction_map`).
4. **Fit** -- the batched WLS fit of :func:`bids_harmony.dmri.dki.dki_fit` on the
   concatenated normalised volumes with b0 volumes equal to 1 (as many as the b0
   volumes the normalisations averaged: their weight in the fit), inside the
   first run's mask where every run has signal (inside its field of view and
   mask, mean b0 > 0).

No file is read or written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_harmony.dmri import dki
from bids_harmony.dmri.gradients import B0_THRESHOLD, B_TOLERANCE, b0_mask, validate_gradients
from bids_harmony.dmri.sh_rotation import direction_map
from bids_harmony.errors import BadImageError

__all__ = [
    "RunArrays", "align_runs", "combine_runs", "combined_dki_fit", "mean_b0", "normalise_by_b0",
    "rotate_bvecs",
]  # fmt: skip


@dataclass(frozen=True, eq=False)
class RunArrays:
    """One preprocessed run in memory.

    Attributes
    ----------
    data : ndarray, shape (X, Y, Z, N)
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS, mm).
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
        ``.bvec`` convention (:func:`bids_harmony.dmri.sh_rotation.bvec_frame`).
    mask : ndarray of bool, shape (X, Y, Z)
    name : str
        The run, for messages.
    """

    data: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    mask: np.ndarray
    name: str = "the run"


def normalise_by_b0(
    data: np.ndarray, bvals: np.ndarray, *, b0_threshold: float = B0_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Diffusion-weighted volumes divided by the run's own mean b0.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    b0_threshold : float

    Returns
    -------
    normalised : ndarray, shape (X, Y, Z, N_dwi), float32
        0 where the mean b0 is not positive.
    valid : ndarray of bool, shape (X, Y, Z)
        Voxels with a positive, finite mean b0.

    >>> data = np.stack([np.full((1, 1, 1), v) for v in (200.0, 100.0, 50.0)], axis=-1)
    >>> norm, valid = normalise_by_b0(data, np.array([0.0, 1000.0, 2000.0]))
    >>> norm.ravel().tolist(), bool(valid.all())
    ([0.5, 0.25], True)
    """
    bvals = np.asarray(bvals, dtype=float)
    is_b0 = b0_mask(bvals, b0_threshold=b0_threshold)
    if not is_b0.any():
        raise BadImageError("b0 normalisation needs at least one b0 volume")
    b0 = np.asarray(data[..., is_b0], dtype=np.float64).mean(axis=-1)
    valid = np.isfinite(b0) & (b0 > 0)
    safe = np.where(valid, b0, 1.0)
    normalised = np.asarray(data[..., ~is_b0], dtype=np.float64) / safe[..., None]
    normalised[~valid] = 0.0
    return normalised.astype(np.float32), valid


def rotate_bvecs(bvecs: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Moving-frame b-vectors in the reference frame: each row ``g`` becomes ``Qᵀ g``.

    Parameters
    ----------
    bvecs : ndarray, shape (N, 3)
    q : ndarray, shape (3, 3)
        Reference-frame direction to moving frame
        (:func:`~bids_harmony.dmri.sh_rotation.direction_map`).

    >>> q = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 degrees about z
    >>> rotate_bvecs(np.array([[0.0, 1, 0], [0, 0, 0]]), q).tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    out = np.asarray(bvecs, dtype=float) @ np.asarray(q, dtype=float)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norms > 0, out / np.where(norms > 0, norms, 1.0), 0.0)


def mean_b0(run: RunArrays, *, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Mean of a run's b0 volumes, shape (X, Y, Z), float32."""
    is_b0 = b0_mask(np.asarray(run.bvals, dtype=float), b0_threshold=b0_threshold)
    if not is_b0.any():
        raise BadImageError(f"{run.name}: no b0 volume to align on")
    return np.asarray(run.data[..., is_b0], dtype=np.float32).mean(axis=-1)


def align_runs(
    runs: Sequence[RunArrays], *, seed: int = 0, b0_threshold: float = B0_THRESHOLD
) -> list[Any]:
    """Rigid registration of every other run's mean b0 to the first run's.

    Parameters
    ----------
    runs : sequence of RunArrays
    seed : int
        Seed of the registration.
    b0_threshold : float

    Returns
    -------
    list of RigidResult
        One per run after the first
        (:func:`bids_harmony.registration.rigid.register_rigid`: antspyx Rigid,
        Mattes mutual information, with its b0-correlation acceptance check).

    Raises
    ------
    RegistrationError
        A registration failed or was not accepted.
    ValueError
        A grid that cannot be registered rigidly (sheared axes, not 3-D).
    """
    from bids_harmony.registration.rigid import register_rigid

    fixed = mean_b0(runs[0], b0_threshold=b0_threshold)
    return [
        register_rigid(fixed, runs[0].affine, mean_b0(run, b0_threshold=b0_threshold),
                       run.affine, seed=seed, fixed_name=runs[0].name, moving_name=run.name)
        for run in runs[1:]
    ]  # fmt: skip


def combine_runs(
    runs: Sequence[RunArrays],
    transforms: Sequence[np.ndarray | None],
    *,
    b0_threshold: float = B0_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One normalised series on the first run's grid (steps 1-3 of the module).

    Parameters
    ----------
    runs : sequence of RunArrays
        ``runs[0]`` is the reference (its grid, mask and frame).
    transforms : sequence of (4, 4) ndarray or None
        Per run, the reference-to-run world transform
        (:attr:`~bids_harmony.registration.rigid.RigidResult.transform`); ``None``
        (or the first entry, which is ignored) is the identity.
    b0_threshold : float

    Returns
    -------
    signal : ndarray, shape (X, Y, Z, N0 + N), float32
        ``N0`` b0 volumes equal to 1, then each run's normalised volumes.
    bvals : ndarray, shape (N0 + N,)
    bvecs : ndarray, shape (N0 + N, 3)
        Rotated into the reference frame.
    mask : ndarray of bool, shape (X, Y, Z)
        Reference mask where every run has signal.
    """
    from bids_harmony.registration.rigid import resample_to

    if len(runs) != len(transforms):
        raise ValueError(f"{len(runs)} runs but {len(transforms)} transforms")
    ref = runs[0]
    shape = ref.data.shape[:3]
    mask = np.asarray(ref.mask, dtype=bool).copy()
    volumes, bvals, bvecs, n_b0 = [], [], [], 0
    for i, run in enumerate(runs):
        run_bvals, run_bvecs = validate_gradients(
            run.bvals, run.bvecs, run.data.shape[-1], name=run.name, b0_threshold=b0_threshold
        )
        normalised, valid = normalise_by_b0(run.data, run_bvals, b0_threshold=b0_threshold)
        dwi = ~b0_mask(run_bvals, b0_threshold=b0_threshold)
        n_b0 += int((~dwi).sum())
        transform = None if i == 0 else transforms[i]
        if i == 0:
            mask &= valid
        else:
            transform = np.eye(4) if transform is None else np.asarray(transform, dtype=float)
            normalised = resample_to(normalised, run.affine, shape, ref.affine, transform,
                                     order=1, cval=np.nan)  # fmt: skip
            inside = np.all(np.isfinite(normalised), axis=-1)
            normalised[~inside] = 0.0
            run_mask = np.asarray(run.mask, dtype=bool) & valid
            mask &= inside & resample_to(run_mask, run.affine, shape, ref.affine, transform,
                                         order=0)  # fmt: skip
            run_bvecs = run_bvecs.copy()
            q = direction_map(ref.affine, run.affine, transform)
            run_bvecs[dwi] = rotate_bvecs(run_bvecs[dwi], q)
        volumes.append(normalised)
        bvals.append(run_bvals[dwi])
        bvecs.append(run_bvecs[dwi])
    ones = np.ones((*shape, n_b0), dtype=np.float32)
    signal = np.concatenate([ones, *volumes], axis=-1)
    all_bvals = np.concatenate([np.zeros(n_b0), *bvals])
    all_bvecs = np.concatenate([np.zeros((n_b0, 3)), *bvecs])
    return signal, all_bvals, all_bvecs, mask


def combined_dki_fit(
    runs: Sequence[RunArrays],
    transforms: Sequence[np.ndarray | None],
    *,
    name: str = "the runs",
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    n_procs: int = 1,
) -> dki.DkiResult:
    """DKI maps of several runs combined (the module's steps 1-4), on ``runs[0]``'s grid.

    Parameters
    ----------
    runs, transforms
        As for :func:`combine_runs`.
    name : str
        The runs, for messages.
    b_tolerance, b0_threshold : float
    n_procs : int
        Processes of the fit (:func:`bids_harmony.dmri.dki.dki_fit`).

    Returns
    -------
    DkiResult
        Maps 0 outside the combined mask; ``n_volumes`` counts the unit b0
        volumes and every run's diffusion-weighted volumes.

    Raises
    ------
    BadGradientsError
        The combined table cannot hold the fit.
    """
    signal, bvals, bvecs, mask = combine_runs(runs, transforms, b0_threshold=b0_threshold)
    return dki.dki_fit(signal, bvals, bvecs, mask=mask, name=name, b_tolerance=b_tolerance,
                       b0_threshold=b0_threshold, n_procs=n_procs)  # fmt: skip
