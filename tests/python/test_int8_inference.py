"""Integer inference for 8-bit activations (arrowquant.torch.int8): packed layers compute
uint8 x int8 -> int32 and equal the float simulation (fake quantization, then the dequantized
weight) up to float rounding, for every stored format and group size (tails included), for
convolutions with padding, stride, dilation and padding modes; the activation codes are exactly
fake quantization's; whole applied models agree with the simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_packed_inference import FORMATS, GROUPS, packed_from
from torch import nn

import arrowquant as aq
import arrowquant.torch as aqt
from arrowquant.diffusion import call_denoiser, initial_noise, load_reference
from arrowquant.torch import ActQuant, TimestepState, fake_quant
from arrowquant.torch import int8 as aq_int8
from arrowquant.torch.packed import BUFFERS

MODELS = Path(__file__).resolve().parents[2] / "models"
DIT = MODELS / "digits-dit"
DDPM = MODELS / "digits-ddpm"


def _time_aware(scales: list[float], zeros: list[int]) -> dict[str, Any]:
    n = len(scales)
    return {
        "num_groups": n,
        "group_bounds": [i * 1000 // n for i in range(n)] + [1000],
        "act_scales": scales,
        "act_zero_points": zeros,
        "act_bits": 8,
    }


def _act(channel_dim: int, eq: torch.Tensor | None, t: int) -> ActQuant:
    state = TimestepState()
    state.t = t
    return ActQuant(channel_dim, eq, _time_aware([0.031, 0.017], [131, 90]), state)


def _both(m: aqt.PackedLinear | aqt.PackedConv, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        m.int8_kernels = True
        a = m(x)
        m.int8_kernels = False
        b = m(x)
    return a, b


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    err = float((a - b).abs().max())
    assert err <= tol * float(b.abs().max()) + 1e-6, err


@pytest.mark.parametrize(("bits", "scheme", "sd"), FORMATS)
def test_linear_equals_the_simulation_for_every_format(bits: int, scheme: str, sd: str) -> None:
    g = torch.Generator().manual_seed(bits * 11 + len(sd))
    w = torch.randn(37, 300, generator=g) * 0.05  # 300: a short last group at every size
    b = torch.randn(37, generator=g)
    x = torch.randn(3, 7, 300, generator=g) * 1.5
    eq = torch.rand(300, generator=g) + 0.5
    for group in GROUPS:
        fmt, bufs, _ = packed_from(w, bits, group, scheme, sd)
        m = aqt.PackedLinear(300, 37, True, 1 << 20)
        m.set_packed(fmt, bufs)
        m.bias = nn.Parameter(b.clone(), requires_grad=False)
        for t, e in ((100, None), (900, eq)):
            m.act = _act(-1, e, t)
            _close(*_both(m, x))


def test_activation_codes_are_fake_quantizations() -> None:
    """Through an identity-like weight the output gives back each input's code: they are
    exactly those of fake_quant, ties (half to even) and clamping included."""
    n = 70
    w = torch.eye(n) * 0.5
    fmt, bufs, deq = packed_from(w, 8, 0, "sym", "f32")
    m = aqt.PackedLinear(n, n, False, 1 << 20)
    m.set_packed(fmt, bufs)
    m.act = _act(-1, None, 0)
    scale, zero = 0.031, 131
    k = torch.arange(-140, 140, dtype=torch.float32)
    x = torch.cat([k * scale, (k + 0.5) * scale, torch.randn(280) * 3]).reshape(-1, n)
    with torch.no_grad():
        y = m(x)
    codes = torch.round(y / (deq.diagonal() * scale)) + zero
    want = torch.round(fake_quant(x, scale, zero, 8) / scale) + zero
    assert torch.equal(codes, want)


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({"padding": 1}, (2, 6, 9, 7)),
        ({"padding": 1, "stride": 2}, (1, 5, 11, 10)),
        ({"padding": 2, "dilation": 2}, (2, 4, 9, 9)),
        ({"padding": "same"}, (1, 3, 8, 8)),
        ({"padding": 1, "padding_mode": "reflect"}, (1, 4, 10, 10)),
        ({"kernel_size": 1}, (2, 8, 5, 5)),
    ],
)
def test_conv2d_equals_the_simulation(kw: dict[str, Any], shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(len(kw))
    args = {"kernel_size": 3} | kw
    conv = nn.Conv2d(shape[1], 21, **args)
    x = torch.randn(*shape, generator=g)
    eq = torch.rand(shape[1], generator=g) + 0.5
    w = conv.weight.detach().reshape(21, -1)
    for spec in [(8, 32, "asym", "q8"), (4, 0, "sym", "f16"), (8, 64, "sym", "f32")]:
        fmt, bufs, _ = packed_from(w, *spec)
        m = aqt.PackedConv2d(conv, 1 << 20)
        m.set_packed(fmt, bufs)
        m.bias = nn.Parameter(conv.bias.detach().clone())
        for t, e in ((0, eq), (999, None)):
            m.act = _act(1, e, t)
            _close(*_both(m, x))
    # An unbatched input, as nn.Conv2d accepts.
    _close(*_both(m, x[0]))


def _small_linear() -> aqt.PackedLinear:
    """16 x 64, INT8 weights, 8-bit activations at timestep 10."""
    fmt, bufs, _ = packed_from(torch.randn(16, 64) * 0.05, 8, 32, "asym", "q8")
    m = aqt.PackedLinear(64, 16, False, 1 << 20)
    m.set_packed(fmt, bufs)
    m.act = _act(-1, None, 10)
    return m


def test_half_inputs_and_fallbacks() -> None:
    m = _small_linear()
    x = torch.randn(4, 64)
    a, b = _both(m, x.to(torch.bfloat16))
    assert a.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    # Autograd takes the simulated op (gradients to the input), with the same values.
    xg = x.clone().requires_grad_(True)
    m.int8_kernels = True
    y = m(xg)
    y.sum().backward()
    assert xg.grad is not None
    with torch.no_grad():
        _close(y.detach(), m(x))
    # 4-bit activations are simulated: the kernel is for 8-bit codes.
    m.act.time_aware = dict(m.act.time_aware or {}, act_bits=4)  # type: ignore[arg-type]
    assert m._int8_grid(x) is None


def test_prepared_weight_follows_the_buffers() -> None:
    m = _small_linear()
    w = m.dequantized_weight()
    m.int8_kernels = True
    x = torch.randn(3, 64)
    with torch.no_grad():
        y1 = m(x)
        first = m.__dict__["_int8_cache"][1]
        m(x)
        assert m.__dict__["_int8_cache"][1] is first  # made once
        fmt2, bufs2, _ = packed_from(-w, 8, 32, "asym", "q8")
        m.set_packed(fmt2, bufs2)  # new buffers: the cache is remade
        torch.testing.assert_close(m(x), -y1, rtol=0.05, atol=0.05)
        assert m.__dict__["_int8_cache"][1] is not first
    assert "_int8_cache" not in m.__getstate__()


def test_integer_ops_pass_opcheck_compile_and_export() -> None:
    w = torch.randn(16, 64) * 0.05
    fmt, bufs, _ = packed_from(w, 8, 32, "asym", "q8")
    lin = aqt.PackedLinear(64, 16, True, 1 << 20)
    lin.set_packed(fmt, bufs)
    lin.bias = nn.Parameter(torch.randn(16), requires_grad=False)
    lin.act = _act(-1, torch.rand(64) + 0.5, 10)
    conv = nn.Conv2d(5, 12, 3, padding=1)
    cf, cb, _ = packed_from(conv.weight.detach().reshape(12, -1), 4, 0, "sym", "f16")
    pc = aqt.PackedConv2d(conv, 1 << 20)
    pc.set_packed(cf, cb)
    pc.act = _act(1, None, 900)
    x, img = torch.randn(3, 64), torch.randn(2, 5, 7, 7)
    bufs_l = tuple(getattr(lin, f"weight_{b}") for b in BUFFERS)
    torch.library.opcheck(
        torch.ops.arrowquant.int8_linear.default, (x, *bufs_l, lin.bias, lin.fmt, 0.031, 131)
    )
    bufs_c = tuple(getattr(pc, f"weight_{b}") for b in BUFFERS)
    torch.library.opcheck(
        torch.ops.arrowquant.int8_conv2d.default,
        (img, *bufs_c, None, pc.fmt, pc.weight_shape, [1, 1], [1, 1], [1, 1], 0.017, 90),
    )
    for m, inp in ((lin, x), (pc, img)):
        m.int8_kernels = True
        with torch.no_grad():
            eager = m(inp)
            compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
            assert torch.equal(compiled(inp), eager)
            ep = torch.export.export(m, (inp,))
        assert any("arrowquant.int8_" in str(n.target) for n in ep.graph.nodes)
        assert torch.equal(ep.module()(inp), eager)


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("int8")
    out = {}
    for name, model in (("dit", DIT), ("ddpm", DDPM)):
        cfg = aq.DiffusionQuantConfig.from_profile(
            "cloud",
            calibration="synthetic:4",
            calibration_steps=3,
            time_groups=2,
            act_bits=8,
            allocate=False,
            calibration_cache=str(tmp / "cache"),
        )
        aq.ArrowQuantV2().quantize_diffusion_model(model, tmp / name, cfg)
        out[name] = tmp / name
    return out


@pytest.mark.parametrize("name", ["dit", "ddpm"])
def test_applied_models_equal_the_simulation(w8a8: dict[str, Path], name: str) -> None:
    """Every integer layer, given the simulated run's own input, gives the simulation's output
    up to float rounding. Whole forwards differ more: a difference of one rounding in a layer's
    output moves the odd activation that sat on a rounding boundary of the next layer's grid by
    one code, as any change of float summation order would."""
    model_dir = {"dit": DIT, "ddpm": DDPM}[name]
    ref = load_reference(model_dir)
    x, labels = initial_noise(ref, 4, seed=0)
    model = load_reference(model_dir).module
    rep = aqt.apply(model, w8a8[name], int8=False)
    assert rep.act_quantized
    layers = [
        m
        for m in model.modules()
        if isinstance(m, aqt.PackedLinear | aqt.PackedConv2d) and m.act is not None
    ]
    errors: list[float] = []

    def check(mod: Any, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        mod.int8_kernels = True
        try:
            y = mod.forward(inp[0])  # no hooks
        finally:
            mod.int8_kernels = False
        errors.append(float((y - out).abs().max() / out.abs().max()))

    hooks = [m.register_forward_hook(check) for m in layers]
    with torch.no_grad():
        sim = call_denoiser(ref, model, x, 700, labels)
    for h in hooks:
        h.remove()
    assert len(errors) >= len(layers) > 10  # some layers run more than once
    assert max(errors) < 1e-5
    if aq_int8.default_enabled():
        assert all("_int8_cache" in m.__dict__ for m in layers if m.act.enabled)  # type: ignore[union-attr]
    for m in layers:
        m.int8_kernels = True
    with torch.no_grad():
        whole = call_denoiser(ref, model, x, 700, labels)
    assert float((whole - sim).norm() / sim.norm()) < 1e-2
