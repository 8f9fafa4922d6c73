"""Names of the input checks a user can override, importable without numpy.

The parser offers them to ``--ignore-check`` (``bids-harmony --help`` stays light);
:mod:`bids_harmony.bids.checks` implements them.
"""

OVERRIDABLE = ("affine", "bvalue-range")
"""Checks whose error ``--ignore-check`` turns into a warning."""
