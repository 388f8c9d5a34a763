"""Per-layer choice of DiTAS equalization, measured on calibration activations.

s_i = max|W_i|^a / max|X_i|^(1-a) moves range from the activations into the weights. Whether that
lowers a layer's output error depends on both quantizers: with INT4 weights in groups of 32 along
the input channels, widening one column widens its whole group, and an 8-bit activation grid may
have had little error to remove. So each layer tries a few strengths - none, and a in
`candidates` - and keeps the one whose quantized output is closest to the FP output on a bounded
sample of its real calibration inputs:

    y = x W^T   versus   fq_A(x * s) Q_W(W / s)^T

(convolutions as unfolded patches). The activation grid of each candidate is fitted on the scaled
sample (C++ collector, MSE clipping); the weights go through the real quantizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant.calibration.capture import quantizable_layers, weight_name

DEFAULT_CANDIDATES = (0.25, 0.5, 0.75)


def _output_error(rows: Any, w: Any, s: Any, spec: dict[str, Any], act_bits: int) -> float:
    import torch

    import arrowquant as aq

    wf = w.reshape(w.shape[0], -1)  # [out, in*k*k]
    k = wf.shape[1] // s.numel()
    s_rows = s.repeat_interleave(k)  # input channel i covers k consecutive unfolded columns
    ws = _core.scale_input_channels(w.contiguous().numpy(), s.numpy(), True, "weight")
    packed = aq.quantize(
        ws,
        bits=spec["bits"],
        group_size=spec["group_size"],
        scheme=spec["scheme"],
        method=spec["method"],
        scale_dtype=spec["scale_dtype"],
    )
    wq = torch.from_numpy(packed.dequantize()).reshape(wf.shape)
    xs = (rows * s_rows).contiguous()
    col = _core.ActivationCollector.make(1)
    col.add(0, xs.numpy().reshape(-1), xs.numel(), 1, 1)
    grid = _core.fit_time_groups(col, 1, False, act_bits, "mse")
    from arrowquant.torch import fake_quant

    xq = fake_quant(xs, grid["act_scales"][0], grid["act_zero_points"][0], act_bits)
    y = rows @ wf.T
    return float((xq @ wq.T - y).pow(2).sum())


def choose_equalization(
    ref: Any,
    raw: dict[str, Any],
    samples: dict[str, Any],
    specs: dict[str, dict[str, Any]],
    act_bits: int,
    candidates: tuple[float, ...] = DEFAULT_CANDIDATES,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(scales of the layers that equalization helps, per-layer choice and errors).

    `specs`: the weight format each layer is written in (PipelineConfig.spec_for of its planned
    width); layers without one (kept unquantized) are not equalized."""
    import torch

    scales: dict[str, np.ndarray] = {}
    choices: dict[str, Any] = {}
    for mod_name, m in quantizable_layers(ref.module).items():
        name = weight_name(ref, mod_name)
        rows = samples.get(name)
        spec = specs.get(name)
        if name not in raw or rows is None or rows.shape[0] == 0 or spec is None:
            continue
        if isinstance(m, torch.nn.Conv2d) and m.groups != 1:
            continue
        w = m.weight.detach().float()
        w_absmax = _core.input_channel_absmax(w.contiguous().numpy(), "F32", name)
        x_absmax = np.asarray(raw[name].overall()["absmax"], dtype=np.float32)
        best_alpha: float | None = None
        best_err = _output_error(rows, w, torch.ones(w.shape[1]), spec, act_bits)
        errors = {"none": best_err}
        best_s = None
        for a in candidates:
            s = np.asarray(_core.equalization_scales(w_absmax, x_absmax, a), dtype=np.float32)
            e = _output_error(rows, w, torch.from_numpy(s), spec, act_bits)
            errors[str(a)] = e
            if e < best_err:
                best_alpha, best_err, best_s = a, e, s
        choices[name] = {"alpha": best_alpha, "errors": errors, "format": spec["format"]}
        if best_s is not None:
            scales[name] = best_s
    return scales, choices
