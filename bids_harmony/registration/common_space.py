r"""Common FA space of the group level: template building, registration, warping.

The group level compares sessions voxel by voxel, so every session's FA map is
registered to one study-specific FA template (:func:`build_fa_template`,
:func:`register_to_template`).  FA, MD and GFA maps (raw and harmonized) are
then warped into the template (:func:`to_template`); LinearRISH scale maps
estimated in template space are warped back onto each session's native grid
(:func:`from_template`).

This module is the public entry point; the code lives in

* :mod:`bids_harmony.registration.template` — the study FA template;
* :mod:`bids_harmony.registration.syn` — session FA → template registration
  (:class:`SessionTransform`, :class:`RegistrationFailedError`);
* :mod:`bids_harmony.registration.warps` — warping maps to and from the template;
* :mod:`bids_harmony.registration.ants` — what they share: map loading,
  ``ants.registration`` settings, the JSON records of the cache, and the notes on
  conventions, determinism and caching.

Callers that must see a monkeypatched function (tests) look the names up here
at call time, e.g. ``bids_harmony.workflows.group`` imports
:func:`register_to_template` from this module inside the function that uses it.
"""

from __future__ import annotations

from bids_harmony.registration.ants import SYN_ITERATIONS, TRANSFORMS, RegistrationFailedError
from bids_harmony.registration.syn import (
    MIN_CORRELATION,
    SessionTransform,
    fa_correlation,
    register_to_template,
)
from bids_harmony.registration.template import build_fa_template
from bids_harmony.registration.warps import from_template, to_template

__all__ = ["MIN_CORRELATION", "SYN_ITERATIONS", "TRANSFORMS", "RegistrationFailedError",
           "SessionTransform", "build_fa_template", "fa_correlation", "from_template",
           "register_to_template", "to_template"]  # fmt: skip
