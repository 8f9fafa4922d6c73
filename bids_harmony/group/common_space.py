r"""Common FA space of the group level: template building, registration, warping.

The group level compares sessions voxel by voxel, so every session's FA map is
registered to one study-specific FA template (:func:`build_fa_template`,
:func:`register_to_template`).  FA, MD and GFA maps (raw and harmonized) are
then warped into the template (:func:`to_template`); LinearRISH scale maps
estimated in template space are warped back onto each session's native grid
(:func:`from_template`).

Conventions
-----------
Arrays are in voxel order ``(X, Y, Z[, C])`` with a NIfTI (RAS+, mm) affine;
images reach antspyx through :func:`bids_harmony.harp.registration._to_ants`
(RAS → LPS), so world coordinates are shared by nibabel and ANTs.  A session
is registered with the *template as the fixed image* and its FA as the moving
image: :attr:`SessionTransform.forward` resamples a native map onto the template
grid and :attr:`SessionTransform.inverse` (with
:attr:`SessionTransform.inverse_invert`, antspyx's ``whichtoinvert``) resamples a
template-space map onto the session FA grid.

Determinism
-----------
Every antspyx call runs inside
:func:`bids_harmony.harp.registration._ants_environment`: one ITK thread and
``--random-seed seed + 1``; metrics sample densely
(``aff_random_sampling_rate=1``).  As noted there, ITK reads the thread count
when the process creates its first ITK object, so results are bit-identical
only if no antspyx code ran earlier in the process with more threads.

Caching
-------
Results are kept next to a JSON record holding the inputs (resolved path and
sha256), the parameters (including the registration settings and the antspyx
version) and the sha256 of every output file.  A later call with the same
inputs and parameters whose outputs are intact loads the result instead of
recomputing it.  Files are written atomically (:mod:`bids_harmony.bids.io`) and
the record last, so an interrupted run is recomputed, never half-reused.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.io import save_nifti, sha256_file, write_json
from bids_harmony.errors import BadImageError
from bids_harmony.harp.registration import (
    CORRELATION_SLACK,
    RegistrationError,
    _ants_environment,
    _to_ants,
)

logger = logging.getLogger(__name__)

__all__ = ["MIN_CORRELATION", "TRANSFORMS", "RegistrationFailedError", "SessionTransform",
           "build_fa_template", "fa_correlation", "from_template", "register_to_template",
           "to_template"]  # fmt: skip

#: Default smallest acceptable FA correlation with the template after registration.
MIN_CORRELATION = 0.5
#: Transform models accepted by :func:`build_fa_template` and :func:`register_to_template`.
TRANSFORMS = ("Affine", "SyN")
#: SyN iterations per level (coarse to fine), antspyx's default schedule.
SYN_ITERATIONS = (40, 20, 0)
#: Affine iterations at each shrink factor (coarse levels converge first).
_AFF_ITERATIONS = {4: 100, 2: 50, 1: 25}
#: Bump when the meaning of a cached record changes.
_RECORD_VERSION = 1
_INTERPOLATORS = frozenset({"linear", "nearestNeighbor", "multiLabel", "gaussian", "bSpline",
                            "cosineWindowedSinc", "welchWindowedSinc", "hammingWindowedSinc",
                            "lanczosWindowedSinc", "genericLabel"})  # fmt: skip
#: Template update of the affine part (ANTs' ``-y``: the rigid part is ignored)
#: and the step of the SyN shape update, as in ``antsMultivariateTemplateConstruction2``.
_GRADIENT_STEP = 0.2


class RegistrationFailedError(RegistrationError):
    """A session FA map could not be aligned to the template (exclude the session)."""


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


# --------------------------------------------------------------------------- helpers


def _stem(path: Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _sidecar(path: Path) -> Path:
    return path.with_name(_stem(path) + ".json")


def _file_entry(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file not found.")
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _load(path: Path, *, allow_4d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Data (float32 unless stored as float64) and affine of a NIfTI map."""
    import nibabel as nb

    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file not found.")
    try:
        img = nb.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:  # nibabel raises many kinds on broken files
        raise BadImageError(f"{path}: cannot read the image ({err}).") from err
    if data.ndim == 4 and data.shape[3] == 1 and not allow_4d:
        data = data[..., 0]
    if data.ndim != 3 and not (allow_4d and data.ndim == 4):
        raise BadImageError(
            f"{path}: expected a {'3-D or 4-D' if allow_4d else '3-D'} image, "
            f"got shape {data.shape}."
        )
    data = data.astype(np.float64 if data.dtype == np.float64 else np.float32, copy=False)
    _check_finite(data, str(path))
    return data, np.asarray(img.affine, dtype=float)


