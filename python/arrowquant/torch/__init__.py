"""Running ArrowQuant model files in PyTorch and diffusers.

- `apply(model, path)`: the file's weights into a module, packed by default (each quantized
  nn.Linear / Conv1d / Conv2d / Conv3d keeps the stored bytes and computes with them through
  the custom ops `torch.ops.arrowquant.linear` / `conv`), or dequantized once (`packed=False`);
- `apply_pipeline(pipe, path)`: the same for every component of a diffusers pipeline;
- `load_pipeline(path)`: a whole quantized pipeline in one call, built without float weights;
- `timestep(...)`: the timestep for the layers whose activation grid depends on it.

Modules: timestep_state (the current timestep), act (equalization and activation grids), ops (the
custom ops), packed (the packed layers), apply, pipeline.
"""

from arrowquant.torch.act import ActQuant, QuantizedConv2d, QuantizedLinear, fake_quant
from arrowquant.torch.apply import ApplyReport, apply, apply_pipeline, empty_weights, module_bytes
from arrowquant.torch.packed import (
    PackedConv,
    PackedConv1d,
    PackedConv2d,
    PackedConv3d,
    PackedLinear,
)
from arrowquant.torch.pipeline import load_pipeline
from arrowquant.torch.timestep_state import (
    TIMESTEP_ARGS,
    TimestepState,
    TimestepTracker,
    timestep,
    timestep_value,
)

__all__ = [
    "TIMESTEP_ARGS",
    "ActQuant",
    "ApplyReport",
    "PackedConv",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConv3d",
    "PackedLinear",
    "QuantizedConv2d",
    "QuantizedLinear",
    "TimestepState",
    "TimestepTracker",
    "apply",
    "apply_pipeline",
    "empty_weights",
    "fake_quant",
    "load_pipeline",
    "module_bytes",
    "timestep",
    "timestep_value",
]
