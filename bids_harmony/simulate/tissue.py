"""Voxel grids, rigid poses and the multi-compartment tissue model.

Every simulated object (phantom or brain) is described voxel by voxel as a mixture
of ``K = 4`` compartments, each a cylindrically symmetric diffusion tensor with its
own relaxation times and proton density:

====  ============  ==========================================================
k     name          use
====  ============  ==========================================================
0     ``free``      free water: CSF, the phantom bath (isotropic, unrestricted)
1     ``hindered``  grey matter, scalp, PVP solutions, inter-fibre water
2     ``fibre1``    first fibre population (WM bundle, phantom fibre)
3     ``fibre2``    second fibre population in crossing voxels
====  ============  ==========================================================

A compartment may be split into two Gaussian *pools* with the same mean tensor
(optional arrays ``pool_fraction``, ``pool_par``, ``pool_perp``; brains: restricted
intra-axonal sticks beside hindered extra-axonal water, slow and fast GM water),
which gives the signal a kurtosis (:mod:`bids_harmony.simulate.kurtosis`); without
them every compartment is one tensor, as before.

Geometry is defined in millimetres in the *object frame*; a :class:`Pose` places the
object in the *scanner frame*, whose axes are the voxel axes of the image (the frame
of the ``.bvec`` files, see :func:`Grid.affine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from dipy.reconst.dti import fractional_anisotropy, mean_diffusivity
from numpy.typing import NDArray
from scipy.spatial.transform import Rotation

COMPARTMENTS: tuple[str, ...] = ("free", "hindered", "fibre1", "fibre2")
N_COMPARTMENTS = len(COMPARTMENTS)

#: Relaxation times (ms) and relative proton density of human tissues at 3 T.
RELAXATION: dict[str, dict[str, float]] = {
    "wm": {"pd": 0.69, "t1": 850.0, "t2": 72.0},
    "gm": {"pd": 0.80, "t1": 1350.0, "t2": 90.0},
    "csf": {"pd": 1.00, "t1": 4000.0, "t2": 1800.0},
    "scalp": {"pd": 0.45, "t1": 1100.0, "t2": 45.0},
}

#: Names of the labels of a brain's tissue segmentation (``dseg``).
BRAIN_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}


@dataclass(frozen=True)
class Grid:
    """A voxel grid centred on the scanner isocentre.

    Parameters
    ----------
    shape : tuple of 3 int
        Number of voxels along the image axes (i, j, k).
    voxel_size : tuple of 3 float
        Voxel size in mm along (i, j, k).
    """

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]

    @property
    def affine(self) -> NDArray[np.float64]:
        """Voxel-to-world affine, shape (4, 4).

        The storage is radiological (``LAS``, negative determinant) as written by
        most DICOM converters, so FSL's b-vector convention needs no x-flip: the
        ``.bvec`` components are the voxel-axis components used by the simulator.
        The grid centre sits at world (0, 0, 0).
        """
        vx, vy, vz = self.voxel_size
        aff = np.diag([-vx, vy, vz, 1.0])
        centre = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        aff[:3, 3] = -aff[:3, :3] @ centre
        return aff

    def coordinates(self, mask: NDArray[np.bool_] | None = None) -> NDArray[np.float64]:
        """Scanner-frame coordinates (mm) of voxel centres along the voxel axes.

        Parameters
        ----------
        mask : ndarray of bool, shape (X, Y, Z), optional
            Return only the voxels inside ``mask`` (in C order).

        Returns
        -------
        ndarray, shape (X, Y, Z, 3) or (N, 3)
        """
        axes = [
            (np.arange(n, dtype=float) - (n - 1) / 2.0) * v
            for n, v in zip(self.shape, self.voxel_size, strict=True)
        ]
        if mask is not None:
            idx = np.nonzero(mask)
            return np.stack([axes[a][idx[a]] for a in range(3)], axis=-1)
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    @property
    def mean_voxel(self) -> float:
        """Geometric mean voxel size in mm (the partial-volume ramp width)."""
        return float(np.prod(self.voxel_size) ** (1.0 / 3.0))


@dataclass(frozen=True)
class Pose:
    """Rigid placement of an object in the scanner: ``p = R q + t``.

    Parameters
    ----------
    angles_deg : tuple of 3 float
        Extrinsic rotations about the scanner x, y, z axes in degrees.
    translation_mm : tuple of 3 float
        Translation in mm along the voxel axes.
    """

    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def rotation(self) -> NDArray[np.float64]:
        """Rotation matrix ``R``, shape (3, 3)."""
        return Rotation.from_euler("xyz", self.angles_deg, degrees=True).as_matrix()

    @property
    def matrix(self) -> NDArray[np.float64]:
        """Homogeneous object-to-scanner transform in mm, shape (4, 4)."""
        mat = np.eye(4)
        mat[:3, :3] = self.rotation
        mat[:3, 3] = self.translation_mm
        return mat

    def to_object(self, points: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map scanner-frame points (..., 3) to the object frame: ``q = Rᵀ (p − t)``."""
        return (np.asarray(points, dtype=float) - np.asarray(self.translation_mm)) @ self.rotation

    def rotate(self, directions: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map object-frame directions (..., 3) to the scanner frame: ``u' = R u``."""
        return np.asarray(directions, dtype=float) @ self.rotation.T


def ramp(distance: NDArray[np.floating], width: float) -> NDArray[np.float64]:
    """Fraction of a voxel inside a surface from a signed distance.

    .. math:: f = \\operatorname{clip}(1/2 - d / h, 0, 1)

    the exact fraction for a planar boundary crossing a slab of width ``h``.

    >>> ramp(np.array([-10.0, 0.0, 10.0]), 2.0).tolist()
    [1.0, 0.5, 0.0]
    """
    return np.clip(0.5 - np.asarray(distance, dtype=float) / width, 0.0, 1.0)


def ellipsoid_distance(
    points: NDArray[np.floating], centre: NDArray[np.floating], semi_axes: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid.

    .. math:: \\rho = \\lVert (q - c) / a \\rVert,\\quad d \\approx |q - c| (1 - 1/\\rho)

    exact on the axes and for spheres.
    """
    rel = np.asarray(points, dtype=float) - np.asarray(centre, dtype=float)
    rho = np.linalg.norm(rel / np.asarray(semi_axes, dtype=float), axis=-1)
    return np.linalg.norm(rel, axis=-1) * (1.0 - 1.0 / np.maximum(rho, 1e-9))


@dataclass(frozen=True, eq=False)
class TissueModel:
    """Voxel-wise compartment model on a grid (arrays over the ``N`` support voxels).

    Parameters
    ----------
    grid : Grid
    support : ndarray of bool, shape (X, Y, Z)
        Voxels with any signal; the per-compartment arrays list them in C order.
    fractions : ndarray, shape (N, K)
        Volume fractions (sum ≤ 1; the rest emits no signal, e.g. bone, plastic).
    d_par, d_perp : ndarray, shape (N, K)
        Axial and radial diffusivity in mm²/s at the reference diffusion time.
    directions : ndarray, shape (N, K, 3)
        Unit axis of each compartment in the scanner (voxel) frame.
    restriction : ndarray, shape (N, K)
        0 for free diffusion, 1 for fully restricted (scales diffusion-time effects).
    proton_density, t1, t2 : ndarray, shape (N, K)
        Relative proton density and relaxation times in ms.
    labels : ndarray of uint8, shape (X, Y, Z)
        Segmentation (brains: :data:`BRAIN_LABELS`; phantoms: 0 outside, 1 bath,
        ``2 + i`` vial ``i``).
    mask : ndarray of bool, shape (X, Y, Z)
        Brain (intracranial) mask, or the inside of the phantom container.
    pool_fraction, pool_par, pool_perp : ndarray, shape (N, K), optional
        Two-pool split of each compartment (None: one tensor per compartment).
        Pool A holds the fraction ``v = pool_fraction`` of the compartment's water
        with diffusivities ``(a_∥ λ_∥, a_⊥ λ_⊥)``, ``a = pool_par, pool_perp``;
        pool B the rest with ``((1 − v a_∥) λ_∥, (1 − v a_⊥) λ_⊥) / (1 − v)``, so
        the compartment's mean tensor stays ``(λ_∥, λ_⊥)`` (:meth:`pool_diffusivities`).
    """

    grid: Grid
    support: NDArray[np.bool_]
    fractions: NDArray[np.float32]
    d_par: NDArray[np.float32]
    d_perp: NDArray[np.float32]
    directions: NDArray[np.float32]
    restriction: NDArray[np.float32]
    proton_density: NDArray[np.float32]
    t1: NDArray[np.float32]
    t2: NDArray[np.float32]
    labels: NDArray[np.uint8]
    mask: NDArray[np.bool_]
    kind: str = field(default="brain")
    pool_fraction: NDArray[np.float32] | None = None
    pool_par: NDArray[np.float32] | None = None
    pool_perp: NDArray[np.float32] | None = None

    ARRAY_FIELDS = (
        "support",
        "fractions",
        "d_par",
        "d_perp",
        "directions",
        "restriction",
        "proton_density",
        "t1",
        "t2",
        "labels",
        "mask",
    )
    POOL_FIELDS = ("pool_fraction", "pool_par", "pool_perp")

    @property
    def has_pools(self) -> bool:
        """Whether any compartment is split into two pools (a kurtosis-bearing signal)."""
        return self.pool_fraction is not None and bool(np.any(self.pool_fraction > 0))

    def pool_diffusivities(
        self, d_par: NDArray, d_perp: NDArray
    ) -> tuple[NDArray, NDArray, NDArray, NDArray, NDArray]:
        """Fractions and diffusivities of the two pools of each compartment.

        .. math:: D_A = (a_\\parallel \\lambda_\\parallel, a_\\perp \\lambda_\\perp),\\quad
                  D_B = \\frac{((1 - v a_\\parallel) \\lambda_\\parallel,
                  (1 - v a_\\perp) \\lambda_\\perp)}{1 - v}

        so ``v D_A + (1 − v) D_B = (λ_∥, λ_⊥)``.  ``d_par``, ``d_perp`` (N, K) are
        the compartments' (possibly apparent, site-scaled) mean diffusivities.

        Returns
        -------
        v, a_par, a_perp, b_par, b_perp : ndarray, shape (N, K)
            Pool A fraction and diffusivities, pool B diffusivities (pool B has
            ``1 − v``).  Without pools ``v = 0`` and pool B is the compartment.
        """
        d_par = np.asarray(d_par, dtype=np.float64)
        d_perp = np.asarray(d_perp, dtype=np.float64)
        if self.pool_fraction is None:
            zero = np.zeros_like(d_par)
            return zero, zero, zero.copy(), d_par, d_perp
        v = np.asarray(self.pool_fraction, dtype=np.float64)
        sp = np.asarray(self.pool_par, dtype=np.float64)
        sq = np.asarray(self.pool_perp, dtype=np.float64)
        rest = np.where(v < 1.0, 1.0 - v, 1.0)
        return (
            v,
            sp * d_par,
            sq * d_perp,
            (1.0 - v * sp) / rest * d_par,
            (1.0 - v * sq) / rest * d_perp,
        )

    @property
    def n_voxels(self) -> int:
        """Number of support voxels ``N``."""
        return int(self.fractions.shape[0])

    def to_volume(self, values: NDArray, fill: float = 0.0) -> NDArray:
        """Scatter per-support-voxel values (N, ...) into a volume (X, Y, Z, ...)."""
        out = np.full(self.grid.shape + values.shape[1:], fill, dtype=values.dtype)
        out[self.support] = values
        return out

    def mean_tensor(self) -> NDArray[np.float64]:
        """Signal-weighted mean diffusion tensor of each support voxel, shape (N, 3, 3).

        .. math:: \\bar D = \\frac{\\sum_k f_k \\rho_k D_k}{\\sum_k f_k \\rho_k},\\quad
                  D_k = \\lambda_{\\perp,k} I + (\\lambda_{\\parallel,k} -
                  \\lambda_{\\perp,k}) u_k u_k^T

        the low-b limit of a DTI fit to the site-free signal (TE → 0, TR → ∞).
        """
        w = (self.fractions * self.proton_density).astype(float)
        total = w.sum(axis=1)
        w = w / np.where(total > 0, total, 1.0)[:, None]
        u = self.directions.astype(float)
        delta = (self.d_par - self.d_perp).astype(float)
        tensor = np.einsum("nk,nki,nkj->nij", w * delta, u, u)
        iso = (w * self.d_perp).sum(axis=1)
        tensor[:, [0, 1, 2], [0, 1, 2]] += iso[:, None]
        return tensor

    def true_fa_md(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """FA and MD (mm²/s) of :meth:`mean_tensor` as volumes, each (X, Y, Z)."""
        evals = np.linalg.eigvalsh(self.mean_tensor())
        fa = np.nan_to_num(fractional_anisotropy(evals)).astype(np.float32)
        md = mean_diffusivity(evals).astype(np.float32)
        return self.to_volume(fa), self.to_volume(md)

    def arrays(self) -> dict[str, NDArray]:
        """All arrays by field name (for serialization; pool arrays only when set)."""
        out = {name: getattr(self, name) for name in self.ARRAY_FIELDS}
        out.update({n: getattr(self, n) for n in self.POOL_FIELDS if getattr(self, n) is not None})
        return out

    @classmethod
    def from_arrays(cls, grid: Grid, arrays: dict[str, NDArray], kind: str) -> TissueModel:
        """Inverse of :meth:`arrays` (models written without pools read as before)."""
        names = cls.ARRAY_FIELDS + tuple(n for n in cls.POOL_FIELDS if n in arrays)
        return cls(grid=grid, kind=kind, **{name: arrays[name] for name in names})


def assemble(
    grid: Grid,
    support: NDArray[np.bool_],
    comps: dict[str, NDArray],
    labels: NDArray[np.uint8],
    mask: NDArray[np.bool_],
    kind: str,
) -> TissueModel:
    """Build a :class:`TissueModel`, dropping support voxels with no signal.

    Parameters
    ----------
    comps : dict of ndarray
        ``fractions``, ``d_par``, ``d_perp``, ``restriction``, ``proton_density``,
        ``t1``, ``t2`` of shape (M, K) and ``directions`` (M, K, 3) over ``support``;
        optionally ``pool_fraction``, ``pool_par``, ``pool_perp`` (M, K).
    """
    keep = comps["fractions"].sum(axis=1) > 1e-4
    new_support = np.zeros(grid.shape, dtype=bool)
    new_support[support] = keep
    arrays = {
        name: np.ascontiguousarray(val[keep], dtype=np.float32) for name, val in comps.items()
    }
    norms = np.linalg.norm(arrays["directions"], axis=-1, keepdims=True)
    arrays["directions"] = np.where(norms > 0, arrays["directions"] / np.maximum(norms, 1e-12), 0)
    arrays["directions"] = arrays["directions"].astype(np.float32)
    return TissueModel(
        grid=grid,
        support=new_support,
        labels=labels.astype(np.uint8),
        mask=mask.astype(bool),
        kind=kind,
        **arrays,
    )
