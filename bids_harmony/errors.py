"""Exception hierarchy.

Every error the user can cause derives from :class:`BidsHarmonyError`, mixed with
the closest built-in so callers can catch either.  The CLI turns them into a
one-paragraph message and a non-zero exit code, never a traceback.
"""

from __future__ import annotations


class BidsHarmonyError(Exception):
    """Base class of all errors raised on bad input or configuration."""

    exit_code = 2


class InputDatasetError(BidsHarmonyError, ValueError):
    """The input directory is not a usable BIDS dataset."""


class NoDataError(BidsHarmonyError, LookupError):
    """A query (participant, session, site, modality) matched nothing."""


class BadGradientsError(BidsHarmonyError, ValueError):
    """A ``.bval``/``.bvec`` pair is missing, malformed or inconsistent with its image."""


class BadImageError(BidsHarmonyError, ValueError):
    """An image cannot be read or holds unusable values (NaN/Inf, wrong dimensions)."""


class InputCheckError(BidsHarmonyError, ValueError):
    """The selected runs failed the input checks (the message lists every problem)."""


class RegistrationError(BidsHarmonyError, RuntimeError):
    """A registration failed or made the alignment worse."""


class OutputDirectoryError(BidsHarmonyError, OSError):
    """The output directory cannot be used (inside the input, not writable)."""


class MissingOutputError(BidsHarmonyError, FileNotFoundError):
    """A derivative an earlier level should have written is absent or incomplete."""


class LockError(BidsHarmonyError, RuntimeError):
    """Another run holds the work directory or the outputs this run would write."""


class MethodNotAvailableError(BidsHarmonyError, NotImplementedError):
    """A registered method that this analysis level cannot run yet (usable from Python)."""


class NotImplementedLevelError(BidsHarmonyError, NotImplementedError):
    """An analysis level that this version does not provide yet."""

    exit_code = 3
