r"""Input channels of the DKI network: one scan's DWIs on a fixed set of directions.

The network of Tong et al. takes "the DWIs of one scan" as channels, which ties it to one
scanner's gradient table and volume order.  Here every shell is resampled to the same
directions through the app's SH fit (:mod:`bids_harmony.dmri.sh`), so one network serves
scans with different tables, and a shuffled run gives the same inputs.

Representation
--------------
For every shell :math:`b_k` of :attr:`InputSpec.shells` (b-values in s/mm²):

1. the participant level's SH coefficients :math:`c_k` (HARP convention: attenuation
   :math:`E = \mathrm{clip}(S/\bar S_0, 0, 1)` mapped to :math:`E' = E^{b_\mathrm{ref}/b_k}`,
   Laplace–Beltrami-regularized least squares, order 8 when the shell has ≥ 45 directions)
   are kept up to order :attr:`InputSpec.sh_order` (6: 28 coefficients; lower-order fits
   are zero-padded);
2. they are evaluated on :attr:`InputSpec.n_directions` fixed directions :math:`u_j`
   (32 points of a Fibonacci lattice on the upper hemisphere: the signal is antipodally
   symmetric, 32 ≥ 28 samples keep every coefficient, and the lattice is deterministic
   and nearly uniform);
3. the power map is undone,
   :math:`E_k(u_j) = \mathrm{clip}(B(u_j)\,c_k, 0, 1)^{b_k/b_\mathrm{ref}}`,
   so the channels are the attenuation at the shell's own b-value in [0, 1], which is what
   the kurtosis labels depend on (exactly what :meth:`ShellSHModel.predict` rebuilds, with
   :math:`\bar S_0 = 1`).

With ``s0="relative"`` one more channel holds :math:`\bar S_0 / \mathrm{median}_\mathrm{mask}
\bar S_0` (clipped to [0, 4]): unit-free tissue contrast (CSF is bright) that helps the
network where the attenuations are near zero.  Channels are ordered shell by shell,
direction by direction, then S0; voxels outside the mask are zero in every channel.

Why the participant level's coefficients, not a fit without the power map
    The participant level already fits and stores them (no second fit, one SH convention in
    the app), and :func:`dki_inputs` on raw DWIs goes through the very same
    :func:`~bids_harmony.dmri.sh.fit_shells`, so the two entry points agree to float
    rounding.  The power map is exact for a mono-exponential decay and smooth otherwise;
    undoing it after the evaluation restores the attenuation, so nothing of the b-dependence
    that DKI measures is lost.
Why order 6
    DKI describes :math:`\ln E` by a 2nd-order (diffusion) and a 4th-order (kurtosis)
    tensor, so the labels depend on the signal's SH content up to order 4; order 6 keeps a
    margin and is what a 30-direction shell gets, so scans with 30 or 90 directions give
    inputs of the same angular resolution (an order-8 fit of a 60-direction scan keeps
    sharper details that a 30-direction scan lacks, and the network would learn them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_harmony.dmri import sh
from bids_harmony.dmri.bands import MAX_ORDER, check_order, n_coeffs, order_from_n_coeffs
from bids_harmony.dmri.gradients import (
    B0_THRESHOLD,
    B_TOLERANCE,
    b0_mask,
    nearest_shell,
    shell_label,
)
from bids_harmony.errors import BadGradientsError, BadImageError

__all__ = [
    "DEFAULT_DIRECTIONS", "DEFAULT_SH_ORDER", "InputSpec", "dki_inputs", "dki_inputs_from_sh",
    "hemisphere_directions",
]  # fmt: skip

DEFAULT_DIRECTIONS = 32
DEFAULT_SH_ORDER = 6
S0_CLIP = 4.0
S0_MODES = ("relative", "none")


def hemisphere_directions(n: int = DEFAULT_DIRECTIONS) -> np.ndarray:
    """``n`` unit vectors of a Fibonacci lattice on the upper hemisphere (z > 0).

    Point :math:`i` has :math:`z_i = (i + 1/2)/n` and azimuth :math:`i \\cdot 137.5°`
    (the golden angle): equal-area bands in z, so the points are nearly uniform.

    Returns
    -------
    ndarray, shape (n, 3), float64

    >>> d = hemisphere_directions(32)
    >>> d.shape, bool(np.allclose(np.linalg.norm(d, axis=1), 1)), bool((d[:, 2] > 0).all())
    ((32, 3), True, True)
    """
    if n < 1:
        raise ValueError(f"need at least one direction, got {n}")
    i = np.arange(n, dtype=float)
    z = (i + 0.5) / n
    r = np.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@dataclass(frozen=True)
class InputSpec:
    """What the input channels are (stored in the model card, checked when applied).

    Attributes
    ----------
    shells : tuple of float
        Nominal b-values (s/mm²), increasing; every scan must have each of them within
        ``b_tolerance``.
    n_directions : int
        Fixed directions per shell (:func:`hemisphere_directions`).
    sh_order : int
        Highest SH order kept before the evaluation.
    s0 : {"relative", "none"}
        Whether a relative-S0 channel follows the shells.
    b_ref : float
        Reference b-value of the coefficients' power map.
    b_tolerance : float
    """

    shells: tuple[float, ...]
    n_directions: int = DEFAULT_DIRECTIONS
    sh_order: int = DEFAULT_SH_ORDER
    s0: str = "relative"
    b_ref: float = sh.B_REF
    b_tolerance: float = B_TOLERANCE

    def __post_init__(self) -> None:
        shells = tuple(sorted(float(b) for b in self.shells))
        object.__setattr__(self, "shells", shells)
        if not shells or any(not b > 0 for b in shells):
            raise BadGradientsError(f"need at least one positive shell b-value, got {shells}")
        check_order(self.sh_order)
        if self.n_directions < n_coeffs(self.sh_order):
            raise ValueError(
                f"{self.n_directions} directions cannot hold order {self.sh_order} "
                f"({n_coeffs(self.sh_order)} coefficients)"
            )
        if self.s0 not in S0_MODES:
            raise ValueError(f"s0 must be one of {S0_MODES}, got {self.s0!r}")

    @property
    def n_channels(self) -> int:
        return len(self.shells) * self.n_directions + (self.s0 == "relative")

    @property
    def directions(self) -> np.ndarray:
        """The fixed directions, shape (n_directions, 3)."""
        return hemisphere_directions(self.n_directions)

    def channel_names(self) -> list[str]:
        """``["b1000_d00", ..., "b2000_d31", "s0"]``."""
        names = [f"{shell_label(b)}_d{j:02d}" for b in self.shells
                 for j in range(self.n_directions)]  # fmt: skip
        return names + (["s0"] if self.s0 == "relative" else [])

    def to_dict(self) -> dict[str, Any]:
        return {
            "representation": "per-shell attenuation on fixed directions via the SH fit",
            "shells": list(self.shells),
            "n_directions": self.n_directions,
            "directions": "Fibonacci lattice, upper hemisphere: z=(i+0.5)/n, phi=i*golden angle",
            "sh_order": self.sh_order,
            "sh_convention": {
                "basis": sh.SH_BASIS,
                "legacy": sh.SH_LEGACY,
                "lambda_lb": sh.LB_LAMBDA,
            },  # fmt: skip
            "b_ref": self.b_ref,
            "normalization": "E = clip(B c, 0, 1) ** (b / b_ref), c fitted to "
            "clip(S / mean(b0), 0, 1) ** (b_ref / b)",
            "s0": self.s0,
            "s0_channel": "clip(mean(b0) / median over the mask of mean(b0), 0, 4)",
            "b_tolerance": self.b_tolerance,
            "n_channels": self.n_channels,
            "channel_order": "shell by shell, direction by direction, then s0",
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> InputSpec:
        try:
            spec = cls(
                shells=tuple(float(b) for b in config["shells"]),
                n_directions=int(config["n_directions"]),
                sh_order=int(config["sh_order"]),
                s0=str(config["s0"]),
                b_ref=float(config.get("b_ref", sh.B_REF)),
                b_tolerance=float(config.get("b_tolerance", B_TOLERANCE)),
            )
        except KeyError as err:
            raise ValueError(f"input specification lacks the entry {err}") from None
        if "n_channels" in config and int(config["n_channels"]) != spec.n_channels:
            raise ValueError(f"inputs say {config['n_channels']} channels, expected "
                             f"{spec.n_channels}")  # fmt: skip
        return spec


def dki_inputs_from_sh(
    coeffs: Mapping[float, np.ndarray],
    spec: InputSpec,
    *,
    mean_b0: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Input channels from per-shell SH coefficient maps (the participant level's).

    Parameters
    ----------
    coeffs : mapping of float to ndarray, shape (X, Y, Z, n_coeffs)
        Coefficients per shell b-value (HARP convention, any even order); shells
        outside ``spec.shells`` are ignored.
    spec : InputSpec
    mean_b0 : ndarray, shape (X, Y, Z), optional
        Mean b0 image; needed when ``spec.s0 == "relative"``.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Brain mask: channels are 0 outside; the S0 median is taken inside
        (default: every voxel with ``mean_b0 > 0``).

    Returns
    -------
    ndarray, shape (X, Y, Z, spec.n_channels), float32

    Raises
    ------
    BadGradientsError
        A shell of ``spec`` has no coefficients (the message lists those there are).
    BadImageError
        Shapes disagree, or the S0 channel is asked for without ``mean_b0``.
    """
    available = {float(b): np.asarray(c) for b, c in coeffs.items()}
    picked = [_pick_shell(available, b, spec.b_tolerance) for b in spec.shells]
    shape = picked[0].shape[:3]
    for c in picked:
        if c.ndim != 4 or c.shape[:3] != shape:
            raise BadImageError(f"coefficient maps must all be (X, Y, Z, K) of one grid; got "
                                f"{[tuple(p.shape) for p in picked]}")  # fmt: skip
    keep = n_coeffs(spec.sh_order)
    basis, _ = sh.sh_basis(spec.directions, spec.sh_order)
    basis_t = basis.T.astype(np.float32)  # (K, n_directions)
    out = np.zeros(shape + (spec.n_channels,), np.float32)
    for k, (bval, c) in enumerate(zip(spec.shells, picked, strict=True)):
        order_from_n_coeffs(c.shape[-1])  # refuses a count that is no even order
        c = np.asarray(c, np.float32)
        if c.shape[-1] >= keep:
            c = c[..., :keep]
        else:
            c = np.concatenate([c, np.zeros(shape + (keep - c.shape[-1],), np.float32)], -1)
        values = np.clip(c @ basis_t, 0.0, 1.0)
        values = sh.power_map(values, spec.b_ref, b_ref=bval)  # E'^(b / b_ref)
        out[..., k * spec.n_directions : (k + 1) * spec.n_directions] = values
    in_mask = _mask(mask, shape, mean_b0)
    if spec.s0 == "relative":
        if mean_b0 is None:
            raise BadImageError("the S0 channel needs the mean b0 image (mean_b0=...)")
        out[..., -1] = relative_s0(mean_b0, in_mask)
    out[~in_mask] = 0.0
    return out


