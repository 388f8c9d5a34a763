"""GGUF Q4_K blocks from llama.cpp's reference quantizer (quantize_row_q4_K_ref), ported to numpy.

The `gguf` package (0.19) decodes Q4_K but does not encode it, so the benchmark encodes with
this port of ggml-quants.c (make_qkx2_quants with the same weights, search steps and 6-bit
scale packing) and decodes with gguf's own dequantizer: the error reported for Q4_K is what a
GGUF reader reconstructs from these bytes.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _make_qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Vectorised over rows of x (each a 32-element sub-block). Returns scale, -min, L."""
    mn = np.minimum(x.min(1), 0.0)
    mx = x.max(1)
    sum_w = w.sum(1)
    sum_x = (w * x).sum(1)
    same = mx == mn
    rng = np.where(same, 1.0, mx - mn)
    iscale = nmax / rng
    scale = 1.0 / iscale
    L = np.clip(_round(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = (w * (scale[:, None] * L + mn[:, None] - x) ** 2).sum(1)
    the_min = mn.copy()
    for i in range(nstep + 1):
        isc = (rmin + rdelta * i + nmax) / rng
        La = np.clip(_round(isc[:, None] * (x - mn[:, None])), 0, nmax)
        sl = (w * La).sum(1)
        sl2 = (w * La * La).sum(1)
        sxl = (w * La * x).sum(1)
        D = sum_w * sl2 - sl * sl
        ok = D > 0
        Ds = np.where(ok, D, 1.0)
        ts = (sum_w * sxl - sum_x * sl) / Ds
        tm = (sl2 * sum_x - sl * sxl) / Ds
        pos = tm > 0
        ts = np.where(pos, sxl / np.where(sl2 > 0, sl2, 1.0), ts)
        tm = np.where(pos, 0.0, tm)
        err = (w * (ts[:, None] * La + tm[:, None] - x) ** 2).sum(1)
        better = ok & (err < best)
        best = np.where(better, err, best)
        scale = np.where(better, ts, scale)
        the_min = np.where(better, tm, the_min)
        L = np.where(better[:, None], La, L)
    scale = np.where(same, 0.0, scale)
    the_min = np.where(same, mn, the_min)
    return scale.astype(np.float32), (-the_min).astype(np.float32)


def _round(v: np.ndarray) -> np.ndarray:
    # ggml's nearest_int() is round-half-to-even through the 1.5*2^23 float trick.
    return np.rint(v.astype(np.float32))


def quantize_q4_k(x: np.ndarray) -> bytes:
    """x: float32 with a multiple of 256 elements per row. Returns GGUF Q4_K block bytes."""
    xs = x.astype(np.float32).reshape(-1, QK_K)
    nb = xs.shape[0]
    sub = xs.reshape(nb, 8, 32)
    av_x = np.sqrt((xs * xs).sum(1) / QK_K)
    weights = av_x[:, None, None] + np.abs(sub)
    scales, mins = _make_qkx2(sub.reshape(-1, 32), weights.reshape(-1, 32), 15, -1.0, 0.1, 20)
    scales = scales.reshape(nb, 8)
    mins = mins.reshape(nb, 8)
    max_scale = scales.max(1)
    max_min = mins.max(1)
    inv_scale = np.where(max_scale > 0, 63.0 / np.where(max_scale > 0, max_scale, 1), 0.0)
    inv_min = np.where(max_min > 0, 63.0 / np.where(max_min > 0, max_min, 1), 0.0)
    ls = np.minimum(_round(inv_scale[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(_round(inv_min[:, None] * mins), 63).astype(np.uint8)
    packed = np.zeros((nb, 12), np.uint8)
    packed[:, 0:4] = ls[:, 0:4]
    packed[:, 4:8] = lm[:, 0:4]
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    packed[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    d = (max_scale / 63.0).astype(np.float16)
    dmin = (max_min / 63.0).astype(np.float16)
    dj = d.astype(np.float32)[:, None] * ls.astype(np.float32)
    dm = dmin.astype(np.float32)[:, None] * lm.astype(np.float32)
    safe = np.where(dj > 0, dj, 1.0)
    L = np.clip(_round((sub + dm[:, :, None]) / safe[:, :, None]), 0, 15).astype(np.uint8)
    L = np.where((dj > 0)[:, :, None], L, 0).reshape(nb, QK_K)
    qs = np.zeros((nb, 128), np.uint8)
    for j in range(0, QK_K, 64):
        qs[:, j // 2 : j // 2 + 32] = L[:, j : j + 32] | (L[:, j + 32 : j + 64] << 4)
    blocks = np.concatenate(
        [d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2), packed, qs], axis=1
    )
    return blocks.tobytes()
