"""End to end with quantized activations on a reference model (issue 7's acceptance; issue 16's
integer kernels against the float simulation).

    .venv/bin/python bench/e2e_activations.py [--model digits-ddpm] [--samples 512 --steps 50]

Weights: cloud (INT8) and local (INT4) profiles. Activations: calibration on the FP model's own
samples (synthetic:64, 25 DDIM steps), A8 with K = 1 and K = 4 adaptive timestep groups; each file
is loaded with `arrowquant.torch.apply` and sampled with activations rounded in float (WxA8:
fake quantization, `int8=False`), computed in integers (WxA8 ... int8: uint8 x int8 -> int32,
`int8=True`; shown where the CPU has the SIMD kernel) or not rounded (WxA16), all from the same
noise as the FP model (`arrowquant.eval`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import arrowquant as aq
from arrowquant.diffusion import load_reference
from arrowquant.eval import evaluate
from arrowquant.torch import apply
from arrowquant.torch.int8 import default_enabled

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits-ddpm", help="a folder under models/")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--json", help="default: bench-out/e2e_activations[-MODEL].json")
    args = p.parse_args()
    model = ROOT / "models" / args.model
    suffix = "" if args.model == "digits-ddpm" else f"-{args.model}"
    args.json = args.json or str(ROOT / "bench-out" / f"e2e_activations{suffix}.json")
    torch.set_num_threads(2)
    settings: dict[str, Any] = {}
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for profile, w in (("cloud", "W8"), ("local", "W4")):
            for k in (1, 4):
                out = Path(d) / f"{profile}-k{k}"
                t0 = time.perf_counter()
                aq.ArrowQuantV2().quantize_diffusion_model(
                    model,
                    out,
                    aq.DiffusionQuantConfig.from_profile(
                        profile,
                        calibration="synthetic:64",
                        calibration_steps=25,
                        time_groups=k,
                        adaptive_groups=True,
                        act_bits=8,
                        calibration_cache=str(Path(d) / "cache"),
                    ),
                )
                timings[f"{w} K={k}"] = time.perf_counter() - t0
                if k == 1:
                    m = load_reference(model).module
                    apply(m, out, act_quant=False)
                    settings[f"{w}A16"] = m
                m = load_reference(model).module
                apply(m, out, act_quant=True, int8=False)
                settings[f"{w}A8 K={k}"] = m
                if default_enabled():
                    m = load_reference(model).module
                    apply(m, out, act_quant=True, int8=True)
                    settings[f"{w}A8 K={k} int8"] = m
        doc = evaluate(model, settings, samples=args.samples, steps=args.steps, log=print)
    print("\n| setting | PSNR dB | SSIM | FD to real | drift mean | one-step mean |")
    print("|---|---|---|---|---|---|")
    fd = doc["reference"]["fd_real"]
    print(f"| FP | - | - | {fd['value']:.3f} [{fd['ci95'][0]:.3f}, {fd['ci95'][1]:.3f}] | 0 | 0 |")
    for s in doc["settings"]:
        f = s["fd_real"]
        print(
            f"| {s['name']} | {s['psnr']['mean']:.2f} [{s['psnr']['ci95'][0]:.2f}, "
            f"{s['psnr']['ci95'][1]:.2f}] | {s['ssim']['mean']:.4f} | {f['value']:.3f} "
            f"[{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}] | {s['drift']['trajectory_mean']:.4f} "
            f"| {s['drift']['one_step_mean']:.4f} |"
        )
    print(
        f"\nFD real vs real (halves): {doc['reference']['fd_real_halves']:.3f}; quantize + "
        "calibration seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"eval": doc, "quantize_seconds": timings}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