def dki_inputs(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray | None,
    shells: InputSpec | Sequence[float],
    *,
    b0_threshold: float = B0_THRESHOLD,
) -> np.ndarray:
    """Input channels of one run (raw DWIs; any table and volume order).

    Fits every shell with :func:`bids_harmony.dmri.sh.fit_shells` (order up to 8) and
    passes the coefficients to :func:`dki_inputs_from_sh`.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    mask : ndarray of bool, shape (X, Y, Z), or None
    shells : InputSpec or sequence of float
        The specification, or the shell b-values (default specification otherwise).

    Returns
    -------
    ndarray, shape (X, Y, Z, n_channels), float32
    """
    spec = shells if isinstance(shells, InputSpec) else InputSpec(tuple(shells))
    data = np.asarray(data)
    if data.ndim != 4:
        raise BadImageError(f"DWI data must be 4D, got shape {data.shape}")
    fits = sh.fit_shells(data, bvals, bvecs, mask=mask, sh_order=MAX_ORDER,
                         b_tolerance=spec.b_tolerance, b0_threshold=b0_threshold,
                         b_ref=spec.b_ref)  # fmt: skip
    b0 = np.flatnonzero(b0_mask(np.asarray(bvals, float).ravel(), b0_threshold=b0_threshold))
    mean_b0 = np.asarray(data[..., b0], np.float32).mean(axis=-1)
    return dki_inputs_from_sh({f.bval: f.coeffs for f in fits}, spec, mean_b0=mean_b0,
                              mask=mask)  # fmt: skip


