"""Measured sensitivity: how much each layer's output error moves the whole model's prediction.

The size budget (C++ `AssignBudget`) gives each layer a width by its estimated contribution to
the whole model's relative one-step error squared. Linearising the model around the FP weights,
a weight error dW of layer l changes the prediction eps by J_l dW, and for a random probe
v ~ N(0, I), E[(v . J_l dW)^2] = |J_l dW|^2, where v . J_l dW = <dW, grad_W (v . eps)>: the
weight gradient of the probe's projection, which autograd gives for every layer in one backward.
So with a reference error dW (round-to-nearest at 3 bits: errors spread like quantization
errors, which the gain's spatial structure depends on), the layer's contribution is measured
exactly to first order, positions and channels together (no independence assumption over the
output). Dividing it by the same error's mean squared output error on the replayed inputs
(|dW x|^2 per input row, what C++ computes as e H e^T / rows(H)) gives the layer's gain; the
budget's cost of a width is gain x that width's output error on the held-out H. Each call is
divided by its prediction's energy |eps|^2 and calls are averaged: units of the one-step
check's relative error squared.

Calls are recorded while the FP model samples (a seeded reservoir of forward calls of the
denoiser, inputs copied) and replayed with gradients afterwards; each weight gradient is used
in a hook and dropped at once, so the memory added is the replayed call's activations (big
models replay one batch item at a time).
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from arrowquant.calibration.capture import BIG_MODEL_PARAMS, quantizable_layers
from arrowquant.calibration.offload import append, offloaded, read

MAX_CALLS = 8  # forward calls of the denoiser replayed
PROBES = 4  # random projections per call
# Above this many parameters a call is replayed one batch item at a time (activation memory),
# and fewer calls, items and probes are replayed: each probe is a backward pass of the whole
# model (an SD1.5-sized UNet on 2 cores: 13 s forward with gradients, 30 s per backward), so 8
# calls x 4 probes would cost more than the sampling itself. The estimate is noisier there, not
# biased: the replayed item is the first of a call drawn at random from the run.
ONE_ITEM_PARAMS = BIG_MODEL_PARAMS
BIG_MODEL_CALLS = 2
BIG_MODEL_ITEMS = 1  # batch items replayed per call
BIG_MODEL_PROBES = 2
SPILL_REFERENCE_ERRORS = True  # big models: reference errors in a scratch file (see measure)


def big_model(module: Any) -> bool:
    """Whether the replay is cut down for this module's size (ONE_ITEM_PARAMS)."""
    return bool(sum(p.numel() for p in module.parameters()) > ONE_ITEM_PARAMS)


def replay_budget(module: Any) -> tuple[int, int]:
    """(calls recorded and replayed, probes per call) for this module's size."""
    if big_model(module):
        return BIG_MODEL_CALLS, BIG_MODEL_PROBES
    return MAX_CALLS, PROBES


def _map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple | list):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _float_tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, tuple | list):
        return [t for v in obj for t in _float_tensors(v)]
    if isinstance(obj, dict):  # diffusers' outputs are ordered dicts
        return [t for v in obj.values() for t in _float_tensors(v)]
    return []


class CallRecorder:
    """A seeded reservoir of up to `max_calls` forward calls of `module` (args and kwargs,
    tensors detached and copied): the inputs sensitivity is measured on, uniform over the run."""

    def __init__(self, module: Any, max_calls: int | None = None, seed: int = 0) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.seen = 0
        self.max_calls = max_calls or replay_budget(module)[0]
        self.rng = random.Random(seed)
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.seen += 1
        slot = (
            len(self.calls) if len(self.calls) < self.max_calls else self.rng.randrange(self.seen)
        )
        if slot >= self.max_calls:
            return
        call = _map_tensors((args, kwargs), lambda t: t.detach().clone())
        if slot == len(self.calls):
            self.calls.append(call)
        else:
            self.calls[slot] = call

    def remove(self) -> None:
        self.handle.remove()


def _chunks(args: Any, kwargs: Any, per_chunk: int) -> list[tuple[Any, Any]]:
    """The call split along the batch (every tensor whose first dimension is the batch of the
    first floating tensor); other values are passed whole."""
    floats = _float_tensors((args, kwargs))
    if not floats or floats[0].dim() == 0:
        return [(args, kwargs)]
    batch = floats[0].shape[0]
    if batch <= per_chunk:
        return [(args, kwargs)]
    out = []
    for start in range(0, batch, per_chunk):

        def cut(t: Any, s: int = start) -> Any:
            return t[s : s + per_chunk] if t.dim() >= 1 and t.shape[0] == batch else t

        out.append(_map_tensors((args, kwargs), cut))
    return out


def _dot64(a: Any, b: Any, chunk: int = 1 << 20) -> float:
    """<a, b> summed in f64, a chunk at a time: f64 copies of a whole big layer's weight and
    gradient (and their product) would be a gigabyte of the replay's peak memory."""
    a, b = a.reshape(-1), b.reshape(-1)
    return sum(
        float((a[i : i + chunk].double() * b[i : i + chunk].double()).sum())
        for i in range(0, a.numel(), chunk)
    )


def _reference_error(w: Any) -> Any:
    """W - dequant(RTN 3-bit min/max, groups of 32): the reference error the gain is measured on."""
    import torch

    from arrowquant.quantize import quantize

    wf = w.detach().float().cpu().contiguous()
    q = quantize(wf.reshape(wf.shape[0], -1), bits=3, group_size=32, method="minmax")
    return (wf - q.dequantize(torch.float32).reshape(wf.shape)).to(w.device, w.dtype)


