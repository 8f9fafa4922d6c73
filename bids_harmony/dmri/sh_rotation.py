r"""Rotation of even real SH coefficients, and the frame the b-vectors live in.

A phantom put back by hand at another site is turned by a few to tens of degrees;
the SH coefficients of the target scan describe the phantom's orientation
functions in the target's gradient frame.  To compare them voxel by voxel with the
source scan they must be expressed in the source frame:

.. math:: g(\mathbf u) = f(Q\,\mathbf u), \qquad c_g = B(V)^{+}\, B(QV)\, c_f,

where :math:`B(V)` is the SH basis (:func:`bids_harmony.dmri.sh.sh_basis`)
sampled on a dense set of directions :math:`V` and :math:`Q` maps a source-frame
direction to the target frame.  Rotations keep each order band separately (the
matrix is block diagonal by order up to round-off) and keep each band's power
(the RISH features).

b-vector frame
--------------
The ``.bvec`` convention (FSL) gives directions in the voxel axes of the image,
with the first axis flipped when the voxel-to-world matrix has a positive
determinant.  :func:`bvec_frame` returns the 3×3 matrix :math:`W` that maps such a
direction to world (RAS) coordinates, so that for a fixed-to-moving world
transform with rotation :math:`R`, :math:`Q = W_m^{-1} R\, W_f`.
"""

from __future__ import annotations

import numpy as np

from bids_harmony.dmri.bands import n_coeffs

__all__ = ["bvec_frame", "direction_map", "rotate_sh", "sh_rotation_matrix"]

#: Directions used to fit the rotated functions (well above 45 coefficients).
_N_DIRECTIONS = 400


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def bvec_frame(affine: np.ndarray) -> np.ndarray:
    """Matrix mapping ``.bvec`` directions of an image to world (RAS) directions.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine with orthogonal axes.

    Returns
    -------
    ndarray, shape (3, 3)
        Orthogonal.
    """
    linear = np.asarray(affine, dtype=float)[:3, :3]
    axes = linear / np.linalg.norm(linear, axis=0)
    flip = np.diag([-1.0, 1.0, 1.0]) if np.linalg.det(axes) > 0 else np.eye(3)
    return axes @ flip


def direction_map(
    fixed_affine: np.ndarray, moving_affine: np.ndarray, transform: np.ndarray
) -> np.ndarray:
    """:math:`Q`: a fixed-image b-vector direction to the moving image's b-vector frame.

    Parameters
    ----------
    fixed_affine, moving_affine : ndarray, shape (4, 4)
    transform : ndarray, shape (4, 4)
        Fixed-to-moving world transform (rigid).
    """
    rot = np.asarray(transform, dtype=float)[:3, :3]
    u, _, vt = np.linalg.svd(rot)  # nearest rotation: drop round-off scaling
    rot = u @ vt
    return bvec_frame(moving_affine).T @ rot @ bvec_frame(fixed_affine)


def sh_rotation_matrix(q: np.ndarray, order: int) -> np.ndarray:
    """Linear map of SH coefficients for :math:`g(\\mathbf u) = f(Q \\mathbf u)`.

    Parameters
    ----------
    q : ndarray, shape (3, 3)
        Rotation.
    order : int
        Even SH order.

    Returns
    -------
    ndarray, shape (n, n)
        ``c_g = M @ c_f`` with ``n = n_coeffs(order)``.
    """
    from bids_harmony.dmri.sh import sh_basis

    dirs = _fibonacci_sphere(_N_DIRECTIONS)
    basis, _ = sh_basis(dirs, order)
    rotated, _ = sh_basis(dirs @ np.asarray(q, dtype=float).T, order)
    matrix = np.linalg.lstsq(basis, rotated, rcond=None)[0]
    matrix[np.abs(matrix) < 1e-10] = 0.0
    return matrix


def rotate_sh(coeffs: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rotate SH coefficient maps: ``coeffs[..., :]`` of any even order.

    Parameters
    ----------
    coeffs : ndarray, shape (..., n)
    q : ndarray, shape (3, 3)
        See :func:`sh_rotation_matrix`.

    Returns
    -------
    ndarray, shape (..., n), same dtype
    """
    from bids_harmony.dmri.bands import order_from_n_coeffs

    coeffs = np.asarray(coeffs)
    order = order_from_n_coeffs(coeffs.shape[-1])
    if np.allclose(q, np.eye(3), atol=1e-9):
        return coeffs.copy()
    matrix = sh_rotation_matrix(q, order)
    assert matrix.shape == (n_coeffs(order),) * 2
    return (coeffs @ matrix.T.astype(coeffs.dtype)).astype(coeffs.dtype, copy=False)
