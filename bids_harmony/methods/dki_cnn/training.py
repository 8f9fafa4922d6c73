r"""Training the DKI network on traveling subjects.

The paper gives no loss, optimiser or schedule; our recipe (:class:`TrainingRecipe`,
stored in the model card):

Loss
    Masked MSE of the standardized maps: labels in network units (µm²/ms for
    diffusivities) are standardized per map with the mean and standard deviation of the
    training subjects' voxels in their masks (stored in the network, see
    :mod:`.network`), and the loss is the mean of :math:`(z - \hat z)^2` over the voxels
    of the mask with finite labels and over the eight maps, so every map weighs the same
    whatever its unit.  Voxels outside the mask or with a NaN label do not count.
Samples
    Patches of ``patch_size``³ voxels (16; less along an axis the volumes are shorter
    in) whose centre is a random mask voxel, with their one-voxel rim as the 3×3×3
    context (inputs zero-padded at the volume's edge, as at inference).  An epoch is
    ``patches_per_subject`` patches of every training subject, in batches of
    ``batch_size``.
Optimiser
    Adam, learning rate 1e-3, no weight decay (the paper's 10 % dropout regularizes);
    the rate halves when the validation loss has not improved for ``lr_patience``
    epochs.
Early stopping
    On the validation loss: the masked standardized MSE of the held-out subjects' whole
    volumes; training stops after ``early_stop_patience`` epochs without improvement,
    after ``max_epochs``, or when ``max_minutes`` are spent, and the weights of the best
    epoch are kept.  Without held-out subjects the training loss takes its place.
Determinism
    ``seed`` draws the initial weights (a ``torch.Generator``), the patches (a NumPy
    ``Generator``) and the dropout masks (the torch RNG inside ``torch.random.fork_rng``,
    so the caller's global state is left as it was).  Two runs with one seed on one
    machine and thread count give the same weights, unless ``max_minutes`` stops one of
    them earlier.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bids_harmony.errors import BidsHarmonyError
from bids_harmony.methods.dki_cnn.network import (
    DEFAULT_SHARED,
    MAP_NAMES,
    PAPER_DROPOUT,
    PAPER_WIDTH,
    DkiCnn,
    to_network_units,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RECIPE", "DkiTrainingError", "TrainHistory", "TrainingRecipe", "fit_dki_cnn"]

MIN_TRAIN_VOXELS = 64
VALIDATION_SLICES = 16


class DkiTrainingError(BidsHarmonyError, ValueError):
    """The training data cannot train the network (shapes, too few voxels, bad options)."""


@dataclass(frozen=True)
class TrainingRecipe:
    """How to train (module docstring): everything but the data and the architecture.

    Sized for the demo study (44×44×28 voxels, ~22,000 brain voxels, 6 training and 2
    held-out subjects, 65 channels): an epoch is 48 patches of 16³ voxels (~1.5 passes
    over the training voxels) plus the held-out volumes, measured at 21 s on one thread
    of a busy 2-core CPU (two threads were slower there), so 40 epochs take at most
    ~14 min, and ``max_minutes`` (15) bounds any larger study.
    """

    patch_size: int = 16
    batch_size: int = 4
    patches_per_subject: int = 8
    max_epochs: int = 40
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 3
    early_stop_patience: int = 8
    min_delta: float = 1e-4
    width: int = PAPER_WIDTH
    n_shared: int = DEFAULT_SHARED
    dropout: float = PAPER_DROPOUT
    optimizer: str = "adam"
    loss: str = "masked MSE of per-map standardized outputs, maps weighted equally"

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.batch_size < 1 or self.patches_per_subject < 1:
            raise DkiTrainingError("patch_size, batch_size and patches_per_subject must be >= 1")
        if self.max_epochs < 1 or not self.lr > 0:
            raise DkiTrainingError("max_epochs must be >= 1 and lr > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RECIPE = TrainingRecipe()


@dataclass
class TrainHistory:
    """Loss curves and how training ended.

    Attributes
    ----------
    train_loss, val_loss : list of float
        Per epoch: mean training batch loss, held-out loss (NaN without held-out subjects).
    val_loss_per_map : list of float
        Held-out loss of every map at the best epoch (:data:`MAP_NAMES` order).
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str = ""
    wall_s: float = 0.0
    val_loss_per_map: list[float] = field(default_factory=list)
    training_subjects: list[int] = field(default_factory=list)
    held_out: list[int] = field(default_factory=list)
    train_voxels: int = 0
    seed: int = 0
    device: str = "cpu"
    threads: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for the model card (curves rounded)."""
        out = asdict(self)
        for key in ("train_loss", "val_loss", "val_loss_per_map"):
            out[key] = [None if not math.isfinite(v) else round(float(v), 6) for v in out[key]]
        out["lr"] = [float(v) for v in out["lr"]]
        out["epochs"] = len(self.train_loss)
        out["wall_s"] = round(self.wall_s, 3)
        return out


def fit_dki_cnn(
    inputs: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None = None,
    *,
    held_out: Sequence[int] = (),
    seed: int = 0,
    max_minutes: float = 15.0,
    device: str = "cpu",
    recipe: TrainingRecipe = DEFAULT_RECIPE,
    num_threads: int | None = None,
) -> tuple[DkiCnn, TrainHistory]:
    """Train a :class:`DkiCnn` from subjects' inputs and reference-scanner DKI labels.

    Parameters
    ----------
    inputs : sequence of ndarray, shape (X, Y, Z, C)
        Input channels per subject (:mod:`.inputs`); grids may differ, ``C`` may not.
    labels : sequence of ndarray, shape (X, Y, Z, 8)
        Reference maps on the same grids, physical units (mm²/s), :data:`MAP_NAMES` order;
        NaN where unknown.
    masks : sequence of ndarray of bool, shape (X, Y, Z), optional
        Voxels that count (brain or WM); default every voxel with finite labels.
    held_out : sequence of int
        Subjects (indices) used only for the validation loss and early stopping.
    seed : int
    max_minutes : float
        Wall-clock budget; training stops after the epoch that exceeds it.
    device : str
        ``"cpu"`` or ``"cuda"`` (an error when CUDA is not available).
    recipe : TrainingRecipe
    num_threads : int, optional
        CPU threads of torch during training (restored afterwards); default: torch's
        setting.  On a busy machine one thread per process is much faster than
        threads that wait for each other.

    Returns
    -------
    network : DkiCnn
        In eval mode on the CPU, weights of the best epoch.
    history : TrainHistory
    """
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        return _fit(inputs, labels, masks, held_out, seed, max_minutes, device, recipe)
    finally:
        torch.set_num_threads(before)


def _fit(inputs, labels, masks, held_out, seed, max_minutes, device, recipe):
    start = time.perf_counter()
    data = _check_data(inputs, labels, masks)
    held = sorted({int(i) for i in held_out})
    if any(not 0 <= i < len(data) for i in held):
        raise DkiTrainingError(f"held_out {held} outside 0..{len(data) - 1}")
    train_ids = [i for i in range(len(data)) if i not in held]
    if not train_ids:
        raise DkiTrainingError("every subject is held out; none is left to train on")
    dev = _device(device)
    n_train = sum(int(data[i][2].sum()) for i in train_ids)
    if n_train < MIN_TRAIN_VOXELS:
        raise DkiTrainingError(f"only {n_train} training voxels in the masks "
                               f"(need {MIN_TRAIN_VOXELS})")  # fmt: skip
    mean, std = _label_scaling([data[i] for i in train_ids])
    net = DkiCnn(
        data[0][0].shape[-1],
        width=recipe.width,
        n_shared=recipe.n_shared,
        dropout=recipe.dropout,
        generator=torch.Generator().manual_seed(seed),
    )
    net.set_output_scaling(mean, std)
    net.set_input_scaling(*_input_scaling([data[i] for i in train_ids]))
    net.to(dev)
    history = TrainHistory(training_subjects=train_ids, held_out=held, train_voxels=n_train,
                           seed=int(seed), device=str(dev),
                           threads=torch.get_num_threads())  # fmt: skip
    patch = tuple(min(recipe.patch_size, *(d[0].shape[a] for d in data)) for a in range(3))
    subjects = [_Subject(*data[i], mean, std) for i in train_ids if data[i][2].any()]
    validation = [_Subject(*data[i], mean, std) for i in held]
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    best, best_state, since_best, since_lr = math.inf, None, 0, 0
    fork = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)
        for epoch in range(recipe.max_epochs):
            train_loss = _epoch(net, opt, subjects, patch, recipe, rng, dev)
            val = _validate(net, validation, dev) if validation else None
            score = float(val.mean()) if val is not None else train_loss
            history.train_loss.append(train_loss)
            history.val_loss.append(score if val is not None else math.nan)
            history.lr.append(float(opt.param_groups[0]["lr"]))
            logger.debug("epoch %d: train %.4f, validation %.4f", epoch, train_loss, score)
            if score < best - recipe.min_delta:
                best, since_best, since_lr = score, 0, 0
                best_state = copy.deepcopy(net.state_dict())
                history.best_epoch = epoch
                history.val_loss_per_map = [] if val is None else [float(v) for v in val]
            else:
                since_best += 1
                since_lr += 1
            if since_lr >= recipe.lr_patience:
                for group in opt.param_groups:
                    group["lr"] *= recipe.lr_factor
                since_lr = 0
            if since_best >= recipe.early_stop_patience:
                history.stopped = "early stopping"
                break
            if time.perf_counter() - start > 60.0 * max_minutes:
                history.stopped = "max_minutes"
                break
        else:
            history.stopped = "max_epochs"
    if best_state is not None:
        net.load_state_dict(best_state)
    history.wall_s = time.perf_counter() - start
    return net.cpu().eval(), history


class _Subject:
    """One subject's padded inputs, standardized labels and loss mask as tensors."""

    def __init__(self, x, y, mask, mean, std) -> None:
        z = (to_network_units(np.nan_to_num(y)) - mean) / std
        self.x = torch.from_numpy(np.pad(x, ((1, 1),) * 3 + ((0, 0),)))  # (X+2, Y+2, Z+2, C)
        self.z = torch.from_numpy(np.ascontiguousarray(z, np.float32))
        self.mask = torch.from_numpy(mask)
        self.centres = np.argwhere(mask)

    def patch(self, corner: np.ndarray, size: tuple[int, ...]):
        (a, b, c), (p, q, r) = corner, size
        x = self.x[a : a + p + 2, b : b + q + 2, c : c + r + 2].permute(3, 0, 1, 2)
        return (
            x,
            self.z[a : a + p, b : b + q, c : c + r].permute(3, 0, 1, 2),
            self.mask[a : a + p, b : b + q, c : c + r],
        )


