"""Inference with packed weights against plain PyTorch and the peers: memory and sampling speed.

    .venv/bin/python bench/inference.py [--dir bench-out] [--threads 2] [--steps 3] [--no-sd15]

Denoisers: a randomly initialised (seed 0) SD1.5-config UNet2DConditionModel at 64x64 latents
with classifier-free guidance (batch 2, 77 x 768 text states; the f16 file is 1.72 GB, as the
real one), and the reference models' denoisers (models/digits-ddpm, digits-dit, digits-t2i).
Each is quantized weight-only at INT4 (profile local) and INT8 (profile cloud), and W8A8 (profile
cloud, INT8 weights, 8-bit activations on two timestep groups' grids, calibrated on the model's
own sampling: synthetic:8 x 5 steps for the reference models, one SD1.5 latent x 2 DDIM steps,
without GPTQ, for the SD1.5 UNet). Every setting runs in a process of its own, with `--threads`
threads:
- `fp32`: plain PyTorch (`from_pretrained`, float32), the baseline of every ratio;
- `aq-int4` / `aq-int8`: built on the meta device and filled by `arrowquant.torch.apply`
  (packed: weights stay as the file's bytes, decoded tile by tile in each forward);
- `aq-int4-deq`: `apply(..., packed=False)`, weights dequantized once into float32;
- `aq-w8a8`: packed, 8-bit activations computed in integers (uint8 x int8 -> int32, AVX-512
  VNNI; arrowquant.torch.int8); `aq-w8a8-sim`: the same file with the activation rounding
  simulated in float (`apply(..., int8=False)`: fake quantization, then the float GEMM);
- peers where they run on this CPU: `quanto-int8` / `quanto-int4` (optimum-quanto's
  quantize + freeze on the float32 model), `bnb-nf4` (bitsandbytes' Linear4bit for every
  nn.Linear, as diffusers' bitsandbytes backend does; convolutions stay float32).

Reported per setting: resident memory of the denoiser (RSS growth from building and loading it,
after returning freed heap pages), the file's bytes, peak RSS of the sampling run (VmHWM reset
before it), and seconds per denoising step (after one warm-up step); the speed ratio is against
`fp32` in the same run. Targets (issue 16): resident <= 1.15x the file's bytes; the sampling
peak at least 60% of the f16 weight bytes below plain PyTorch's; INT4 >= 0.8x and INT8 >= 0.9x
of float32 PyTorch's speed; W8A8 with integer GEMM >= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
REFERENCE = {
    "ddpm": MODELS / "digits-ddpm",
    "dit": MODELS / "digits-dit",
    "t2i": MODELS / "digits-t2i",
}
PROFILES = {"int4": "local", "int8": "cloud"}
SETTINGS = [
    "fp32",
    "aq-int4",
    "aq-int8",
    "aq-int4-deq",
    "aq-w8a8",
    "aq-w8a8-sim",
    "quanto-int8",
    "quanto-int4",
    "bnb-nf4",
]


def _file_key(setting: str) -> str:
    """The quantized file a setting loads: aq-int4-deq -> int4, aq-w8a8-sim -> w8a8."""
    return setting[3:].removesuffix("-deq").removesuffix("-sim")


def _status() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _release() -> None:
    import gc

    from arrowquant._memory import release_freed

    gc.collect()
    release_freed()


def build_sd15(folder: Path) -> None:
    """The SD1.5-config UNet with diffusers' own initialisation (seed 0), saved in float16."""
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(ROOT / "bench"))
    from sd15_shapes import SD15_UNET

    torch.manual_seed(0)
    UNet2DConditionModel(**SD15_UNET).to(torch.float16).save_pretrained(folder)


def quantize(model: Path, out: Path, profile: str) -> None:
    import arrowquant as aq

    cfg = aq.DiffusionQuantConfig.from_profile(profile, calibration="")
    aq.ArrowQuantV2().quantize_diffusion_model(model, out, cfg)


