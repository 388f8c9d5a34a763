"""ArrowQuant: post-training quantization for diffusion models."""

from __future__ import annotations

# pyarrow first: it loads the libarrow/libparquet that the C++ core is linked against.
import pyarrow as _pyarrow  # noqa: F401

import arrowquant._core as _core
from arrowquant.api import ArrowQuantV2
from arrowquant.checkpoint import Checkpoint, TensorInfo, load_checkpoint
from arrowquant.config import DiffusionQuantConfig
from arrowquant.errors import (
    ArrowQuantError,
    ArrowQuantIOError,
    CancelledError,
    ConfigurationError,
    InvalidDataError,
    LimitExceededError,
    MalformedModelError,
    MetadataError,
    ModelNotFoundError,
    QuantizationError,
    ShapeMismatchError,
    UnsafePathError,
    UnsupportedError,
    ValidationError,
)
from arrowquant.model import QuantizedModel, export_safetensors, load_state_dict, open, save
from arrowquant.module import quantize_module
from arrowquant.quantize import QuantizedTensor, quantize
from arrowquant.report import QuantizationReport

__version__: str = _core.VERSION

__all__ = [
    "ArrowQuantV2",
    "DiffusionQuantConfig",
    "QuantizationReport",
    "CancelledError",
    "ArrowQuantError",
    "ArrowQuantIOError",
    "Checkpoint",
    "ConfigurationError",
    "InvalidDataError",
    "LimitExceededError",
    "MalformedModelError",
    "MetadataError",
    "ModelNotFoundError",
    "QuantizedModel",
    "QuantizedTensor",
    "QuantizationError",
    "ShapeMismatchError",
    "TensorInfo",
    "UnsafePathError",
    "UnsupportedError",
    "ValidationError",
    "__version__",
    "export_safetensors",
    "load_checkpoint",
    "load_state_dict",
    "open",
    "quantize",
    "quantize_module",
    "save",
]
