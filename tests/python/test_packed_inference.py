"""Packed weights at inference (arrowquant.torch.packed / ops): numerics against the
dequantize-once path for every stored format, the custom ops under torch.compile / export, the
modules' state_dict, and whole models and pipelines applied packed."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import arrowquant as aq
import arrowquant._core as _core
import arrowquant.torch as aqt
from arrowquant.diffusion import initial_noise, load_reference, sample
from arrowquant.torch.packed import BUFFERS, format_of

MODELS = Path(__file__).resolve().parents[2] / "models"
DDPM = MODELS / "digits-ddpm"
DIT = MODELS / "digits-dit"

# Every stored format: widths, schemes, scale storages (f16, f32, coded q6/q7/q8).
FORMATS = [
    (bits, scheme, sd)
    for bits in (2, 3, 4, 8)
    for scheme in ("asym", "sym")
    for sd in ("f16", "f32", "q6", "q7", "q8")
]
GROUPS = (32, 64, 128, 256, 0)


def packed_from(w: torch.Tensor, bits: int, group: int, scheme: str, sd: str) -> tuple:
    q = _core.quantize(w.numpy(), "F32", "w", bits, group, scheme, "search", sd, 1)
    fmt = format_of(q.spec, q.rows, q.cols)
    bufs = {b: torch.from_numpy(np.array(getattr(q, b))) for b in BUFFERS}
    return fmt, bufs, torch.from_numpy(q.dequantize("F32", 1))


def packed_linear(w: torch.Tensor, bias: torch.Tensor | None, spec: tuple, tile: int) -> tuple:
    fmt, bufs, deq = packed_from(w, *spec)
    m = aqt.PackedLinear(w.shape[1], w.shape[0], bias is not None, tile)
    m.set_packed(fmt, bufs)
    if bias is not None:
        m.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return m, deq


@pytest.mark.parametrize(("bits", "scheme", "sd"), FORMATS)
def test_linear_equals_dequantize_once_for_every_format(bits: int, scheme: str, sd: str) -> None:
    g = torch.Generator().manual_seed(bits * 7 + len(sd))
    # 300 inputs: a short last group at every group size (tails).
    w = torch.randn(24, 300, generator=g) * 0.05
    b = torch.randn(24, generator=g)
    x = torch.randn(5, 3, 300, generator=g)
    for group in GROUPS:
        whole, deq = packed_linear(w, b, (bits, group, scheme, sd), tile=1 << 20)
        assert torch.equal(whole.dequantized_weight(), deq)
        ref = F.linear(x, deq, b)
        # One tile: the very same GEMM as the dequantized layer.
        assert torch.equal(whole(x), ref), (bits, scheme, sd, group)
        # Tiles of 5 rows (the last one shorter): the same values up to the GEMM's blocking.
        tiled, _ = packed_linear(w, b, (bits, group, scheme, sd), tile=5 * 300)
        torch.testing.assert_close(tiled(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("padding", [1, "same", "valid"])
def test_conv_equals_dequantize_once_tiled_and_grouped(groups: int, padding: int | str) -> None:
    g = torch.Generator().manual_seed(groups)
    conv = nn.Conv2d(8, 16, 3, padding=padding, groups=groups, bias=True)
    x = torch.randn(2, 8, 9, 7, generator=g)
    w = conv.weight.detach()
    for spec in [(4, 32, "asym", "q7"), (8, 0, "sym", "f16"), (2, 64, "asym", "q6")]:
        fmt, bufs, deq = packed_from(w.reshape(16, -1), *spec)
        ref = F.conv2d(x, deq.view_as(w), conv.bias, 1, padding, 1, groups)
        for tile in (1 << 20, 3 * w[0].numel()):  # whole, and tiles of 3 output channels
            m = aqt.PackedConv2d(conv, tile)
            m.set_packed(fmt, bufs)
            m.bias = nn.Parameter(conv.bias.detach().clone())
            torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_conv_padding_modes_and_stride() -> None:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="reflect", dilation=1)
    x = torch.randn(1, 4, 10, 10)
    fmt, bufs, deq = packed_from(conv.weight.detach().reshape(6, -1), 4, 32, "asym", "q7")
    m = aqt.PackedConv2d(conv, 1 << 20)
    m.set_packed(fmt, bufs)
    m.bias = nn.Parameter(conv.bias.detach().clone())
    conv.weight.data.copy_(deq.view_as(conv.weight))
    assert torch.equal(m(x), conv(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_decode_in_their_dtype(dtype: torch.dtype) -> None:
    w = torch.randn(16, 96) * 0.1
    m, deq = packed_linear(w, torch.randn(16), (4, 32, "asym", "q7"), 1 << 20)
    m.to(dtype)  # the bias follows; the packed bytes do not change
    assert m.weight_codes.dtype == torch.uint8 and m.bias.dtype == dtype
    x = torch.randn(4, 96).to(dtype)
    y = m(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, F.linear(x, deq.to(dtype), m.bias))


def test_custom_ops_pass_opcheck_compile_and_export() -> None:
    w = torch.randn(32, 64) * 0.1
    lin, _ = packed_linear(w, torch.randn(32), (4, 32, "asym", "q7"), 16 * 64)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    fmt, bufs, _ = packed_from(conv.weight.detach().reshape(8, -1), 4, 32, "asym", "q7")
    pc = aqt.PackedConv2d(conv, 1 << 20)
    pc.set_packed(fmt, bufs)
    x = torch.randn(3, 64)
    img = torch.randn(2, 4, 6, 6)
    torch.library.opcheck(
        torch.ops.arrowquant.linear.default,
        (x, *(getattr(lin, f"weight_{b}") for b in BUFFERS), lin.bias, lin.fmt, 16 * 64),
    )
    torch.library.opcheck(
        torch.ops.arrowquant.conv.default,
        (img, *(getattr(pc, f"weight_{b}") for b in BUFFERS), pc.bias, pc.fmt)
        + (pc.weight_shape, [1, 1], [1, 1], [1, 1], 1, 1 << 20),
    )
    model = nn.Sequential(lin, nn.GELU())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), model(x))
    ep = torch.export.export(pc, (img,))
    assert any("arrowquant.conv" in str(n.target) for n in ep.graph.nodes)
    assert torch.equal(ep.module()(img), pc(img))


def test_state_dict_round_trips_through_torch_save(tmp_path: Path) -> None:
    w = torch.randn(20, 70)
    m, _ = packed_linear(w, torch.randn(20), (3, 64, "asym", "q6"), 1 << 20)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    # A layer of another format takes the stored buffers as they are.
    other, _ = packed_linear(torch.randn(20, 70), None, (8, 32, "sym", "f16"), 1 << 20)
    other.bias = nn.Parameter(torch.zeros(20))
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(4, 70)
    assert other.fmt == m.fmt and torch.equal(other(x), m(x))
    # A deep copy computes with its own buffers (the views the eager kernel caches are not
    # copied along).
    twin = copy.deepcopy(m)
    y = m(x)
    m.weight_codes.zero_()
    assert torch.equal(twin(x), y) and not torch.equal(m(x), y)


def test_bad_inputs_raise_typed_errors() -> None:
    m, _ = packed_linear(torch.randn(8, 32), None, (4, 32, "asym", "q7"), 1 << 20)
    with pytest.raises(TypeError, match="not a float type"):
        m(torch.ones(2, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="uint8"):
        m.set_packed(m.fmt, {b: torch.zeros(3) for b in BUFFERS})
    cut = {b: getattr(m, f"weight_{b}") for b in BUFFERS}
    cut["codes"] = cut["codes"][:-1]
    m.set_packed(m.fmt, cut)
    with pytest.raises(aq.ArrowQuantError, match="codes hold"):
        m(torch.ones(2, 32))


@pytest.fixture(scope="module")
def ddpm_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "int4"
    cfg = aq.DiffusionQuantConfig.from_profile("local", calibration="")
    aq.ArrowQuantV2().quantize_diffusion_model(DDPM, out, cfg)
    return out


def _empty(model: Path) -> nn.Module:
    """The denoiser of a reference model built with no weights (meta parameters)."""
    import diffusers

    folder = next(model / s for s in ("unet", "transformer") if (model / s).is_dir())
    cls = getattr(diffusers, json.loads((folder / "config.json").read_text())["_class_name"])
    with aqt.empty_weights():
        m = cls.from_config(cls.load_config(folder))
    assert isinstance(m, nn.Module)
    return m.eval()


@pytest.mark.parametrize("model", [DDPM, DIT], ids=["unet", "dit"])
def test_applied_model_samples_as_dequantize_once_in_file_bytes(
    model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int4"
    cfg = aq.DiffusionQuantConfig.from_profile("local", calibration="")
    aq.ArrowQuantV2().quantize_diffusion_model(model, out, cfg)
    ref = load_reference(model)
    noise, labels = initial_noise(ref, 6, seed=2)
    deq = load_reference(model).module
    aqt.apply(deq, out, packed=False)
    want = sample(ref, deq, noise, labels, 8).samples
    # Built without weights, filled from the file.
    packed = _empty(model)
    rep = aqt.apply(packed, out)
    layers = [packed.get_submodule(n) for n in rep.packed]
    assert layers and all(isinstance(m, aqt.PackedConv2d | aqt.PackedLinear) for m in layers)
    assert torch.equal(sample(ref, packed, noise, labels, 8).samples, want)
    # The file holds the whole pipeline (FP16 parts too); the denoiser takes less than it.
    assert aqt.module_bytes(packed) <= 1.15 * (out / "model.aq.parquet").stat().st_size
    assert aqt.module_bytes(packed) < 0.3 * aqt.module_bytes(deq)
    # The packed model's state_dict loads into another packed model: same samples.
    again = _empty(model)
    aqt.apply(again, out)
    again.load_state_dict(packed.state_dict())
    assert torch.equal(sample(ref, again, noise, labels, 8).samples, want)


def test_apply_on_a_model_of_another_shape_names_the_problem(ddpm_int4: Path) -> None:
    with pytest.raises(aq.ShapeMismatchError, match="lacks"):
        aqt.apply(nn.Sequential(nn.Linear(3, 3)), ddpm_int4)


class _AudioVideo(nn.Module):
    """Conv1d (audio), Conv3d (video) and Linear layers, as a weight-only file holds them."""

    def __init__(self) -> None:
        super().__init__()
        self.wave = nn.Conv1d(8, 32, 5, padding=2)
        self.frames = nn.Conv3d(4, 16, 3, padding=1, padding_mode="replicate")
        self.depthwise = nn.Conv1d(32, 32, 3, groups=32, bias=False)
        self.head = nn.Linear(32, 64)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.wave(a)).mean(-1)
        return self.head(h) + self.frames(v).mean((1, 2, 3, 4))[:, None]


def test_conv1d_and_conv3d_layers_are_packed_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _AudioVideo().eval()
    aq.quantize_module(model, tmp_path / "q", profile="local", min_elements=64)
    a, v = torch.randn(2, 8, 40), torch.randn(2, 4, 3, 6, 6)
    deq = _AudioVideo().eval()
    aqt.apply(deq, tmp_path / "q", packed=False)
    packed = _AudioVideo().eval()
    rep = aqt.apply(packed, tmp_path / "q", tile_bytes=4 * 8 * 5 * 7)  # tiles of 7 channels
    kinds = {type(packed.get_submodule(n)) for n in rep.packed}
    assert {aqt.PackedConv1d, aqt.PackedConv3d, aqt.PackedLinear} <= kinds
    with torch.no_grad():
        torch.testing.assert_close(packed(a, v), deq(a, v), rtol=1e-5, atol=1e-5)
    # Gradients reach the input through the conv op's backward.
    a.requires_grad_(True)
    packed(a, v).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
