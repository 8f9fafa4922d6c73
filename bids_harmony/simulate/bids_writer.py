"""The only simulator module that touches files: BIDS raw data and ground truth.

All writes are atomic (a hidden temporary file in the destination directory, then
:func:`os.replace`) and deterministic (sorted iteration, no timestamps; gzip
streams carry ``mtime = 0`` and no file name).  Readers for the ground truth live
here too, so the numeric modules stay free of I/O.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from bids_harmony import CODE_URL, __version__
from bids_harmony.errors import NoDataError
from bids_harmony.simulate.brain import BrainSpec
from bids_harmony.simulate.kurtosis import true_dki_maps
from bids_harmony.simulate.phantom import PhantomSpec
from bids_harmony.simulate.site_effects import SiteParams
from bids_harmony.simulate.tissue import Grid, Pose, TissueModel

BIDS_VERSION = "1.9.0"
GROUND_TRUTH_DIR = Path("sourcedata") / "simulation"


def write_stream(
    path: Path, parts: Iterable[bytes], tail: Callable[[], bytes] | None = None
) -> Path:
    """Write the concatenated ``parts`` (then ``tail()``) to ``path`` atomically.

    The data go to a hidden ``.<name>.partial`` file in the same directory, renamed
    over ``path`` only when complete; parents are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as fobj:
            for part in parts:
                fobj.write(part)
            if tail is not None:
                fobj.write(tail())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created)."""
    return write_stream(path, [data])


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (key order as given) atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_tsv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a tab-separated table with a header row."""
    lines = ["\t".join(columns)] + ["\t".join(str(v) for v in row) for row in rows]
    return write_text(path, "\n".join(lines) + "\n")


def _nifti_parts(data: NDArray, affine: NDArray, *, tr_s: float | None = None) -> Iterator[bytes]:
    """Bytes of a single-file NIfTI-1 image, one 3D volume at a time.

    Same bytes as :meth:`nibabel.Nifti1Image.to_bytes` (header with qform = sform =
    ``affine``, code 1; no scaling; data in Fortran order at offset 352) without
    holding a second copy of the data.
    """
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    if tr_s is not None and data.ndim == 4:
        hdr.set_zooms(hdr.get_zooms()[:3] + (tr_s,))
    hdr.set_data_offset(352)
    hdr.set_slope_inter(1.0, 0.0)
    yield hdr.binaryblock + b"\x00" * 4
    arr = np.asarray(data, dtype=hdr.get_data_dtype())
    if arr.ndim == 3:
        yield arr.tobytes(order="F")
        return
    vols = arr.reshape(arr.shape[:3] + (-1,), order="F")
    for v in range(vols.shape[-1]):
        yield vols[..., v].tobytes(order="F")


def nifti_bytes(data: NDArray, affine: NDArray, *, tr_s: float | None = None) -> bytes:
    """Gzipped NIfTI-1 bytes (see :func:`write_nifti`)."""
    comp = _deflater()
    out = [comp.compress(part) for part in _nifti_parts(data, affine, tr_s=tr_s)]
    return b"".join(out) + comp.flush()


def _deflater() -> Any:
    """Deterministic gzip stream (no name, mtime 0) using fast run-length deflate.

    Noisy images gain nothing from LZ77 matching; ``Z_RLE`` compresses them as well
    as the default strategy at twice the speed.
    """
    return zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9, zlib.Z_RLE)


def write_nifti(path: Path, data: NDArray, affine: NDArray, *, tr_s: float | None = None) -> Path:
    """Write ``data`` as a ``.nii.gz`` image atomically, streaming the compression."""
    comp = _deflater()
    return write_stream(
        path, (comp.compress(p) for p in _nifti_parts(data, affine, tr_s=tr_s)), comp.flush
    )


def format_bvals(bvals: NDArray) -> str:
    """One row, space separated, integers when integral."""
    vals = np.asarray(bvals, dtype=float)
    if np.allclose(vals, np.round(vals)):
        return " ".join(str(int(round(v))) for v in vals) + "\n"
    return " ".join(f"{v:.2f}" for v in vals) + "\n"


def format_bvecs(bvecs: NDArray) -> str:
    """Three rows (x, y, z), space separated, 6 decimals, no negative zeros."""
    vecs = np.round(np.asarray(bvecs, dtype=float), 6) + 0.0
    return "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in vecs.T)


def dwi_path(root: Path, subject: str, session: str, acq: str, suffix: str) -> Path:
    """``sub-X/ses-Y/dwi/sub-X_ses-Y_acq-Z_dwi<suffix>``."""
    name = f"sub-{subject}_ses-{session}_acq-{acq}_dwi{suffix}"
    return Path(root) / f"sub-{subject}" / f"ses-{session}" / "dwi" / name


