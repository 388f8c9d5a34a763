"""Activation quantization on the reference models: timestep groups and channel equalization.

    .venv/bin/python bench/time_aware.py [--json bench-out/time_aware.json]

1. Time groups. Calibration: the FP model's own sampler (32 trajectories, 20 DDIM steps, seed 0).
   Held-out evaluation: 16 other trajectories (seed 1) over the same timesteps. For every Linear /
   Conv2d, the layer's output with its input fake-quantized (per-tensor asymmetric grid of the
   current timestep's group, MSE clipping) is compared with the FP output: output MSE, summed over
   layers, for A8 / A4 and K = 1, 4, 8 groups (uniform and adaptive). "Moving" layers are those
   whose per-timestep input absmax varies by >= 2x over t; the baseline is K = 1.
2. Equalization. W4A8 (INT4 recommended weights, A8 K=4 adaptive): output error with and without
   DiTAS equalization (alpha 0.5), on layers with outlier input channels (max channel absmax >= 5x
   the median) and on the rest. Smoothing x' = (1-a) x + a mean(x) (a = 0.1) is measured the same
   way against plain A8.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import arrowquant as aq
import arrowquant._core as _core
from arrowquant.calibration import equalization
from arrowquant.calibration.capture import capture, quantizable_layers, weight_name
from arrowquant.calibration.data import CalibrationSet
from arrowquant.calibration.spatial import choose_equalization
from arrowquant.diffusion import load_reference
from arrowquant.torch import TimestepTracker, fake_quant

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "digits-ddpm": ROOT / "models" / "digits-ddpm",
    "digits-dit": ROOT / "models" / "digits-dit",
}
STEPS = 20


def group_of(ta: dict[str, Any], t: int) -> int:
    g = 0
    while g + 1 < ta["num_groups"] and t >= ta["group_bounds"][g + 1]:
        g += 1
    return g


def layer_forward(m: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(m, torch.nn.Conv2d):
        return m._conv_forward(x, w, m.bias)
    return F.linear(x, w, m.bias)


def fq(x: torch.Tensor, ta: dict[str, Any], t: int) -> torch.Tensor:
    g = group_of(ta, t)
    return fake_quant(x, ta["act_scales"][g], ta["act_zero_points"][g], ta["act_bits"])


def scale_input(m: Any, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[1 if isinstance(m, torch.nn.Conv2d) else -1] = -1
    return x * s.view(shape)


def run_held_out(ref: Any, fn: Any) -> None:
    """Samples 16 held-out trajectories with forward hooks calling fn(name, module, x, y, t)."""
    from arrowquant.diffusion import sample

    layers = quantizable_layers(ref.module)
    tracker = TimestepTracker(ref.module)
    handles = []
    for mod_name, m in layers.items():
        name = weight_name(ref, mod_name)

        def hook(mod: Any, args: Any, out: Any, name: str = name) -> None:
            fn(name, mod, args[0].detach().float(), out.detach().float(), tracker.state.t)

        handles.append(m.register_forward_hook(hook))
    try:
        g = torch.Generator().manual_seed(1)
        noise = torch.randn((16, ref.channels, ref.size, ref.size), generator=g)
        labels = torch.arange(16) % ref.num_classes if ref.num_classes else None
        sample(ref, ref.module, noise, labels, STEPS)
    finally:
        for h in handles:
            h.remove()
        tracker.remove()


def moving_layers(raw: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, col in raw.items():
        amax = [float(s["absmax"].max()) for s in col.stats()]
        out[name] = max(amax) / max(min(amax), 1e-12)
    return out


def time_groups(ref: Any, raw: dict[str, Any]) -> dict[str, Any]:
    settings = [(a, k, mode) for a in (8, 4) for k in (1, 4, 8) for mode in ("uniform", "adaptive")]
    params = {
        s: {
            n: _core.fit_time_groups(c, s[1], s[2] == "adaptive", s[0], "mse", 99.99, 1000)
            for n, c in raw.items()
        }
        for s in settings
    }
    err = {s: dict.fromkeys(raw, 0.0) for s in settings}

    def fn(name: str, m: Any, x: torch.Tensor, y: torch.Tensor, t: int) -> None:
        w = m.weight.detach().float()
        for s in settings:
            yq = layer_forward(m, fq(x, params[s][name], t), w)
            err[s][name] += float((yq - y).pow(2).sum())

    run_held_out(ref, fn)
    ratio = moving_layers(raw)
    moving = [n for n, r in ratio.items() if r >= 2.0]
    static = [n for n in raw if n not in moving]
    rows = []
    for a in (8, 4):
        for mode in ("uniform", "adaptive"):
            for k in (1, 4, 8):
                s = (a, k, mode)
                base = err[(a, 1, "uniform")]
                mv = sum(err[s][n] for n in moving) / max(sum(base[n] for n in moving), 1e-30)
                st = sum(err[s][n] for n in static) / max(sum(base[n] for n in static), 1e-30)
                per_layer = [1 - err[s][n] / base[n] for n in moving if base[n] > 0]
                rows.append(
                    {
                        "act_bits": a,
                        "mode": mode,
                        "groups": k,
                        "moving_mse_vs_k1": mv,
                        "static_mse_vs_k1": st,
                        "moving_layers_30pct_better": sum(r >= 0.3 for r in per_layer),
                        "moving_layers": len(moving),
                    }
                )
    return {"layers": len(raw), "moving": len(moving), "static": len(static), "rows": rows}


def equalize(
    ref: Any, raw: dict[str, Any], rows: dict[str, Any], calib: CalibrationSet
) -> dict[str, Any]:
    """W4A8 output error: no equalization, alpha 0.5 everywhere, and the per-layer search the
    product runs (chosen on the calibration trajectories, measured on the held-out ones)."""
    # Every layer as the bench measures it: the recommended INT4 format.
    specs = {name: _core.recommended_spec(4) for name in raw}
    searched, choices = choose_equalization(ref, raw, rows, specs, 8)
    variants = {"alpha 0.5": equalization(ref, raw, 0.5), "searched": searched}
    layers = {weight_name(ref, n): m for n, m in quantizable_layers(ref.module).items()}
    names = [n for n in layers if n in raw]
    wq: dict[str, dict[str, torch.Tensor]] = {"none": {}}
    ta: dict[str, dict[str, Any]] = {"none": {}}
    sc: dict[str, dict[str, torch.Tensor]] = {"none": {}}
    for name in names:
        w = layers[name].weight.detach().float()
        wq["none"][name] = torch.from_numpy(aq.quantize(w.numpy(), bits=4).dequantize()).view_as(w)
        ta["none"][name] = _core.fit_time_groups(raw[name], 4, True, 8, "mse", 99.99, 1000)
        sc["none"][name] = torch.ones(w.shape[1])
    for label, scales in variants.items():
        eq_raw = capture(ref, calib, STEPS, 0, scales) if scales else raw
        wq[label], ta[label], sc[label] = {}, {}, {}
        for name in names:
            w = layers[name].weight.detach().float()
            if name not in scales:
                wq[label][name], ta[label][name] = wq["none"][name], ta["none"][name]
                sc[label][name] = sc["none"][name]
                continue
            s = torch.from_numpy(scales[name])
            shape = [1, -1] + [1] * (w.dim() - 2)
            ws = (w / s.view(shape)).contiguous()
            q = aq.quantize(ws.numpy(), bits=4).dequantize()
            wq[label][name] = torch.from_numpy(q).view_as(w)
            ta[label][name] = _core.fit_time_groups(eq_raw[name], 4, True, 8, "mse", 99.99, 1000)
            sc[label][name] = s
    kinds = ["none", *variants]
    err = {k: dict.fromkeys(names, 0.0) for k in [*kinds, "smoothed", "energy"]}

    def fn(name: str, m: Any, x: torch.Tensor, y: torch.Tensor, t: int) -> None:
        if name not in err["none"]:
            return
        for k in kinds:
            xk = fq(scale_input(m, x, sc[k][name]), ta[k][name], t)
            err[k][name] += float((layer_forward(m, xk, wq[k][name]) - y).pow(2).sum())
        dims = tuple(d for d in range(x.dim()) if d != (1 if x.dim() == 4 else x.dim() - 1))
        xs = 0.9 * x + 0.1 * x.mean(dim=dims, keepdim=True)
        y2 = layer_forward(m, fq(xs, ta["none"][name], t), wq["none"][name])
        err["smoothed"][name] += float((y2 - y).pow(2).sum())
        err["energy"][name] += float(y.pow(2).sum())

    run_held_out(ref, fn)
    outlier = []
    for name in names:
        a = np.asarray(raw[name].overall()["absmax"])
        if len(a) > 1 and a.max() >= 5 * max(np.median(a), 1e-12):
            outlier.append(name)
    rest = [n for n in names if n not in outlier]

    def total(kind: str, sel: list[str]) -> float:
        return sum(err[kind][n] for n in sel)

    out: dict[str, Any] = {"outlier_layers": len(outlier), "other_layers": len(rest)}
    for k, scales in variants.items():
        out[k] = {
            "outlier_mse_reduction": 1 - total(k, outlier) / max(total("none", outlier), 1e-30),
            "other_mse_reduction": 1 - total(k, rest) / max(total("none", rest), 1e-30),
            "outlier_layers_10pct_better": sum(err[k][n] <= 0.9 * err["none"][n] for n in outlier),
            "equalized_layers": len(scales),
        }
    out["searched"]["alphas"] = {n: c["alpha"] for n, c in choices.items()}
    out["smoothing_mse_change_all"] = (
        total("smoothed", names) / max(total("none", names), 1e-30) - 1
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json", default=str(ROOT / "bench-out" / "time_aware.json"))
    args = p.parse_args()
    torch.set_num_threads(2)
    result: dict[str, Any] = {}
    for label, path in MODELS.items():
        t0 = time.perf_counter()
        ref = load_reference(path)
        calib = CalibrationSet("synthetic:32", 32)
        rows: dict[str, Any] = {}
        raw = capture(ref, calib, STEPS, 0, row_samples=rows)
        tg = time_groups(ref, raw)
        eq = equalize(ref, raw, rows, calib)
        result[label] = {
            "time_groups": tg,
            "equalization": eq,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(
            f"\n## {label}: {tg['layers']} layers, {tg['moving']} with input ranges moving "
            f">= 2x over t ({result[label]['seconds']} s)"
        )
        print(
            "| act bits | grouping | K | output MSE vs K=1, moving layers | static layers | "
            "moving layers >= 30% better |"
        )
        print("|---|---|---|---|---|---|")
        for r in tg["rows"]:
            print(
                f"| A{r['act_bits']} | {r['mode']} | {r['groups']} | {r['moving_mse_vs_k1']:.3f} "
                f"| {r['static_mse_vs_k1']:.3f} | {r['moving_layers_30pct_better']}/"
                f"{r['moving_layers']} |"
            )
        print(
            f"\nW4A8, {eq['outlier_layers']} layers with outlier input channels "
            f"(max channel absmax >= 5x median) / {eq['other_layers']} other layers:"
        )
        for k in ("alpha 0.5", "searched"):
            e = eq[k]
            print(
                f"  equalization {k} ({e['equalized_layers']} layers equalized): output MSE "
                f"{e['outlier_mse_reduction']:.1%} lower on outlier layers "
                f"({e['outlier_layers_10pct_better']} of them >= 10% lower), "
                f"{e['other_mse_reduction']:.1%} lower on the others"
            )
        print(
            f"  smoothing x' = 0.9 x + 0.1 mean(x): output MSE "
            f"{eq['smoothing_mse_change_all']:+.1%} (all layers)"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