def relative_s0(mean_b0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Relative S0, :math:`\\mathrm{clip}(\\bar S_0 / \\mathrm{median}_\\mathrm{mask}\\,
    \\bar S_0, 0, 4)`, float32."""
    s0 = np.asarray(mean_b0, np.float32)
    inside = s0[mask & np.isfinite(s0) & (s0 > 0)]
    if inside.size == 0:
        raise BadImageError("the mean b0 is not positive anywhere in the mask")
    return np.clip(np.nan_to_num(s0 / np.median(inside)), 0.0, S0_CLIP).astype(np.float32)


def _mask(mask: np.ndarray | None, shape: tuple[int, ...], mean_b0: np.ndarray | None):
    if mask is None:
        if mean_b0 is None:
            return np.ones(shape, bool)
        return np.asarray(mean_b0) > 0
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise BadImageError(f"mask {mask.shape} and coefficients {shape} differ in shape")
    return mask


def _pick_shell(available: Mapping[float, np.ndarray], bval: float, tol: float) -> np.ndarray:
    nearest = nearest_shell(available, bval, tol)
    if nearest is None:
        raise BadGradientsError(
            f"the network needs shell {shell_label(bval)}; this scan has "
            f"{[shell_label(b) for b in sorted(available)] or 'no shell'} "
            f"(tolerance {tol:g} s/mm^2)"
        )
    return available[nearest]
