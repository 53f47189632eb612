"""Error hierarchy.

Every error we raise for bad input derives from :class:`QuantError`; the CLI maps it to
exit code 2 and prints its message. Messages follow one form::

    what failed | subject: got X, expected Y. Hint: ...
"""

from __future__ import annotations


class QuantError(Exception):
    """Base of every error the workbench raises on purpose (exit code 2 in the CLI)."""

    def __init__(self, what: str, *, subject: str | None = None, got: str | None = None,
                 expected: str | None = None, hint: str | None = None):
        self.what, self.subject, self.got, self.expected, self.hint = what, subject, got, expected, hint
        parts = [what]
        detail = []
        if got is not None:
            detail.append(f"got {got}")
        if expected is not None:
            detail.append(f"expected {expected}")
        if subject is not None:
            parts.append(f" | {subject}" + (": " + ", ".join(detail) if detail else ""))
        elif detail:
            parts.append(": " + ", ".join(detail))
        msg = "".join(parts)
        if hint:
            msg += f". Hint: {hint}"
        super().__init__(msg)


class ConfigError(QuantError):
    """An invalid option, flag or configuration value."""


class DataError(QuantError):
    """A dataset that is missing, empty, unreadable or of the wrong shape."""


class ModelError(QuantError):
    """A model that cannot be found, loaded, exported or run."""


class CalibrationError(QuantError):
    """Statistics or range computation failed (e.g. NaN/Inf activations)."""


class CacheFormatError(QuantError):
    """A TensorRT calibration cache or ranges file that does not parse."""


class BackendUnavailable(QuantError):
    """An optional backend (TensorRT, CUDA) is not installed or not usable here."""


class PlanError(QuantError):
    """A precision plan that does not fit the model."""


class Interrupted(QuantError):
    """The user pressed Ctrl-C; nothing partial was written."""
