"""Scanner sites: identity, protocol timings and the physical site effects.

A :class:`SiteParams` holds everything that makes one scanner see the same object
differently from another.  The effects are physical, not the HARP model:

* **b-value miscalibration** ``δ`` and **gradient-axis gains** ``L``
  (:func:`~bids_harmony.simulate.gradients.effective_gradients`);
* **echo/repetition times** per protocol weighting compartments by
  ``ρ (1 − e^{−TR/T1}) e^{−TE/T2}`` (CSF vs tissue mix differs between sites);
* **diffusion time** ``Δ = c·TE`` changing apparent diffusivities of restricted
  compartments (less anisotropic signal at short ``Δ``: an angular blur);
* **point-spread function**: a Gaussian blur (FWHM in voxels, widest along the
  phase-encoding axis) mixing neighbouring voxels and hence fibre orientations;
* **receive-field inhomogeneity**: a smooth multiplicative coil field;
* **receiver gain, SNR and Rician noise**: a site noise level σ in image units.

Vendor constants (names, timings from the HARP paper's Table 1; ``multishell3``,
the b=3000 option, has the longer TE its stronger weighting needs) are fixed;
the effect magnitudes are drawn from an injected generator within vendor ranges.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

from bids_harmony.simulate.tissue import RELAXATION, Grid

#: Vendor habits and protocol timings; ``timings`` maps protocol -> (TE ms, TR ms).
VENDORS: dict[str, dict[str, Any]] = {
    "GE": {
        "manufacturer": "GE",
        "model": "SIGNA Premier",
        "serial": "0000000GEMR01",
        "software": "MR30.1_R01",
        "coil": "48HAP",
        "b0_value": 0.0,
        "b0_layout": "start",
        "bval_jitter": 0,
        "phase_encoding_direction": "j",
        "echo_spacing_s": 0.000596,
        "timings": {
            "b1000": (59.1, 7500.0),
            "b2000": (72.4, 10400.0),
            "b1500dir30": (62.2, 6000.0),
            "multishell": (72.4, 10400.0),
            "multishell3": (81.3, 11200.0),
        },
        "ranges": {
            "b_scale": (-0.030, -0.012),
            "gain_diag": 0.010,
            "gain_off": 0.004,
            "dt_factor": (0.44, 0.48),
            "psf_pe": (0.7, 1.0),
            "psf_ro": (0.35, 0.5),
            "psf_sl": (0.3, 0.45),
            "coil_periphery": (0.20, 0.32),
            "coil_tilt": (0.06, 0.12),
            "receiver_gain": (3000.0, 3600.0),
            "snr": (22.0, 28.0),
        },
    },
    "Prisma": {
        "manufacturer": "Siemens",
        "model": "Prisma",
        "serial": "166045",
        "software": "syngo MR XA30",
        "coil": "HeadNeck_64",
        "b0_value": 5.0,
        "b0_layout": "interleaved",
        "bval_jitter": 5,
        "phase_encoding_direction": "j-",
        "echo_spacing_s": 0.00069,
        "timings": {
            "b1000": (54.0, 3700.0),
            "b2000": (61.0, 4900.0),
            "b1500dir30": (57.0, 2400.0),
            "multishell": (61.0, 4900.0),
            "multishell3": (68.0, 5300.0),
        },
        "ranges": {
            "b_scale": (0.000, 0.012),
            "gain_diag": 0.006,
            "gain_off": 0.002,
            "dt_factor": (0.40, 0.44),
            "psf_pe": (0.45, 0.65),
            "psf_ro": (0.25, 0.4),
            "psf_sl": (0.25, 0.35),
            "coil_periphery": (0.08, 0.16),
            "coil_tilt": (0.03, 0.08),
            "receiver_gain": (2400.0, 2900.0),
            "snr": (30.0, 38.0),
        },
    },
    "Skyra": {
        "manufacturer": "Siemens",
        "model": "Skyra",
        "serial": "45321",
        "software": "syngo MR E11",
        "coil": "HeadNeck_32",
        "b0_value": 5.0,
        "b0_layout": "interleaved",
        "bval_jitter": 5,
        "phase_encoding_direction": "j-",
        "echo_spacing_s": 0.00074,
        "timings": {
            "b1000": (75.0, 5300.0),
            "b2000": (96.0, 5800.0),
            "b1500dir30": (85.0, 3400.0),
            "multishell": (96.0, 5800.0),
            "multishell3": (108.0, 6300.0),
        },
        "ranges": {
            "b_scale": (0.010, 0.030),
            "gain_diag": 0.012,
            "gain_off": 0.004,
            "dt_factor": (0.45, 0.50),
            "psf_pe": (0.6, 0.9),
            "psf_ro": (0.3, 0.45),
            "psf_sl": (0.3, 0.4),
            "coil_periphery": (0.12, 0.22),
            "coil_tilt": (0.05, 0.1),
            "receiver_gain": (2600.0, 3100.0),
            "snr": (20.0, 26.0),
        },
    },
}


@dataclass(frozen=True)
class SiteParams:
    """One scanner: identity, protocol timings and site-effect parameters.

    Attributes
    ----------
    label : str
        BIDS-safe site label, also the session prefix (``ses-<label><n>``).
    timings : tuple of (str, float, float)
        ``(protocol, TE ms, TR ms)`` per protocol.
    b_scale : float
        Relative b-value error ``δ``.
    gradient_gain : tuple of tuple of float, shape (3, 3)
        Gradient-axis gain matrix ``L``.
    dt_factor : float
        Diffusion time ``Δ = dt_factor · TE`` (ms).
    psf_fwhm_vox : tuple of 3 float
        Gaussian PSF FWHM along (i, j, k) in voxels (j is the phase-encoding axis).
    coil_periphery : float
        Receive-field gain at the edge of a 100 mm sphere: ``exp(a (r/100)²)``.
    coil_tilt : tuple of 3 float
        Linear log-gain per 100 mm along each axis.
    receiver_gain : float
        Image units per unit of magnetization.
    snr_b0_wm : float
        b0 SNR of white matter at the site's ``b1000`` timing (without coil gain).
    noise_sigma : float
        Standard deviation of the complex Gaussian noise in image units.
    """

    label: str
    manufacturer: str
    model: str
    serial: str
    software: str
    coil: str
    field_strength: float
    b0_value: float
    b0_layout: str
    bval_jitter: int
    phase_encoding_direction: str
    echo_spacing_s: float
    timings: tuple[tuple[str, float, float], ...]
    b_scale: float
    gradient_gain: tuple[tuple[float, float, float], ...]
    dt_factor: float
    psf_fwhm_vox: tuple[float, float, float]
    coil_periphery: float
    coil_tilt: tuple[float, float, float]
    receiver_gain: float
    snr_b0_wm: float
    noise_sigma: float

    def timing(self, protocol: str) -> tuple[float, float]:
        """``(TE, TR)`` in ms of ``protocol`` at this site."""
        for name, te, tr in self.timings:
            if name == protocol:
                return te, tr
        raise KeyError(f"site {self.label} has no protocol {protocol!r}")

    def diffusion_time(self, echo_time_ms: float) -> float:
        """Diffusion time Δ (ms) of a PGSE readout with echo time ``echo_time_ms``."""
        return self.dt_factor * echo_time_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteParams:
        """Inverse of :meth:`to_dict`."""
        conv = dict(data)
        conv["timings"] = tuple((str(p), float(te), float(tr)) for p, te, tr in data["timings"])
        conv["gradient_gain"] = tuple(tuple(float(v) for v in row) for row in data["gradient_gain"])
        for key in ("psf_fwhm_vox", "coil_tilt"):
            conv[key] = tuple(float(v) for v in data[key])
        return cls(**conv)


def reference_wm_signal(te_ms: float, tr_ms: float) -> float:
    """b0 signal of white matter per unit receiver gain: ``ρ (1 − e^{−TR/T1}) e^{−TE/T2}``."""
    wm = RELAXATION["wm"]
    return wm["pd"] * (1.0 - math.exp(-tr_ms / wm["t1"])) * math.exp(-te_ms / wm["t2"])


def draw_site(vendor: str, rng: np.random.Generator, *, label: str | None = None) -> SiteParams:
    """Draw the site-effect parameters of a scanner of model ``vendor``.

    Parameters
    ----------
    vendor : str
        Key of :data:`VENDORS` (``"GE"``, ``"Prisma"``, ``"Skyra"``).
    rng : numpy.random.Generator
    label : str, optional
        Site label (default: ``vendor``).
    """
    if vendor not in VENDORS:
        raise KeyError(f"unknown scanner {vendor!r}; known: {sorted(VENDORS)}")
    tpl = VENDORS[vendor]
    rg = tpl["ranges"]

    def uni(key: str) -> float:
        lo, hi = rg[key]
        return round(float(rng.uniform(lo, hi)), 6)

    gain = np.eye(3) + np.diag(rng.uniform(-rg["gain_diag"], rg["gain_diag"], 3))
    off = rng.uniform(-rg["gain_off"], rg["gain_off"], 3)
    gain[0, 1] = gain[1, 0] = off[0]
    gain[0, 2] = gain[2, 0] = off[1]
    gain[1, 2] = gain[2, 1] = off[2]
    tilt_dir = rng.standard_normal(3)
    tilt_dir /= np.linalg.norm(tilt_dir)
    b_scale = uni("b_scale")
    dt_factor = uni("dt_factor")
    psf = (uni("psf_ro"), uni("psf_pe"), uni("psf_sl"))
    periphery = uni("coil_periphery")
    tilt = tuple(round(float(v), 6) for v in tilt_dir * uni("coil_tilt"))
    receiver_gain = uni("receiver_gain")
    snr = uni("snr")
    te, tr = tpl["timings"]["b1000"]
    sigma = receiver_gain * reference_wm_signal(te, tr) / snr
    return SiteParams(
        label=label or vendor,
        manufacturer=tpl["manufacturer"],
        model=tpl["model"],
        serial=tpl["serial"],
        software=tpl["software"],
        coil=tpl["coil"],
        field_strength=3.0,
        b0_value=tpl["b0_value"],
        b0_layout=tpl["b0_layout"],
        bval_jitter=tpl["bval_jitter"],
        phase_encoding_direction=tpl["phase_encoding_direction"],
        echo_spacing_s=tpl["echo_spacing_s"],
        timings=tuple((p, te_, tr_) for p, (te_, tr_) in tpl["timings"].items()),
        b_scale=b_scale,
        gradient_gain=tuple(tuple(round(float(v), 6) for v in row) for row in gain),
        dt_factor=dt_factor,
        psf_fwhm_vox=psf,
        coil_periphery=periphery,
        coil_tilt=tilt,
        receiver_gain=receiver_gain,
        snr_b0_wm=snr,
        noise_sigma=round(float(sigma), 6),
    )


def coil_field(site: SiteParams, grid: Grid) -> NDArray[np.float32]:
    """Smooth receive-field gain on the grid (1 at the isocentre), shape (X, Y, Z).

    .. math:: C(p) = \\exp\\bigl(a\\,\\lVert p \\rVert^2 / r_0^2 + t \\cdot p / r_0\\bigr),
              \\quad r_0 = 100\\,\\text{mm}

    The field is fixed in the scanner frame: it does not move with the object.
    """
    p = grid.coordinates() / 100.0
    log_gain = site.coil_periphery * np.sum(p**2, axis=-1) + p @ np.asarray(site.coil_tilt)
    return np.exp(log_gain).astype(np.float32)


def apply_psf(volumes: NDArray[np.float32], site: SiteParams) -> NDArray[np.float32]:
    """Blur each 3D volume of ``volumes`` (X, Y, Z, V) in place with the site PSF.

    .. math:: \\sigma_a = \\mathrm{FWHM}_a / (2\\sqrt{2 \\ln 2})
    """
    sigma = [f / (2.0 * math.sqrt(2.0 * math.log(2.0))) for f in site.psf_fwhm_vox]
    for v in range(volumes.shape[-1]):
        volumes[..., v] = gaussian_filter(volumes[..., v], sigma=sigma, mode="nearest")
    return volumes


def noisy_image(
    signal: NDArray[np.floating], sigma: float, rng: np.random.Generator
) -> NDArray[np.int16]:
    """Rician magnitude image as the scanner stores it (int16), same shape.

    .. math:: M = \\operatorname{round}\\lvert S + \\sigma (n_r + i n_i) \\rvert,
              \\quad n_r, n_i \\sim N(0, 1)

    clipped to [0, 32767].  One draw per 3D volume (last axis), so the result does
    not depend on chunking; the output is Fortran-ordered like NIfTI on disk.
    """
    out = np.empty(signal.shape, dtype=np.int16, order="F")
    shape3 = signal.shape[:-1]
    vmax = np.float32(np.iinfo(np.int16).max)
    for v in range(signal.shape[-1]):
        noise = rng.standard_normal((2,) + shape3[::-1], dtype=np.float32).T
        noise *= np.float32(sigma)
        noise[..., 0] += signal[..., v]
        mag = np.hypot(noise[..., 0], noise[..., 1])
        np.rint(mag, out=mag)
        np.minimum(mag, vmax, out=mag)
        out[..., v] = mag
    return out
