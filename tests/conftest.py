"""Shared fixtures: small BIDS datasets written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest


def fibonacci_directions(n: int) -> np.ndarray:
    """Quasi-uniform unit vectors on the sphere, shape (n, 3)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z**2)
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


def hemisphere(n: int) -> np.ndarray:
    """``n`` well-spread unit vectors (Fibonacci lattice on the upper hemisphere)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def write_run(
    folder: Path,
    prefix: str,
    *,
    rng: np.random.Generator,
    n_dirs: int = 30,
    bval: float = 1000.0,
    n_b0: int = 2,
    shape: tuple[int, int, int] = (10, 10, 6),
    metadata: dict | None = None,
    dirs: np.ndarray | None = None,
) -> Path:
    """Write a single-shell run of an anisotropic blob with Rician-ish noise.

    ``dirs`` (n, 3) replaces the default full-sphere spiral of ``n_dirs`` directions.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dirs = fibonacci_directions(n_dirs) if dirs is None else np.asarray(dirs, dtype=float)
    n_dirs = len(dirs)
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, bval)]
    bvecs = np.vstack([np.zeros((n_b0, 3)), dirs])
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    inside = (grid**2).sum(-1) < 0.8
    evals = np.array([1.7e-3, 0.4e-3, 0.4e-3])
    signal = np.exp(-bvals[:, None] * ((bvecs**2) @ evals)[:, None])  # fibre along x
    data = np.zeros((*shape, bvals.size), dtype=np.float32)
    data[inside] = 1000.0 * signal[:, 0]
    data += np.abs(rng.normal(0, 20.0, data.shape))
    img = nb.Nifti1Image(data.astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    dwi = folder / f"{prefix}_dwi.nii.gz"
    nb.save(img, dwi)
    (folder / f"{prefix}_dwi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    (folder / f"{prefix}_dwi.bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in bvecs[:, i]) for i in range(3)) + "\n"
    )
    meta = {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma",
            "MagneticFieldStrength": 3, "EchoTime": 0.06, "RepetitionTime": 4.0}  # fmt: skip
    (folder / f"{prefix}_dwi.json").write_text(json.dumps({**meta, **(metadata or {})}))
    return dwi


def make_bids(root: Path, *, subjects=("01",), sessions=("A",), seed: int = 0) -> Path:
    """A minimal valid BIDS dataset with one single-shell run per session."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    )
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in subjects)
    )
    for sub in subjects:
        for ses in sessions:
            write_run(root / f"sub-{sub}" / f"ses-{ses}" / "dwi", f"sub-{sub}_ses-{ses}", rng=rng)
    return root


@pytest.fixture
def small_bids(tmp_path: Path) -> Path:
    return make_bids(tmp_path / "bids")


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """``bids-harmony-demo ROOT --size tiny --keep-work``, once per session.

    The demo simulates the tiny study (seed 0) and runs participant → train (HARP) →
    participant → group in ``ROOT/bids``, ``ROOT/derivatives`` and ``ROOT/work``
    (kept).  ``participant`` is a copy of ``derivatives`` taken right after its first
    participant level, for the tests that check that level alone
    (``test_participant_e2e.py``, ``test_harp_pairs.py``, ``test_dki_cnn_e2e.py``, which
    also resumes from the work directory); ``test_harp_e2e.py`` checks the whole demo.
    ``printed`` is what the demo printed, ``codes`` the exit code of each level it ran.
    """
    import contextlib
    import io
    import shutil
    from types import SimpleNamespace

    import bids_harmony.cli.run
    from bids_harmony.cli.demo import main as demo_main

    root = tmp_path_factory.mktemp("tiny_study")
    derivatives, participant = root / "derivatives", root / "participant"
    run_level = bids_harmony.cli.run.main
    codes: list[tuple[str, int]] = []

    def run_and_copy(argv: list[str]) -> int:
        code = run_level(argv)
        codes.append((argv[2], code))
        if argv[2] == "participant" and not participant.exists():
            shutil.copytree(derivatives, participant)
        return code

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(bids_harmony.cli.run, "main", run_and_copy)  # the demo calls it per level
        code = demo_main([str(root), "--size", "tiny", "--nprocs", "2", "--keep-work"])
    # the exit codes are checked by the tests (a failed group level must not fail those
    # of the participant level)
    assert participant.exists(), f"the demo stopped before its participant level: {codes}"
    return SimpleNamespace(root=root, bids=root / "bids", derivatives=derivatives,
                           work=root / "work", participant=participant,
                           printed=printed.getvalue(), code=code, codes=codes)  # fmt: skip
