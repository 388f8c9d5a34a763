"""`apply(model, path)`: an ArrowQuant model file put into a PyTorch / diffusers module.

Packed (the default): each nn.Linear / nn.Conv1d / Conv2d / Conv3d whose weight the file stores
quantized becomes a PackedLinear / PackedConv1d / 2d / 3d holding the stored bytes
(arrowquant.torch.packed); every other tensor (biases, norms, embeddings, layers kept in float)
is loaded in the module's dtype. The model may be built on the meta device (`empty_weights()`):
nothing of its float weights is ever allocated then, so the process holds about the file's
bytes.

`packed=False`: every weight is dequantized once into the module's float parameters.

Either way, a layer that calibration gave activation parameters multiplies its input by its
equalization scales (its weight is stored as W / s) and rounds it to the activation grid of the
current timestep group (the timestep comes from the denoiser's forward through a hook, or from
`timestep()`). Packed Linear / Conv2d layers with 8-bit activations compute that in integers
(uint8 x int8 -> int32, arrowquant.torch.int8) where the CPU has a SIMD dot product; otherwise,
and for dequantized layers, the rounding is simulated in float (fake quantization).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from arrowquant._memory import release_freed
from arrowquant.torch.act import ActQuant, dequantized_replacement
from arrowquant.torch.ops import DEFAULT_TILE_ELEMENTS
from arrowquant.torch.packed import BUFFERS, PACKED_CONV, PackedConv, PackedLinear, format_of
from arrowquant.torch.timestep_state import TimestepState, TimestepTracker


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Modules built inside the block get their parameters on the meta device (no memory);
    buffers stay real, since non-persistent ones (position ids, rotary frequencies) are not in
    any file. `apply` then fills the model from the quantized file."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        yield


# The layers a packed model computes with from the stored bytes (calibration records
# activations of Linear and Conv2d).
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _prefix(names: set[str], keys: list[str]) -> str:
    for cand in sorted({n.split("/", 1)[0] + "/" for n in names if "/" in n}) + [""]:
        if all(cand + k in names for k in keys):
            return cand
    return ""


@dataclass
class ApplyReport:
    loaded: int
    equalized: list[str]
    act_quantized: list[str]
    state: TimestepState
    tracker: TimestepTracker
    packed: list[str] = field(default_factory=list)

    def set_act_quant(self, model: nn.Module, enabled: bool) -> None:
        for m in model.modules():
            if isinstance(m, ActQuant) and m.time_aware is not None:
                m.enabled = enabled


def module_bytes(model: nn.Module) -> int:
    """Bytes of the module's parameters and buffers (tied tensors once)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or t.is_meta:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _materialize(model: nn.Module) -> None:
    """Real (uninitialized) CPU storage for parameters and buffers left on meta; tied
    parameters stay tied."""
    made: dict[int, nn.Parameter] = {}
    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in made:
                made[id(p)] = nn.Parameter(
                    torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad
                )
            m._parameters[name] = made[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_meta:
                m._buffers[name] = torch.empty(b.shape, dtype=b.dtype)


def _fill(qm: Any, targets: dict[str, torch.Tensor], threads: int) -> None:
    """Reads the named tensors of the file straight into `targets` (CPU tensors of the model),
    float ones dequantized in their own dtype, others converted."""
    from arrowquant.dtypes import core_name

    by_dtype: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    other: list[str] = []
    for name, t in targets.items():
        key = core_name(t.dtype)
        if key in ("F32", "F16", "BF16") and t.is_contiguous():
            view = t.detach().view(torch.int16) if t.dtype == torch.bfloat16 else t.detach()
            by_dtype.setdefault(key, ([], []))[0].append(name)
            by_dtype[key][1].append(view.numpy())
        else:
            other.append(name)
    for key, (names, views) in by_dtype.items():
        qm._core.load_into(names, views, key, threads)
    if other:
        for name, a in zip(other, qm._core.load(other, "F32", threads), strict=True):
            with torch.no_grad():
                targets[name].copy_(torch.from_numpy(np.asarray(a)).reshape(targets[name].shape))


def _packed_module(
    qm: Any, m: nn.Module, wname: str, bname: str | None, tile_elements: int
) -> PackedLinear | PackedConv:
    q = qm._core.read_quantized(wname)
    fmt = format_of(q.spec, q.rows, q.cols)
    buffers = {b: torch.from_numpy(np.array(getattr(q, b))) for b in BUFFERS}
    del q
    p: PackedLinear | PackedConv
    if isinstance(m, nn.Linear):
        p = PackedLinear(m.in_features, m.out_features, m.bias is not None, tile_elements)
    else:
        assert isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        p = PACKED_CONV[type(m)](m, tile_elements)
    p.set_packed(fmt, buffers)
    if m.bias is not None:
        rows = fmt[5]
        p.bias = nn.Parameter(torch.empty(rows, dtype=m.bias.dtype), requires_grad=False)
        assert bname is not None
        _fill(qm, {bname: p.bias}, 1)
    return p


def apply(
    model: nn.Module,
    quantized: str | os.PathLike[str],
    act_quant: bool = True,
    dtype: torch.dtype | None = None,
    prefix: str | None = None,
    packed: bool = True,
    tile_bytes: int | None = None,
    threads: int | None = None,
    int8: bool | None = None,
) -> ApplyReport:
    """Loads the quantized file into `model` (in place); see the module docstring. `prefix`:
    the model's names in the file ("unet/"); None finds it. `tile_bytes`: the scratch a packed
    layer decodes its weight into (default 16 MiB of f32). `int8`: packed Linear / Conv2d layers
    with 8-bit activations run the integer kernels (arrowquant.torch.int8); None: where the
    CPU has a SIMD integer dot product."""
    import arrowquant as aq
    from arrowquant.errors import ShapeMismatchError

    qm = aq.open(quantized)
    path = qm.path
    names = set(qm.names())
    state_keys = list(model.state_dict().keys())
    if prefix is None:
        prefix = _prefix(names, state_keys)
    missing = [k for k in state_keys if prefix + k not in names]
    if missing:
        raise ShapeMismatchError(
            f"{path}: lacks {len(missing)} tensor(s) of the model (e.g. {missing[0]}); "
            "was it quantized from this model?"
        )
    threads = threads or torch.get_num_threads()
    tile = max(1, (tile_bytes or DEFAULT_TILE_ELEMENTS * 4) // 4)
    state = TimestepState()
    equalized: list[str] = []
    act_quantized: list[str] = []
    packed_names: list[str] = []
    replace: list[tuple[str, nn.Module]] = []
    for mod_name, m in model.named_modules():
        if type(m) not in _LAYERS:
            continue
        wname = f"{prefix}{mod_name}.weight"
        if wname not in names:
            continue
        info = qm.info(wname)
        spatial = info.get("spatial")
        ta = info.get("time_aware")
        eq = None
        if spatial and len(spatial["equalization_scales"]):
            eq = torch.tensor(spatial["equalization_scales"], dtype=torch.float32)
            equalized.append(mod_name)
        act = None
        if (eq is not None or ta is not None) and type(m) in (nn.Linear, nn.Conv2d):
            if ta is not None:
                act_quantized.append(mod_name)
            act = ActQuant(1 if isinstance(m, nn.Conv2d) else -1, eq, ta, state)
            act.enabled = act_quant and ta is not None
        if packed and info["quant_type"] != "raw":
            bname = f"{prefix}{mod_name}.bias" if m.bias is not None else None
            p = _packed_module(qm, m, wname, bname, tile)
            p.act = act
            if int8 is not None:
                p.int8_kernels = int8
            replace.append((mod_name, p))
            packed_names.append(mod_name)
        elif act is not None:
            if m.weight.is_meta:
                _materialize(m)
            if eq is not None:  # as stored: W / s
                stored = qm._core.load([wname], "F32", 1, as_stored=True)[0]
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(stored).to(m.weight.dtype))
            replace.append((mod_name, dequantized_replacement(m, act)))
    for mod_name, q in replace:
        parent_name, _, child = mod_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
    del replace
    _materialize(model)
    # Everything the packed layers do not hold, in the model's own tensors; an equalized layer's
    # weight was read as stored above.
    done = {f"{n}." for n in packed_names}
    eq_weights = {f"{n}.weight" for n in equalized}
    targets = {
        prefix + k: v
        for k, v in model.state_dict(keep_vars=True).items()
        if not any(k.startswith(d) for d in done) and k not in eq_weights and not _is_act(k)
    }
    _fill(qm, targets, threads)
    n_loaded = len(targets)
    del qm, targets
    if dtype is not None:
        model.to(dtype)
    release_freed()  # the replaced float weights and the reader's buffers
    tracker = TimestepTracker(model, state)
    loaded = n_loaded + len(packed_names) + len(equalized)
    return ApplyReport(loaded, equalized, act_quantized, state, tracker, packed_names)


def _is_act(key: str) -> bool:
    """The equalization scales an ActQuant holds as a buffer (they come from the file's
    spatial parameters, not from a tensor of that name)."""
    return key.endswith("act.eq_scales")


def apply_pipeline(
    pipe: Any,
    quantized: str | os.PathLike[str],
    act_quant: bool = True,
    dtype: torch.dtype | None = None,
    packed: bool = True,
    int8: bool | None = None,
) -> dict[str, ApplyReport]:
    """`apply` to every component of a diffusers pipeline (`pipe.components`) that the quantized
    file holds (text encoder, denoiser, VAE, ...), each under its own folder's names; returns
    the report of each. A component the file lacks is left as it is."""
    import arrowquant as aq
    from arrowquant.errors import ShapeMismatchError

    names = aq.open(quantized).names()
    out: dict[str, ApplyReport] = {}
    for key, module in pipe.components.items():
        if isinstance(module, nn.Module) and any(n.startswith(f"{key}/") for n in names):
            out[key] = apply(
                module, quantized, act_quant, dtype, prefix=f"{key}/", packed=packed, int8=int8
            )
    if not out:
        raise ShapeMismatchError(
            f"{quantized}: holds none of the pipeline's components "
            f"({', '.join(k for k, m in pipe.components.items() if isinstance(m, nn.Module))})"
        )
    return out
