"""The text-to-image reference pipeline per profile, calibrated vs weight-only, end to end.

    .venv/bin/python bench/t2i_table.py [--samples 300] [--steps 25] [--out bench-out/t2i]

models/digits-t2i (StableDiffusionPipeline: CLIPTextModel, UNet2DConditionModel, AutoencoderKL,
models/train_t2i.py) is quantized with each profile two ways:
- calibrated: prompts (`--calibration`, default a held-out set of 20 prompts unlike the
  evaluation's) through the pipeline's own text encoder, both guidance branches recorded, GPTQ
  on every component, widths by measured sensitivity at the profile's size;
- weight-only (`--no-calibration`): the profile's width and threshold per component.
Components take the job's profile except the VAE (cloud, the default). Each file is sampled by
`arrowquant.eval` with the evaluation prompts (models/digits-t2i/prompts.jsonl: 3 per digit),
the same noise and DDIM with classifier-free guidance as the FP pipeline: paired PSNR/SSIM,
prompt adherence (the digits classifier's accuracy on the digit asked for), Fréchet distance,
one-step error. Also reports each component's bits per weight and the calibration's wall time.
Writes table.md and results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "digits-t2i"
EVAL_PROMPTS = MODEL / "prompts.jsonl"
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def calibration_prompts(path: Path) -> Path:
    """20 prompts none of which the evaluation uses."""
    texts = [f"a thin {n}" for n in NAMES] + [f"an image of a {n}" for n in NAMES]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def main() -> int:
    import arrowquant as aq
    from arrowquant.eval import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--profiles", nargs="*", default=["cloud", "local", "compact", "edge"])
    ap.add_argument("--calibration", default="", help="default: 20 held-out prompts")
    ap.add_argument("--out", default="bench-out/t2i")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    calib = args.calibration or str(calibration_prompts(out / "calibration.jsonl"))
    prompts = [json.loads(x)["prompt"] for x in EVAL_PROMPTS.read_text().splitlines() if x]
    files: dict[str, Path] = {}
    info: dict[str, dict[str, Any]] = {}
    for profile in args.profiles:
        for how, extra in (("calibrated", {"calibration": calib}), ("weight-only", {})):
            name = f"{profile} {how}"
            dest = out / name.replace(" ", "-")
            cfg = aq.DiffusionQuantConfig.resolve(
                profile=profile,
                calibration=extra.get("calibration", ""),
                calibration_cache=str(out / "cache"),
            )
            t0 = time.perf_counter()
            rep = aq.ArrowQuantV2().quantize_diffusion_model(MODEL, dest, cfg, overwrite=True)
            s = rep.summary()
            info[name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "calibration_seconds": (s.get("calibration") or {}).get("seconds"),
                "components": {
                    k: {"profile": v["profile"], "bits_per_weight": v["bits_per_weight"]}
                    for k, v in s["components"].items()
                },
            }
            files[name] = dest
            print(name, json.dumps(info[name]), flush=True)
    doc = evaluate(
        MODEL,
        files,
        samples=args.samples,
        steps=args.steps,
        out_dir=out / "eval",
        prompts=prompts,
        log=print,
    )
    ref = doc["reference"]
    rows = [
        "| setting | UNet bits/weight | text encoder | VAE | PSNR dB | SSIM | adherence "
        "(FP {:.3f}) | FD to real (FP {:.2f}) | one-step error | quantize s |".format(
            ref["adherence"]["mean"], ref["fd_real"]["value"]
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in doc["settings"]:
        q = info[s["name"]]
        c = q["components"]

        def ci(b: dict[str, Any], fmt: str, key: str = "mean") -> str:
            return f"{b[key]:{fmt}} [{b['ci95'][0]:{fmt}}, {b['ci95'][1]:{fmt}}]"

        rows.append(
            f"| {s['name']} | {c['unet']['bits_per_weight']:.2f} "
            f"| {c['text_encoder']['bits_per_weight']:.2f} | {c['vae']['bits_per_weight']:.2f} "
            f"| {ci(s['psnr'], '.2f')} | {s['ssim']['mean']:.4f} | {ci(s['adherence'], '.3f')} "
            f"| {s['fd_real']['value']:.2f} | {s['drift']['one_step_mean']:.4f} "
            f"| {q['seconds']:.1f} |"
        )
    table = "\n".join(rows)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"quantize": info, "eval": doc}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
