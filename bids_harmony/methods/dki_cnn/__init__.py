"""DKI harmonization with a 3D hierarchical CNN trained on traveling subjects.

Tong et al. (2020): the DWIs of a source scan in, the reference scanner's DKI maps
(MD, AD, RD, FA, MK, AK, RK, KFA) out.  Arrays only (no files, no Nipype):

- :class:`DkiCnn` (:mod:`.network`): the network, its two heads and output scaling;
- :class:`InputSpec`, :func:`dki_inputs`, :func:`dki_inputs_from_sh` (:mod:`.inputs`):
  input channels independent of the gradient table and volume order;
- :func:`fit_dki_cnn`, :class:`TrainingRecipe`, :class:`TrainHistory` (:mod:`.training`);
- :func:`predict_maps` (:mod:`.inference`): chunked whole-volume inference;
- :class:`DkiCnnMethod`, :class:`DkiCnnModel` (:mod:`.method`): the method contract;
- :mod:`.synthetic`: tiny simulated traveling subjects with known maps.
"""

from bids_harmony.methods.dki_cnn.inference import predict_maps
from bids_harmony.methods.dki_cnn.inputs import (
    InputSpec,
    dki_inputs,
    dki_inputs_from_sh,
    hemisphere_directions,
)
from bids_harmony.methods.dki_cnn.method import DkiCnnMethod, DkiCnnModel
from bids_harmony.methods.dki_cnn.network import MAP_NAMES, DkiCnn
from bids_harmony.methods.dki_cnn.training import (
    DEFAULT_RECIPE,
    DkiTrainingError,
    TrainHistory,
    TrainingRecipe,
    fit_dki_cnn,
)

__all__ = [
    "DEFAULT_RECIPE", "DkiCnn", "DkiCnnMethod", "DkiCnnModel", "DkiTrainingError", "InputSpec",
    "MAP_NAMES", "TrainHistory", "TrainingRecipe", "dki_inputs", "dki_inputs_from_sh",
    "fit_dki_cnn", "hemisphere_directions", "predict_maps",
]  # fmt: skip
