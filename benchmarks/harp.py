"""Benchmark HARP training and inference on phantom-like synthetic pairs.

    python benchmarks/harp.py            # ~10 min on 2 cores
    python benchmarks/harp.py --quick    # ~2 min, smaller data and budgets

(a) Training: ``DEFAULT_RECIPE`` (noise-aware, and with plain MSE to compare
    optimizers alone) against ``PAPER_RECIPE`` (Adam 1e-6, plain MSE) cut to the
    same wall time, and the paper's learning rate at our batch size.  Data:
    voxels of fibre/crossing/gel vials at b = 1000 (60 directions, SNR 40),
    scanned twice at the source and once at the target, whose SH bands differ by
    known gains that also depend on the voxel's mean diffusivity
    (``bids_harmony.methods.harp.synthetic``); validation on another draw ("another
    phantom").  Reported: validation MSE, the noise-aware validation objective
    (MSE against the noise-free source), and the error of the learned scales
    against the true per-voxel gains.
(b) Inference throughput on 400k voxels: the authors' layout (the same weights
    as 1x1 Conv2d on batches of two 146x146 NCHW slices, ``torch.no_grad``),
    ``HarpNet.forward`` on 65536-voxel chunks, and ``HarpPredictor`` in each
    precision, beside the machine's fp32/bf16 GEMM peak.  Methods are run in turn,
    ``--repeats`` times in rotating order; reported: the best run of each and the
    median of the per-repeat ratios to the authors' layout (the machine is shared).
    Max relative difference of the scales to ``HarpNet.forward`` in float32.
(c) What the noise-aware loss changes: per-band scales against the true gains,
    band power (RISH) of harmonized/target, and a GFA-like anisotropy
    ``sqrt(1 - RISH_0 / sum_l RISH_l)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from bids_harmony.dmri.bands import band_orders, band_slices, rish_features
from bids_harmony.methods.harp import (
    DEFAULT_RECIPE,
    PAPER_RECIPE,
    HarpNet,
    HarpPredictor,
    apply_band_scales,
    train_harp,
)
from bids_harmony.methods.harp.loss import BandLoss, noise_variance
from bids_harmony.methods.harp.synthetic import PAPER_LIKE_GAINS, synthetic_pairs

SLOPES = (0.02, -0.01, -0.02, 0.0, 0.0)  # gain change per 0.25 of true C00
SLICE = 146  # the authors' in-plane matrix


def flops_per_voxel(net: HarpNet) -> float:
    """2 x multiply-adds of one forward pass."""
    return 2.0 * sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))


# ---------------------------------------------------------------------------- (a)


def _scales(model: HarpNet, coeffs: np.ndarray) -> np.ndarray:
    return HarpPredictor(model, precision="float32").predict_scales(coeffs)


def metrics(pairs, scales_of) -> tuple[float, float, float, float]:
    """Validation MSE, noise-aware objective, mean |s - g| over l = 0..6 and for l = 6.

    ``scales_of(coeffs) -> (N, 5)`` gives the scales of a scan.  The noise-aware
    objective is the cross-fitted one of ``train_harp`` (per-band means, summed).
    """
    loss = BandLoss(8)
    src, rescan, tgt = (
        torch.from_numpy(a) for a in (pairs.source, pairs.source_rescan, pairs.target)
    )
    s_src = torch.as_tensor(np.asarray(scales_of(pairs.source), np.float32))
    s_re = torch.as_tensor(np.asarray(scales_of(pairs.source_rescan), np.float32))
    noise = noise_variance(src, rescan)
    mse = loss(s_src, src, tgt)[0].item()
    aware = 0.5 * (loss(s_src, rescan, tgt, noise)[0] + loss(s_re, src, tgt, noise)[0]).item()
    err = np.abs(s_src.numpy() - pairs.voxel_gains)[:, :4].mean(axis=0)  # l = 8: no signal
    return mse, aware, float(err.mean()), float(err[3])


def least_squares_scales(pairs) -> np.ndarray:
    """Per-band constant scales minimizing the plain MSE on ``pairs`` itself."""
    c, t = pairs.source.astype(np.float64), pairs.target.astype(np.float64)
    return np.array([(c[:, sl] * t[:, sl]).sum() / (c[:, sl] ** 2).sum() for sl in band_slices(8)])


def run_training(args) -> dict:
    rng = np.random.default_rng(args.seed)
    train = synthetic_pairs(args.train_voxels, rng=rng, gains=PAPER_LIKE_GAINS, gain_slope=SLOPES)
    val = synthetic_pairs(args.val_voxels, rng=rng, gains=PAPER_LIKE_GAINS, gain_slope=SLOPES)
    default = dataclasses.replace(DEFAULT_RECIPE, iterations=args.iterations)
    common = dict(
        source_rescan=train.source_rescan,
        val_source=val.source,
        val_target=val.target,
        val_source_rescan=val.source_rescan,
        progress=False,
    )
    runs = {}
    runs["default"] = train_harp(train.source, train.target, recipe=default, **common)
    budget = runs["default"].wall_time_s
    runs["default, MSE"] = train_harp(
        train.source, train.target, recipe=dataclasses.replace(default, noise_aware=False), **common
    )
    runs["paper, same time"] = train_harp(
        train.source, train.target, recipe=PAPER_RECIPE, time_limit_s=budget, **common
    )
    paper_small = dataclasses.replace(PAPER_RECIPE, batch_size=default.batch_size, eval_every=100)
    runs["paper lr, batch 1024"] = train_harp(
        train.source, train.target, recipe=paper_small, time_limit_s=budget, **common
    )
    rows = [("identity (scales 1)", "-", 0, 0.0, *metrics(val, lambda c: np.ones((len(c), 5))))]
    rows.append(("true gains (ideal)", "-", 0, 0.0, *metrics(val, lambda c: val.voxel_gains)))
    ls = least_squares_scales(val)
    rows.append(
        ("LS scales fit on val", "-", 0, 0.0, *metrics(val, lambda c: np.tile(ls, (len(c), 1))))
    )
    for name, result in runs.items():
        rows.append(
            (
                name,
                result.objective,
                result.iterations_run,
                result.wall_time_s,
                *metrics(val, lambda c, m=result.model: _scales(m, c)),
            )
        )
    print(
        f"\n(a) Training on {train.source.shape[0]} voxel pairs, validation on "
        f"{val.source.shape[0]} (another draw); budget = default's wall time {budget:.1f} s"
    )
    print(
        f"{'run':24s} {'loss':12s} {'iters':>6s} {'wall s':>7s} {'val MSE':>10s} "
        f"{'val noise-aware':>15s} {'|s-g| l0-6':>10s} {'|s-g| l6':>9s}"
    )
    for r in rows:
        print(
            f"{r[0]:24s} {r[1]:12s} {r[2]:6d} {r[3]:7.1f} {r[4]:10.4e} {r[5]:15.4e} "
            f"{r[6]:10.4f} {r[7]:9.4f}"
        )
    hist = runs["default"].history
    print(
        "default recipe, validation objective along the run: "
        + ", ".join(
            f"{it}: {v:.4e}"
            for it, v in zip(hist["iteration"], hist["val_total"], strict=True)
            if it in (50, 100, 200, 400, 700) or it == hist["iteration"][-1]
        )
    )
    return {"train": train, "val": val, "runs": runs}


# ---------------------------------------------------------------------------- (b)


class AuthorsLayout(torch.nn.Module):
    """The same network as 1x1 convolutions on (batch, channels, H, W) slices."""

    def __init__(self, net: HarpNet) -> None:
        super().__init__()
        self.skip = net.skip_into
        self.convs = torch.nn.ModuleList()
        for layer in [*net.layers, net.head]:
            conv = torch.nn.Conv2d(layer.in_features, layer.out_features, kernel_size=1)
            with torch.no_grad():
                conv.weight.copy_(layer.weight[:, :, None, None])
                conv.bias.copy_(layer.bias)
            self.convs.append(conv)
        self.bound = net.scale_bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, conv in enumerate(self.convs[:-1], start=1):
            if i in self.skip:
                h = torch.cat([x, h], dim=1)
            h = F.relu(conv(h), inplace=True)
        return torch.tanh(self.convs[-1](h)) * self.bound + 1


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def run_inference(model: HarpNet, coeffs: np.ndarray, repeats: int) -> None:
    n = coeffs.shape[0]
    with torch.no_grad():
        ref = np.concatenate(
            [model(torch.from_numpy(c)).numpy() for c in np.array_split(coeffs, 8)]
        )
    n_slices = -(-n // (SLICE * SLICE))
    padded = np.zeros((n_slices * SLICE * SLICE, coeffs.shape[1]), np.float32)
    padded[:n] = coeffs
    slices = (
        torch.from_numpy(padded.reshape(n_slices, SLICE, SLICE, -1))
        .permute(0, 3, 1, 2)
        .contiguous()
    )
    authors = AuthorsLayout(model).eval()

    def run_authors():
        with torch.no_grad():
            out = torch.cat([authors(slices[i : i + 2]) for i in range(0, n_slices, 2)])
        return out.permute(0, 2, 3, 1).reshape(-1, model.n_bands)[:n].numpy()

    def run_forward():
        with torch.inference_mode():
            x = torch.from_numpy(coeffs)
            return torch.cat([model(x[s : s + 65536]) for s in range(0, n, 65536)]).numpy()

    methods = {"authors' layout (Conv2d NCHW)": run_authors, "HarpNet.forward (N, C)": run_forward}
    for precision in ("float32", "mixed", "bfloat16", "auto"):
        predictor = HarpPredictor(model, precision=precision)
        methods[f"HarpPredictor {precision}"] = functools.partial(predictor.predict_scales, coeffs)
    best = dict.fromkeys(methods, 0.0)
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    diffs, used = {}, {}
    for name, fn in methods.items():  # warm-up, accuracy
        diffs[name] = float(np.max(np.abs(fn() - ref) / ref))
    names = list(methods)
    for r in range(repeats):  # rotate the order; compare within a repeat (paired)
        speed = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            methods[name]()
            speed[name] = n / (time.perf_counter() - t)
            best[name] = max(best[name], speed[name])
        for name in names:
            ratios[name].append(speed[name] / speed[names[0]])
    auto = HarpPredictor(model, precision="auto")
    auto.predict_scales(coeffs[:50000])
    used["HarpPredictor auto"] = auto.precision_used
    peak32, peak16 = gemm_peak(torch.float32), gemm_peak(torch.bfloat16)
    fpv = flops_per_voxel(model)
    base = best["authors' layout (Conv2d NCHW)"]
    print(
        f"\n(b) Inference on {n} voxels, {torch.get_num_threads()} threads; {fpv / 1e6:.2f} "
        f"MFLOP/voxel; GEMM peak fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s"
    )
    print(
        f"{'method':34s} {'voxels/s':>10s} {'GFLOP/s':>8s} {'x authors':>9s} "
        f"{'(median)':>8s} {'max rel diff':>12s}"
    )
    for name in methods:
        label = name + (f" ({used[name]})" if name in used else "")
        print(
            f"{label:34s} {best[name]:10.0f} {best[name] * fpv / 1e9:8.1f} "
            f"{best[name] / base:9.2f} {np.median(ratios[name]):8.2f} {diffs[name]:12.2e}"
        )
    print("voxels/s and GFLOP/s: best run; x authors: best/best, and median of per-repeat ratios")


# ---------------------------------------------------------------------------- (c)


def gfa_like(coeffs: np.ndarray) -> np.ndarray:
    rish = rish_features(coeffs)
    return np.sqrt(np.clip(1.0 - rish[:, 0] / rish.sum(axis=1), 0.0, 1.0))


def run_effects(trained: dict) -> None:
    val, runs = trained["val"], trained["runs"]
    orders = band_orders(8)
    rows = {"true gain (mean)": val.voxel_gains.mean(axis=0)}
    harmonized = {
        "no harmonization": val.source,
        "ideal (true gains)": apply_band_scales(val.source, val.voxel_gains),
    }
    for name, label in (("default", "noise-aware"), ("default, MSE", "plain MSE")):
        out, scales = HarpPredictor(runs[name].model, precision="float32").harmonize(val.source)
        rows[f"scales, {label}"] = scales.mean(axis=0)
        harmonized[label] = out
    print("\n(c) Per-band scales (mean over validation voxels); l = 8 has no signal at b = 1000")
    print(f"{'':24s}" + "".join(f"{'l=' + str(ell):>9s}" for ell in orders))
    for name, values in rows.items():
        print(f"{name:24s}" + "".join(f"{v:9.4f}" for v in values))
    target_rish = rish_features(val.target).mean(axis=0)
    target_gfa = gfa_like(val.target)
    print(
        f"\n{'band power / target':24s}"
        + "".join(f"{'l=' + str(ell):>9s}" for ell in orders)
        + f"{'GFA-like':>10s}{'|dGFA|':>9s}"
    )
    print(
        f"{'target':24s}"
        + "".join(f"{1.0:9.3f}" for _ in orders)
        + f"{target_gfa.mean():10.4f}{0:9.4f}"
    )
    for name, coeffs in harmonized.items():
        ratio = rish_features(coeffs).mean(axis=0) / target_rish
        gfa = gfa_like(coeffs)
        print(
            f"{name:24s}"
            + "".join(f"{v:9.3f}" for v in ratio)
            + f"{gfa.mean():10.4f}{np.abs(gfa - target_gfa).mean():9.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and budgets")
    parser.add_argument("--train-voxels", type=int, default=100_000)
    parser.add_argument("--val-voxels", type=int, default=20_000)
    parser.add_argument("--infer-voxels", type=int, default=400_000)
    parser.add_argument("--iterations", type=int, default=DEFAULT_RECIPE.iterations)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="abc", help="which parts to run, e.g. 'b'")
    args = parser.parse_args()
    if args.quick:
        args.train_voxels, args.val_voxels, args.iterations = 30_000, 10_000, 200
        args.infer_voxels, args.repeats = 100_000, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f} (shared machine: timings vary)"
    )
    if "a" in args.parts or "c" in args.parts:
        trained = run_training(args)
        model = trained["runs"]["default"].model
    else:  # a quickly trained model for part (b) alone
        rng = np.random.default_rng(args.seed)
        pairs = synthetic_pairs(30_000, rng=rng, gain_slope=SLOPES)
        recipe = dataclasses.replace(DEFAULT_RECIPE, iterations=300)
        model = train_harp(
            pairs.source,
            pairs.target,
            source_rescan=pairs.source_rescan,
            recipe=recipe,
            progress=False,
        ).model
    if "b" in args.parts:
        rng = np.random.default_rng(args.seed + 1)
        coeffs = synthetic_pairs(args.infer_voxels, rng=rng, gain_slope=SLOPES).source
        run_inference(model, coeffs, args.repeats)
    if "c" in args.parts:
        run_effects(trained)


if __name__ == "__main__":
    main()
