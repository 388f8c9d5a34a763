"""Measured sensitivity (calibration/sensitivity.py): the gains the size budget allocates by."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from arrowquant.calibration import sensitivity
from arrowquant.calibration.capture import quantizable_layers


class Net(nn.Module):
    """Convs, a time-embedding linear fed by integers only, and a quiet branch (scaled by 0.01)
    the output hardly depends on."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(2, 24, 3, padding=1)
        self.temb = nn.Linear(8, 24)
        self.mid = nn.Conv2d(24, 24, 3, padding=1)
        self.quiet = nn.Conv2d(24, 24, 1)
        self.out = nn.Conv2d(24, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        ang = timestep.float().view(-1, 1) / 1000 * torch.arange(1, 5).float()
        h = self.inp(x) + self.temb(torch.cat([ang.sin(), ang.cos()], 1))[:, :, None, None]
        h = torch.tanh(self.mid(torch.tanh(h)))
        return self.out(h + 0.01 * self.quiet(h))


def _recorded(net: Net) -> list[tuple[object, object]]:
    rec = sensitivity.CallRecorder(net, max_calls=4, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # recorded tensors are inference tensors: replay must cope
        x = torch.randn(6, 2, 8, 8, generator=g)
        for t in range(900, 0, -150):
            x = x - 0.1 * net(x, timestep=torch.full((6,), t))
    rec.remove()
    assert rec.seen == 6 and len(rec.calls) == 4
    return rec.calls


def test_gain_times_output_error_predicts_the_whole_model_error() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    calls = _recorded(net)
    gains, summary = sensitivity.measure(net, calls, lambda n: f"{n}.weight", probes=48)
    assert summary["replays"] == 4 and set(gains) == {
        f"{n}.weight" for n in quantizable_layers(net)
    }
    assert all(p.grad is None for p in net.parameters())  # no gradient left behind
    for name, m in quantizable_layers(net).items():
        delta = sensitivity._reference_error(m.weight)
        inputs: list[torch.Tensor] = []
        hook = m.register_forward_hook(lambda _m, a, _o, got=inputs: got.append(a[0].detach()))
        with torch.no_grad():
            fp = [net(*a, **k) for a, k in calls]  # type: ignore[misc]
        hook.remove()
        with torch.no_grad():
            m.weight -= delta
            q = [net(*a, **k) for a, k in calls]  # type: ignore[misc]
            m.weight += delta
            conv = isinstance(m, nn.Conv2d)
            dy = [m._conv_forward(x, delta, None) if conv else x @ delta.T for x in inputs]
        actual = np.mean(
            [float(((b - a).norm() / a.norm()) ** 2) for a, b in zip(fp, q, strict=True)]
        )
        out_err = sum(float(d.pow(2).sum()) for d in dy) / sum(
            d.numel() / d.shape[1 if conv else -1] for d in dy
        )
        predicted = gains[f"{name}.weight"][0] * out_err
        # First order, 48 probes x 4 calls: the estimate is within a factor 1.5.
        assert actual / 1.5 < predicted < actual * 1.5, (name, actual, predicted)
    assert gains["quiet.weight"][0] < gains["mid.weight"][0] / 1000  # the 0.01 branch
    assert gains["temb.weight"][0] > 0  # fed by integers only, measured all the same


def test_big_models_replay_one_item_at_a_time(monkeypatch: object) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    calls = _recorded(net)
    whole, _ = sensitivity.measure(net, calls, lambda n: n, probes=2, seed=3)
    monkeypatch.setattr(sensitivity, "ONE_ITEM_PARAMS", 0)  # type: ignore[attr-defined]
    _, first = sensitivity.measure(net, calls, lambda n: n, probes=2, seed=3)
    assert first["replays"] == 4 * sensitivity.BIG_MODEL_ITEMS  # the first item of each call
    monkeypatch.setattr(sensitivity, "BIG_MODEL_ITEMS", 6)  # type: ignore[attr-defined]
    items, s = sensitivity.measure(net, calls, lambda n: n, probes=2, seed=3)
    assert s["replays"] == 4 * 6  # six batch items per call
    for k in whole:  # the same quantity, other random probes: same order of magnitude
        assert 0.2 < items[k][0] / whole[k][0] < 5, k


def test_layers_without_a_gradient_are_not_measured() -> None:
    class Detached(Net):
        def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # the model's own no-grad section: no gradient reaches inp
                h = self.inp(x)
            return self.out(torch.tanh(self.mid(h)))

    torch.manual_seed(0)
    net = Detached().eval()
    gains, _ = sensitivity.measure(net, _recorded(net), lambda n: n, probes=2)
    assert set(gains) == {"mid", "out"}  # inp unmeasured (not "insensitive"), temb/quiet unused


def test_big_models_replay_fewer_calls_and_probes() -> None:
    # Each probe is a backward pass of the whole model: past ONE_ITEM_PARAMS the replay shrinks
    # (weights on the meta device: nothing is allocated).
    big = nn.Linear(12_000, 10_000, device="meta")
    assert sum(p.numel() for p in big.parameters()) > sensitivity.ONE_ITEM_PARAMS
    assert sensitivity.replay_budget(big) == (
        sensitivity.BIG_MODEL_CALLS,
        sensitivity.BIG_MODEL_PROBES,
    )
    assert sensitivity.replay_budget(Net()) == (sensitivity.MAX_CALLS, sensitivity.PROBES)
    assert sensitivity.CallRecorder(big).max_calls == sensitivity.BIG_MODEL_CALLS


class Attn(Net):
    """Net with self-attention over positions: transposed (non-contiguous) saved operands."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(24, 72)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(h.flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        heads = [z.reshape(b, hh * ww, 4, 6).transpose(1, 2) for z in (q, k, v)]
        a = torch.nn.functional.scaled_dot_product_attention(*heads)
        h = h + a.transpose(1, 2).reshape(b, hh * ww, c).transpose(1, 2).reshape(b, c, hh, ww)
        return self.out(torch.tanh(h))


@pytest.mark.parametrize("cls", [Net, Attn])
def test_offloaded_activations_give_the_same_gradients(monkeypatch: object, cls: type) -> None:
    from arrowquant.calibration import offload

    monkeypatch.setattr(offload, "MIN_BYTES", 0)  # type: ignore[attr-defined]
    torch.manual_seed(0)
    net = cls()
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([10, 500, 900])

    def grads(offloaded: bool) -> list[torch.Tensor]:
        net.zero_grad()
        saved: list[int] = []

        def count(_t: torch.Tensor) -> None:
            saved.append(1)

        ctx = (
            offload.offloaded(net)
            if offloaded
            else torch.autograd.graph.saved_tensors_hooks(lambda t: (count(t), t)[1], lambda t: t)
        )
        with ctx:  # the backward too: the file lives as long as the block
            y = net(x, timestep=t)
            v = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            (v * y).sum().backward(retain_graph=True)
            (v * y).sum().backward()  # a retained graph reads the file a second time
        assert offloaded or saved  # the model saves activations: the hooks have work to do
        return [p.grad.clone() for p in net.parameters() if p.grad is not None]

    plain, disk = grads(False), grads(True)
    assert len(plain) == len(disk) > 0
    for a, b in zip(plain, disk, strict=True):
        assert torch.equal(a, b)


def test_big_models_compute_each_reference_error_once(monkeypatch: object) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    calls = _recorded(net)
    computed: list[object] = []
    real = sensitivity._reference_error

    def counting(w: torch.Tensor) -> torch.Tensor:
        computed.append(w)
        return real(w)

    monkeypatch.setattr(sensitivity, "_reference_error", counting)  # type: ignore[attr-defined]
    monkeypatch.setattr(sensitivity, "ONE_ITEM_PARAMS", 0)  # type: ignore[attr-defined]
    spilled, _ = sensitivity.measure(net, calls, lambda n: n, probes=3, seed=3)
    assert len(computed) == len(quantizable_layers(net)) == len(spilled)  # once per layer
    monkeypatch.setattr(sensitivity, "SPILL_REFERENCE_ERRORS", False)  # type: ignore[attr-defined]
    held, _ = sensitivity.measure(net, calls, lambda n: n, probes=3, seed=3)
    assert spilled.keys() == held.keys()
    for k in held:  # read back from the file: the same bytes, the same gains
        np.testing.assert_array_equal(spilled[k], held[k])