def measure(
    module: Any,
    calls: list[tuple[Any, Any]],
    weight_names: Callable[[str], str],
    probes: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({weight name: [gain] * output rows}, summary) from replaying `calls` (module docstring)."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    layers = {weight_names(n): m for n, m in quantizable_layers(module).items()}
    params = list(module.parameters())
    big = big_model(module)
    probes = probes or replay_budget(module)[1]
    # The reference errors are as big as the weights: kept in memory for small models; for big
    # ones, whose memory would otherwise double, written to a scratch file at first use and read
    # back at the others (each is used 1 + probes times a replay; computing it again each time
    # was a quarter of an SD1.5-sized UNet's replay).
    cached: dict[str, Any] = {}
    stored: dict[str, int] = {}
    scratch = contextlib.ExitStack()
    spill = (
        # Closed with `scratch`, in the replay's finally.
        scratch.enter_context(tempfile.TemporaryFile(prefix="aq-delta-"))  # noqa: SIM115
        if big and SPILL_REFERENCE_ERRORS
        else None
    )

    def delta(name: str) -> Any:
        d = cached.get(name)
        if d is not None:
            return d
        w = layers[name].weight
        if spill is not None and name in stored:
            raw = read(spill, stored[name], w.numel() * w.element_size())
            return raw.view(w.dtype).reshape(w.shape).to(w.device)
        d = _reference_error(w)
        if spill is None:
            cached[name] = d
        else:
            stored[name] = append(spill, d.cpu().contiguous())
        return d

    contribution: dict[str, float] = dict.fromkeys(layers, 0.0)
    out_sq: dict[str, float] = dict.fromkeys(layers, 0.0)
    out_rows: dict[str, float] = dict.fromkeys(layers, 0.0)
    scale = [0.0]
    fired: set[str] = set()  # layers whose weight got a gradient (others: not measured)

    def out_hook(name: str, m: Any) -> Callable[..., None]:
        def hook(_m: Any, args: tuple[Any, ...], _out: Any) -> None:
            with torch.no_grad():
                x = args[0]
                if isinstance(m, torch.nn.Conv2d):
                    d = m._conv_forward(x, delta(name), None)
                    rows = d.numel() / d.shape[1]
                else:
                    d = F.linear(x, delta(name))
                    rows = d.numel() / d.shape[-1]
                out_sq[name] += float(d.double().pow(2).sum())
                out_rows[name] += rows

        return hook

    def grad_hook(names: list[str]) -> Callable[[Any], None]:
        def hook(p: Any) -> None:
            dot = _dot64(delta(names[0]), p.grad)
            for name in names:  # a tied weight: every layer using it
                contribution[name] += dot * dot * scale[0]
                fired.add(name)
            p.grad = None  # used once: never more than one layer's gradient alive

        return hook

    flags = [p.requires_grad for p in params]
    handles = [m.register_forward_hook(out_hook(name, m)) for name, m in layers.items()]
    g = torch.Generator().manual_seed(seed + 3)
    replayed = 0
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        by_weight: dict[int, list[str]] = {}
        for name, m in layers.items():
            m.weight.requires_grad_(True)
            by_weight.setdefault(id(m.weight), []).append(name)
        for names in by_weight.values():
            w = layers[names[0]].weight
            handles.append(w.register_post_accumulate_grad_hook(grad_hook(names)))
        for args, kwargs in calls:
            first = _float_tensors((args, kwargs))
            batch = first[0].shape[0] if first and first[0].dim() else 1
            if big:
                parts = _chunks(args, kwargs, 1)[:BIG_MODEL_ITEMS]
            else:
                parts = _chunks(args, kwargs, batch)
            for a, k in parts:
                # A big model's saved activations go to disk: the graph of one item would
                # otherwise be most of the run's peak memory.
                saved = offloaded(module) if big else contextlib.nullcontext()
                with torch.inference_mode(False), torch.enable_grad(), saved:
                    # Copies outside inference mode (recorded tensors may be inference tensors).
                    a, k = _map_tensors((a, k), lambda t: t.clone())
                    outs = _float_tensors(module(*a, **k))
                    if not outs or not any(o.requires_grad for o in outs):
                        continue
                    energy = sum(float(o.detach().double().pow(2).sum()) for o in outs)
                    if energy <= 0:
                        continue
                    scale[0] = 1.0 / (probes * energy * len(parts) * len(calls))
                    for i in range(probes):
                        vs = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]
                        loss = sum((v * o).sum() for v, o in zip(vs, outs, strict=True))
                        loss.backward(retain_graph=i + 1 < probes)
                    replayed += 1
    finally:
        scratch.close()
        for h in handles:
            h.remove()
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
            p.grad = None
    out = {}
    for name, m in layers.items():
        if name in fired and out_rows[name] > 0 and out_sq[name] > 0:
            gain = contribution[name] / (out_sq[name] / out_rows[name])
            out[name] = np.full(m.weight.shape[0], gain, dtype=np.float64)
    summary = {
        "method": "first-order whole-model gain of each layer's output error "
        "(random output probes, RTN 3-bit reference error)",
        "calls": len(calls),
        "replays": replayed,
        "probes": probes,
        "layers": len(out),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return out, summary