def _check_finite(data: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(data)):
        raise BadImageError(f"{what}: the map holds NaN or infinite values; mask them first.")


def _ants_image(data: np.ndarray, affine: np.ndarray, what: str) -> Any:
    try:
        return _to_ants(data, affine)
    except ValueError as err:
        raise BadImageError(f"{what}: {err}") from err


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


def _settings(transform: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Keyword arguments of ``ants.registration`` (also recorded for the cache)."""
    levels = (4, 2, 1) if min(shape) >= 16 else (2, 1)
    settings: dict[str, Any] = {
        "type_of_transform": transform,
        "aff_metric": "mattes",
        "aff_sampling": 32,
        "aff_random_sampling_rate": 1.0,
        "aff_iterations": tuple(_AFF_ITERATIONS[lvl] for lvl in levels),
        "aff_shrink_factors": levels,
        "aff_smoothing_sigmas": tuple(lvl // 2 for lvl in levels),
    }
    if transform == "SyN":
        settings.update(syn_metric="mattes", syn_sampling=32, reg_iterations=SYN_ITERATIONS)
    return settings


def _jsonify(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _register(fixed: Any, moving: Any, settings: dict[str, Any], prefix: str, what: str) -> dict:
    """One ``ants.registration`` run (inside :func:`_ants_environment`)."""
    import ants

    try:
        return ants.registration(fixed, moving, outprefix=prefix, **settings)
    except (RuntimeError, IndexError, ValueError) as err:
        raise RegistrationFailedError(f"registration of {what} failed: {err}") from err


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}.")


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    return int(seed)


def _read_record(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _outputs_intact(folder: Path, outputs: Any) -> bool:
    if not isinstance(outputs, dict) or not outputs:
        return False
    try:
        return all(
            (folder / name).is_file() and sha256_file(folder / name) == digest
            for name, digest in outputs.items()
        )
    except OSError:
        return False


# --------------------------------------------------------------------------- template


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

    _check_transform(transform)
    seed = _check_seed(seed)
    if int(iterations) < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    files = [Path(f) for f in fa_files]
    if not files:
        raise ValueError("build_fa_template needs at least one FA map.")
    out_file = Path(out_file)
    work_dir = Path(work_dir)
    sidecar = _sidecar(out_file)

    first_data, first_affine = _load(files[0])
    key = {
        "record_version": _RECORD_VERSION,
        "inputs": [_file_entry(f) for f in files],
        "parameters": {
            "seed": seed,
            "iterations": int(iterations),
            "transform": transform,
            "gradient_step": _GRADIENT_STEP,
            "rigid_settings": _jsonify(_settings("Rigid", first_data.shape)),
            "settings": _jsonify(_settings(transform, first_data.shape)),
            "antspyx": ants.__version__,
        },
    }
    record = _read_record(sidecar) if out_file.is_file() else None
    if (
        record is not None
        and all(record.get(k) == v for k, v in key.items())
        and _outputs_intact(out_file.parent, {out_file.name: record.get("output_sha256")})
    ):
        logger.info("FA template %s is up to date (cached).", out_file)
        return out_file

    work_dir.mkdir(parents=True, exist_ok=True)
    with (
        _ants_environment(seed),
        tempfile.TemporaryDirectory(prefix="fa_template_", dir=work_dir) as tmp,
    ):
        images = [_ants_image(first_data, first_affine, str(files[0]))]
        images += [_ants_image(*_load(f), str(f)) for f in files[1:]]
        rigid = _settings("Rigid", first_data.shape)
        warped = [images[0]] + [
            _register(images[0], img, rigid, os.path.join(tmp, f"rigid{k:04d}_"),
                      f"{files[k]} to {files[0]}")["warpedmovout"]
            for k, img in enumerate(images[1:], start=1)
        ]  # fmt: skip
        template = _mean(warped)
        settings = _settings(transform, first_data.shape)
        for it in range(int(iterations)):
            warped, affines, warps = [], [], []
            for k, img in enumerate(images):
                out = _register(template, img, settings, os.path.join(tmp, f"it{it}_{k:04d}_"),
                                f"{files[k]} to the template (round {it + 1})")  # fmt: skip
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


# --------------------------------------------------------------------------- registration


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

    _check_transform(transform)
    seed = _check_seed(seed)
    fa_file = Path(fa_file)
    template_file = Path(template_file)
    out_dir = Path(out_dir)
    stem = f"{_stem(fa_file)}_to-template"
    record_file = out_dir / f"{stem}.json"

    template_data, template_affine = _load(template_file)
    key = {
        "record_version": _RECORD_VERSION,
        "inputs": {"fa": _file_entry(fa_file), "template": _file_entry(template_file)},
        "parameters": {
            "seed": seed,
            "transform": transform,
            "settings": _jsonify(_settings(transform, template_data.shape)),
            "antspyx": ants.__version__,
        },
    }
    record = _read_record(record_file)
    if (
        record is not None
        and all(record.get(k) == v for k, v in key.items())
        and _outputs_intact(out_dir, record.get("outputs"))
    ):
        result = _from_record(record, fa_file, out_dir, cached=True)
        logger.info("Registration %s -> template is up to date (cached).", fa_file.name)
    else:
        settings = _settings(transform, template_data.shape)
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
    with _ants_environment(seed), tempfile.TemporaryDirectory(prefix=".tmp-reg-",
                                                              dir=out_dir) as tmp:  # fmt: skip
        fixed = _ants_image(template_data, template_affine, "the FA template")
        moving = _ants_image(*_load(fa_file), str(fa_file))
        initial = ants.resample_image_to_target(moving, fixed, interp_type="linear")
        before = _pearson(template_data, initial.numpy())
        prefix = os.path.join(tmp, "reg_")
        out = _register(fixed, moving, settings, prefix, f"{fa_file} to the FA template")
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


# --------------------------------------------------------------------------- warping


def _check_interpolator(interpolator: str) -> None:
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}, "
                         f"got {interpolator!r}.")  # fmt: skip


def _warp(
    data: np.ndarray,
    affine: np.ndarray,
    fixed: Any,
    transforms: Sequence[Path],
    invert: Sequence[bool] | None,
    interpolator: str,
    what: str,
) -> np.ndarray:
    """Resample a 3-D/4-D array (one volume at a time) onto ``fixed``."""
    import ants

    out_dtype = np.float64 if data.dtype == np.float64 else np.float32
    volumes = data[..., None] if data.ndim == 3 else data
    out = np.empty((*fixed.shape, volumes.shape[-1]), dtype=out_dtype)
    for c in range(volumes.shape[-1]):
        moving = _ants_image(volumes[..., c], affine, what)
        warped = ants.apply_transforms(
            fixed=fixed, moving=moving, transformlist=[str(p) for p in transforms],
            whichtoinvert=None if invert is None else list(invert), interpolator=interpolator,
        )  # fmt: skip
        out[..., c] = warped.numpy()
    return out[..., 0] if data.ndim == 3 else out


def _as_array(image: Path | np.ndarray, grid_file: Path, what: str) -> tuple[np.ndarray, Any]:
    """Data and affine of a map given as a file, or as an array on ``grid_file``'s grid."""
    import nibabel as nb

    if isinstance(image, (str, os.PathLike)):
        return _load(Path(image), allow_4d=True)
    data = np.asarray(image)
    if data.ndim not in (3, 4):
        raise BadImageError(f"{what}: expected a 3-D or 4-D array, got shape {data.shape}.")
    if not np.issubdtype(data.dtype, np.floating) or data.dtype == np.float16:
        data = data.astype(np.float32)
    _check_finite(data, what)
    try:
        grid = nb.load(str(grid_file))
    except Exception as err:
        raise BadImageError(f"{grid_file}: cannot read the image ({err}).") from err
    if tuple(data.shape[:3]) != tuple(grid.shape[:3]):
        raise BadImageError(
            f"{what}: array shape {data.shape[:3]} does not match the grid of {grid_file} "
            f"{tuple(grid.shape[:3])}."
        )
    return data, np.asarray(grid.affine, dtype=float)


def to_template(
    image: Path | np.ndarray,
    transform: SessionTransform,
    template_file: Path,
    *,
    reference: Path | None = None,
    interpolator: str = "linear",
) -> np.ndarray:
    """Warp a native-space map of a session into template space.

    Parameters
    ----------
    image : Path or ndarray, shape (X, Y, Z) or (X, Y, Z, C)
        A NIfTI file (any grid in the session's native world space: its own
        affine is used), or an array on the grid of ``reference``
        (default: the session FA map, ``transform.fa_file``).  4-D maps (e.g.
        RISH features per band) are warped volume by volume.
    transform : SessionTransform
        From :func:`register_to_template`.
    template_file : Path
        The FA template (output grid).
    reference : Path, optional
        NIfTI file whose grid an array ``image`` lies on.
    interpolator : str
        antspyx interpolator (``"linear"``, ``"nearestNeighbor"``, ``"genericLabel"``...).

    Returns
    -------
    ndarray, shape (X', Y', Z'[, C])
        On the template grid; ``float64`` for ``float64`` input, else ``float32``.
        Template voxels that map outside the native field of view are 0.
    """
    _check_interpolator(interpolator)
    reference = Path(reference) if reference is not None else transform.fa_file
    what = str(image) if isinstance(image, (str, os.PathLike)) else "map to warp"
    data, affine = _as_array(image, reference, what)
    template_data, template_affine = _load(Path(template_file))
    with _ants_environment(0):
        fixed = _ants_image(template_data, template_affine, str(template_file))
        return _warp(data, affine, fixed, transform.forward, None, interpolator, what)


def from_template(
    array: np.ndarray,
    transform: SessionTransform,
    template_file: Path,
    *,
    interpolator: str = "linear",
) -> np.ndarray:
    """Warp a template-space map back onto the session FA grid (native space).

    Parameters
    ----------
    array : ndarray, shape (X', Y', Z') or (X', Y', Z', C)
        On the grid of ``template_file`` (e.g. LinearRISH scale maps per band).
    transform : SessionTransform
        From :func:`register_to_template`.
    template_file : Path
        The FA template (grid of ``array``).
    interpolator : str
        antspyx interpolator.

    Returns
    -------
    ndarray, shape (X, Y, Z[, C])
        On the grid of ``transform.fa_file``; ``float64`` for ``float64`` input,
        else ``float32``.  Native voxels that map outside the template are 0.
    """
    _check_interpolator(interpolator)
    data, template_affine = _as_array(array, Path(template_file), "template-space map")
    fa_data, fa_affine = _load(transform.fa_file)
    with _ants_environment(0):
        fixed = _ants_image(fa_data, fa_affine, str(transform.fa_file))
        return _warp(data, template_affine, fixed, transform.inverse, transform.inverse_invert,
                     interpolator, "template-space map")  # fmt: skip
