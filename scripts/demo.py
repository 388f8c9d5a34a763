"""`make demo`: the main job on the bundled reference models, judged by what they generate.

1. `ArrowQuantV2().quantize_diffusion_model` (what `arrowquant quantize` runs) with the cloud,
   local and edge profiles on each reference model the project trained (models/): the digits
   DDPM (a DDPMPipeline), the class-conditional DiT, the text-to-image pipeline (a
   StableDiffusionPipeline: text encoder, UNet with cross-attention, VAE) and the code masked
   diffusion LM; calibrated by default (the model's own samples or generations, or for the
   text-to-image pipeline synthetic prompts from its vocabulary; GPTQ weights, each layer's
   width by its measured effect on the prediction, at the profile's size; every component of a
   pipeline with its own profile, the VAE cloud);
2. each result loaded back and run paired with the FP model (`arrowquant.eval`): images sampled
   with DDIM (50 steps) from the same noise (and labels / prompts); the code model's masked-token
   NLL on held-out code under the same masks, and generation from the same unmasking order;
3. one table per model: bits per weight, size, paired PSNR/SSIM to the FP samples, Fréchet
   distance to real digits (the FP model's next to it), prompt adherence / accuracy where the
   model is conditional; for the code model NLL change by mask ratio and token agreement;
   times; reports and image grids in demo-out/.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("cloud", "local", "edge")
# (folder under models/, samples; the DDPM is the main one, the others keep the demo short)
MODELS = (("digits-ddpm", 512), ("digits-dit", 256), ("digits-t2i", 300), ("code-mdlm", 64))


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables, results = [], {}
    for name, samples in MODELS:
        table, results[name] = run_model(name, samples, out)
        tables.append(f"### {name}\n\n{table}")
    text = "\n\n".join(tables)
    print("\n" + text)
    (out / "demo.md").write_text(text + "\n")
    (out / "demo.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nreports {out}/eval-*/eval.md, image grids {out}/eval-*/grid*.png,"
        f"\nmodel files and quantization reports in {out}/<model>-<profile>/"
    )
    return 0


def run_model(name: str, samples: int, out: Path) -> tuple[str, dict]:
    import arrowquant as aq
    from arrowquant.eval import evaluate

    model = ROOT / "models" / name
    src_bytes = sum(
        f.stat().st_size for f in [*model.glob("*.safetensors"), *model.glob("*/*.safetensors")]
    )
    print(f"\nmodel: models/{name} ({src_bytes / 2**20:.2f} MiB f32 safetensors)")
    quant: dict[str, dict[str, float]] = {}
    for profile in PROFILES:
        dest = out / f"{name}-{profile}"
        t0 = time.perf_counter()
        rep = aq.ArrowQuantV2().quantize_diffusion_model(
            model, dest, aq.DiffusionQuantConfig.from_profile(profile), overwrite=True
        )
        s = rep.summary()
        quant[profile] = {
            "seconds": time.perf_counter() - t0,
            "bits_per_weight": s["bits_per_weight"],
            "file_bytes": s["file_bytes"],
        }
        comps = s["components"]
        if len(comps) > 1:
            per = ", ".join(
                f"{k} {c['profile']} {c['bits_per_weight']:.2f}" for k, c in comps.items()
            )
            print(f"arrowquant quantize --profile {profile}: bits/weight by component: {per}")
        else:
            formats = ", ".join(f"{k} x{v}" for k, v in s["formats"].items())
            print(f"arrowquant quantize --profile {profile}: {formats}")
    prompts = None
    if (model / "prompts.jsonl").is_file():
        lines = (model / "prompts.jsonl").read_text().splitlines()
        prompts = [json.loads(x)["prompt"] for x in lines if x]
    what = "sequences" if (model / "heldout.jsonl").is_file() else "samples, DDIM 50 steps"
    print(f"evaluating FP and each profile, paired ({samples} {what})")
    doc = evaluate(
        model,
        {p: out / f"{name}-{p}" for p in PROFILES},
        samples=samples,
        steps=50,
        seed=0,
        out_dir=out / f"eval-{name}",
        log=lambda m: print("  " + m),
        prompts=prompts,
    )
    if doc.get("kind") == "masked diffusion language model":
        return format_masked_table(doc, quant, src_bytes), {"quantize": quant, "eval": doc}
    return format_table(doc, quant, src_bytes), {"quantize": quant, "eval": doc}


def format_masked_table(doc: dict, quant: dict[str, dict[str, float]], src_bytes: int) -> str:
    ref = doc["reference"]["masked_nll"]
    rows = [
        "| setting | bits/weight | size KiB | "
        + " | ".join(f"NLL at mask {r} vs FP ({v:.3f})" for r, v in ref.items())
        + " | generation agreement | quantize s | eval s |",
        "|---|---|---|" + "---|" * len(ref) + "---|---|---|",
        f"| FP (f32) | 32 | {src_bytes / 1024:.0f} | "
        + " | ".join("-" for _ in ref)
        + f" | 1 | - | {doc['reference']['seconds']:.1f} |",
    ]
    for s in doc["settings"]:
        q = quant[s["name"]]
        cells = [f"{100 * v['relative']:+.2f}%" for v in s["masked_nll"].values()]
        rows.append(
            f"| {s['name']} | {q['bits_per_weight']:.2f} | {q['file_bytes'] / 1024:.0f} | "
            + " | ".join(cells)
            + f" | {s['generation_agreement']:.3f} | {q['seconds']:.2f} | {s['seconds']:.1f} |"
        )
    return "\n".join(rows)


def format_table(doc: dict, quant: dict[str, dict[str, float]], src_bytes: int) -> str:
    ref = doc["reference"]
    fd = ref["fd_real"]
    # Conditional models: the share of samples the classifier reads as the digit asked for.
    key = "adherence" if "adherence" in ref else "accuracy" if "accuracy" in ref else None

    def cond(block: dict | None) -> str:
        return "" if key is None else f" {block[key]['mean']:.3f} |" if block else " - |"

    rows = [
        "| setting | bits/weight | size KiB | PSNR dB | SSIM | FD to real digits |"
        + (f" {key} |" if key else "")
        + " quantize s | sample+metrics s |",
        "|---|---|---|---|---|---|" + ("---|" if key else "") + "---|---|",
        f"| FP (f32) | 32 | {src_bytes / 1024:.0f} | - | - | {fd['value']:.2f} "
        f"[{fd['ci95'][0]:.2f}, {fd['ci95'][1]:.2f}] |{cond(ref)} - | {ref['seconds']:.1f} |",
    ]
    for s in doc["settings"]:
        q = quant[s["name"]]
        f = s["fd_real"]
        rows.append(
            f"| {s['name']} | {q['bits_per_weight']:.2f} | {q['file_bytes'] / 1024:.0f} "
            f"| {s['psnr']['mean']:.2f} | {s['ssim']['mean']:.4f} "
            f"| {f['value']:.2f} [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] |{cond(s)}"
            f" {q['seconds']:.2f} | {s['seconds']:.1f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
