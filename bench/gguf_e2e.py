"""What the model generates from a GGUF file: ArrowQuant's codes against llama.cpp's reference
encoder at the same per-tensor types (so the same bytes), weight-only, on the reference models.

    .venv/bin/python bench/gguf_e2e.py [--types Q4_K,Q3_K,Q2_K,Q4_0,Q8_0] [--samples 256]

For each model and type: `arrowquant quantize MODEL --format gguf --gguf-type T
--no-calibration`; the reference file takes every tensor's type from that file and encodes the
quantized ones with ggml-quants.c (bench/peers/ggml_ref.py), written by the gguf package's own
writer; `arrowquant eval` samples both from the same noise (DDIM, paired PSNR to the FP model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))

import ggml_ref  # noqa: E402
import gguf  # noqa: E402

from arrowquant.checkpoint import load_checkpoint  # noqa: E402
from arrowquant.gguf import open_gguf  # noqa: E402

OUT = ROOT / "bench-out" / "gguf-e2e"


def reference_file(model: Path, ours: Path, dest: Path) -> None:
    """dest/<same names>.gguf: ours's tensors and types, quantized ones encoded by llama.cpp."""
    ck = load_checkpoint(str(model))
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(ours.glob("*.gguf")):
        prefix = "" if f.name == "model.gguf" else f"{f.stem}/"
        src = open_gguf(f)
        w = gguf.GGUFWriter(str(dest / f.name), "diffusers")
        for name in src.names():
            info = src.info(name)
            a = np.asarray(ck.numpy(prefix + name))
            if info["type"] in ("F16", "F32", "BF16"):
                w.add_tensor(
                    name,
                    np.asarray(src.dequantize(name)).astype(
                        np.float16 if info["type"] != "F32" else np.float32
                    ),
                )
                continue
            x = a.astype(np.float32).reshape(-1, a.shape[-1])
            blocks = ggml_ref.quantize(x, info["type"])
            w.add_tensor(
                name,
                blocks,
                raw_shape=blocks.shape,
                raw_dtype=gguf.GGMLQuantizationType[info["type"]],
            )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def run(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "arrowquant", *args], capture_output=True, text=True, check=False
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return r.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="digits-ddpm,digits-dit")
    p.add_argument("--types", default="Q4_K,Q3_K,Q2_K,Q4_0,Q8_0")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    args = p.parse_args()
    rows = [
        "| model | type | bits/w (file) ours / llama.cpp | PSNR dB ours / llama.cpp | "
        "one-step error ours / llama.cpp |",
        "|---|---|---|---|---|",
    ]
    for m in args.models.split(","):
        model = ROOT / "models" / m
        for t in args.types.split(","):
            ours, ref = OUT / m / t / "ours", OUT / m / t / "llama.cpp"
            ours.parent.mkdir(parents=True, exist_ok=True)
            run(
                "quantize",
                str(model),
                str(ours),
                "--format",
                "gguf",
                "--gguf-type",
                t,
                "--no-calibration",
                "--overwrite",
            )
            reference_file(model, ours, ref)
            doc = json.loads(
                run(
                    "eval",
                    str(model),
                    f"ours={ours}",
                    f"llama.cpp={ref}",
                    "--samples",
                    str(args.samples),
                    "--steps",
                    str(args.steps),
                    "--json",
                    "--out",
                    str(OUT / m / t / "eval"),
                )
            )
            s = {r["name"]: r for r in doc["settings"]}
            a, b = s["ours"], s["llama.cpp"]
            rows.append(
                f"| {m} | {t} | {a['file_bits_per_weight']:.2f} / {b['file_bits_per_weight']:.2f} "
                f"| {a['psnr']['mean']:.2f} / {b['psnr']['mean']:.2f} "
                f"| {a['drift']['one_step_mean']:.4f} / {b['drift']['one_step_mean']:.4f} |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
