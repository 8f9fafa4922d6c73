"""The DKI 3D hierarchical CNN as a :class:`~bids_harmony.methods.base.HarmonizationMethod`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bids_harmony.methods.base import (
    Config,
    Example,
    HarmonizationMethod,
    Harmonizes,
    Reference,
    TrainsFrom,
)
from bids_harmony.methods.dki_cnn.inference import DEFAULT_CHUNK_SLICES, predict_maps
from bids_harmony.methods.dki_cnn.inputs import InputSpec, dki_inputs
from bids_harmony.methods.dki_cnn.network import (
    MAP_NAMES,
    NETWORK_UNITS,
    PHYSICAL_UNITS,
    UNIT_SCALE,
    DkiCnn,
    physical_ranges,
)
from bids_harmony.methods.dki_cnn.synthetic import synthetic_subject
from bids_harmony.methods.dki_cnn.training import (
    DEFAULT_RECIPE,
    DkiTrainingError,
    TrainingRecipe,
    fit_dki_cnn,
)

__all__ = ["DkiCnnMethod", "DkiCnnModel", "TONG"]

TONG = Reference(
    short="Tong et al., 2020",
    text="Tong Q, Gong T, He H, Wang Z, Yu W, Zhang J, Zhai L, Cui H, Meng X, Tax CWM, "
    "Zhong J. A deep learning-based method for improving reliability of multicenter "
    "diffusion kurtosis imaging with varied acquisition protocols. Magnetic Resonance "
    "Imaging (2020).",
    doi="10.1016/j.mri.2020.08.001",
)
#: Card entry of the model's ``config`` that says what the tensors are.
TENSOR_DIRECTIONS = "input_directions"


@dataclass
class DkiCnnModel:
    """A trained network with what it needs to be applied and described.

    Attributes
    ----------
    network : DkiCnn
    spec : InputSpec or None
        How the input channels were made (None: channels given as arrays by the caller).
    recipe : TrainingRecipe or None
    training : dict
        :meth:`TrainHistory.summary` of the run (empty for a rebuilt untrained model).
    """

    network: DkiCnn
    spec: InputSpec | None = None
    recipe: TrainingRecipe | None = None
    training: dict[str, Any] = field(default_factory=dict)


class DkiCnnMethod(HarmonizationMethod[DkiCnnModel]):
    """Reference-scanner DKI maps from a source scan's DWIs (Tong et al., 2020).

    ``fit(source, target, masks=..., held_out=..., seed=..., max_minutes=..., device=...,
    num_threads=..., recipe=..., spec=...)`` takes input channels ``(S, X, Y, Z, C)`` (or a list of
    ``(X, Y, Z, C)``) of traveling subjects' source scans and the reference scanner's DKI
    maps ``(S, X, Y, Z, 8)`` registered to them; ``apply(model, inputs, mask=...)``
    returns the harmonized maps ``(X, Y, Z, 8)`` in physical units
    (:data:`~.network.MAP_NAMES` order).  Outputs are named ``desc-dkicnn``.
    """

    name = "dki-cnn"
    title = "DKI 3D hierarchical CNN"
    trains_from = TrainsFrom.TRAVELING_SUBJECTS
    harmonizes = Harmonizes.PARAMETER_MAPS
    description = (
        "Diffusion kurtosis (DKI) maps were reconstructed and harmonized in one step by a "
        "three-dimensional hierarchical convolutional neural network (Tong et al., 2020). "
        "Each shell's signal, normalized by the mean b0, was resampled through its "
        "spherical-harmonic fit to a fixed set of directions, so that the inputs did not "
        "depend on the scanner's gradient table. The network (one 3x3x3 convolution, "
        "1x1x1 layers of 150 units with ReLU, 10% dropout before the outputs) predicted "
        "MD, AD and RD from a shallow head and FA, MK, AK, RK and KFA from a head one "
        "hidden layer deeper. It was trained on traveling subjects, with the reference "
        "scanner's DKI fits registered to each source session as labels, by minimizing the "
        "masked mean squared error of the standardized maps with Adam and early stopping "
        "on held-out subjects; the reference scanner's own scans passed through a network "
        "trained on its rescans, so that every map was produced the same way."
    )
    references = (TONG,)

    def fit(self, source: np.ndarray, target: np.ndarray, **options: Any) -> DkiCnnModel:
        """Train on traveling subjects (see the class docstring for the options)."""
        spec = options.pop("spec", None)
        recipe = options.pop("recipe", None) or DEFAULT_RECIPE
        if not isinstance(recipe, TrainingRecipe):
            raise DkiTrainingError(f"recipe must be a TrainingRecipe, got {type(recipe)}")
        if spec is not None and not isinstance(spec, InputSpec):
            raise DkiTrainingError(f"spec must be an InputSpec, got {type(spec)}")
        unknown = sorted(
            set(options) - {"masks", "held_out", "seed", "max_minutes", "device", "num_threads"}
        )
        if unknown:
            raise DkiTrainingError(f"unknown options {unknown}")
        inputs, labels = list(source), list(target)
        if spec is not None and any(np.shape(x)[-1] != spec.n_channels for x in inputs):
            raise DkiTrainingError(f"the inputs do not have the {spec.n_channels} channels "
                                   "of their specification")  # fmt: skip
        network, history = fit_dki_cnn(inputs, labels, recipe=recipe, **options)
        return DkiCnnModel(network, spec, recipe, history.summary())

    def apply(self, model: DkiCnnModel, data: np.ndarray, **options: Any) -> np.ndarray:
        """Maps ``(X, Y, Z, 8)`` of inputs ``(X, Y, Z, C)``; options ``mask``,
        ``chunk_slices``, ``device``."""
        return predict_maps(model.network, data, mask=options.get("mask"),
                            chunk_slices=int(options.get("chunk_slices", DEFAULT_CHUNK_SLICES)),
                            device=str(options.get("device", "cpu")))  # fmt: skip

    def to_tensors(self, model: DkiCnnModel) -> tuple[dict[str, np.ndarray], Config]:
        tensors = {k: v.detach().cpu().numpy().copy()
                   for k, v in model.network.state_dict().items()}  # fmt: skip
        if model.spec is not None:
            tensors[TENSOR_DIRECTIONS] = model.spec.directions.astype(np.float32)
        config: Config = {
            "architecture": model.network.config(),
            "inputs": None if model.spec is None else model.spec.to_dict(),
            "outputs": {
                "maps": list(MAP_NAMES),
                "physical_units": list(PHYSICAL_UNITS),
                "network_units": list(NETWORK_UNITS),
                "network_units_per_physical_unit": list(UNIT_SCALE),
                "standardization": "network units = output_mean + output_std * z "
                "(tensors output_mean, output_std: training labels in the mask)",
                "ranges": {k: list(v) for k, v in physical_ranges().items()},
            },
            "training": {
                "recipe": None if model.recipe is None else model.recipe.to_dict(),
                **model.training,
            },
        }
        return tensors, config

    def from_tensors(self, tensors: Mapping[str, np.ndarray], config: Config) -> DkiCnnModel:
        arch = config.get("architecture")
        if not isinstance(arch, Mapping):
            raise ValueError("a dki-cnn model needs an 'architecture' configuration")
        network = DkiCnn.from_config(arch)
        state = {k: torch.from_numpy(np.array(v, np.float32))
                 for k, v in tensors.items() if k != TENSOR_DIRECTIONS}  # fmt: skip
        network.load_state_dict(state)
        inputs = config.get("inputs")
        spec = InputSpec.from_dict(inputs) if isinstance(inputs, Mapping) else None
        if spec is not None:
            if spec.n_channels != network.in_channels:
                raise ValueError(f"inputs have {spec.n_channels} channels, the network "
                                 f"{network.in_channels}")  # fmt: skip
            stored = tensors.get(TENSOR_DIRECTIONS)
            if stored is None or not np.allclose(stored, spec.directions, atol=1e-6):
                raise ValueError("the stored input directions differ from the specification's")
        training = dict(config.get("training") or {})  # type: ignore[call-overload]
        recipe_dict = training.pop("recipe", None)
        recipe = TrainingRecipe(**recipe_dict) if isinstance(recipe_dict, Mapping) else None
        return DkiCnnModel(network.eval(), spec, recipe, training)

    def example(self, seed: int = 0) -> Example:
        return _example(seed)


#: Small and fast: the example trains in seconds on a CPU core.
EXAMPLE_RECIPE = TrainingRecipe(
    patch_size=8, batch_size=4, patches_per_subject=4, max_epochs=40, width=32,
    early_stop_patience=8, lr=3e-3,
)  # fmt: skip
#: Inputs of the example: 16 directions of an order-4 fit per shell (33 channels).
EXAMPLE_SPEC = InputSpec((1000.0, 2000.0), n_directions=16, sh_order=4)


def example_subjects(
    seed: int,
    n_subjects: int = 5,
    shape: tuple[int, int, int] = (12, 12, 12),
    spec: InputSpec | None = None,
    fibre: tuple[float, float, float] | None = (1.0, 0.0, 0.0),
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], InputSpec]:
    """Inputs, labels and masks of ``n_subjects`` synthetic traveling subjects.

    The source scanner measures diffusivities 10 % high and kurtosis 15 % low, with its
    own 30-direction shells at b = 1000 and 2000 (randomly rotated) and SNR 40; the labels
    are the true maps (see :mod:`.synthetic`).  Every voxel has the fibre direction
    ``fibre`` (None: a smooth random field): with a few thousand voxels the network cannot
    learn rotation invariance from random orientations (held-out standardized MSE ~0.7 with
    them, ~0.3 with one orientation, against ~1.0 for the training mean); brains have
    ~10⁵ voxels per study and coherent tracts.
    """
    spec = spec or EXAMPLE_SPEC
    rng = np.random.default_rng(seed)
    inputs, labels, masks = [], [], []
    for _ in range(n_subjects):
        subject = synthetic_subject(
            rng, shape, diffusivity_gain=1.1, kurtosis_gain=0.85, fibre=fibre
        )
        inputs.append(dki_inputs(subject.data, subject.bvals, subject.bvecs, subject.mask, spec))
        labels.append(subject.maps)
        masks.append(subject.mask)
    return inputs, labels, masks, spec


def _example(seed: int) -> Example:
    inputs, labels, masks, spec = example_subjects(seed, n_subjects=5)
    fit = {"masks": masks[:4], "held_out": [3], "seed": seed, "recipe": EXAMPLE_RECIPE,
           "spec": spec, "max_minutes": 2.0}  # fmt: skip
    return Example(np.stack(inputs[:4]), np.stack(labels[:4]), fit, inputs[4],
                   {"mask": masks[4]}, truth=labels[4])  # fmt: skip
