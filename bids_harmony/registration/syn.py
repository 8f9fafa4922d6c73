r"""Registration of each session's FA map to the study FA template (antspyx).

The group level compares sessions voxel by voxel, so every session's FA map is
registered to one FA template (:func:`register_to_template`), with the
*template as the fixed image* and the session FA as the moving image:
:attr:`SessionTransform.forward` resamples a native map onto the template grid
and :attr:`SessionTransform.inverse` (with :attr:`SessionTransform.inverse_invert`,
antspyx's ``whichtoinvert``) resamples a template-space map onto the session FA
grid (:mod:`bids_harmony.registration.warps`).  A registration whose FA correlation
with the template (:func:`fa_correlation`) is too low raises
:class:`RegistrationFailedError`: the session is excluded.  Transforms are
cached next to a JSON record (see :mod:`bids_harmony.registration.ants`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.io import sha256_file, write_json
from bids_harmony.registration.ants import (
    RECORD_VERSION,
    RegistrationFailedError,
    ants_environment,
    ants_image,
    check_seed,
    check_transform,
    file_entry,
    file_stem,
    jsonify,
    load_image,
    outputs_intact,
    read_record,
    registration_settings,
    run_registration,
)
from bids_harmony.registration.rigid import CORRELATION_SLACK

logger = logging.getLogger(__name__)

__all__ = ["MIN_CORRELATION", "RegistrationFailedError", "SessionTransform", "fa_correlation",
           "register_to_template"]  # fmt: skip

#: Default smallest acceptable FA correlation with the template after registration.
MIN_CORRELATION = 0.5


@dataclass(frozen=True)
class SessionTransform:
    """Registration of one session FA map to the template (:func:`register_to_template`).

    Attributes
    ----------
    fa_file : Path
        The session FA map; its grid is the session's native space.
    forward : tuple of Path
        Transform files in antspyx order for ``apply_transforms(fixed=template,
        moving=native map, transformlist=forward)``.
    inverse : tuple of Path
        Transform files for ``apply_transforms(fixed=session FA, moving=template
        map, transformlist=inverse, whichtoinvert=inverse_invert)``.
    inverse_invert : tuple of bool
        antspyx ``whichtoinvert`` flags of :attr:`inverse` (``True`` for affines).
    correlation_before, correlation_after : float
        Pearson correlation of the FA map with the template over the voxels where
        the template is > 0, before (world alignment only) and after registration.
    cached : bool
        Loaded from a previous run rather than computed.
    """

    fa_file: Path
    forward: tuple[Path, ...]
    inverse: tuple[Path, ...]
    inverse_invert: tuple[bool, ...]
    correlation_before: float
    correlation_after: float
    cached: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fa_file", Path(self.fa_file))
        object.__setattr__(self, "forward", tuple(Path(p) for p in self.forward))
        object.__setattr__(self, "inverse", tuple(Path(p) for p in self.inverse))
        object.__setattr__(self, "inverse_invert", tuple(bool(f) for f in self.inverse_invert))
        if len(self.inverse) != len(self.inverse_invert):
            raise ValueError("inverse and inverse_invert must have the same length.")


def _pearson(template: np.ndarray, image: np.ndarray) -> float:
    """Pearson correlation over the voxels where ``template > 0``."""
    keep = template > 0
    if keep.sum() < 3:
        return 0.0
    a = template[keep].astype(np.float64)
    b = image[keep].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def fa_correlation(template: np.ndarray, image: np.ndarray) -> float:
    """Pearson correlation of two maps on the template grid, over ``template > 0``."""
    template = np.asarray(template)
    image = np.asarray(image)
    if template.shape != image.shape:
        raise ValueError(f"shapes differ: {template.shape} and {image.shape}.")
    return _pearson(template, image)


def register_to_template(
    fa_file: Path,
    template_file: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    transform: str = "SyN",
    min_correlation: float = MIN_CORRELATION,
    slack: float = CORRELATION_SLACK,
) -> SessionTransform:
    """Register a session FA map to the FA template (antspyx, Mattes MI).

    ``"SyN"`` is antspyx's affine stage followed by SyN; ``"Affine"`` stops after
    the affine.  Both start from the centre-of-mass alignment.

    Files in ``out_dir`` (``<stem>`` = FA file name without ``.nii[.gz]``):
    ``<stem>_to-template_0GenericAffine.mat`` (and for SyN
    ``<stem>_to-template_1Warp.nii.gz``, ``<stem>_to-template_1InverseWarp.nii.gz``)
    and the record ``<stem>_to-template.json`` (inputs' paths and sha256,
    parameters, correlations, transform files' sha256).  When the record matches
    the inputs and parameters and the transform files are intact, they are
    loaded (``cached=True``).  ``min_correlation`` and ``slack`` are acceptance
    thresholds, not cache keys: a cached result is checked again.

    Parameters
    ----------
    fa_file : Path
        3-D FA map of the session (moving image).
    template_file : Path
        FA template (fixed image).
    out_dir : Path
        Folder of the transform files and the record.
    seed : int
        Non-negative seed (ANTs gets ``seed + 1``).
    transform : {"SyN", "Affine"}
        Registration model.
    min_correlation : float
        Smallest acceptable FA correlation with the template after registration.
    slack : float
        Allowed drop of the correlation below its value before registration
        (registration noise of maps that were already aligned).

    Returns
    -------
    SessionTransform

    Raises
    ------
    RegistrationFailedError
        ANTs failed, or the correlation after registration is below
        ``min_correlation`` or more than ``slack`` below the one before.
    BadImageError
        An input cannot be read, is not 3-D or holds NaN/Inf.
    """
    import ants

    check_transform(transform)
    seed = check_seed(seed)
    fa_file = Path(fa_file)
    template_file = Path(template_file)
    out_dir = Path(out_dir)
    stem = f"{file_stem(fa_file)}_to-template"
    record_file = out_dir / f"{stem}.json"

    template_data, template_affine = load_image(template_file)
    key = {
        "record_version": RECORD_VERSION,
        "inputs": {"fa": file_entry(fa_file), "template": file_entry(template_file)},
        "parameters": {
            "seed": seed,
            "transform": transform,
            "settings": jsonify(registration_settings(transform, template_data.shape)),
            "antspyx": ants.__version__,
        },
    }
    record = read_record(record_file)
    if (
        record is not None
        and all(record.get(k) == v for k, v in key.items())
        and outputs_intact(out_dir, record.get("outputs"))
    ):
        result = _from_record(record, fa_file, out_dir, cached=True)
        logger.info("Registration %s -> template is up to date (cached).", fa_file.name)
    else:
        settings = registration_settings(transform, template_data.shape)
        result = _compute_registration(fa_file, template_data, template_affine, out_dir, stem,
                                       seed, settings)  # fmt: skip
        write_json(record_file, {
            **key,
            "correlation_before": result.correlation_before,
            "correlation_after": result.correlation_after,
            "forward": [p.name for p in result.forward],
            "inverse": [p.name for p in result.inverse],
            "inverse_invert": list(result.inverse_invert),
            "outputs": {p.name: sha256_file(p) for p in {*result.forward, *result.inverse}},
        })  # fmt: skip
    before, after = result.correlation_before, result.correlation_after
    logger.info("Registration %s -> template (%s): FA correlation %.4f -> %.4f.",
                fa_file.name, transform, before, after)  # fmt: skip
    if after < min_correlation or after < before - slack:
        raise RegistrationFailedError(
            f"registration of {fa_file} to the FA template {template_file.name} is not "
            f"usable: FA correlation with the template {before:.3f} before, {after:.3f} "
            f"after (needs >= {min_correlation:.2f} and no drop over {slack:.2f}). The "
            "session is excluded; check that its FA map is a brain and is not corrupted."
        )
    return result


def _from_record(record: dict, fa_file: Path, out_dir: Path, *, cached: bool) -> SessionTransform:
    return SessionTransform(
        fa_file=fa_file,
        forward=tuple(out_dir / n for n in record["forward"]),
        inverse=tuple(out_dir / n for n in record["inverse"]),
        inverse_invert=tuple(record["inverse_invert"]),
        correlation_before=float(record["correlation_before"]),
        correlation_after=float(record["correlation_after"]),
        cached=cached,
    )


def _compute_registration(
    fa_file: Path,
    template_data: np.ndarray,
    template_affine: np.ndarray,
    out_dir: Path,
    stem: str,
    seed: int,
    settings: dict[str, Any],
) -> SessionTransform:
    import ants

    out_dir.mkdir(parents=True, exist_ok=True)
    with ants_environment(seed), tempfile.TemporaryDirectory(prefix=".tmp-reg-",
                                                              dir=out_dir) as tmp:  # fmt: skip
        fixed = ants_image(template_data, template_affine, "the FA template")
        moving = ants_image(*load_image(fa_file), str(fa_file))
        initial = ants.resample_image_to_target(moving, fixed, interp_type="linear")
        before = _pearson(template_data, initial.numpy())
        prefix = os.path.join(tmp, "reg_")
        out = run_registration(fixed, moving, settings, prefix, f"{fa_file} to the FA template")
        names: dict[str, Path] = {}
        for produced in dict.fromkeys([*out["fwdtransforms"], *out["invtransforms"]]):
            base = os.path.basename(produced)
            if not base.startswith("reg_"):  # pragma: no cover - antspyx naming
                raise RegistrationFailedError(f"unexpected ANTs output {produced}.")
            final = out_dir / f"{stem}_{base[len('reg_') :]}"
            os.replace(produced, final)
            names[produced] = final
        forward = tuple(names[p] for p in out["fwdtransforms"])
        inverse = tuple(names[p] for p in out["invtransforms"])
        warped = ants.apply_transforms(fixed=fixed, moving=moving,
                                       transformlist=[str(p) for p in forward])  # fmt: skip
        after = _pearson(template_data, warped.numpy())
    return SessionTransform(
        fa_file=fa_file,
        forward=forward,
        inverse=inverse,
        inverse_invert=tuple(p.name.endswith(".mat") for p in inverse),
        correlation_before=before,
        correlation_after=after,
        cached=False,
    )
