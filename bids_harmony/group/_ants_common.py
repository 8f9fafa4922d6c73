r"""antspyx plumbing shared by the common-FA-space modules.

:mod:`bids_harmony.group.template`, :mod:`bids_harmony.group.registration` and
:mod:`bids_harmony.group.warps` share what is here: reading and checking NIfTI
maps, handing them to antspyx, the ``ants.registration`` settings and call, and
the JSON records of the cache.

Conventions
-----------
Arrays are in voxel order ``(X, Y, Z[, C])`` with a NIfTI (RAS+, mm) affine;
images reach antspyx through :func:`bids_harmony.harp.registration._to_ants`
(RAS → LPS), so world coordinates are shared by nibabel and ANTs.

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

from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.io import sha256_file
from bids_harmony.errors import BadImageError
from bids_harmony.harp.registration import RegistrationError, _to_ants

#: Transform models accepted by :func:`~bids_harmony.group.template.build_fa_template`
#: and :func:`~bids_harmony.group.registration.register_to_template`.
TRANSFORMS = ("Affine", "SyN")
#: SyN iterations per level (coarse to fine), antspyx's default schedule.
SYN_ITERATIONS = (40, 20, 0)
#: Affine iterations at each shrink factor (coarse levels converge first).
_AFF_ITERATIONS = {4: 100, 2: 50, 1: 25}
#: Bump when the meaning of a cached record changes.
_RECORD_VERSION = 1


class RegistrationFailedError(RegistrationError):
    """A session FA map could not be aligned to the template (exclude the session)."""


# --------------------------------------------------------------------------- maps


def _stem(path: Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _sidecar(path: Path) -> Path:
    return path.with_name(_stem(path) + ".json")


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


# --------------------------------------------------------------------------- registration


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
    """One ``ants.registration`` run (call it inside ``_ants_environment``)."""
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


# --------------------------------------------------------------------------- cache records


def _file_entry(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file not found.")
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


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
