"""Cost of the calibrated path on an SD1.5-sized UNet (issue 14's cost target).

A randomly initialised `UNet2DConditionModel` with Stable Diffusion 1.5's configuration (860 M
parameters, f32) is quantized with `arrowquant.quantize_module` and a DDIM loop as calibration:
SAMPLES latents of 64x64 (512 px images), STEPS steps, random text embeddings (77 x 768) in
place of a text encoder. Reports the wall time of each phase (recording, sensitivity, GPTQ and
the rest of the C++ job) from the job's report, the whole call's wall time and the process's peak
RSS (the model itself is 3.4 GB of it; measured with getrusage, so it includes everything the
process touched, the mmap'd state file too).

    .venv/bin/python bench/sd15_calibrated.py [--samples 8] [--steps 10] [--batch 2]

Random weights make the quality numbers meaningless; this measures cost only.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sd15_shapes import SD15_UNET  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--profile", default="local")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the measurements here")
    args = ap.parse_args()

    from diffusers import DDIMScheduler, UNet2DConditionModel

    import arrowquant

    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    params = sum(p.numel() for p in unet.parameters())
    build_s = time.perf_counter() - t0
    rss_model = peak_rss_gib()
    sched = DDIMScheduler(num_train_timesteps=1000)

    def run(model: torch.nn.Module) -> None:
        g = torch.Generator().manual_seed(1)
        for start in range(0, args.samples, args.batch):
            n = min(args.batch, args.samples - start)
            text = torch.randn((n, 77, 768), generator=g)
            x = torch.randn((n, 4, 64, 64), generator=g)
            sched.set_timesteps(args.steps)
            for t in sched.timesteps:
                eps = model(x, t, encoder_hidden_states=text).sample
                x = sched.step(eps, t, x).prev_sample
            print(f"  calibration: {start + n}/{args.samples} samples", flush=True)

    with tempfile.TemporaryDirectory(prefix="aq-sd15-") as tmp:
        t1 = time.perf_counter()
        report = arrowquant.quantize_module(
            unet, Path(tmp) / "out", profile=args.profile, calibrate=run, threads=args.threads
        )
        job_s = time.perf_counter() - t1
    d = report.summary()
    calib = d.get("calibration") or {}
    result = {
        "parameters_M": round(params / 1e6, 1),
        "samples": args.samples,
        "steps": args.steps,
        "profile": args.profile,
        "build_model_s": round(build_s, 1),
        "quantize_module_s": round(job_s, 1),
        "recording_and_sensitivity_s": calib.get("seconds"),
        "sensitivity_s": (calib.get("sensitivity") or {}).get("seconds"),
        "second_moments": calib.get("second_moments"),
        "bits_per_weight": d.get("bits_per_weight"),  # stored payload, scales uncompressed
        "file_bits_per_weight": round(8 * d["file_bytes"] / params, 3)
        if d.get("file_bytes")
        else None,
        "c++_job_s": d.get("seconds"),
        "formats": d.get("formats"),
        "peak_rss_gib_after_model": round(rss_model, 2),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
