r"""antspyx plumbing shared by every registration module (rigid, SyN, templates, warps).

:mod:`bids_harmony.registration.template`, :mod:`bids_harmony.registration.syn` and
:mod:`bids_harmony.registration.warps` share what is here: reading and checking NIfTI
maps, handing them to antspyx, the ``ants.registration`` settings and call, and
the JSON records of the cache.

Conventions
-----------
Arrays are in voxel order ``(X, Y, Z[, C])`` with a NIfTI (RAS+, mm) affine;
images reach antspyx through :func:`bids_harmony.registration.ants.to_ants`
(RAS → LPS), so world coordinates are shared by nibabel and ANTs.

Determinism
-----------
Every antspyx call runs inside
:func:`bids_harmony.registration.ants.ants_environment`: one ITK thread and
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

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.io import sha256_file
from bids_harmony.errors import BadImageError, RegistrationError

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""RAS -> LPS (ITK's world convention) as a 4x4 matrix."""
THREADS_VAR = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
#: Transform models accepted by :func:`~bids_harmony.registration.template.build_fa_template`
#: and :func:`~bids_harmony.registration.syn.register_to_template`.
TRANSFORMS = ("Affine", "SyN")
#: SyN iterations per level (coarse to fine), antspyx's default schedule.
SYN_ITERATIONS = (40, 20, 0)
#: Affine iterations at each shrink factor (coarse levels converge first).
AFF_ITERATIONS = {4: 100, 2: 50, 1: 25}
#: Bump when the meaning of a cached record changes.
RECORD_VERSION = 1


class RegistrationFailedError(RegistrationError):
    """A session FA map could not be aligned to the template (exclude the session)."""


# --------------------------------------------------------------------------- antspyx


@contextlib.contextmanager
def ants_environment(seed: int) -> Iterator[None]:
    """Single-threaded ITK and a fixed ``--random-seed`` for the duration of the block.

    antspyx appends ``--random-seed`` when ``ants.config._random_seed`` is set
    (what its ``set_ants_deterministic`` does, without that function's seeding
    of numpy's global generator); the previous value is restored.
    """
    import ants.config

    saved_threads = os.environ.get(THREADS_VAR)
    saved_seed = ants.config._random_seed
    os.environ[THREADS_VAR] = "1"
    ants.config._random_seed = int(seed) + 1  # ANTs draws a clock seed for 0
    try:
        yield
    finally:
        ants.config._random_seed = saved_seed
        if saved_threads is None:
            os.environ.pop(THREADS_VAR, None)
        else:
            os.environ[THREADS_VAR] = saved_threads


def check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"an affine must be a finite 4x4 matrix, got shape {affine.shape}.")
    return affine


def to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    """An ANTs image (LPS physical space) from a 3-D array and a RAS affine."""
    import ants

    affine = check_affine(affine)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the affine has a zero voxel size.")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("the affine has shears; rigid registration needs orthogonal axes.")
    flip = LPS[:3, :3]
    return ants.from_numpy(
        np.ascontiguousarray(data, dtype=np.float32),
        origin=tuple(float(v) for v in flip @ affine[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=flip @ direction,
    )



# --------------------------------------------------------------------------- maps


def file_stem(path: Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def sidecar_path(path: Path) -> Path:
    return path.with_name(file_stem(path) + ".json")


def load_image(path: Path, *, allow_4d: bool = False) -> tuple[np.ndarray, np.ndarray]:
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
    check_finite(data, str(path))
    return data, np.asarray(img.affine, dtype=float)


def check_finite(data: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(data)):
        raise BadImageError(f"{what}: the map holds NaN or infinite values; mask them first.")


def ants_image(data: np.ndarray, affine: np.ndarray, what: str) -> Any:
    try:
        return to_ants(data, affine)
    except ValueError as err:
        raise BadImageError(f"{what}: {err}") from err


# --------------------------------------------------------------------------- registration


def registration_settings(transform: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Keyword arguments of ``ants.registration`` (also recorded for the cache)."""
    levels = (4, 2, 1) if min(shape) >= 16 else (2, 1)
    settings: dict[str, Any] = {
        "type_of_transform": transform,
        "aff_metric": "mattes",
        "aff_sampling": 32,
        "aff_random_sampling_rate": 1.0,
        "aff_iterations": tuple(AFF_ITERATIONS[lvl] for lvl in levels),
        "aff_shrink_factors": levels,
        "aff_smoothing_sigmas": tuple(lvl // 2 for lvl in levels),
    }
    if transform == "SyN":
        settings.update(syn_metric="mattes", syn_sampling=32, reg_iterations=SYN_ITERATIONS)
    return settings


def jsonify(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def run_registration(
    fixed: Any, moving: Any, settings: dict[str, Any], prefix: str, what: str
) -> dict:
    """One ``ants.registration`` run (call it inside ``ants_environment``)."""
    import ants

    try:
        return ants.registration(fixed, moving, outprefix=prefix, **settings)
    except (RuntimeError, IndexError, ValueError) as err:
        raise RegistrationFailedError(f"registration of {what} failed: {err}") from err


def check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}.")


def check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    return int(seed)


# --------------------------------------------------------------------------- cache records


def file_entry(path: Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file not found.")
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def read_record(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def outputs_intact(folder: Path, outputs: Any) -> bool:
    if not isinstance(outputs, dict) or not outputs:
        return False
    try:
        return all(
            (folder / name).is_file() and sha256_file(folder / name) == digest
            for name, digest in outputs.items()
        )
    except OSError:
        return False
