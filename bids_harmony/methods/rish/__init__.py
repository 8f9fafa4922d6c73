"""Reference harmonization methods that HARP is compared with (HARP paper §2.5).

- :class:`LinearRISH`, :func:`site_template`, :func:`rish_scale_maps`,
  :func:`apply_rish_scales` (:mod:`.linear_rish`): RISH-template scaling of
  Karayumak et al. (2019).
"""

from bids_harmony.methods.rish.linear_rish import (
    DEFAULT_EPS,
    DEFAULT_MAX_SCALE,
    LinearRISH,
    apply_rish_scales,
    rish_scale_maps,
    site_template,
)

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MAX_SCALE",
    "LinearRISH",
    "apply_rish_scales",
    "rish_scale_maps",
    "site_template",
]
