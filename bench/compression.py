"""Which model-file payload columns are worth compressing: codec ratios per buffer and format.

    .venv/bin/python bench/compression.py
Prints compressed/uncompressed size for each buffer of each format on N(0, 0.02) weights.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

import arrowquant as aq


def main() -> None:
    w = np.random.default_rng(0).normal(0, 0.02, (1024, 1024)).astype(np.float32)
    print("| format | buffer | share of payload | zstd | lz4 | snappy |")
    print("|---|---|---|---|---|---|")
    for bits in (2, 4, 8):
        for kw in ({}, {"scale_dtype": "f16", "group_size": 128}):
            q = aq.quantize(w, bits=bits, **kw)  # type: ignore[arg-type]
            for name in ("codes", "scales", "zeros", "super_scales"):
                buf = getattr(q, name).tobytes()
                if not buf:
                    continue
                ratios = [
                    len(pa.compress(buf, codec=c, asbytes=True)) / len(buf)
                    for c in ("zstd", "lz4", "snappy")
                ]
                share = len(buf) / q.nbytes
                cells = " | ".join(f"{r:.3f}" for r in ratios)
                print(f"| {q.metadata['format']} | {name} | {share:.1%} | {cells} |")


if __name__ == "__main__":
    main()
