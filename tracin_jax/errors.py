"""The project's error types: each says what went wrong and what to do about it.

Every stage raises one of these when its input is bad (non-finite numbers, a corrupt
or mismatched file, an unknown id, a malformed config value). The command line prints
``error: <what>; <what to do>`` on one line for them (exit 2 for usage errors, 1 for the
rest; the traceback only with ``--debug`` or ``TRACIN_JAX_DEBUG=1``).

``TracinError(what, hint)``: ``str(e)`` is ``"<what>; <hint>"`` (or just ``what``).
They subclass ``ValueError`` where callers have always caught ``ValueError`` for bad
input, so existing ``except ValueError`` code keeps working.
"""
from __future__ import annotations


class TracinError(Exception):
    """Base class. ``what``: the problem, naming the offending value, file or id;
    ``hint``: what the user can do (optional)."""

    exit_code = 1

    def __init__(self, what: str, hint: str | None = None):
        self.what, self.hint = str(what), (None if hint is None else str(hint))
        super().__init__(self.what if not self.hint else f"{self.what}; {self.hint}")


class UsageError(TracinError, ValueError):
    """A command-line usage mistake: bad option value, missing argument, unknown config key."""

    exit_code = 2


class ConfigError(TracinError, ValueError):
    """A config value that cannot work (unknown key, wrong type, out of range)."""

    exit_code = 2


class DataError(TracinError, ValueError):
    """Input data that cannot be used as given: unreadable file, bad label, no rows, bad ids."""


class NonFiniteError(TracinError, ValueError):
    """NaN or infinite numbers where finite ones are required (training, gradients, scores)."""


class TrainingDivergedError(NonFiniteError):
    """Training produced a non-finite loss or parameters."""


class CheckpointError(TracinError):
    """A checkpoint is missing, unreadable or fails its integrity check."""


class IntegrityError(TracinError):
    """A file's bytes do not match the checksum recorded when it was written."""


class MismatchError(TracinError, ValueError):
    """Two artifacts that must come from the same model, data or settings do not."""


class OutputExistsError(TracinError):
    """An output directory already holds a result made with different arguments."""


class BusyError(TracinError):
    """A resource (a training workdir) is in use by another process."""
