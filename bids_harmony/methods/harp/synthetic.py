r"""Phantom-like SH pairs with a known per-band site gain (tests and benchmarks).

Each voxel is a vial-like compartment mixture at b = 1000 s/mm²: one fibre
population (40 %), two crossing at 45–90° (30 %) or an isotropic gel (30 %),
with diffusivities typical of diffusion phantoms.  The source site measures the
true attenuation :math:`E`; the target site measures the signal whose SH
coefficients are the source's scaled by ``gains`` per order band (the HARP model
is then exact, with the ideal scales equal to ``gains``).  With ``gain_slope`` the
gains also vary linearly with the voxel's true :math:`C_{00}` (a mean-diffusivity
dependent site effect, as from a b-value miscalibration), so the network has a
function to learn, not just constants.  Each scan adds
Gaussian noise of standard deviation :math:`1/\mathrm{SNR}` to :math:`E` at every
direction and is fitted with the HARP SH convention (:mod:`bids_harmony.dmri.sh`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_harmony.dmri.sh import ShellSHModel, sh_basis
from bids_harmony.methods.harp.network import apply_band_scales

PAPER_LIKE_GAINS = (1.04, 0.97, 0.95, 0.94, 0.96)
C00_REFERENCE = 1.75


@dataclass(frozen=True)
class SyntheticPairs:
    """Coefficient arrays, each of shape (N, n_coeffs), float32.

    ``source``/``source_rescan``: two noisy source scans; ``target``: one noisy
    target scan; ``truth``: noise-free source coefficients; ``gains``: the
    per-band gains at the reference :math:`C_{00}`; ``voxel_gains`` (N, n_bands):
    the ideal scale of every voxel.
    """

    source: np.ndarray
    source_rescan: np.ndarray
    target: np.ndarray
    truth: np.ndarray
    gains: tuple[float, ...]
    voxel_gains: np.ndarray


def fibonacci_hemisphere(n: int, offset: float = 0.0) -> np.ndarray:
    """``n`` well-spread unit vectors on the upper hemisphere, shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0)) + offset
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def synthetic_pairs(
    n_voxels: int,
    *,
    rng: np.random.Generator,
    gains: tuple[float, ...] = PAPER_LIKE_GAINS,
    gain_slope: tuple[float, ...] | None = None,
    snr: float = 40.0,
    target_snr: float | None = None,
    n_directions: int = 60,
    bval: float = 1000.0,
    sh_order: int = 8,
) -> SyntheticPairs:
    """Draw ``n_voxels`` phantom voxels scanned twice at the source, once at the target.

    Parameters
    ----------
    n_voxels : int
    rng : numpy.random.Generator
    gains : tuple of float
        Per-band target/source gain (one per order ``0, 2, ..., sh_order``).
    gain_slope : tuple of float, optional
        Per-band change of the gain per 0.25 of true :math:`C_{00}` around
        :data:`C00_REFERENCE`.
    snr, target_snr : float
        b0 SNR of the source and target scans (noise std ``1/snr`` on ``E``).
    n_directions : int
    bval : float
    sh_order : int

    Returns
    -------
    SyntheticPairs
    """
    if len(gains) != sh_order // 2 + 1:
        raise ValueError(f"order {sh_order} needs {sh_order // 2 + 1} gains, got {len(gains)}")
    dirs = fibonacci_hemisphere(n_directions)
    attenuation = _phantom_attenuation(n_voxels, dirs, bval, rng)
    model = ShellSHModel(dirs, bval, sh_order=sh_order)
    ones = np.ones(n_voxels, dtype=np.float32)
    truth = model.fit_voxels(attenuation.astype(np.float32), ones).astype(np.float64)
    voxel_gains = np.broadcast_to(np.asarray(gains, dtype=np.float64), (n_voxels, len(gains)))
    if gain_slope is not None:
        shift = (truth[:, :1] - C00_REFERENCE) / 0.25
        voxel_gains = voxel_gains + shift * np.asarray(gain_slope, dtype=np.float64)
    target_truth = apply_band_scales(truth, voxel_gains)
    basis = sh_basis(dirs, sh_order)[0]

    def scan(coeffs: np.ndarray, snr_: float) -> np.ndarray:
        signal = coeffs @ basis.T + rng.normal(0.0, 1.0 / snr_, (n_voxels, n_directions))
        return model.fit_voxels(signal.astype(np.float32), ones)

    return SyntheticPairs(
        source=scan(truth, snr),
        source_rescan=scan(truth, snr),
        target=scan(target_truth, target_snr or snr),
        truth=truth.astype(np.float32),
        gains=tuple(float(g) for g in gains),
        voxel_gains=voxel_gains.astype(np.float32),
    )


def _phantom_attenuation(n: int, dirs: np.ndarray, bval: float, rng) -> np.ndarray:
    """Noise-free attenuation (n, n_directions) of random phantom voxels."""
    kind = rng.choice(3, size=n, p=[0.4, 0.3, 0.3])  # single fibre, crossing, isotropic
    isotropic = kind == 2
    weights = np.where(kind == 1, 0.5, 1.0)[:, None] * np.array([[1.0, 0.0]])
    weights[kind == 1, 1] = 0.5
    first = _unit(rng.normal(size=(n, 3)))
    perp = _unit(np.cross(first, rng.normal(size=(n, 3))))
    angle = rng.uniform(np.pi / 4, np.pi / 2, n)[:, None]  # crossing angle 45-90 degrees
    axes = (first, np.cos(angle) * first + np.sin(angle) * perp)
    out = np.zeros((n, dirs.shape[0]))
    for k, axis in enumerate(axes):
        d_par = np.where(isotropic, rng.uniform(0.6e-3, 1.0e-3, n), rng.uniform(1.5e-3, 2.1e-3, n))
        d_perp = np.where(isotropic, d_par, rng.uniform(0.1e-3, 0.4e-3, n))
        cos2 = (axis @ dirs.T) ** 2
        signal = np.exp(-bval * (d_perp[:, None] + (d_par - d_perp)[:, None] * cos2))
        out += weights[:, k : k + 1] * signal
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)
