"""The code masked-diffusion LM per profile, calibrated vs weight-only, end to end.

    .venv/bin/python bench/mdlm_table.py [--samples 64] [--steps 32] [--out bench-out/mdlm]

models/code-mdlm (a BertForMaskedLM trained with the MDLM objective on the standard library's
Python files, models/train_mdlm.py) is quantized with each profile two ways: calibrated (the
default: the FP model's own generations, masked at 25 ratios, GPTQ, widths by measured
sensitivity at the profile's size) and weight-only (`--no-calibration`). Each file is judged by
`arrowquant eval`: masked-token NLL at mask ratios 0.15 / 0.5 / 0.85 on the 64 held-out windows
(models/code-mdlm/heldout.jsonl, same masks for every setting), relative to FP with bootstrap
intervals, and paired generation agreement (32 sequences unmasked in `--steps` steps, same
order). Writes table.md and results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "code-mdlm"


def main() -> int:
    import arrowquant as aq
    from arrowquant.eval import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--profiles", nargs="*", default=["cloud", "local", "compact", "edge"])
    ap.add_argument("--out", default="bench-out/mdlm")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    info: dict[str, dict[str, Any]] = {}
    for profile in args.profiles:
        for how, calibration in (("calibrated", "auto"), ("weight-only", "")):
            name = f"{profile} {how}"
            dest = out / name.replace(" ", "-")
            cfg = aq.DiffusionQuantConfig.resolve(
                profile=profile, calibration=calibration, calibration_cache=str(out / "cache")
            )
            t0 = time.perf_counter()
            rep = aq.ArrowQuantV2().quantize_diffusion_model(MODEL, dest, cfg, overwrite=True)
            s = rep.summary()
            info[name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "bits_per_weight": s["bits_per_weight"],
                "modality": rep.modality,
                "formats": s["formats"],
            }
            files[name] = dest
            print(name, json.dumps(info[name]), flush=True)
    doc = evaluate(
        MODEL, files, samples=args.samples, steps=args.steps, out_dir=out / "eval", log=print
    )
    ref = doc["reference"]["masked_nll"]
    rows = [
        "| setting | bits/weight | "
        + " | ".join(f"NLL at {r} (FP {v:.3f})" for r, v in ref.items())
        + " | generation agreement | quantize s |",
        "|---|---|" + "---|" * len(ref) + "---|---|",
    ]
    for s in doc["settings"]:
        q = info[s["name"]]
        cells = [
            f"{100 * v['relative']:+.2f}% [{100 * v['relative_ci95'][0]:+.2f}, "
            f"{100 * v['relative_ci95'][1]:+.2f}]"
            for v in s["masked_nll"].values()
        ]
        rows.append(
            f"| {s['name']} | {q['bits_per_weight']:.2f} | "
            + " | ".join(cells)
            + f" | {s['generation_agreement']:.3f} | {q['seconds']:.1f} |"
        )
    table = "\n".join(rows)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"quantize": info, "eval": doc}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
