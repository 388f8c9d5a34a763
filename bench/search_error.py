"""Weight error of the error-minimizing grid (`method="search"`) at every recommended width and at
larger groups, next to the min/max grid in the same run, on synthetic weights (N(0, 0.02), 1% of
input columns x10, Student-t 5, a row length that leaves a short last group) and on the weights of
the reference models in models/. With --save FILE the sums of squared errors are kept; with
--compare FILE (saved by another build, e.g. the commit before a change to the search) the change
of total squared error per format and input is printed too.

    .venv/bin/python bench/search_error.py [--save FILE] [--compare FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy

import arrowquant as aq

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    "digits-ddpm/unet",
    "digits-dit/transformer",
    "digits-t2i/unet",
    "digits-t2i/text_encoder",
]
FORMATS = [
    {"bits": 2, "group_size": 32, "scale_dtype": "q6"},
    {"bits": 3, "group_size": 32, "scale_dtype": "q6"},
    {"bits": 4, "group_size": 32, "scale_dtype": "q7"},
    {"bits": 8, "group_size": 32, "scale_dtype": "q6"},
    *({"bits": b, "group_size": g, "scale_dtype": "q8"} for b in (2, 4) for g in (64, 128, 256)),
]


def inputs() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.02, (512, 2048)).astype(np.float32)
    b = a.copy()
    b[:, rng.choice(2048, 20, replace=False)] *= 10
    out = {
        "N(0,0.02)": [a],
        "1% cols x10": [b],
        "Student-t 5": [(rng.standard_t(5, (512, 2048)) * 0.02).astype(np.float32)],
        "1000 cols": [rng.normal(0, 0.02, (300, 1000)).astype(np.float32)],
    }
    for m in MODELS:
        ws = []
        for f in sorted((ROOT / "models" / m).glob("*.safetensors")):
            for v in safetensors.numpy.load_file(f).values():
                if v.ndim >= 2 and v.size >= 1024:
                    ws.append(v.reshape(v.shape[0], -1).astype(np.float32))
        out[m.replace("digits-", "").split("/")[0] + "/" + m.split("/")[1][:4]] = ws
    return out


def name(fk: dict) -> str:
    return f"int{fk['bits']}-g{fk['group_size']}-{fk['scale_dtype']}"


def sse(w: np.ndarray, method: str, fk: dict) -> float:
    q = aq.quantize(w, method=method, scheme="asym", threads=2, **fk)
    return float(((q.dequantize().astype(np.float64) - w) ** 2).sum())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", type=Path)
    ap.add_argument("--compare", type=Path)
    args = ap.parse_args()
    ins = inputs()
    before = json.loads(args.compare.read_text()) if args.compare else None
    saved: dict[str, dict[str, list[float]]] = {}
    title = "rel-RMSE, search (min/max grid)"
    print(title + (", change of squared error vs --compare" if before else ""))
    print(f"{'format':14} " + " ".join(f"{k:>24}" for k in ins))
    for fk in FORMATS:
        key = name(fk)
        saved[key] = {}
        cells = []
        for label, ws in ins.items():
            ww = sum(float((w.astype(np.float64) ** 2).sum()) for w in ws)
            s = sum(sse(w, "search", fk) for w in ws)
            mm = sum(sse(w, "minmax", fk) for w in ws)
            saved[key][label] = [s, ww]
            cell = f"{math.sqrt(s / ww):.4f} ({math.sqrt(mm / ww):.4f})"
            if before and label in before.get(key, {}):
                cell += f" {s / before[key][label][0] - 1:+.2%}"
            cells.append(f"{cell:>24}")
        print(f"{key:14} " + " ".join(cells), flush=True)
    if args.save:
        args.save.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
