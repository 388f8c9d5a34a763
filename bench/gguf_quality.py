"""GGUF at the same type, so the same bytes: ArrowQuant's codes against llama.cpp's reference
encoder (ggml-quants.c itself, bench/peers/ggml_ref.py), both decoded by the gguf package.

    .venv/bin/python bench/gguf_quality.py [--stride 6] [--markdown FILE]

Inputs, each set weighted by its parameters (rel-RMSE = sqrt(sum of squared errors / sum w^2)):
- SD1.5-shaped: every `--stride`-th tensor of Stable Diffusion 1.5's UNet whose last dimension
  fills the type's blocks (bench/sd15_unet_shapes.txt: its linear and 1x1 layers; 3x3 convolutions
  fit no GGUF block), N(0, 0.02), and the same with Student-t (nu 5) values;
- DiT-shaped: the linear layers of one DiT-XL/2 block (hidden 1152, MLP 4608, adaLN 6 x 1152 -
  the shapes of FLUX/SD3-style transformers' blocks), N(0, 0.02);
- the reference models' own weights (models/: digits DDPM, DiT, text-to-image UNet and text
  encoder), every tensor of rank >= 2 whose last dimension fits.
`floor`: the error of the same block structure with unquantized (float32) scales, each block's
scale (and min) the best of a dense grid refined by three least-squares steps, on a 256x4096
N(0, 0.02) / Student-t input: about what any encoder of that type can reach.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "peers"))

import ggml_ref  # noqa: E402
import gguf  # noqa: E402
import safetensors.numpy  # noqa: E402

import arrowquant._core as _core  # noqa: E402

TYPES = ["Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K", "Q2_K"]
# Block structure for the floor: (group, code range lo..hi, asymmetric)
STRUCTURE = {
    "Q8_0": (32, -128, 127, False),
    "Q6_K": (16, -32, 31, False),
    "Q5_K": (32, 0, 31, True),
    "Q5_0": (32, -16, 15, False),
    "Q4_K": (32, 0, 15, True),
    "Q4_0": (32, -8, 7, False),
    "Q3_K": (16, -4, 3, False),
    "Q2_K": (16, 0, 3, True),
}


def sd15_shapes(stride: int) -> list[tuple[int, ...]]:
    shapes = []
    for line in (ROOT / "bench" / "sd15_unet_shapes.txt").read_text().splitlines():
        dims = tuple(int(d) for d in line.split()[1:])
        if len(dims) == 4 and dims[2:] == (1, 1):
            dims = dims[:2]  # 1x1 convolutions: stored as matrices by GGUF writers
        if len(dims) == 2 and dims[0] * dims[1] >= 1024:
            shapes.append(dims)
    return shapes[::stride]


DIT_BLOCK = [(1152, 1152)] * 4 + [(4608, 1152), (1152, 4608), (6 * 1152, 1152)]


def synthetic(shapes: list[tuple[int, ...]], kind: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return [rng.normal(0, 0.02, s).astype(np.float32) for s in shapes]
    return [(rng.standard_t(5, s) * 0.02).astype(np.float32) for s in shapes]


def reference_models() -> list[np.ndarray]:
    out = []
    for sub in (
        "digits-ddpm/unet",
        "digits-dit/transformer",
        "digits-t2i/unet",
        "digits-t2i/text_encoder",
    ):
        for f in sorted((ROOT / "models" / sub).glob("*.safetensors")):
            for a in safetensors.numpy.load_file(f).values():
                if a.ndim >= 2 and a.size >= 1024 and a.dtype.kind == "f":
                    out.append(a.reshape(a.shape[0], -1).astype(np.float32))
    return out


def compare(arrays: list[np.ndarray], qtype: str) -> dict[str, float] | None:
    block = ggml_ref.SIZES[qtype][0]
    fit = [a for a in arrays if a.shape[-1] % block == 0]
    if not fit:
        return None
    sse = {"ours": 0.0, "ref": 0.0}
    secs = {"ours": 0.0, "ref": 0.0}
    ww = 0.0
    qt = gguf.GGMLQuantizationType[qtype]
    for a in fit:
        x = a.reshape(-1, a.shape[-1])
        t = time.perf_counter()
        ref = ggml_ref.quantize(x, qtype)
        secs["ref"] += time.perf_counter() - t
        t = time.perf_counter()
        ours, _ = _core.gguf_encode(x, "F32", "w", qtype, "search", 1)
        secs["ours"] += time.perf_counter() - t
        ours = np.asarray(ours)
        assert ours.size == ref.size  # the same bytes
        for who, blocks in (("ref", ref), ("ours", ours.reshape(ref.shape))):
            y = gguf.quants.dequantize(blocks, qt).reshape(x.shape)
            sse[who] += float(((y.astype(np.float64) - x) ** 2).sum())
        ww += float((x.astype(np.float64) ** 2).sum())
    n = sum(a.size for a in fit)
    return {
        "ours": (sse["ours"] / ww) ** 0.5,
        "ref": (sse["ref"] / ww) ** 0.5,
        "params": n,
        "ours_mps": n / secs["ours"] / 1e6,
        "ref_mps": n / secs["ref"] / 1e6,
    }


def floor(x: np.ndarray, qtype: str) -> float:
    """Rel-RMSE of the type's block structure with float32 scales (see the module doc)."""
    g, lo, hi, asym = STRUCTURE[qtype]
    xb = x.reshape(-1, g).astype(np.float64)
    best = np.full(len(xb), np.inf)
    mn, mx = xb.min(1), xb.max(1)
    amax = np.abs(xb).max(1)
    if asym:
        cands = [
            (mn * a, mx * b) for a in np.linspace(0.6, 1.0, 17) for b in np.linspace(0.6, 1.0, 17)
        ]
    else:
        cands = [(None, t) for t in np.linspace(hi - 1, -lo + 1.5, 41)]
    for sg in (1.0,) if asym else (1.0, -1.0):
        v = xb * sg
        for c_lo, c in cands:
            if asym:
                s = np.maximum((c - np.minimum(c_lo, 0)) / hi, 1e-30)
                m = np.minimum(c_lo, 0)
            else:
                s = np.maximum(amax / c, 1e-30)
                m = np.zeros(len(v))
            for _ in range(4):
                q = np.clip(np.rint((v - m[:, None]) / s[:, None]), lo, hi)
                best = np.minimum(best, ((q * s[:, None] + m[:, None] - v) ** 2).sum(1))
                if asym:  # least squares v ~ s q + m
                    qa, qq, xq, xa = q.mean(1), (q * q).mean(1), (v * q).mean(1), v.mean(1)
                    d = qq - qa * qa
                    ok = d > 1e-12
                    s2 = np.where(ok, (xq - xa * qa) / np.where(ok, d, 1), s)
                    m = np.where(ok, xa - s2 * qa, m)
                    s = np.maximum(np.where(s2 > 0, s2, s), 1e-30)
                else:
                    s2 = (v * q).sum(1) / np.maximum((q * q).sum(1), 1e-30)
                    s = np.where(s2 > 0, s2, s)
    return float(np.sqrt(best.sum() / (x.astype(np.float64) ** 2).sum()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--stride", type=int, default=6)
    p.add_argument("--markdown")
    args = p.parse_args()
    sets = {
        "SD1.5 N(0,0.02)": synthetic(sd15_shapes(args.stride), "normal", 0),
        "SD1.5 Student-t": synthetic(sd15_shapes(args.stride), "t", 1),
        "DiT block N(0,0.02)": synthetic(DIT_BLOCK, "normal", 2),
        "reference models": reference_models(),
    }
    rng = np.random.default_rng(5)
    floors = {
        "N(0,0.02)": rng.normal(0, 0.02, (256, 4096)).astype(np.float32),
        "Student-t": (rng.standard_t(5, (256, 4096)) * 0.02).astype(np.float32),
    }
    lines = [
        "| type | bits/w | "
        + " | ".join(f"{s}: ours / llama.cpp (ratio)" for s in sets)
        + " | floor ratio N / t | encode M weights/s ours / llama.cpp |",
        "|---|---|" + "---|" * len(sets) + "---|---|",
    ]
    for qtype in TYPES:
        cells, speed = [], ""
        for name, arrays in sets.items():
            r = compare(arrays, qtype)
            if r is None:
                cells.append("-")
                continue
            cells.append(f"{r['ours']:.4f} / {r['ref']:.4f} ({r['ours'] / r['ref']:.3f})")
            if name == "SD1.5 N(0,0.02)":
                speed = f"{r['ours_mps']:.0f} / {r['ref_mps']:.0f}"
        fl = []
        for x in floors.values():
            ref = gguf.quants.dequantize(
                ggml_ref.quantize(x, qtype), gguf.GGMLQuantizationType[qtype]
            ).reshape(x.shape)
            e_ref = float(
                np.sqrt(
                    ((ref - x.astype(np.float64)) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
                )
            )
            fl.append(f"{floor(x, qtype) / e_ref:.3f}")
        bpw = 8 * ggml_ref.SIZES[qtype][1] / ggml_ref.SIZES[qtype][0]
        lines.append(
            f"| {qtype} | {bpw:.3f} | " + " | ".join(cells) + f" | {' / '.join(fl)} | {speed} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    main()
