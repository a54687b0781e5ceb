"""Typed errors raised by pruneplug.

Every error subclasses :class:`PrunePlugError` *and* the built-in exception a Python user would
expect (``ValueError`` for bad values, ``TypeError`` for bad types, ...), so both
``except pruneplug.errors.NonFiniteError`` and ``except ValueError`` work.

Messages name the argument, the value received and what was expected.
"""

from __future__ import annotations


class PrunePlugError(Exception):
    """Base class of every error pruneplug raises on purpose."""


class InvalidArgumentError(PrunePlugError, ValueError):
    """An argument has the right type but a value pruneplug cannot use."""


class ShapeError(InvalidArgumentError):
    """An array's shape does not fit the operation (wrong ndim, non-dividing group or block)."""


class ReadOnlyError(InvalidArgumentError):
    """An in-place operation was given a read-only array."""


class NotNMSparseError(InvalidArgumentError):
    """A weight that must already be N:M sparse has a group with too many nonzeros."""


class NonFiniteError(InvalidArgumentError):
    """Weights contain NaN or +-Inf, or scores contain NaN.

    ``count`` is how many offending values there are and ``first_index`` the flat (C-order) index
    of the first one. Backends raise it through :meth:`for_values` so that every backend produces
    the same message.
    """

    def __init__(self, message: str, *, count: int, first_index: int) -> None:
        super().__init__(message)
        self.count = count
        self.first_index = first_index

    @classmethod
    def for_values(cls, transform: str, count: int, first_index: int) -> "NonFiniteError":
        """Build the error for values scored with ``transform`` ("abs", "square" or "identity")."""
        if transform == "identity":
            message = (
                f"scores contain {count} NaN value(s), first at flat index {first_index}; "
                "scores must not be NaN (+Inf and -Inf are allowed)"
            )
        else:
            method = {"abs": "magnitude_l1", "square": "magnitude_l2"}.get(transform, transform)
            message = (
                f"weights contain {count} non-finite value(s) (NaN or Inf), first at flat index "
                f"{first_index}; {method} importance needs finite weights"
            )
        return cls(message, count=count, first_index=first_index)


class HessianError(InvalidArgumentError):
    """A layer's Hessian statistics cannot be used: not positive definite even after the extra
    damping pruneplug tries, or all zero. The message names the tensor and what was tried."""


class UnsupportedDtypeError(PrunePlugError, TypeError):
    """An array's dtype is not one the operation supports."""


class UnsupportedArrayError(PrunePlugError, TypeError):
    """An object is not an array type pruneplug understands (NumPy, CuPy, PyTorch)."""


class BackendError(PrunePlugError):
    """Base class of backend selection and execution errors."""


class PluginRegistrationError(BackendError, ValueError):
    """A plugin cannot be registered: its hook implementations do not match the hook
    specifications (an argument the spec does not name), or it is blocked or already registered."""


class BackendNotFoundError(BackendError, LookupError):
    """No registered backend has the requested name."""


class BackendUnavailableError(BackendError, RuntimeError):
    """The backend is registered but cannot run here (missing library, no device, ...), or it does
    not support the array type, dtype or operation it was asked for."""


class BackendExecutionError(BackendError, RuntimeError):
    """A backend failed while running (an unexpected status from native code, a device fault)."""


class DeviceMemoryError(BackendError, MemoryError):
    """The device ran out of memory; the message says how much was asked for."""


class CheckpointError(PrunePlugError):
    """A checkpoint could not be read or written (corrupt input, unwritable output, ...)."""


class CalibrationRequiredError(PrunePlugError, ValueError):
    """An importance criterion that needs calibration statistics (Wanda, ...) was given none.

    ``method`` is the criterion's name, as in Aprender's ``PruningError::CalibrationRequired``.
    """

    def __init__(self, method: str, detail: str = "") -> None:
        super().__init__(
            f"method {method!r} needs calibration statistics (pass calibration=... : a CalibrationContext, "
            f"ActivationStats or a statistics file from `pruneplug calibrate`){': ' + detail if detail else ''}"
        )
        self.method = method


class CalibrationError(InvalidArgumentError):
    """Calibration statistics are unusable: a bad or mismatching statistics file (wrong layer
    names or feature counts, NaN/Inf, a missing layer), or calibration texts that give no tokens.
    The message names the file and the tensor."""


class PluginLoadWarning(UserWarning):
    """A third-party plugin failed to import or register; pruneplug carries on without it."""
