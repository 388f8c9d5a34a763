"""`make bench`: runs every benchmark in this folder and prints what each measured.

Each benchmark compares against a baseline run in the same process (see docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "bench" / "bench"


def main() -> int:
    py = sys.executable
    out = ROOT / "bench-out"
    runs = [
        [str(BUILD / "bench_read_throughput"), str(out / "read.safetensors"), "1.0"],
        [py, str(ROOT / "bench" / "quality.py"), "--markdown", str(out / "quality.md")],
        [str(BUILD / "bench_quant_speed"), str(ROOT / "bench" / "sd15_unet_shapes.txt"), "8"],
        [py, str(ROOT / "bench" / "compression.py")],
        [py, str(ROOT / "bench" / "load_speed.py"), "--dir", str(out)],
        [py, str(ROOT / "bench" / "pipeline_rss.py"), "--dir", str(out)],
        [py, str(ROOT / "bench" / "pipeline_speed.py"), "--dir", str(out)],
        [py, str(ROOT / "bench" / "single_file_build.py"), "--dir", str(out)],
        [py, str(ROOT / "bench" / "search_error.py")],
        [py, str(ROOT / "bench" / "time_aware.py")],
        [py, str(ROOT / "bench" / "e2e_activations.py")],
        [py, str(ROOT / "bench" / "e2e_activations.py"), "--model", "digits-dit"],
        [py, str(ROOT / "bench" / "int8_rounding.py")],
        [py, str(ROOT / "bench" / "compare.py")],
        [py, str(ROOT / "bench" / "gguf_quality.py"), "--markdown", str(out / "gguf_quality.md")],
        [py, str(ROOT / "bench" / "gguf_e2e.py")],
        [py, str(ROOT / "bench" / "inference.py"), "--dir", str(out)],
    ]
    out.mkdir(exist_ok=True)
    for cmd in runs:
        print("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"exit code {rc}: some target missed (see above)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