def quantize_w8a8(model: Path, out: Path) -> None:
    """W8A8 with time-aware activation grids, calibrated on the model's own sampling."""
    import arrowquant as aq

    w8a8 = {"act_bits": 8, "time_groups": 2, "allocate": False}
    if model.name != "sd15-unet":
        cfg = aq.DiffusionQuantConfig.from_profile(
            "cloud", calibration="synthetic:8", calibration_steps=5, **w8a8
        )
        aq.ArrowQuantV2().quantize_diffusion_model(model, out, cfg)
        return
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, torch_dtype=torch.float32).eval()

    def run(m: Any) -> None:  # one latent with guidance, two DDIM steps
        lat = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(1))
        text = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(2))
        for t in (800, 300):
            m(lat, t, encoder_hidden_states=text)

    aq.quantize_module(unet, out, profile="cloud", calibrate=run, gptq=False, **w8a8)


def _denoiser_folder(model: Path) -> tuple[Path, str]:
    """(folder with the denoiser's config and weights, its prefix in a pipeline's file)."""
    for sub in ("unet", "transformer"):
        if (model / sub / "config.json").is_file():
            return model / sub, f"{sub}/"
    return model, ""


def _denoiser_class(folder: Path) -> Any:
    import diffusers

    name = json.loads((folder / "config.json").read_text())["_class_name"]
    return getattr(diffusers, name)


def _load(setting: str, model: Path, quantized: dict[str, Path]) -> Any:
    import torch

    import arrowquant.torch as aqt

    folder, _ = _denoiser_folder(model)
    cls = _denoiser_class(folder)
    if setting.startswith("aq-") and not setting.endswith("-deq"):
        with aqt.empty_weights():
            m = cls.from_config(cls.load_config(folder))
        aqt.apply(m, quantized[_file_key(setting)], int8=not setting.endswith("-sim"))
        return m.eval()
    m = cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    if setting == "bnb-nf4":
        _bnb_nf4(m)
    if setting == "aq-int4-deq":
        aqt.apply(m, quantized["int4"], packed=False)
    elif setting.startswith("quanto-"):
        from optimum.quanto import freeze, qint4, qint8
        from optimum.quanto import quantize as quanto_quantize

        quanto_quantize(m, weights=qint8 if setting.endswith("int8") else qint4)
        freeze(m)
    return m


def _bnb_nf4(model: Any) -> None:
    """Every nn.Linear as bitsandbytes' Linear4bit (NF4, float32 compute), quantized on the CPU.
    (diffusers' BitsAndBytesConfig refuses to quantize without a GPU; bitsandbytes quantizes
    Linear layers only, as in diffusers, so convolutions stay float32.)"""
    import bitsandbytes as bnb
    import torch
    from torch import nn

    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear:
            continue
        q = bnb.nn.Linear4bit(
            mod.in_features,
            mod.out_features,
            bias=mod.bias is not None,
            compute_dtype=torch.float32,
            quant_type="nf4",
        )
        q.weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False, quant_type="nf4")
        if mod.bias is not None:
            q.bias = nn.Parameter(mod.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q.to("cpu"))


def _sd15_run(m: Any, steps: int) -> list[float]:
    """DDIM with guidance: latents 1x4x64x64 doubled, 77 x 768 text states; seconds per step."""
    import torch
    from diffusers import DDIMScheduler

    g = torch.Generator().manual_seed(0)
    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps + 1)
    lat = torch.randn(1, 4, 64, 64, generator=g)
    text = torch.randn(2, 77, 768, generator=g)
    times = []
    with torch.no_grad():
        for t in sched.timesteps:
            t0 = time.perf_counter()
            eps = m(torch.cat([lat, lat]), t, encoder_hidden_states=text).sample
            uncond, cond = eps.chunk(2)
            lat = sched.step(uncond + 7.5 * (cond - uncond), t, lat).prev_sample
            times.append(time.perf_counter() - t0)
    return times[1:]


def _reference_run(model: Path, m: Any, steps: int) -> list[float]:
    import torch

    from arrowquant.diffusion import initial_noise, load_reference, sample

    ref = load_reference(model)
    noise, labels = initial_noise(ref, 16, seed=0)
    times = []
    with torch.no_grad():
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            sample(ref, m, noise, labels, 10)
            times.append((time.perf_counter() - t0) / 10)
    return times[1:]


