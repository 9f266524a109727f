"""The exceptions that say whose mistake it is.

A :class:`UsageError` is a mistake the user can fix (a recipe key, a path, a data file); the
command line prints it as one line ``selfsup: error: ...`` with exit status 2. Anything else
that escapes is a bug and keeps its traceback. Both usage errors are also ``ValueError``, so
code that catches ``ValueError`` around a loader or a config keeps working.
"""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user gave (configuration, path or data), with the fix in the message."""


class ConfigError(UsageError, ValueError):
    """A recipe, override or method argument that does not fit the configuration schema."""


class DataError(UsageError, ValueError):
    """A dataset, file or folder that cannot be used as asked (corrupt, wrong shape, no labels...)."""


class NonFiniteError(ValueError):
    """A tensor holds NaN or Inf. Inside training this means the run diverged, not a usage error."""


class NonFiniteLossError(FloatingPointError):
    """Training diverged (a NaN or Inf loss, weights or statistics); the last good checkpoint is kept."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, as schedulers send before preempting a job): every rank
    finished its step and a checkpoint was written; ``--resume`` continues it exactly."""

    EXIT_STATUS = 75
    """What the command line exits with: EX_TEMPFAIL, "try again later", for a requeue script."""
