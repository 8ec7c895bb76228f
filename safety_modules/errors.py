"""One family for every error a user can cause (a bad file, flag, checkpoint, input or remote answer).

The CLI prints a `SafeVLMError` (and an `OSError`) as one line and exits 2; anything else is a bug and
keeps its traceback. Raise the subclass of the area; each area's own error (``PolicyError``,
``CheckpointError``, ...) derives from one of these. The classic base of the old class stays as a second
base (``ValueError``, ``RuntimeError``), so code that caught it still does.
"""

from __future__ import annotations


class SafeVLMError(Exception):
    """Something the user can fix: the message says what and where, in one line."""


class ConfigError(SafeVLMError, ValueError):
    """A settings file, recipe, policy or command-line flag is unreadable or invalid."""


class InputError(SafeVLMError, ValueError):
    """An input (image, record file, dataset folder) cannot be used."""


class ModelError(SafeVLMError, ValueError):
    """A base model or safety-modules checkpoint is missing, unreadable or does not fit."""


class RemoteError(SafeVLMError, RuntimeError):
    """A remote service (the hub, a judge endpoint, an upstream server) refused or failed."""


class CalibrationError(SafeVLMError, ValueError):
    """Validation data cannot support the calibration asked for."""
