"""Weight-quantization quality: ArrowQuant formats next to GGUF and NF4, same inputs, same run.

    .venv/bin/python bench/quality.py [--rows 1024] [--cols 4096] [--markdown FILE]

Inputs: (a) N(0, 0.02) weights; (b) the same with 1% of input columns x10 (outlier channels);
(c) Student-t (nu=5) x 0.02. Reported: bits per weight actually stored and relative RMSE
sqrt(sum (w - w')^2 / sum w^2). Peers use their own implementations from PyPI: gguf's numpy
quantizers (Q8_0, Q4_0, Q4_1), gguf's Q4_K decoder on blocks from a port of llama.cpp's
reference encoder (bench/peers/q4k_ref.py; gguf 0.19 cannot encode Q4_K), and bitsandbytes'
NF4 (block 64, with and without double quantization).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import arrowquant as aq  # noqa: E402

Quantizer = Callable[[np.ndarray], tuple[np.ndarray, float]]


def inputs(rows: int, cols: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.02, (rows, cols)).astype(np.float32)
    b = a.copy()
    cols_out = rng.choice(cols, max(1, cols // 100), replace=False)
    b[:, cols_out] *= 10
    c = (rng.standard_t(5, (rows, cols)) * 0.02).astype(np.float32)
    return {"a: N(0,0.02)": a, "b: 1% cols x10": b, "c: Student-t 5": c}


def ours(**kw: object) -> Quantizer:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        q = aq.quantize(w, **kw)  # type: ignore[arg-type]
        return q.dequantize(), q.bits_per_weight

    return run


def gguf_quant(name: str) -> Quantizer:
    import gguf
    from gguf import quants

    qt = getattr(gguf.GGMLQuantizationType, name)

    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        q = quants.quantize(w, qt)
        return quants.dequantize(q, qt).reshape(w.shape), q.nbytes * 8 / w.size

    return run


def gguf_q4k(w: np.ndarray) -> tuple[np.ndarray, float]:
    import gguf
    from gguf import quants

    from q4k_ref import quantize_q4_k

    raw = np.frombuffer(quantize_q4_k(w), np.uint8).reshape(w.shape[0], -1)
    d = quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K).reshape(w.shape)
    return d, raw.nbytes * 8 / w.size


def nf4(double_quant: bool) -> Quantizer:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        import bitsandbytes.functional as F
        import torch

        x = torch.from_numpy(w)
        q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        d = F.dequantize_4bit(q, st).numpy()
        nbytes = q.numel() * q.element_size()
        if double_quant:
            nbytes += st.absmax.numel() * st.absmax.element_size()
            nbytes += st.state2.absmax.numel() * st.state2.absmax.element_size()
        else:
            nbytes += st.absmax.numel() * st.absmax.element_size()
        return d, nbytes * 8 / w.size

    return run


def settings() -> list[tuple[str, str, Quantizer]]:
    rows: list[tuple[str, str, Quantizer]] = [
        ("ArrowQuant", "int8 (recommended: asym g32 q6 search)", ours(bits=8)),
        ("ArrowQuant", "int8 sym g32 f16 search", ours(bits=8, scheme="sym", scale_dtype="f16")),
        ("ArrowQuant", "int4 (recommended: asym g32 q7 search)", ours(bits=4)),
        ("ArrowQuant", "int4 asym g32 q6 search", ours(bits=4, scale_dtype="q6")),
        ("ArrowQuant", "int4 asym g64 f16 search", ours(bits=4, group_size=64, scale_dtype="f16")),
        (
            "ArrowQuant",
            "int4 asym g128 f16 search",
            ours(bits=4, group_size=128, scale_dtype="f16"),
        ),
        (
            "ArrowQuant",
            "int4 asym g128 f16 minmax (plain INT4)",
            ours(bits=4, group_size=128, scale_dtype="f16", method="minmax"),
        ),
        ("ArrowQuant", "int2 (recommended: asym g32 q6 search)", ours(bits=2)),
        ("ArrowQuant", "int2 asym g64 f16 search", ours(bits=2, group_size=64, scale_dtype="f16")),
    ]
    for name in ("Q8_0", "Q4_0", "Q4_1"):
        rows.append(("gguf", name, gguf_quant(name)))
    rows.append(("gguf", "Q4_K (llama.cpp ref encoder port, gguf decoder)", gguf_q4k))
    rows.append(("bitsandbytes", "NF4 block 64", nf4(False)))
    rows.append(("bitsandbytes", "NF4 block 64 + double quant", nf4(True)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    data = inputs(args.rows, args.cols)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    lines = []
    header = "| tool | setting | bits/weight | " + " | ".join(f"rel RMSE {k}" for k in data) + " |"
    lines += [header, "|" + "---|" * (3 + len(data))]
    for tool, label, fn in settings():
        row = {}
        for k, w in data.items():
            try:
                t0 = time.perf_counter()
                d, bpw = fn(w)
                dt = time.perf_counter() - t0
                rel = float(
                    np.sqrt(
                        ((d.astype(np.float64) - w) ** 2).sum() / (w.astype(np.float64) ** 2).sum()
                    )
                )
                row[k] = (bpw, rel, dt)
            except Exception as e:  # a peer that cannot run here is reported, not hidden
                row[k] = (float("nan"), float("nan"), 0.0)
                print(f"{tool} {label}: n/a ({type(e).__name__}: {e})", file=sys.stderr)
        results[f"{tool} {label}"] = {k: v[:2] for k, v in row.items()}
        bpw = next(iter(row.values()))[0]
        cells = " | ".join(f"{v[1] * 100:.2f}%" for v in row.values())
        lines.append(f"| {tool} | {label} | {bpw:.3f} | {cells} |")
        print(lines[-1], flush=True)

    def rel(key: str, k: str) -> float:
        return results[key][k][1]

    checks = []
    ours4 = "ArrowQuant int4 (recommended: asym g32 q7 search)"
    ours8 = "ArrowQuant int8 (recommended: asym g32 q6 search)"
    for k in data:
        bpw4 = results[ours4][k][0]
        checks.append((f"{k}: int4 at {bpw4:.3f} <= 4.5 bpw", bpw4 <= 4.5))
        for peer in ("gguf Q4_0", "bitsandbytes NF4 block 64"):
            ratio = rel(ours4, k) / rel(peer, k)
            checks.append((f"{k}: int4 error {ratio:.3f}x {peer} (target <= 0.90)", ratio <= 0.90))
        q4k = "gguf Q4_K (llama.cpp ref encoder port, gguf decoder)"
        ratio = rel(ours4, k) / rel(q4k, k)
        checks.append((f"{k}: int4 error {ratio:.3f}x Q4_K (target <= 1.00)", ratio <= 1.0))
        ratio = rel(ours8, k) / rel("gguf Q8_0", k)
        checks.append((f"{k}: int8 error {ratio:.3f}x Q8_0 (target <= 1.00)", ratio <= 1.0))
    lines.append("")
    lines += [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    out = "\n".join(lines)
    print("\n".join(lines[-len(checks) :]))
    if args.markdown:
        from importlib.metadata import version

        meta = (
            f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, "
            f"{args.rows}x{args.cols} per input, "
            f"arrowquant {aq.__version__}, gguf {version('gguf')}, "
            f"bitsandbytes {version('bitsandbytes')}"
        )
        args.markdown.write_text(f"<!-- bench/quality.py: {meta} -->\n{out}\n")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
