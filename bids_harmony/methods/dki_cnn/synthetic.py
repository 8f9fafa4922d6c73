r"""Tiny synthetic traveling-subject problems for the DKI network (tests, examples).

Signal model (a simplified, axially symmetric kurtosis signal; its maps are the model's
parameters, not dipy's DKI estimates): with fibre direction :math:`e`, gradient :math:`g`
and :math:`c = (g \cdot e)^2`,

.. math::

    D_g = \lambda_\perp + (\lambda_\parallel - \lambda_\perp) c, \quad
    K_g = K_\perp + (K_\parallel - K_\perp) c, \quad
    S = S_0 \exp(-b D_g + b^2 D_g^2 K_g / 6).

The maps are MD = (λ∥ + 2λ⊥)/3, AD = λ∥, RD = λ⊥, FA of (λ∥, λ⊥, λ⊥), AK = K∥,
RK = K⊥, MK = (K∥ + 2K⊥)/3 and KFA, the FA formula applied to (K∥, K⊥, K⊥).  The
parameters are smooth random fields inside an ellipsoidal "brain"; a *source scanner*
measures the same subject with diffusivities × ``diffusivity_gain``, kurtosis ×
``kurtosis_gain``, its own gradient table and Gaussian noise, while the labels are the
true maps (the reference scanner's, noiseless).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from bids_harmony.methods.dki_cnn.inputs import hemisphere_directions
from bids_harmony.methods.dki_cnn.network import MAP_NAMES

__all__ = ["SyntheticSubject", "dki_maps", "dki_signal", "gradient_table", "synthetic_subject"]


@dataclass(frozen=True)
class SyntheticSubject:
    """One simulated subject on one scanner.

    Attributes
    ----------
    data : ndarray, shape (X, Y, Z, N), float32
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
    mask : ndarray of bool, shape (X, Y, Z)
    maps : ndarray, shape (X, Y, Z, 8), float32
        True maps (:data:`MAP_NAMES` order, mm²/s), 0 outside the mask.
    """

    data: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    mask: np.ndarray
    maps: np.ndarray


def gradient_table(
    rng: np.random.Generator,
    shells: tuple[float, ...] = (1000.0, 2000.0),
    n_directions: tuple[int, ...] = (30, 30),
    n_b0: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """b0 volumes, then per shell a well-spread set of directions in a random orientation.

    Each shell is a Fibonacci hemisphere lattice, randomly rotated, with random signs
    (a scanner's table differs from another's, but is spread as real tables are).

    Returns
    -------
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
    """
    bvals = [np.zeros(n_b0)] + [np.full(n, b) for b, n in zip(shells, n_directions, strict=True)]
    vecs = [np.zeros((n_b0, 3))]
    for n in n_directions:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = q * np.sign(np.diag(r))
        signs = rng.choice([-1.0, 1.0], size=(n, 1))
        vecs.append(signs * (hemisphere_directions(n) @ rotation.T))
    return np.concatenate(bvals), np.concatenate(vecs)


def dki_signal(params: dict[str, np.ndarray], bvals: np.ndarray, bvecs: np.ndarray,
               s0: np.ndarray) -> np.ndarray:  # fmt: skip
    """Signal ``(..., N)`` of the model in the module docstring.

    ``params`` holds ``lam_par``, ``lam_perp`` (mm²/s), ``k_par``, ``k_perp`` of shape
    ``(...)`` and ``e`` (unit fibre directions) of shape ``(..., 3)``.
    """
    c = (params["e"] @ np.asarray(bvecs, float).T) ** 2  # (..., N)
    d = params["lam_perp"][..., None] + (params["lam_par"] - params["lam_perp"])[..., None] * c
    k = params["k_perp"][..., None] + (params["k_par"] - params["k_perp"])[..., None] * c
    b = np.asarray(bvals, float)
    return (s0[..., None] * np.exp(-b * d + (b * d) ** 2 * k / 6.0)).astype(np.float32)


def dki_maps(params: dict[str, np.ndarray]) -> np.ndarray:
    """The eight maps ``(..., 8)`` of the model's parameters (module docstring), float32."""
    lp, lr, kp, kr = (params[k] for k in ("lam_par", "lam_perp", "k_par", "k_perp"))
    maps = {
        "MD": (lp + 2 * lr) / 3, "AD": lp, "RD": lr, "FA": _fa(lp, lr),
        "MK": (kp + 2 * kr) / 3, "AK": kp, "RK": kr, "KFA": _fa(kp, kr),
    }  # fmt: skip
    return np.stack([maps[name] for name in MAP_NAMES], axis=-1).astype(np.float32)


def synthetic_subject(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (12, 12, 12),
    *,
    diffusivity_gain: float = 1.0,
    kurtosis_gain: float = 1.0,
    snr: float = 40.0,
    n_directions: tuple[int, ...] = (30, 30),
    params_rng: np.random.Generator | None = None,
    fibre: np.ndarray | None = None,
) -> SyntheticSubject:
    """A subject (parameters from ``params_rng``, default ``rng``) scanned by one scanner.

    Scanning the same ``params_rng`` state twice with different gains gives the same
    subject on two scanners.  Noise is Gaussian with standard deviation ``S0 / snr``.
    ``fibre`` (a unit vector) gives every voxel one fibre direction; by default the
    directions are a smooth random field.
    """
    prng = rng if params_rng is None else params_rng
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"), -1)
    mask = (grid**2).sum(-1) <= 0.9
    t, u, v, w = (_smooth_field(prng, shape) for _ in range(4))
    e = np.stack([gaussian_filter(prng.normal(size=shape), 1.5) for _ in range(3)], -1)
    e /= np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-6)
    if fibre is not None:
        e[:] = np.asarray(fibre, float) / np.linalg.norm(fibre)
    md, aniso = (0.6 + 0.5 * t) * 1e-3, 0.05 + 0.35 * u
    params = {
        "lam_par": md * (1 + 2 * aniso), "lam_perp": md * (1 - aniso),
        "k_par": 0.3 + 0.4 * v, "k_perp": 0.5 + 0.9 * w, "e": e,
    }  # fmt: skip
    maps = dki_maps(params)
    maps[~mask] = 0.0
    s0 = np.where(mask, 1000.0 * (1.0 + 0.5 * t), 0.0)
    measured = dict(
        params,
        lam_par=params["lam_par"] * diffusivity_gain,
        lam_perp=params["lam_perp"] * diffusivity_gain,
        k_par=params["k_par"] * kurtosis_gain,
        k_perp=params["k_perp"] * kurtosis_gain,
    )
    bvals, bvecs = gradient_table(rng, n_directions=n_directions)
    data = dki_signal(measured, bvals, bvecs, s0)
    data += rng.normal(0.0, 1000.0 / snr, data.shape).astype(np.float32) * mask[..., None]
    return SyntheticSubject(data, bvals, bvecs, mask, maps)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth field, uniform on [0, 1] over the grid (ranks of smoothed noise)."""
    f = gaussian_filter(rng.normal(size=shape), 1.0).ravel()
    ranks = np.empty(f.size)
    ranks[np.argsort(f)] = np.arange(f.size)
    return (ranks / max(f.size - 1, 1)).reshape(shape)


def _fa(par: np.ndarray, perp: np.ndarray) -> np.ndarray:
    mean = (par + 2 * perp) / 3
    num = (par - mean) ** 2 + 2 * (perp - mean) ** 2
    den = par**2 + 2 * perp**2
    return np.sqrt(1.5 * num / np.maximum(den, 1e-30))
