"""Integer kernels, float simulation and a float64 simulation of one W8A8 file, end to end.

    .venv/bin/python bench/int8_rounding.py [--model digits-ddpm] [--samples 512 --steps 50]

The file: the model quantized as bench/e2e_activations.py's "W8A8 K=4" (cloud, calibration
synthetic:64 x 25 steps, 4 adaptive timestep groups, A8). Sampled from the same noise as the FP
model with activations rounded
- in integers (`apply(..., int8=True)`, uint8 x int8 -> int32), at 1 and 2 threads;
- in float32 (`int8=False`: fake quantization, then the dequantized weight), at 1 and 2 threads;
- in float64 (dequantized once, the model in double): the same quantized model with almost no
  float rounding, the reference both should be near.
Prints each run's PSNR against the FP samples and against the float64 run: the end-to-end
difference between the integer path and the float32 simulation is then seen against how far each
is from the quantized model itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import arrowquant as aq
from arrowquant.diffusion import initial_noise, load_reference, sample
from arrowquant.eval.metrics import psnr
from arrowquant.torch import apply

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits-ddpm", help="a folder under models/")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    model = ROOT / "models" / args.model
    ref = load_reference(model)
    noise, labels = initial_noise(ref, args.samples, seed=0)

    def db(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(psnr(a.float().numpy(), b.float().numpy()).mean())

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "w8a8"
        cfg = aq.DiffusionQuantConfig.from_profile(
            "cloud",
            calibration="synthetic:64",
            calibration_steps=25,
            time_groups=4,
            adaptive_groups=True,
            act_bits=8,
        )
        aq.ArrowQuantV2().quantize_diffusion_model(model, out, cfg)
        runs: dict[str, Any] = {}
        with torch.no_grad():
            torch.set_num_threads(2)
            fp = sample(ref, ref.module, noise, labels, args.steps).samples
            m64 = load_reference(model).module
            apply(m64, out, packed=False)
            runs["float64 simulation"] = sample(
                ref, m64.double(), noise.double(), labels, args.steps
            ).samples
            for int8 in (True, False):
                for threads in (2, 1):
                    torch.set_num_threads(threads)
                    m = load_reference(model).module
                    apply(m, out, int8=int8)
                    name = f"{'integer' if int8 else 'float32 simulation'}, {threads} thread(s)"
                    runs[name] = sample(ref, m, noise, labels, args.steps).samples
    ref64 = runs["float64 simulation"]
    print(f"\n{args.model}, W8A8 K=4, {args.samples} samples x {args.steps} DDIM steps\n")
    print("| run | PSNR vs FP dB | PSNR vs float64 run dB |")
    print("|---|---|---|")
    for name, s in runs.items():
        print(f"| {name} | {db(fp, s):.2f} | {db(ref64, s):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
