"""Quality per bit end to end: method x width x model, judged by what the model generates.

    .venv/bin/python bench/gptq_table.py [--samples 512] [--steps 50] [--out bench-out/gptq]

For each reference model (models/digits-ddpm, models/digits-dit) and each profile (edge 2,
compact 3, local 4, cloud 8 bits), four methods:
- min/max: weight only, round to nearest on a min/max grid (`--no-calibration --method minmax`);
- search: weight only, the error-minimizing grid (`--no-calibration`, the weight-only default);
- GPTQ: calibrated (synthetic, the default), min/max grid (`--method minmax`; the default up
  to 4 bits);
- GPTQ+search: calibrated, the error-minimizing grid (`--method search`; the default at 8 bits);
both with widths by measured sensitivity at the profile's size and the profile's default group
size (64 at edge, 32 otherwise); plus `--target-bpw 3.0` calibrated with every default. Every
setting is sampled by `arrowquant.eval` with the same noise as the FP model (DDIM, paired), and
reported at the bits per weight its file has. Writes table.md, results.json and
psnr_vs_bpw.png under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "digits-ddpm": ROOT / "models" / "digits-ddpm",
    "digits-dit": ROOT / "models" / "digits-dit",
}
PROFILES = {"edge": 2, "compact": 3, "local": 4, "cloud": 8}
METHODS: dict[str, dict[str, Any]] = {
    "min/max": {"calibration": "", "method": "minmax"},
    "search": {"calibration": ""},
    "GPTQ": {"method": "minmax"},
    "GPTQ+search": {"method": "search"},
}


def settings() -> list[tuple[str, str, dict[str, Any]]]:
    out = [
        (f"{method} {profile}", profile, kw)
        for profile in PROFILES
        for method, kw in METHODS.items()
    ]
    out.append(("GPTQ target 3.0", "local", {"target_bpw": 3.0}))
    return out


def main() -> int:
    import arrowquant as aq
    from arrowquant.eval import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--out", default="bench-out/gptq")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for model in args.models:
        folder = MODELS[model]
        (out / model).mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        times: dict[str, float] = {}
        for name, profile, kw in settings():
            dest = out / model / name.replace(" ", "_").replace("/", "-").replace("+", "p")
            cfg = aq.DiffusionQuantConfig.from_profile(profile, **kw)
            t0 = time.perf_counter()
            aq.ArrowQuantV2().quantize_diffusion_model(folder, dest, cfg, overwrite=True)
            times[name] = time.perf_counter() - t0
            files[name] = dest
            print(f"{model} {name}: {times[name]:.1f} s", flush=True)
        doc = evaluate(
            folder, files, samples=args.samples, steps=args.steps, out_dir=out / model / "eval"
        )
        results[model] = {"eval": doc, "quantize_seconds": times}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_table(results, args.samples, args.steps)
    (out / "table.md").write_text(table)
    print(table)
    plot(results, out / "psnr_vs_bpw.png")
    return 0


def format_table(results: dict[str, Any], samples: int, steps: int) -> str:
    lines = [
        f"Paired PSNR to the FP model's samples ({samples} samples, DDIM {steps}, same noise), "
        "Fréchet distance to real digits (FP's in the header), bits per weight of the file.",
        "",
    ]
    for model, r in results.items():
        doc = r["eval"]
        fd_fp = doc["reference"]["fd_real"]["value"]
        lines += [
            f"**{model}** (FP: FD {fd_fp:.2f})",
            "",
            "| setting | bits/weight (file) | PSNR dB [95% CI] | FD to real | quantize s |",
            "|---|---|---|---|---|",
        ]
        for s in doc["settings"]:
            p = s["psnr"]
            lines.append(
                f"| {s['name']} | {s['file_bits_per_weight']:.2f} | {p['mean']:.2f} "
                f"[{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}] | {s['fd_real']['value']:.2f} | "
                f"{r['quantize_seconds'][s['name']]:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (model, r) in zip(axes[0], results.items(), strict=True):
        for method in METHODS:
            pts = sorted(
                (s["file_bits_per_weight"], s["psnr"]["mean"])
                for s in r["eval"]["settings"]
                if s["name"].split(" ")[0] == method and "target" not in s["name"]
            )
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
        ax.set_title(model)
        ax.set_xlabel("bits per weight (file)")
        ax.set_ylabel("paired PSNR dB")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
