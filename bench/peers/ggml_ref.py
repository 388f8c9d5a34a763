"""llama.cpp's own reference quantizers (ggml-quants.c), built from the llama.cpp sources that the
llama-cpp-python sdist on PyPI vendors, called through ctypes: the encoder that llama.cpp's
`llama-quantize` and stable-diffusion.cpp's converter run, for comparing GGUF files at the same
type. Only ggml-quants.c is compiled (with bench/peers/ggml_ref_shim.c for the four ggml
functions it calls); the build is cached in bench-out/ggml-ref/.

    quantize(x, "Q4_K")                 # rows of x, each a multiple of the block
    quantize(x, "Q4_K", imatrix=w)      # with an importance matrix (per column weights)
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

VERSION = "0.3.36"  # llama-cpp-python, whose sdist vendors llama.cpp
ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "bench-out" / "ggml-ref"
LIB = WORK / f"libggml_quants_ref-{VERSION}.so"
FUNCS = {
    "Q4_0": "quantize_q4_0",
    "Q5_0": "quantize_q5_0",
    "Q8_0": "quantize_q8_0",
    "Q2_K": "quantize_q2_K",
    "Q3_K": "quantize_q3_K",
    "Q4_K": "quantize_q4_K",
    "Q5_K": "quantize_q5_K",
    "Q6_K": "quantize_q6_K",
}
SIZES = {
    "Q4_0": (32, 18),
    "Q5_0": (32, 22),
    "Q8_0": (32, 34),
    "Q2_K": (256, 84),
    "Q3_K": (256, 110),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}


def build() -> Path:
    if LIB.exists():
        return LIB
    WORK.mkdir(parents=True, exist_ok=True)
    sdist = WORK / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"llama-cpp-python=={VERSION}",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-q",
                "-d",
                str(WORK),
            ],
            check=True,
        )
    src = WORK / "src"
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/ggml/"
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix)
            and (m.name.endswith(".h") or m.name.endswith("ggml-quants.c"))
        ]
        tar.extractall(src, members=members, filter="data")
    ggml = src / prefix
    subprocess.run(
        [
            "gcc",
            "-O2",
            "-shared",
            "-fPIC",
            "-I",
            str(ggml / "include"),
            "-I",
            str(ggml / "src"),
            "-I",
            str(ggml / "src" / "ggml-cpu"),
            str(ggml / "src" / "ggml-quants.c"),
            str(Path(__file__).with_name("ggml_ref_shim.c")),
            "-lm",
            "-o",
            str(LIB),
        ],
        check=True,
    )
    return LIB


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(str(build()))
        for name in FUNCS.values():
            f = getattr(_lib, name)
            f.restype = ctypes.c_size_t
            f.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_void_p,
            ]
    return _lib


def quantize(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Blocks (uint8, one row of bytes per row of x) from llama.cpp's quantize_<type>: the
    reference encoder without an importance matrix, llama-quantize's imatrix path with one."""
    lib = _load()
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    block, nbytes = SIZES[qtype]
    out = np.zeros((rows, n // block * nbytes), dtype=np.uint8)
    w = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    getattr(lib, FUNCS[qtype])(
        x.ctypes.data, out.ctypes.data, rows, n, None if w is None else w.ctypes.data
    )
    return out
