"""HARP: phantom-trained harmonization of diffusion MRI SH coefficients.

Numerical core (arrays in, arrays out; files only in :mod:`.model_file`):

- :class:`HarpNet`, :func:`apply_band_scales` (:mod:`.network`): the voxel-wise
  network predicting one scale per SH order band, and Eq. 1 of the paper;
- :func:`train_harp`, :class:`TrainingRecipe`, :data:`PAPER_RECIPE`,
  :data:`DEFAULT_RECIPE`, :class:`TrainResult` (:mod:`.train`), with the
  noise-aware loss for noisy phantom pairs;
- :func:`save_model`, :func:`load_model` (:mod:`.model`), :func:`sh_convention`,
  :class:`ModelFileError` (:mod:`bids_harmony.methods.model_file`): safetensors + JSON card;
- :func:`harmonize_sh`, :class:`HarpPredictor` (:mod:`.inference`): chunked
  inference on coefficient maps.

Pairing, registration and voxel selection of phantom scans live in
:mod:`.pairs`, :mod:`.registration` and :mod:`.voxels`.
"""

from bids_harmony.methods.harp.inference import HarpPredictor, harmonize_sh
from bids_harmony.methods.harp.model import load_model, save_model
from bids_harmony.methods.harp.network import HarpNet, apply_band_scales
from bids_harmony.methods.harp.train import (
    DEFAULT_RECIPE,
    PAPER_RECIPE,
    HarpTrainingError,
    TrainingRecipe,
    TrainResult,
    train_harp,
)
from bids_harmony.methods.model_file import ModelFileError, sh_convention

__all__ = [
    "DEFAULT_RECIPE",
    "PAPER_RECIPE",
    "HarpNet",
    "HarpPredictor",
    "HarpTrainingError",
    "ModelFileError",
    "TrainResult",
    "TrainingRecipe",
    "apply_band_scales",
    "harmonize_sh",
    "load_model",
    "save_model",
    "sh_convention",
    "train_harp",
]
