"""Time the numerical dMRI steps on a synthetic session.

    python benchmarks/dmri_steps.py                    # 146x146x90, 60 dirs at b=1000 and 2000
    python benchmarks/dmri_steps.py --shape 64 64 40   # quick run

The volume holds an ellipsoidal "brain" (~40% of the voxels by default) of white
matter (single and crossing fibres along smooth orientation fields), grey matter
and CSF, with Rician noise (SNR 25 at b0).  Each step is timed on the whole
volume; dipy's per-voxel CSD and its DTI are timed on a subsample (CPU time) and
extrapolated to the mask for comparison.  Peak RSS is the process maximum so far
(``resource.getrusage``); CPU is the process CPU time of the step (all threads).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
from dipy.reconst.dti import TensorModel

from bids_harmony.dmri import metrics, preprocess, sh


def hemisphere(n: int, offset: float = 0.0) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0)) + offset
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def gradient_scheme(n_dirs: int, n_b0: int) -> tuple[np.ndarray, np.ndarray]:
    bvals = np.r_[np.zeros(n_b0), np.full(n_dirs, 1000.0), np.full(n_dirs, 2000.0)]
    bvecs = np.r_[np.zeros((n_b0, 3)), hemisphere(n_dirs), hemisphere(n_dirs, offset=0.3)]
    return bvals, bvecs


def synthetic_session(shape, fraction, bvals, bvecs, rng, snr=25.0) -> np.ndarray:
    """4D float32 image with a brain-like ellipsoid."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    radius = (3 * fraction / (4 * np.pi)) ** (1 / 3) * 2  # ellipsoid of `fraction` of the box
    inside = np.sum((grid / radius) ** 2, axis=-1) < 1
    pos = grid[inside]
    n_vox = pos.shape[0]
    tissue = rng.choice(4, size=n_vox, p=[0.35, 0.15, 0.4, 0.1])  # WM, crossing, GM, CSF
    e1 = np.stack([np.cos(3 * pos[:, 2]), np.sin(3 * pos[:, 2]), 0.3 * pos[:, 0]], axis=1)
    e2 = np.stack([-pos[:, 1], pos[:, 0], np.ones(n_vox)], axis=1)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    data = np.zeros(tuple(shape) + (bvals.size,), dtype=np.float32)
    sigma = 100.0 / snr
    for start in range(0, n_vox, 100_000):
        sl = slice(start, start + 100_000)
        t = tissue[sl, None]

        def stick(e, sl=sl):
            return np.exp(-bvals * (0.3e-3 + 1.4e-3 * (e[sl] @ bvecs.T) ** 2))

        signal = np.where(t == 0, stick(e1), 0.0)
        signal += np.where(t == 1, 0.5 * stick(e1) + 0.5 * stick(e2), 0.0)
        signal += np.where(t == 2, 0.8 * np.exp(-bvals * 0.8e-3) + 0.2 * stick(e1), 0.0)
        signal += np.where(t == 3, np.exp(-bvals * 3.0e-3), 0.0)
        signal *= 100.0
        noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape),
                         rng.normal(0, sigma, signal.shape))  # fmt: skip
        data[tuple(np.argwhere(inside)[sl].T)] = noisy
    outside = np.argwhere(~inside)
    for start in range(0, outside.shape[0], 100_000):
        where = tuple(outside[start : start + 100_000].T)
        noise = rng.standard_normal((where[0].size, bvals.size), dtype=np.float32)
        data[where] = np.abs(sigma * noise)
    return data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(146, 146, 90))
    parser.add_argument("--fraction", type=float, default=0.4, help="brain fraction of voxels")
    parser.add_argument("--directions", type=int, default=60)
    parser.add_argument("--b0", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CSD solver threads")
    parser.add_argument("--skip-csd", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    bvals, bvecs = gradient_scheme(args.directions, args.b0)
    rows = []

    def timed(name, func, *a, note="", **kw):
        start, cpu = time.perf_counter(), time.process_time()
        out = func(*a, **kw)
        cpu = time.process_time() - cpu
        rows.append((name, time.perf_counter() - start, peak_rss_mb(), f"CPU {cpu:.1f} s {note}"))
        print(f"  {name:<34s} {rows[-1][1]:8.2f} s", file=sys.stderr, flush=True)
        return out

    data = timed("simulate (not a pipeline step)", synthetic_session, args.shape, args.fraction,
                 bvals, bvecs, rng)  # fmt: skip
    mask = timed("brain_mask (median_otsu)", preprocess.brain_mask, data, bvals)
    n_mask = int(mask.sum())
    print(f"volume {tuple(args.shape)}, {bvals.size} volumes, mask {n_mask} voxels "
          f"({100 * n_mask / mask.size:.0f}%)", file=sys.stderr)  # fmt: skip
    fits = timed("SH fit, 2 shells (fit_shells)", sh.fit_shells, data, bvals, bvecs, mask=mask)
    timed("reconstruct_dwi, all volumes", sh.reconstruct_dwi, fits, bvals, bvecs, data)
    dti = timed("DTI WLS b1000 (tensor_metrics)", metrics.tensor_metrics, data, bvals, bvecs,
                mask=mask)  # fmt: skip

    sel = np.r_[np.arange(args.b0), np.flatnonzero(bvals == 1000)]
    gtab = gradient_table(bvals[sel], bvecs=bvecs[sel])
    sample = data[mask][:: max(1, n_mask // 20000)][:20000][:, sel].astype(float)
    start = time.process_time()
    TensorModel(gtab, fit_method="WLS").fit(sample)
    rate = sample.shape[0] / (time.process_time() - start)
    rows.append(("dipy TensorModel WLS (CPU s, extrapolated)", n_mask / rate, peak_rss_mb(),
                 f"{rate:,.0f} vox/s on {sample.shape[0]}"))  # fmt: skip

    if not args.skip_csd:
        note = f"threads={args.threads or 'auto'}"
        timed("CSD + GFA b1000 (gfa_csd)", metrics.gfa_csd, data, bvals, bvecs, mask=mask,
              fa=dti["fa"], n_threads=args.threads, note=note)  # fmt: skip
        response = (np.array([1.7e-3, 0.3e-3, 0.3e-3]), 100.0)
        small = sample[:2000]
        start = time.process_time()
        ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8).fit(small)
        rate = small.shape[0] / (time.process_time() - start)
        rows.append(("dipy CSD per voxel (CPU s, extrapolated)", n_mask / rate, peak_rss_mb(),
                     f"{rate:,.0f} vox/s on {small.shape[0]}"))  # fmt: skip

    print("\n| step | seconds | peak RSS (MB) | note |\n|---|---:|---:|---|")
    for name, seconds, rss, note in rows:
        print(f"| {name} | {seconds:.2f} | {rss:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
