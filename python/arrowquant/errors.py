"""Typed exceptions. The C++ core reports a status code; `from_status` picks the class.

Every exception carries `code` (the core's code name, e.g. ``"HeaderTooLarge"``) and a message
that names the file and, where there is one, the tensor.
"""

from __future__ import annotations


class ArrowQuantError(Exception):
    """Base class of every error ArrowQuant raises on purpose."""

    code: str = "Error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelNotFoundError(ArrowQuantError, FileNotFoundError):
    """The path does not exist, or holds nothing that looks like a model."""


class MalformedModelError(ArrowQuantError, ValueError):
    """A model file breaks a rule of its format (header, offsets, index, ...)."""


class MetadataError(MalformedModelError):
    """Metadata (``__metadata__``, model-level key/values) is missing or mistyped."""


class ShapeMismatchError(MalformedModelError):
    """A shape does not agree with the bytes that hold it."""


class UnsafePathError(MalformedModelError):
    """A path inside a model file points outside the model folder."""


class LimitExceededError(ArrowQuantError, ValueError):
    """A configured cap (header size, tensor count, bytes) was exceeded."""


class ConfigurationError(ArrowQuantError, ValueError):
    """A configuration value or argument is invalid."""


class UnsupportedError(ArrowQuantError, ValueError):
    """Valid input that this version cannot handle."""


class ArrowQuantIOError(ArrowQuantError, OSError):
    """Reading or writing failed at the operating-system level."""


class QuantizationError(ArrowQuantError):
    """Quantizing a tensor or a model failed because of the values themselves."""


class InvalidDataError(QuantizationError, ValueError):
    """A weight or activation holds values that cannot be quantized: NaN/Inf (code
    ``NonFinite``) or magnitudes its scale storage cannot hold (``ScaleOverflow``). A data
    problem, not a configuration mistake."""


class ValidationError(ArrowQuantError):
    """Quality validation failed (a threshold was missed)."""


class CancelledError(ArrowQuantError):
    """The run was cancelled (progress callback returned False or raised, or Ctrl-C)."""


_BY_CODE: dict[str, type[ArrowQuantError]] = {
    "InvalidArgument": ConfigurationError,
    "NotFound": ModelNotFoundError,
    "NotAModel": ModelNotFoundError,
    "IoError": ArrowQuantIOError,
    "Unsupported": UnsupportedError,
    "ShapeOverflow": ShapeMismatchError,
    "SizeMismatch": ShapeMismatchError,
    "MetadataInvalid": MetadataError,
    "PathEscape": UnsafePathError,
    "LimitExceeded": LimitExceededError,
    "FormatInvalid": MalformedModelError,
    "Corrupt": MalformedModelError,
    "Cancelled": CancelledError,
    "ThresholdMissed": ValidationError,
    "NonFinite": InvalidDataError,
    "ScaleOverflow": InvalidDataError,
}


def from_status(code: str, message: str) -> ArrowQuantError:
    """Builds the exception for a C++ status (called by the bindings)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = ArrowQuantError if code == "Internal" else MalformedModelError
    return cls(message, code)
