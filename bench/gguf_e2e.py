"""What the model generates from a GGUF file: ArrowQuant's codes against llama.cpp's reference
encoder at the same per-tensor types (so the same bytes), on the reference models.

    .venv/bin/python bench/gguf_e2e.py [--types Q4_K,Q3_K,Q2_K,Q4_0,Q8_0] [--samples 256]

For each model and type, four files with the same tensor types:
- `ours`: `arrowquant quantize MODEL --format gguf --gguf-type T` (the default job: calibrated
  on the FP model's own samples, codes by GPTQ on each layer's input second moments);
- `ours-weights`: the same with --no-calibration (codes fitted to the weights);
- `llama.cpp`: every tensor's type from `ours`, the quantized ones encoded by ggml-quants.c
  (bench/peers/ggml_ref.py) without an importance matrix, as stable-diffusion.cpp converts;
- `llama.cpp-imatrix`: the same with the importance matrix llama-quantize takes (each input's
  mean square), from the same calibration run as `ours`.
`arrowquant eval` samples all from the same noise (DDIM, paired PSNR to the FP model).
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


def importance(model: Path) -> dict[str, np.ndarray]:
    """Per layer weight name: the mean square of each input (llama.cpp's imatrix), from the
    default job's calibration (cached by it, so the same run)."""
    from arrowquant import DiffusionQuantConfig
    from arrowquant.gguf import _calibrate, resolve_calibration

    cfg, path = resolve_calibration(model, DiffusionQuantConfig())
    if path["path"] != "calibrated":
        raise SystemExit(f"{model}: {path['why']}")
    moments, _ = _calibrate(model, cfg)
    return {k: np.asarray(f.diagonal()) / max(f.count, 1) for k, (f, _c) in moments.items()}


def reference_file(
    model: Path, ours: Path, dest: Path, imatrix: dict[str, np.ndarray] | None = None
) -> None:
    """dest/<same names>.gguf: ours's tensors and types, quantized ones encoded by llama.cpp
    (with `imatrix` where it has the layer)."""
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
            im = None if imatrix is None else imatrix.get(prefix + name)
            if im is not None and im.shape[0] != x.shape[1]:
                im = None
            blocks = ggml_ref.quantize(x, info["type"], imatrix=im)
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
    names = ["ours", "ours-weights", "llama.cpp", "llama.cpp-imatrix"]
    rows = [
        "| model | type | bits/w (file) | PSNR dB "
        + " / ".join(names)
        + " | one-step error "
        + " / ".join(names)
        + " |",
        "|---|---|---|---|---|",
    ]
    for m in args.models.split(","):
        model = ROOT / "models" / m
        imatrix = importance(model)
        for t in args.types.split(","):
            d = {n: OUT / m / t / n for n in names}
            d["ours"].parent.mkdir(parents=True, exist_ok=True)
            common = ["--format", "gguf", "--gguf-type", t, "--overwrite"]
            run("quantize", str(model), str(d["ours"]), *common)
            run("quantize", str(model), str(d["ours-weights"]), *common, "--no-calibration")
            reference_file(model, d["ours"], d["llama.cpp"])
            reference_file(model, d["ours"], d["llama.cpp-imatrix"], imatrix)
            doc = json.loads(
                run(
                    "eval",
                    str(model),
                    *[f"{n}={d[n]}" for n in names],
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
            rows.append(
                f"| {m} | {t} | {s['ours']['file_bits_per_weight']:.2f} | "
                + " / ".join(f"{s[n]['psnr']['mean']:.2f}" for n in names)
                + " | "
                + " / ".join(f"{s[n]['drift']['one_step_mean']:.4f}" for n in names)
                + " |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