def _epoch(net, opt, subjects, patch, recipe, rng, dev) -> float:
    net.train()
    draws = [(s, s.centres[rng.integers(len(s.centres))]) for s in subjects
             for _ in range(recipe.patches_per_subject)]  # fmt: skip
    order = rng.permutation(len(draws))
    size = np.array(patch)
    losses = []
    for start in range(0, len(order), recipe.batch_size):
        xs, zs, ms = [], [], []
        for k in order[start : start + recipe.batch_size]:
            subject, centre = draws[k]
            shape = np.array(subject.mask.shape)
            corner = np.clip(centre - size // 2, 0, shape - size)
            x, z, m = subject.patch(corner, patch)
            xs.append(x)
            zs.append(z)
            ms.append(m)
        x, z, m = (torch.stack(t).to(dev) for t in (xs, zs, ms))
        pred = net(x, pad=False)
        m = m.unsqueeze(1).to(pred.dtype)
        loss = ((pred - z) ** 2 * m).sum() / (m.sum() * pred.shape[1]).clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


@torch.inference_mode()
def _validate(net, subjects, dev) -> np.ndarray:
    """Masked standardized MSE per map over the held-out subjects' whole volumes."""
    net.eval()
    total = torch.zeros(len(MAP_NAMES), dtype=torch.float64)
    count = 0
    for s in subjects:
        for z0 in range(0, s.mask.shape[2], VALIDATION_SLICES):
            z1 = min(z0 + VALIDATION_SLICES, s.mask.shape[2])
            x = s.x[:, :, z0 : z1 + 2].permute(3, 0, 1, 2)[None].to(dev)
            pred = net(x, pad=False)[0].permute(1, 2, 3, 0).cpu()
            m = s.mask[:, :, z0:z1]
            total += ((pred[m] - s.z[:, :, z0:z1][m]) ** 2).sum(0).double()
            count += int(m.sum())
    return (total / max(count, 1)).numpy()


def _input_scaling(subjects) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([x[m] for x, _, m in subjects]).astype(np.float64)
    mean, std = values.mean(0), values.std(0)
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def _label_scaling(subjects) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([to_network_units(y[m]) for _, y, m in subjects]).astype(np.float64)
    mean, std = values.mean(0), values.std(0)
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def _check_data(inputs, labels, masks):
    if len(inputs) != len(labels) or (masks is not None and len(masks) != len(inputs)):
        raise DkiTrainingError(
            f"{len(inputs)} inputs, {len(labels)} labels and "
            f"{len(masks) if masks is not None else '-'} masks differ"
        )
    if len(inputs) == 0:
        raise DkiTrainingError("no training subjects")
    out, channels = [], None
    for i, (x, y) in enumerate(zip(inputs, labels, strict=True)):
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        if x.ndim != 4 or y.shape != x.shape[:3] + (len(MAP_NAMES),):
            raise DkiTrainingError(
                f"subject {i}: inputs {x.shape} must be (X, Y, Z, C) and "
                f"labels {y.shape} (X, Y, Z, {len(MAP_NAMES)})"
            )
        if channels not in (None, x.shape[-1]):
            raise DkiTrainingError(f"subject {i} has {x.shape[-1]} channels, not {channels}")
        channels = x.shape[-1]
        if not np.isfinite(x).all():
            raise DkiTrainingError(f"subject {i}: inputs hold NaN or infinite values")
        m = np.isfinite(y).all(-1)
        if masks is not None:
            mask = np.asarray(masks[i], bool)
            if mask.shape != x.shape[:3]:
                raise DkiTrainingError(f"subject {i}: mask {mask.shape} is not {x.shape[:3]}")
            m &= mask
        out.append((x, y, m))
    return out


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DkiTrainingError("device 'cuda' was asked for but CUDA is not available")
    return dev
