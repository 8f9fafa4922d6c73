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
    """The tiny simulated study (seed 0) through the participant level, once per session.

    Laid out and run as ``bids-harmony-demo ROOT --size tiny`` runs its first two steps
    (``ROOT/bids``, ``ROOT/derivatives``, ``ROOT/work``, the same arguments), so that the
    demo on ``ROOT`` (``tests/test_harp_e2e.py``) reuses the study and finds the
    participant level in its work directory.  The demo then adds to ``derivatives``:
    tests that check the participant level alone read ``participant``, a copy taken
    before anything else ran (``test_participant_e2e.py``, ``test_harp_pairs.py``).
    """
    import shutil
    from types import SimpleNamespace

    from bids_harmony.cli.run import main
    from bids_harmony.simulate import simulate_study

    root = tmp_path_factory.mktemp("tiny_study")
    bids, derivatives, work = root / "bids", root / "derivatives", root / "work"
    simulate_study(bids, size="tiny", seed=0)
    code = main([str(bids), str(derivatives), "participant",
                 "--work-dir", str(work), "--nprocs", "2", "--seed", "0"])  # fmt: skip
    assert code == 0, f"participant level of the tiny study: exit code {code}"
    participant = root / "participant"
    shutil.copytree(derivatives, participant)
    return SimpleNamespace(root=root, bids=bids, derivatives=derivatives, work=work,
                           participant=participant, code=code)  # fmt: skip