def write_dwi_run(
    root: Path,
    subject: str,
    session: str,
    acq: str,
    image: NDArray,
    affine: NDArray,
    bvals: NDArray,
    bvecs: NDArray,
    sidecar: dict[str, Any],
) -> dict[str, Path]:
    """Write the four files of a ``dwi`` run; return them by extension."""
    paths = {
        ext: dwi_path(root, subject, session, acq, ext)
        for ext in (".nii.gz", ".bval", ".bvec", ".json")
    }
    write_json(paths[".json"], sidecar)
    write_text(paths[".bval"], format_bvals(bvals))
    write_text(paths[".bvec"], format_bvecs(bvecs))
    write_nifti(paths[".nii.gz"], image, affine, tr_s=sidecar.get("RepetitionTime"))
    return paths


def write_dataset_files(
    root: Path,
    *,
    name: str,
    description: str,
    readme: str,
    participants: Sequence[dict[str, Any]],
) -> None:
    """``dataset_description.json``, ``README``, ``participants.tsv``/``.json``."""
    root = Path(root)
    write_json(
        root / "dataset_description.json",
        {
            "Name": name,
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["bids_harmony simulator"],
            "GeneratedBy": [
                {
                    "Name": "bids_harmony",
                    "Version": __version__,
                    "CodeURL": CODE_URL,
                    "Description": description,
                }
            ],
        },
    )
    write_text(root / "README", readme)
    cols = ["participant_id", "species", "phantom", "age", "sex"]
    write_tsv(root / "participants.tsv", cols, ([p[c] for c in cols] for p in participants))
    write_json(
        root / "participants.json",
        {
            "participant_id": {"Description": "Participant label (phantoms start with 'phantom')"},
            "species": {"Description": "Species, or 'phantom' for a diffusion phantom"},
            "phantom": {
                "Description": "Whether the participant is a phantom",
                "Levels": {"true": "diffusion phantom", "false": "human"},
            },
            "age": {"Description": "Age at first session", "Units": "year"},
            "sex": {"Description": "Sex", "Levels": {"F": "female", "M": "male"}},
        },
    )


def write_sessions(root: Path, subject: str, rows: Sequence[dict[str, Any]]) -> Path:
    """``sub-X/sub-X_sessions.tsv`` (+ ``.json``) with the site of each session."""
    base = Path(root) / f"sub-{subject}"
    cols = ["session_id", "site", "manufacturer", "model"]
    write_json(
        base / f"sub-{subject}_sessions.json",
        {
            "site": {"Description": "Scanner site of the session (bids_harmony site label)"},
            "manufacturer": {"Description": "Scanner manufacturer"},
            "model": {"Description": "Scanner model"},
        },
    )
    return write_tsv(
        base / f"sub-{subject}_sessions.tsv", cols, ([r[c] for c in cols] for r in rows)
    )


# --------------------------------------------------------------------------- ground truth
def gt_dir(root: Path, subject: str | None = None, session: str | None = None) -> Path:
    """Ground-truth folder of the study, a subject or a session."""
    path = Path(root) / GROUND_TRUTH_DIR
    if subject is not None:
        path = path / f"sub-{subject}"
        if session is not None:
            path = path / f"ses-{session}"
    return path


def write_site(root: Path, site: SiteParams) -> Path:
    """``site-<label>_params.json``."""
    return write_json(gt_dir(root) / f"site-{site.label}_params.json", site.to_dict())


def write_subject_truth(
    root: Path, subject: str, grid: Grid, spec: BrainSpec | PhantomSpec, tissue: TissueModel
) -> None:
    """Spec, reference-pose tissue model, segmentation, mask and true FA/MD maps."""
    base = gt_dir(root, subject)
    grid_dict = {"shape": list(grid.shape), "voxel_size": list(grid.voxel_size)}
    write_json(base / f"sub-{subject}_spec.json", {"grid": grid_dict, "anatomy": spec.to_dict()})
    buf = _npz_bytes(tissue)
    write_bytes(base / f"sub-{subject}_tissue.npz", buf)
    write_tissue_maps(base, f"sub-{subject}", tissue)


def write_tissue_maps(base: Path, prefix: str, tissue: TissueModel, dki: bool = False) -> None:
    """``_dseg``, ``_desc-brain_mask``, ``_desc-truth_FA``, ``_desc-truth_MD`` images.

    With ``dki``, also the DKI truth (:func:`~bids_harmony.simulate.kurtosis.true_dki_maps`):
    ``<prefix>_desc-truth_model-dki_param-<x>_dwimap.nii.gz`` for x in md, ad, rd
    (mm²/s), fa, mk, ak, rk, kfa.
    """
    aff = tissue.grid.affine
    fa, md = tissue.true_fa_md()
    write_nifti(base / f"{prefix}_dseg.nii.gz", tissue.labels, aff)
    write_nifti(base / f"{prefix}_desc-brain_mask.nii.gz", tissue.mask.astype(np.uint8), aff)
    write_nifti(base / f"{prefix}_desc-truth_FA.nii.gz", fa, aff)
    write_nifti(base / f"{prefix}_desc-truth_MD.nii.gz", md, aff)
    if dki:
        for param, image in true_dki_maps(tissue).items():
            write_nifti(base / dki_truth_name(prefix, param), image, aff)


def dki_truth_name(prefix: str, param: str) -> str:
    """File name of a DKI truth map: ``<prefix>_desc-truth_model-dki_param-<param>_dwimap``."""
    return f"{prefix}_desc-truth_model-dki_param-{param}_dwimap.nii.gz"


