r"""Rigid phantom registration with FSL FLIRT (6 dof), in the conventions of :mod:`.registration`.

The FSL backend of ``train`` registers the target (and rescan) b0 onto the
source b0 with ``flirt -dof 6 -cost corratio`` instead of antsRegistration.
Only the matrix comes from FLIRT; the resampling, the correlation check and the
rest of training are shared with the ANTs path.

FLIRT matrices
--------------
FLIRT's ``-omat`` matrix :math:`M` maps the input image's *scaled-voxel*
coordinates to the reference's.  Scaled-voxel coordinates are voxel indices
times voxel sizes, with the first axis flipped, :math:`x \mapsto (n_x - 1 - x)`,
when the voxel-to-world affine has a positive determinant (radiological storage
is FSL's native order).  With :math:`S` that voxel-to-scaled map and :math:`A`
the voxel-to-world affine, the world transform from input points to reference
points is

.. math:: W = A_\mathrm{ref} S_\mathrm{ref}^{-1} M S_\mathrm{in} A_\mathrm{in}^{-1},

and :mod:`.registration` wants the opposite direction (fixed = reference points
to moving = input points): :math:`T = W^{-1}`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np

from bids_harmony.errors import RegistrationError


def scaled_voxel_matrix(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """FSL's voxel → scaled-voxel (mm) matrix :math:`S` of an image."""
    affine = np.asarray(affine, dtype=float)
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    matrix = np.diag([*sizes, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, int(shape[0]) - 1
        matrix = matrix @ flip
    return matrix


def flirt_to_world(
    matrix: np.ndarray,
    in_shape: Sequence[int],
    in_affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
) -> np.ndarray:
    """World (RAS, mm) transform from reference points to input points.

    Parameters
    ----------
    matrix : ndarray, shape (4, 4)
        FLIRT ``-omat`` (input → reference, scaled-voxel coordinates).
    in_shape, in_affine : the moving (``-in``) image's grid.
    ref_shape, ref_affine : the fixed (``-ref``) image's grid.

    Returns
    -------
    ndarray, shape (4, 4)
        :math:`T = W^{-1}` (module docstring), the convention of
        :func:`bids_harmony.registration.rigid.resample_to`.
    """
    s_in = scaled_voxel_matrix(in_shape, in_affine)
    s_ref = scaled_voxel_matrix(ref_shape, ref_affine)
    world = (
        np.asarray(ref_affine, float) @ np.linalg.inv(s_ref) @ np.asarray(matrix, float)
        @ s_in @ np.linalg.inv(np.asarray(in_affine, float))
    )  # fmt: skip
    return np.linalg.inv(world)


def world_to_flirt(
    transform: np.ndarray,
    in_shape: Sequence[int],
    in_affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
) -> np.ndarray:
    """Inverse of :func:`flirt_to_world`: the FLIRT matrix of a world transform."""
    s_in = scaled_voxel_matrix(in_shape, in_affine)
    s_ref = scaled_voxel_matrix(ref_shape, ref_affine)
    world = np.linalg.inv(np.asarray(transform, float))
    return (
        s_ref @ np.linalg.inv(np.asarray(ref_affine, float)) @ world
        @ np.asarray(in_affine, float) @ np.linalg.inv(s_in)
    )  # fmt: skip


def flirt_interface(in_file: str, reference: str, out_matrix_file: str):
    """The Nipype FLIRT call: 6 dof, correlation ratio, matrix only."""
    from nipype.interfaces import fsl

    return fsl.FLIRT(
        in_file=in_file,
        reference=reference,
        out_matrix_file=out_matrix_file,
        dof=6,
        cost="corratio",
        output_type="NIFTI_GZ",
        out_file=os.path.join(os.path.dirname(out_matrix_file), "moved.nii.gz"),
    )


def flirt_rigid(
    fixed_b0: np.ndarray,
    fixed_affine: np.ndarray,
    moving_b0: np.ndarray,
    moving_affine: np.ndarray,
    what: str,
) -> np.ndarray:
    """One FLIRT run; the world transform from fixed to moving points.

    Raises
    ------
    RegistrationError
        FLIRT failed (its message is included) or wrote an unreadable matrix.
    """
    import nibabel as nb

    with tempfile.TemporaryDirectory(prefix="harp_flirt_") as tmp:
        fixed = os.path.join(tmp, "fixed_b0.nii.gz")
        moving = os.path.join(tmp, "moving_b0.nii.gz")
        nb.save(nb.Nifti1Image(np.asarray(fixed_b0, np.float32), fixed_affine), fixed)
        nb.save(nb.Nifti1Image(np.asarray(moving_b0, np.float32), moving_affine), moving)
        matrix_file = os.path.join(tmp, "moving_to_fixed.mat")
        flirt = flirt_interface(moving, fixed, matrix_file)
        try:
            flirt.run(cwd=tmp)
            matrix = np.loadtxt(matrix_file)
        except Exception as err:  # noqa: BLE001 (Nipype wraps FSL's failure in many types)
            raise RegistrationError(f"FLIRT registration of {what} failed: {err}") from err
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise RegistrationError(f"FLIRT registration of {what} wrote an unusable matrix.")
    return flirt_to_world(
        matrix, np.shape(moving_b0), moving_affine, np.shape(fixed_b0), fixed_affine
    )
