"""arrowquant.quantize_module: any nn.Module, calibrated by the caller's own sampling loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import arrowquant as aq
from arrowquant.errors import ConfigurationError
from arrowquant.torch import timestep


class Net(nn.Module):
    """A small research-style denoiser: convs, a linear over channels, a time input."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, 32, 3, padding=1)
        self.temb = nn.Linear(16, 32)
        self.mid = nn.Sequential(
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU()
        )
        self.mix = nn.Linear(64, 64)
        self.out = nn.Conv2d(64, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(8, dtype=torch.float32)
        ang = t.float().view(-1, 1) / 1000 * torch.exp(freqs)
        emb = self.temb(torch.cat([ang.sin(), ang.cos()], 1))
        h = self.mid(self.inp(x) + emb[:, :, None, None])
        h = self.mix(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(h)


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _run(m: nn.Module, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 16, 16, generator=g)
    for t in range(900, 0, -100):
        x = x - 0.1 * m(x, torch.full((8,), t))
    return x


def _loaded(out: Path) -> Net:
    m = _net()
    m.load_state_dict(aq.load_state_dict(out, dtype=torch.float32))
    return m


def test_names_are_the_state_dict_and_calibrated_layers_use_gptq(tmp_path: Path) -> None:
    net = _net()
    r = aq.quantize_module(net, tmp_path / "q", profile="local", calibrate=_run)
    assert (tmp_path / "q" / "model.aq.parquet").is_file()
    assert sorted(aq.open(tmp_path / "q").names()) == sorted(net.state_dict())
    cal = r.extra["calibration"]
    assert cal["timesteps"] == list(range(100, 1000, 100))  # read from the `t` argument
    done = {x["name"]: x for x in r.layers if x["action"] == "quantized"}
    assert {"mid.0.weight", "mid.2.weight", "mix.weight"} <= set(done)
    assert all(x["method"] == "gptq" and x["validation"] == "output" for x in done.values())
    # Widths by each layer's measured gain on replayed calls of the module (the caller's loop).
    assert "by measured sensitivity" in r.extra["budget"]
    assert cal["sensitivity"]["calls"] == 8 and cal["sensitivity"]["layers"] == 6
    # GPTQ's own format where none is asked for: at a 4-bit profile the min/max grid, groups of
    # 32 (api._calibrated_format); the weight-only path keeps the recommended format.
    assert all("-g32-" in x["format"] and x["format"].endswith("-minmax") for x in done.values())
    plain = aq.quantize_module(net, tmp_path / "w", profile="local")
    assert all(x["method"] == "rtn" for x in plain.layers if x["action"] == "quantized")
    assert all("-g32-" in x["format"] for x in plain.layers if x["action"] == "quantized")
    asked = aq.quantize_module(
        net, tmp_path / "g", profile="edge", calibrate=_run, group_size=32, method="search"
    )
    assert all(
        x["format"].endswith("-search") and "-g32-" in x["format"]
        for x in asked.layers
        if x["action"] == "quantized"
    )
    # A 2-bit profile: groups of 64 unless asked.
    edge = aq.quantize_module(net, tmp_path / "e", profile="edge", calibrate=_run)
    assert all("-g64-" in x["format"] for x in edge.layers if x["action"] == "quantized")


@pytest.mark.parametrize("profile", ["local", "edge"])
def test_calibrated_model_generates_closer_to_fp(tmp_path: Path, profile: str) -> None:
    # GPTQ against round to nearest with the same calibration, at the profile's width for every
    # layer (allocate=False: without GPTQ there is no measured allocation, and an allocated file
    # would be compared with a file of other bits per weight).
    net = _net()
    kw = {"profile": profile, "calibrate": _run, "allocate": False}
    aq.quantize_module(net, tmp_path / "g", **kw)
    aq.quantize_module(net, tmp_path / "r", gptq=False, **kw)
    size = {k: (tmp_path / k / "model.aq.parquet").stat().st_size for k in "gr"}
    assert size["g"] <= 1.02 * size["r"], size
    with torch.no_grad():
        ref = _run(net, seed=1)  # other noise than calibration saw
        e_g = (_run(_loaded(tmp_path / "g"), seed=1) - ref).norm() / ref.norm()
        e_r = (_run(_loaded(tmp_path / "r"), seed=1) - ref).norm() / ref.norm()
    assert e_g < e_r


class NoTimeArg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_timestep_context_and_continuous_time(tmp_path: Path) -> None:
    m = NoTimeArg()

    def run(mod: nn.Module) -> None:
        for t in (750, 250):
            with timestep(t):
                mod(torch.randn(32, 64))

    r = aq.quantize_module(m, tmp_path / "a", calibrate=run, min_elements=16)
    assert r.extra["calibration"]["timesteps"] == [250, 750]

    class Flow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(64, 64)

        def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.a(x) * timestep.view(-1, 1)

    def run_flow(mod: nn.Module) -> None:
        for s in (0.25, 0.5):
            mod(torch.randn(32, 64), timestep=torch.full((32,), s))

    r2 = aq.quantize_module(Flow(), tmp_path / "f", calibrate=run_flow, min_elements=16)
    assert r2.extra["calibration"]["timesteps"] == [250, 500]


def test_a_run_that_never_calls_the_module_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="never called"):
        aq.quantize_module(_net(), tmp_path / "x", calibrate=lambda m: None)
    with pytest.raises(ConfigurationError, match="calibrate=run"):
        aq.quantize_module(_net(), tmp_path / "x", calibration="synthetic")
    assert not (tmp_path / "x").exists()


def test_tied_weights_are_written_once_per_name(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(64, 64)
            self.b = nn.Linear(64, 64)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    def run(mod: nn.Module) -> None:
        for t in (900, 500, 100):
            mod(torch.randn(16, 64), torch.full((16,), t))

    m = Tied()
    aq.quantize_module(m, tmp_path / "t", calibrate=run, min_elements=16)
    got = aq.load_state_dict(tmp_path / "t", dtype=torch.float32)
    assert set(got) == set(m.state_dict())  # both names, stored from one shared tensor
    assert (got["a.weight"] - m.a.weight).norm() < 0.2 * m.a.weight.norm()


def test_state_file_is_a_valid_safetensors_file_of_every_dtype(tmp_path: Path) -> None:
    # Streamed tensor by tensor (no second copy of a big model): every dtype, a transposed
    # (non-contiguous) parameter, a 0-dim and an empty buffer read back exactly.
    import safetensors.torch

    from arrowquant.module import _state_file

    m = nn.Module()
    m.lin = nn.Linear(5, 3)
    m.lin.weight = nn.Parameter(torch.randn(5, 3).t())
    m.register_buffer("h16", torch.randn(4, 2).half())
    m.register_buffer("bf", torch.randn(7).bfloat16())
    m.register_buffer("ids", torch.arange(6).view(2, 3))
    m.register_buffer("mask", torch.tensor([True, False, True]))
    m.register_buffer("scalar", torch.tensor(2.5, dtype=torch.float64))
    m.register_buffer("empty", torch.zeros(0, 4))
    got = safetensors.torch.load_file(str(_state_file(m, tmp_path)))
    want = m.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v), k