def dki_truth_path(root: Path, subject: str, session: str, param: str) -> Path:
    """Path of a human session's DKI truth map (``param`` in md, ad, rd, fa, mk, ak, rk, kfa)."""
    return gt_dir(root, subject, session) / dki_truth_name(f"sub-{subject}_ses-{session}", param)


def write_session_truth(
    root: Path,
    subject: str,
    session: str,
    pose: Pose,
    tissue: TissueModel,
    phantom: dict[str, Any] | None = None,
    dki: bool = False,
) -> None:
    """Pose JSON, phantom state JSON (phantoms) and the posed tissue maps of a session
    (with ``dki``: and its DKI truth maps, :func:`write_tissue_maps`)."""
    base = gt_dir(root, subject, session)
    if phantom is not None:
        write_json(base / f"sub-{subject}_ses-{session}_phantom.json", phantom)
    write_json(
        base / f"sub-{subject}_ses-{session}_pose.json",
        {
            "angles_deg": list(pose.angles_deg),
            "translation_mm": list(pose.translation_mm),
            "matrix": pose.matrix.round(10).tolist(),
            "Description": "Object-to-scanner rigid transform p = R q + t (mm, voxel axes, "
            "origin at the grid centre); rotations extrinsic x, y, z.",
        },
    )
    write_tissue_maps(base, f"sub-{subject}_ses-{session}", tissue, dki=dki)


def noiseless_path(root: Path, subject: str, session: str, acq: str) -> Path:
    """Path of a run's noise-free image."""
    name = f"sub-{subject}_ses-{session}_acq-{acq}_desc-noiseless_dwi.nii.gz"
    return gt_dir(root, subject, session) / name


def _npz_bytes(tissue: TissueModel) -> bytes:
    buf = io.BytesIO()
    arrays = tissue.arrays()
    np.savez_compressed(
        buf,
        kind=np.array(tissue.kind),
        shape=np.array(tissue.grid.shape),
        voxel_size=np.array(tissue.grid.voxel_size),
        **arrays,
    )
    return buf.getvalue()


# --------------------------------------------------------------------------- readers
def read_json(path: Path) -> Any:
    """Parse a JSON file, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise NoDataError(f"ground-truth file not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def read_site(root: Path, label: str) -> SiteParams:
    """Site parameters written by :func:`write_site`."""
    return SiteParams.from_dict(read_json(gt_dir(root) / f"site-{label}_params.json"))


def read_spec(root: Path, subject: str) -> tuple[Grid, BrainSpec | PhantomSpec]:
    """Grid and anatomy written by :func:`write_subject_truth`."""
    data = read_json(gt_dir(root, subject) / f"sub-{subject}_spec.json")
    grid = Grid(tuple(data["grid"]["shape"]), tuple(float(v) for v in data["grid"]["voxel_size"]))
    anatomy = data["anatomy"]
    spec_cls = PhantomSpec if anatomy.get("type") == "phantom" else BrainSpec
    return grid, spec_cls.from_dict({k: v for k, v in anatomy.items() if k != "type"})


def read_pose(root: Path, subject: str, session: str) -> Pose:
    """Session pose written by :func:`write_session_truth`."""
    data = read_json(gt_dir(root, subject, session) / f"sub-{subject}_ses-{session}_pose.json")
    return Pose(tuple(data["angles_deg"]), tuple(data["translation_mm"]))


def read_phantom_state(root: Path, subject: str, session: str) -> dict[str, Any]:
    """Phantom state of a session (``temperature_delta_c``, …) from its ``_phantom.json``.

    Datasets written before the file existed read as at nominal temperature.
    """
    path = gt_dir(root, subject, session) / f"sub-{subject}_ses-{session}_phantom.json"
    if not path.is_file():
        return {"temperature_delta_c": 0.0}
    return read_json(path)


def read_tissue(path: Path) -> TissueModel:
    """A ``_tissue.npz`` written by :func:`write_subject_truth`."""
    path = Path(path)
    if not path.is_file():
        raise NoDataError(f"tissue model not found: {path}")
    with np.load(path) as npz:
        grid = Grid(tuple(int(v) for v in npz["shape"]), tuple(float(v) for v in npz["voxel_size"]))
        names = TissueModel.ARRAY_FIELDS + TissueModel.POOL_FIELDS
        arrays = {name: npz[name] for name in names if name in npz.files}
        return TissueModel.from_arrays(grid, arrays, kind=str(npz["kind"]))


def read_table(root: Path, subject: str, session: str, acq: str) -> tuple[NDArray, NDArray]:
    """``(bvals (V,), bvecs (V, 3))`` of a written run."""
    bval = dwi_path(root, subject, session, acq, ".bval")
    bvec = dwi_path(root, subject, session, acq, ".bvec")
    if not bval.is_file() or not bvec.is_file():
        raise NoDataError(f"no gradient table for sub-{subject} ses-{session} acq-{acq}")
    return np.loadtxt(bval, ndmin=1), np.loadtxt(bvec, ndmin=2).T
