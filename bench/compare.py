"""Side by side with the tools users would otherwise pick (issue 9). One command:

    .venv/bin/python bench/compare.py            # make bench installs the peers first

Inputs: an SD1.5-shaped checkpoint subset and a DiT-XL/2-shaped block (f16, heavy-tailed weights
with 1% outlier input channels), and the two reference models' real weights. Settings near 8, 4
and 2-3 bits per weight. Every (input, tool, setting) runs in its own subprocess, so wall time and
peak RSS are its own; errors are measured on the tool's own dequantized output. On the reference
models the dequantized weights are also sampled end to end (arrowquant.eval, paired noise).
A peer that cannot do a setting gets "n/a" with the reason.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "compare"
Q = Callable[[np.ndarray], tuple[np.ndarray, float]]  # f32 weight -> (dequantized, stored bits)


# ---- inputs -------------------------------------------------------------------------------
def _synthetic(shapes: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes:
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_t(5, shape) * (0.5 / np.sqrt(fan_in))
        cols = rng.choice(shape[1], max(1, shape[1] // 100), replace=False)
        w[:, cols] *= 8.0  # outlier input channels
        out[name] = w.astype(np.float16)
    return out


def sd15_subset(max_params: int = 40_000_000) -> dict[str, np.ndarray]:
    shapes = []
    for line in (ROOT / "bench" / "sd15_unet_shapes.txt").read_text().splitlines():
        name, *dims = line.split()
        if len(dims) >= 2 and int(np.prod([int(d) for d in dims])) >= 1024:
            shapes.append((name, tuple(int(d) for d in dims)))
    picked, total = [], 0
    for name, shape in shapes[::5]:  # every 5th weight: all blocks and tensor kinds
        n = int(np.prod(shape))
        if total + n > max_params:
            continue
        picked.append((name, shape))
        total += n
    return _synthetic(picked, 0)


def dit_block() -> dict[str, np.ndarray]:
    h = 1152
    shapes = [
        ("transformer_blocks.0.norm1.linear.weight", (6 * h, h)),
        *[(f"transformer_blocks.0.attn1.to_{k}.weight", (h, h)) for k in ("q", "k", "v")],
        ("transformer_blocks.0.attn1.to_out.0.weight", (h, h)),
        ("transformer_blocks.0.ff.net.0.proj.weight", (4 * h, h)),
        ("transformer_blocks.0.ff.net.2.weight", (h, 4 * h)),
    ]
    return _synthetic(shapes, 1)


def reference(name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    comp = "unet" if name == "digits-ddpm" else "transformer"
    sd = load_file(str(ROOT / "models" / name / comp / "diffusion_pytorch_model.safetensors"))
    return {k: v for k, v in sd.items() if v.ndim >= 2 and v.size >= 1024}


INPUTS: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "SD1.5-shaped (40M params)": sd15_subset,
    "DiT-XL/2 block (24M params)": dit_block,
    "digits-ddpm": lambda: reference("digits-ddpm"),
    "digits-dit": lambda: reference("digits-dit"),
}


def tensor_class(name: str, shape: tuple[int, ...]) -> str:
    if len(shape) == 4:
        return "conv"
    if "norm1.linear" in name or "emb" in name or "adaLN" in name:
        return "adaLN/time"
    if "attn" in name or "to_q" in name or "to_k" in name or "to_v" in name:
        return "attention"
    if "ff." in name or "mlp" in name:
        return "feed-forward"
    return "other linear"


# ---- tools ----------------------------------------------------------------------------------
def arrowquant(bits: int, **kw: Any) -> Q:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        import arrowquant as aq

        q = aq.quantize(w, bits=bits, **kw)
        return q.dequantize().reshape(w.shape), q.bits_per_weight * w.size

    return run


def gguf_q(kind: str) -> Q:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        import gguf
        from gguf import quants

        qt = getattr(gguf.GGMLQuantizationType, kind)
        w2 = w.reshape(w.shape[0], -1)
        if w2.shape[1] % 32:  # GGUF blocks are 32 wide: such tensors stay f16 (as llama.cpp does)
            return w.astype(np.float16).astype(np.float32), w.size * 16.0
        q = quants.quantize(w2, qt)
        return quants.dequantize(q, qt).reshape(w.shape), q.nbytes * 8.0

    return run


def quanto(bits: int, group: int | None) -> Q:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        import torch
        from optimum.quanto import qint2, qint4, qint8, quantize_weight
        from optimum.quanto.tensor.optimizers import AbsmaxOptimizer, MaxOptimizer

        qt = {8: qint8, 4: qint4, 2: qint2}[bits]
        t = torch.from_numpy(w.reshape(w.shape[0], -1)).to(torch.float16)
        g = group
        while g is not None and t.shape[1] % g:  # quanto needs a group that divides the row
            g = g // 2 if g > 16 else None
        if g is None and bits == 8:
            scale = AbsmaxOptimizer()(t, qtype=qt, axis=0)
            q = quantize_weight(t, qtype=qt, axis=0, scale=scale, shift=None)
            stored = t.numel() * bits + scale.numel() * 16
        else:
            scale, shift = MaxOptimizer()(t, qtype=qt, axis=0, group_size=g)
            q = quantize_weight(t, qtype=qt, axis=0, scale=scale, shift=shift, group_size=g)
            stored = t.numel() * bits + (scale.numel() + shift.numel()) * 16
        return q.dequantize().float().numpy().reshape(w.shape), float(stored)

    return run


def torchao_int8(w: np.ndarray) -> tuple[np.ndarray, float]:
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    w2 = w.reshape(w.shape[0], -1)
    lin = torch.nn.Linear(w2.shape[1], w2.shape[0], bias=False, dtype=torch.float16)
    lin.weight.data = torch.from_numpy(w2).to(torch.float16)
    m = torch.nn.Sequential(lin)
    quantize_(m, Int8WeightOnlyConfig())
    d = m[0].weight.dequantize().float().numpy()
    return d.reshape(w.shape), float(w.size * 8 + w2.shape[0] * 16)


def hqq(bits: int) -> Q:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        import torch
        from hqq.core.quantize import Quantizer

        t = torch.from_numpy(w.reshape(w.shape[0], -1)).to(torch.float16)
        wq, meta = Quantizer.quantize(
            t,
            nbits=bits,
            group_size=64,
            optimize=True,
            axis=1,
            device="cpu",
            compute_dtype=torch.float16,
        )
        d = Quantizer.dequantize(wq, meta).float().numpy().reshape(w.shape)
        # HQQ keeps scale and zero per group of 64; counted at f16 (its usual storage).
        return d, float(w.size * bits + 2 * 16 * meta["scale"].numel())

    return run


def bnb(kind: str) -> Q:
    def run(w: np.ndarray) -> tuple[np.ndarray, float]:
        import bitsandbytes.functional as F
        import torch

        x = torch.from_numpy(w.reshape(w.shape[0], -1).astype(np.float32))
        if kind == "nf4":
            q, st = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
            d = F.dequantize_4bit(q, st).numpy()
            stored = q.numel() * q.element_size() * 8 + st.absmax.numel() * 32
        else:
            q, scale, _ = F.int8_vectorwise_quant(x.to(torch.float16))
            d = (q.float() * scale.float()[:, None] / 127.0).numpy()
            stored = q.numel() * 8 + scale.numel() * 32
        return d.reshape(w.shape), float(stored)

    return run


NA = "n/a"
# The whole job, calibrated (the product's default on a model it can sample): GPTQ codes and
# widths by measured sensitivity at the profile's size; runs on the model folder, so only the
# reference models. Its per-tensor weights come from the written file.
CALIBRATED = "ArrowQuant calibrated job"
PROFILE_OF = {"8": "cloud", "4": "local", "2-3": "edge"}


def calibrated_job(inp: str, setting: str) -> Callable[[str, np.ndarray], tuple[np.ndarray, float]]:
    import arrowquant as aq

    out = Path(tempfile.mkdtemp()) / "q"
    cfg = aq.DiffusionQuantConfig.from_profile(PROFILE_OF[setting])
    aq.ArrowQuantV2().quantize_diffusion_model(ROOT / "models" / inp, out, cfg)
    model = aq.open(out)
    by_suffix = {n.split("/", 1)[-1]: n for n in model.names()}

    def run(name: str, w: np.ndarray) -> tuple[np.ndarray, float]:
        full = by_suffix[name]
        d = model.load([full], np.float32)[0].reshape(w.shape)
        stored = model.tensor(full).nbytes if model.info(full)["spec"] else model.raw(full).nbytes
        return d, 8.0 * float(stored)

    return run


TOOLS: dict[str, dict[str, Q | str]] = {
    "ArrowQuant": {"8": arrowquant(8), "4": arrowquant(4), "2-3": arrowquant(2)},
    CALIBRATED: dict.fromkeys(PROFILE_OF, "calibrated whole job: reference models only"),
    "ArrowQuant min/max": {
        "8": arrowquant(8, method="minmax"),
        "4": arrowquant(4, method="minmax"),
        "2-3": arrowquant(2, method="minmax"),
    },
    "gguf (numpy)": {
        "8": gguf_q("Q8_0"),
        "4": gguf_q("Q4_0"),
        "2-3": "gguf 0.19 has numpy encoders for Q4_0/Q4_1/Q5_x/Q8_0 only (no Q2_K/Q3_K)",
    },
    "optimum-quanto": {"8": quanto(8, None), "4": quanto(4, 128), "2-3": quanto(2, 64)},
    "torchao": {
        "8": torchao_int8,
        "4": "int4 weight-only needs a CUDA/XPU packing layout in torchao 0.18 (no CPU layout)",
        "2-3": "no 2/3-bit weight-only config",
    },
    "HQQ": {"8": hqq(8), "4": hqq(4), "2-3": hqq(3)},
    "bitsandbytes": {
        "8": bnb("int8"),
        "4": bnb("nf4"),
        "2-3": "no 2/3-bit format",
    },
}


# ---- worker: one (input, tool, setting) in its own process -----------------------------------
def peak_rss_mib() -> float:
    """VmHWM of this process. (ru_maxrss would not do: a child starts with its parent's value
    across fork, and the driver is large once it has sampled the reference models.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def worker(inp: str, tool: str, setting: str, dump: str) -> None:
    import torch

    torch.set_num_threads(2)
    weights = INPUTS[inp]()
    job = None
    if tool == CALIBRATED:
        t_job = time.perf_counter()
        job = calibrated_job(inp, setting)
        job_seconds = time.perf_counter() - t_job
    else:
        fn = TOOLS[tool][setting]
        assert callable(fn)
        fn(np.zeros((64, 64), np.float32) + 0.01)  # warm-up: imports, lazy kernels
    err2: dict[str, float] = {}
    sig2: dict[str, float] = {}
    bits = 0.0
    n = 0
    seconds = 0.0
    deq = {}
    for name, w in weights.items():
        w32 = w.astype(np.float32)
        t0 = time.perf_counter()
        d, b = job(name, w32) if job else fn(w32)
        seconds += time.perf_counter() - t0
        cls = tensor_class(name, w.shape)
        err2[cls] = err2.get(cls, 0.0) + float(((d - w32) ** 2).sum())
        sig2[cls] = sig2.get(cls, 0.0) + float((w32**2).sum())
        bits += b
        n += w.size
        if dump:
            deq[name] = d.astype(np.float32)
    if dump:
        np.savez(dump, **deq)
    if job:
        seconds = job_seconds  # the whole job: calibration, GPTQ, allocation, writing
    rel = {c: (err2[c] / sig2[c]) ** 0.5 for c in err2}
    tot = (sum(err2.values()) / sum(sig2.values())) ** 0.5
    print(
        json.dumps(
            {
                "seconds": seconds,
                "gb_per_s": n * 2 / seconds / 1e9,
                "bits_per_weight": bits / n,
                "rel_rmse": tot,
                "sqnr_db": -20 * np.log10(tot),
                "rel_rmse_by_class": rel,
                "peak_rss_mib": peak_rss_mib(),
                "params": n,
            }
        )
    )


# ---- driver ---------------------------------------------------------------------------------
def run_one(inp: str, tool: str, setting: str, dump: str = "") -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, __file__, "--worker", inp, tool, setting, dump],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"na": f"failed: {last[:160]}"}
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def end_to_end(model: str, dumps: dict[str, str], samples: int) -> dict[str, Any]:
    import torch

    from arrowquant.diffusion import load_reference
    from arrowquant.eval import evaluate

    ref = load_reference(ROOT / "models" / model)
    base = {k: v.clone() for k, v in ref.module.state_dict().items()}
    settings = {}
    for label, path in dumps.items():
        sd = dict(base)
        with np.load(path) as z:
            for k in z.files:
                sd[k] = torch.from_numpy(z[k]).to(base[k].dtype).view_as(base[k])
        settings[label] = sd
    doc = evaluate(ROOT / "models" / model, settings, samples=samples, steps=25)
    out = {"fp_fd_real": doc["reference"]["fd_real"]["value"]}
    for s in doc["settings"]:
        out[s["name"]] = {"psnr": s["psnr"]["mean"], "fd_real": s["fd_real"]["value"]}
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:6])
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=256, help="end-to-end samples per setting")
    p.add_argument("--inputs", nargs="*", default=list(INPUTS), choices=list(INPUTS))
    # Rerunning one tool's rows (e.g. after a change to the product): the others' numbers do not
    # depend on it (end to end, every setting is paired with the same FP samples and noise).
    p.add_argument("--tools", nargs="*", default=list(TOOLS), choices=list(TOOLS))
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    e2e: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for inp in args.inputs:
            results[inp] = {}
            dumps: dict[str, str] = {}
            for tool, settings in TOOLS.items():
                if tool not in args.tools:
                    continue
                for setting, fn in settings.items():
                    key = f"{tool} | {setting}"
                    calibrated = tool == CALIBRATED and inp.startswith("digits")
                    if isinstance(fn, str) and not calibrated:
                        results[inp][key] = {"na": fn}
                        continue
                    dump = ""
                    if inp.startswith("digits"):
                        dump = str(Path(tmp) / f"{len(dumps)}.npz")
                        dumps[key] = dump
                    results[inp][key] = run_one(inp, tool, setting, dump)
                    r = results[inp][key]
                    print(
                        f"{inp} | {key}: "
                        + (
                            r.get("na")
                            or f"{r['bits_per_weight']:.3f} bpw, rel RMSE {r['rel_rmse']:.4f}, "
                            f"{r['seconds']:.2f} s, {r['peak_rss_mib']:.0f} MiB"
                        ),
                        flush=True,
                    )
            if dumps:
                ok = {k: v for k, v in dumps.items() if "na" not in results[inp][k]}
                e2e[inp] = end_to_end(inp, ok, args.samples)
    doc = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {cpu_name()}, 2 threads",
        "versions": versions(),
        "weights": results,
        "end_to_end": e2e,
    }
    (OUT / "compare.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    (OUT / "compare.md").write_text(md)
    plot(doc)
    print("\n" + md)
    return 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("arrowquant", "gguf", "optimum-quanto", "torchao", "hqq", "bitsandbytes", "torch"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "not installed"
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"<!-- bench/compare.py: {doc['date']}, {doc['machine']}, "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
        + " -->",
    ]
    for inp, rows in doc["weights"].items():
        lines += [
            "",
            f"**{inp}**",
            "",
            "| tool | setting | bits/weight | rel RMSE | SQNR dB | worst class (rel RMSE) "
            "| time s | GB/s | peak RSS MiB | PSNR / FD (end to end) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        ee = doc["end_to_end"].get(inp, {})
        for key, r in rows.items():
            tool, setting = key.split(" | ")
            if "na" in r:
                lines.append(f"| {tool} | ~{setting} | n/a | | | | | | | {r['na']} |")
                continue
            worst = max(r["rel_rmse_by_class"].items(), key=lambda kv: kv[1])
            e = ee.get(key)
            e2 = f"{e['psnr']:.1f} dB / {e['fd_real']:.2f}" if e else ""
            lines.append(
                f"| {tool} | ~{setting} | {r['bits_per_weight']:.3f} | {r['rel_rmse']:.4f} | "
                f"{r['sqnr_db']:.1f} | {worst[0]} ({worst[1]:.4f}) | {r['seconds']:.2f} | "
                f"{r['gb_per_s']:.3f} | {r['peak_rss_mib']:.0f} | {e2} |"
            )
        if ee:
            lines.append(f"\nFP model's FD to real digits: {ee['fp_fd_real']:.2f}")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inp = next(iter(doc["weights"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for tool in TOOLS:
        pts = [
            r for k, r in doc["weights"][inp].items() if k.startswith(tool + " |") and "na" not in r
        ]
        if not pts:
            continue
        x = [r["bits_per_weight"] for r in pts]
        a.plot(x, [r["rel_rmse"] for r in pts], "o-", label=tool)
        b.plot(
            [r["bits_per_weight"] * r["params"] / 8 / 2**20 for r in pts],
            [r["seconds"] for r in pts],
            "o",
            label=tool,
        )
    a.set_xlabel("bits per weight stored")
    a.set_ylabel("relative RMSE")
    a.set_yscale("log")
    a.set_title(f"error vs size: {inp}")
    b.set_xlabel("output size MiB")
    b.set_ylabel("quantize time s")
    b.set_yscale("log")
    b.set_title("time vs size")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "compare.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
