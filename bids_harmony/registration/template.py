r"""Study-specific FA template of the group level (antspyx).

:func:`build_fa_template` averages the session FA maps of the target site into
one template, the fixed image every session is then registered to
(:mod:`bids_harmony.registration.syn`).  The construction follows
``antsMultivariateTemplateConstruction2``: a rigid mean, then rounds of
registration, averaging and the ANTs shape update, without sharpening.  The
result is cached next to a JSON sidecar (see :mod:`bids_harmony.registration.ants`
for the record, the determinism and the conventions).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.io import save_nifti, sha256_file, write_json
from bids_harmony.registration.ants import (
    RECORD_VERSION,
    ants_environment,
    ants_image,
    check_seed,
    check_transform,
    file_entry,
    jsonify,
    load_image,
    outputs_intact,
    read_record,
    registration_settings,
    run_registration,
    sidecar_path,
)

logger = logging.getLogger(__name__)

__all__ = ["build_fa_template"]

#: Template update of the affine part (ANTs' ``-y``: the rigid part is ignored)
#: and the step of the SyN shape update, as in ``antsMultivariateTemplateConstruction2``.
_GRADIENT_STEP = 0.2


def build_fa_template(
    fa_files: Sequence[Path],
    out_file: Path,
    work_dir: Path,
    *,
    seed: int = 0,
    iterations: int = 2,
    transform: str = "Affine",
) -> Path:
    """Build a study-specific FA template from session FA maps.

    The initial template is the mean of all maps after rigid alignment to the
    first one (on the first map's grid).  Each of ``iterations`` rounds
    registers every map to the current template (``transform``), averages the
    warped maps and applies the ANTs shape update: the inverse of the mean
    affine without its rigid part (so the template has the mean size and shape,
    and stays at the first map's position) and, for SyN, ``-0.2`` times the mean
    warp.  No sharpening: template voxels are plain FA averages.

    Parameters
    ----------
    fa_files : sequence of Path
        3-D FA maps, one per session.
    out_file : Path
        Template NIfTI (float32) written atomically; its JSON sidecar
        (``<stem>.json``) records inputs, parameters and the output's sha256.
    work_dir : Path
        Scratch folder for intermediate transforms (a temporary subfolder is
        removed at the end).
    seed : int
        Non-negative seed (ANTs gets ``seed + 1``).
    iterations : int
        Registration/averaging rounds (0: the rigid mean only).
    transform : {"Affine", "SyN"}
        Registration model of the rounds.

    Returns
    -------
    Path
        ``out_file``.  When it exists and its sidecar records the same inputs
        (paths and sha256) and parameters, it is returned without recomputation.
    """
    import ants
    import nibabel as nb

    check_transform(transform)
    seed = check_seed(seed)
    if int(iterations) < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    files = [Path(f) for f in fa_files]
    if not files:
        raise ValueError("build_fa_template needs at least one FA map.")
    out_file = Path(out_file)
    work_dir = Path(work_dir)
    sidecar = sidecar_path(out_file)

    first_data, first_affine = load_image(files[0])
    key = {
        "record_version": RECORD_VERSION,
        "inputs": [file_entry(f) for f in files],
        "parameters": {
            "seed": seed,
            "iterations": int(iterations),
            "transform": transform,
            "gradient_step": _GRADIENT_STEP,
            "rigid_settings": jsonify(registration_settings("Rigid", first_data.shape)),
            "settings": jsonify(registration_settings(transform, first_data.shape)),
            "antspyx": ants.__version__,
        },
    }
    record = read_record(sidecar) if out_file.is_file() else None
    if (
        record is not None
        and all(record.get(k) == v for k, v in key.items())
        and outputs_intact(out_file.parent, {out_file.name: record.get("output_sha256")})
    ):
        logger.info("FA template %s is up to date (cached).", out_file)
        return out_file

    work_dir.mkdir(parents=True, exist_ok=True)
    with (
        ants_environment(seed),
        tempfile.TemporaryDirectory(prefix="fa_template_", dir=work_dir) as tmp,
    ):
        images = [ants_image(first_data, first_affine, str(files[0]))]
        images += [ants_image(*load_image(f), str(f)) for f in files[1:]]
        rigid = registration_settings("Rigid", first_data.shape)
        warped = [images[0]] + [
            run_registration(images[0], img, rigid, os.path.join(tmp, f"rigid{k:04d}_"),
                      f"{files[k]} to {files[0]}")["warpedmovout"]
            for k, img in enumerate(images[1:], start=1)
        ]  # fmt: skip
        template = _mean(warped)
        settings = registration_settings(transform, first_data.shape)
        for it in range(int(iterations)):
            warped, affines, warps = [], [], []
            for k, img in enumerate(images):
                out = run_registration(template, img, settings,
                                       os.path.join(tmp, f"it{it}_{k:04d}_"),
                                       f"{files[k]} to the template (round {it + 1})")
                warped.append(out["warpedmovout"])
                affines.append(out["fwdtransforms"][-1])
                if len(out["fwdtransforms"]) == 2:
                    warps.append(out["fwdtransforms"][0])
            template = _shape_update(_mean(warped), affines, warps, Path(tmp) / f"it{it}")
            logger.info("FA template round %d/%d: %d maps averaged.",
                        it + 1, iterations, len(images))  # fmt: skip
        data = np.asarray(template.numpy(), dtype=np.float32)
    if data.shape != first_data.shape:  # pragma: no cover - ANTs keeps the fixed grid
        raise RuntimeError(f"template grid {data.shape} differs from {first_data.shape}.")
    header = nb.Nifti1Header()
    header.set_xyzt_units("mm")
    img = nb.Nifti1Image(data, first_affine, header)
    img.set_qform(first_affine, code=1)
    img.set_sform(first_affine, code=1)
    save_nifti(img, out_file)
    write_json(sidecar, {**key, "output_sha256": sha256_file(out_file)})
    logger.info("Wrote FA template %s from %d maps.", out_file, len(files))
    return out_file


def _mean(images: list[Any]) -> Any:
    total = images[0].clone()
    for img in images[1:]:
        total = total + img
    return total / float(len(images))


def _average_affine_no_rigid(files: list[str]) -> Any:
    """Mean scaling and shear of ANTs affine files, without rotation or translation.

    The numpy equivalent of ANTs' ``AverageAffineTransformNoRigid`` (which
    prints to stdout): each matrix is factored ``Q S K`` (rotation, positive
    scales, unit upper-triangular shears); ``S`` and ``K`` are averaged, about the
    mean centre.
    """
    import ants

    scales, shears, centers = [], [], []
    for name in files:
        tx = ants.read_transform(name)
        matrix = np.asarray(tx.parameters, dtype=float)[:9].reshape(3, 3)
        _, upper = np.linalg.qr(matrix)
        sign = np.where(np.diag(upper) < 0, -1.0, 1.0)
        upper = sign[:, None] * upper
        scale = np.diag(upper).copy()
        scales.append(scale)
        shears.append(upper / scale[:, None])
        centers.append(np.asarray(tx.fixed_parameters, dtype=float)[:3])
    return ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="double",
        dimension=3,
        matrix=np.diag(np.mean(scales, axis=0)) @ np.mean(shears, axis=0),
        center=np.mean(centers, axis=0),
        translation=np.zeros(3),
    )


def _shape_update(mean: Any, affines: list[str], warps: list[str], prefix: Path) -> Any:
    """ANTs template shape update of an average image (no sharpening)."""
    import ants

    affine_file = f"{prefix}_avgAffine.mat"
    ants.write_transform(_average_affine_no_rigid(affines), affine_file)
    if not warps:
        return ants.apply_transforms(fixed=mean, moving=mean, transformlist=[affine_file],
                                     whichtoinvert=[True])  # fmt: skip
    wavg = _mean([ants.image_read(w) for w in warps]) * (-_GRADIENT_STEP)
    wavg = ants.apply_transforms(fixed=mean, moving=wavg, imagetype=1,
                                 transformlist=[affine_file], whichtoinvert=[True])  # fmt: skip
    warp_file = f"{prefix}_avgWarp.nii.gz"
    ants.image_write(wavg, warp_file)
    return ants.apply_transforms(fixed=mean, moving=mean, transformlist=[warp_file, affine_file],
                                 whichtoinvert=[False, True])  # fmt: skip