def child(args: argparse.Namespace) -> None:
    import torch

    import arrowquant.torch  # noqa: F401  (imports counted in the baseline)

    torch.set_num_threads(args.threads)
    quantized = {k: Path(v) for k, v in json.loads(args.quantized).items()}
    # Code loaded on first use (the model class, its blocks, the peer's modules) belongs to
    # the baseline, not to the model's memory.
    folder, _ = _denoiser_folder(Path(args.model))
    cls = _denoiser_class(folder)
    with torch.device("meta"):
        cls.from_config(cls.load_config(folder))
    if args.child.startswith("quanto-"):
        import optimum.quanto  # noqa: F401
    if args.child.startswith("bnb-"):
        import bitsandbytes  # noqa: F401
    _release()
    before = _status()["VmRSS"]
    t0 = time.perf_counter()
    m = _load(args.child, Path(args.model), quantized)
    load_s = time.perf_counter() - t0
    _release()
    resident = _status()["VmRSS"] - before
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the sampling run's peak
    if args.sd15:
        times = _sd15_run(m, args.steps)
    else:
        times = _reference_run(Path(args.model), m, args.steps)
    st = _status()
    print(
        json.dumps(
            {
                "resident": resident,
                "module_bytes": arrowquant.torch.module_bytes(m),
                "peak": st["VmHWM"],
                "baseline_rss": before,
                "load_s": load_s,
                "step_s": sorted(times)[len(times) // 2],
            }
        )
    )


def run_setting(
    setting: str, model: Path, quantized: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any] | str:
    cmd = [sys.executable, __file__, "--child", setting, "--model", str(model)]
    cmd += ["--quantized", json.dumps({k: str(v) for k, v in quantized.items()})]
    cmd += ["--threads", str(args.threads), "--steps", str(args.steps)]
    if model.name == "sd15-unet":
        cmd.append("--sd15")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"did not run: {last[:160]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(
    name: str, model: Path, quantized: dict[str, Path], f16_bytes: int, args: argparse.Namespace
) -> None:
    rows = {s: run_setting(s, model, quantized, args) for s in args.settings}
    base = rows.get("fp32")
    print(f"\n### {name} ({args.threads} threads; f16 weights {f16_bytes / 1e6:.1f} MB)\n")
    print(
        "| setting | file MB | resident MB | resident / file | module MB | sampling peak MB "
        "| peak vs fp32 (x f16 weights) | s / step | speed vs fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s, r in rows.items():
        if isinstance(r, str):
            print(f"| {s} | | | | | | | | {r} |")
            continue
        fb = None
        if s.startswith("aq-"):
            fb = (quantized[_file_key(s)] / "model.aq.parquet").stat().st_size
        ratio = f"{r['resident'] / fb:.2f}" if fb else "-"
        saved = "-"
        speed = "-"
        if isinstance(base, dict):
            saved = f"{(base['peak'] - r['peak']) / f16_bytes:+.2f}" if s != "fp32" else "-"
            speed = f"{base['step_s'] / r['step_s']:.2f}x"
        print(
            f"| {s} | {f'{fb / 1e6:.1f}' if fb else '-'} | {r['resident'] / 1e6:.1f} | {ratio} | "
            f"{r['module_bytes'] / 1e6:.1f} | {r['peak'] / 1e6:.0f} | {saved} | "
            f"{r['step_s']:.3f} | {speed} |"
        )


def f16_weight_bytes(model: Path) -> int:
    import safetensors

    folder, _ = _denoiser_folder(model)
    total = 0
    for f in folder.glob("*.safetensors"):
        with safetensors.safe_open(f, "np") as st:
            for k in st.keys():  # noqa: SIM118  (safe_open is not a mapping)
                total += 2 * int(__import__("numpy").prod(st.get_slice(k).get_shape()))
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-sd15", action="store_true")
    ap.add_argument("--settings", nargs="+", default=SETTINGS)
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--quantized", default="{}")
    ap.add_argument("--sd15", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    models = dict(REFERENCE)
    if not args.no_sd15:
        sd15 = args.dir / "sd15-unet"
        if not (sd15 / "config.json").is_file():
            build_sd15(sd15)
        models = {"sd15": sd15, **models}
    for name, model in models.items():
        quantized = {}
        for width, profile in PROFILES.items():
            out = args.dir / f"inference-{name}-{width}"
            if not (out / "model.aq.parquet").is_file():  # the denoiser alone
                quantize(_denoiser_folder(model)[0], out, profile)
            quantized[width] = out
        if any(s.startswith("aq-w8a8") for s in args.settings):
            out = args.dir / f"inference-{name}-w8a8"
            if not (out / "model.aq.parquet").is_file():
                quantize_w8a8(model, out)
            quantized["w8a8"] = out
        table(name, model, quantized, f16_weight_bytes(model), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
