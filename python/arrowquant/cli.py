"""The `arrowquant` command line.

Exit codes: 0 success, 1 a quality threshold was missed (with --fail-fast), 2 bad input or usage.
A user mistake prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from arrowquant._core import WEIGHT_BITS
from arrowquant.config import PROFILES
from arrowquant.errors import ArrowQuantError, ConfigurationError, ValidationError

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"arrowquant: error: {message} (see --help)\n")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _cmd_summary(args: argparse.Namespace) -> int:
    from arrowquant.checkpoint import load_checkpoint

    ck = load_checkpoint(args.model)
    infos = ck.infos()
    if args.json:
        doc = {
            "path": ck.path,
            "layout": ck.layout,
            "naming": ck.naming,
            "components": [
                {k: c[k] for k in ("name", "library", "class_name", "folder")}
                | {"files": [f["path"] for f in c["files"]]}
                for c in ck.components
            ],
            "tensors": [
                {"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "nbytes": i.nbytes}
                for i in infos
            ],
            "total_bytes": ck.total_bytes,
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"{ck.path}: {ck.layout}, {len(infos)} tensors, {_human(ck.total_bytes)}")
    naming = ck.naming
    for c in ck.components:
        if c["name"] or not naming["components"]:
            label = c["name"] or "(model)"
            print(f"  component {label}: {c['class_name'] or '?'}, {len(c['files'])} file(s)")
    if naming["components"]:
        # A single file of several components: each found by its prefix.
        print(f"  naming: {naming['layout']} ({naming['why']})")
        for nc in naming["components"]:
            own = [i for i in infos if i.component == nc["name"]]
            size = _human(sum(i.nbytes for i in own))
            print(
                f"  component {nc['name']}: {nc['kind']} names under '{nc['prefix']}', "
                f"{len(own)} tensors, {size}"
            )
        rest = [i for i in infos if not i.component]
        if rest:
            print(f"  outside the components: {len(rest)} tensors")
    width = max((len(i.name) for i in infos), default=4)
    print(f"{'name':<{width}}  {'dtype':<8} {'shape':<22} {'bytes':>12}")
    for i in infos:
        shape = "x".join(str(d) for d in i.shape) or "scalar"
        print(f"{i.name:<{width}}  {i.dtype:<8} {shape:<22} {i.nbytes:>12}")
    by_dtype: dict[str, int] = {}
    for i in infos:
        by_dtype[i.dtype] = by_dtype.get(i.dtype, 0) + i.nbytes
    print("total: " + ", ".join(f"{k} {_human(v)}" for k, v in sorted(by_dtype.items())))
    return EXIT_OK


_PROFILE_HELP = (
    "profiles (measured on N(0,0.02) weights, bench/quality.py): "
    "edge = INT2 (2.38 bits/weight, weight relRMSE ~0.31), "
    "compact = INT3 (3.41 bits/weight, ~0.15), "
    "local = INT4 (4.45 bits/weight, ~0.07), cloud = INT8 (8.38 bits/weight, ~0.005). "
    "Calibrated (the default for a diffusers UNet2DModel/DiT folder): a file of 2.7 / 3.5 / 4.5 / "
    "8.5 bits per weight, each layer's width (2/3/4/8/kept) chosen by its measured effect on "
    "the model's prediction. "
    "Weight only (--no-calibration, other checkpoints): layers above --max-rel-rmse climb to "
    "more bits"
)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from arrowquant.api import ArrowQuantV2
    from arrowquant.config import DiffusionQuantConfig

    changes = {
        k: v
        for k, v in {
            "bits": args.bits,
            "group_size": args.group_size,
            "scale_dtype": args.scale_dtype,
            "method": args.method,
            "max_rel_rmse": args.max_rel_rmse,
            "modality": args.modality,
            "threads": args.threads,
            "fail_fast": args.fail_fast or None,
            "target_bpw": args.target_bpw,
            "calibration": args.calibration,
            "calibration_samples": args.calibration_samples,
            "model_config": args.model_config,
            "ray": args.ray,
            "calibration_steps": args.calibration_steps,
            "calibration_batch": args.calibration_batch,
            "time_groups": args.time_groups,
            "adaptive_groups": args.adaptive_groups,
            "equalize": args.equalize or None,
            "gptq": args.gptq,
            "gptq_act_order": args.gptq_act_order or None,
            "allocate": args.allocate,
            "activation_stats": args.activation_stats or None,
            "act_bits": args.act_bits,
            "nan_policy": args.nan_policy,
            "max_header_bytes": args.max_header_bytes,
            "max_tensors": args.max_tensors,
            "max_tensor_bytes": args.max_tensor_bytes,
            "max_total_bytes": args.max_total_bytes,
            "output_format": args.format,
            "gguf_type": args.gguf_type,
            "gguf_names": args.gguf_names,
            "max_file_size": args.max_file_size,
            "ray_transfer": args.ray_transfer,
        }.items()
        if v is not None
    }
    if args.override:
        changes["overrides"] = list(args.override)
    if args.component:
        changes["components"] = [c for arg in args.component for c in arg.split(",") if c]
    if args.config and not Path(args.config).is_file():
        raise ConfigurationError(f"--config {args.config}: no such file")
    # defaults < --profile < --config YAML < ARROW_QUANT_* environment < these flags
    cfg = DiffusionQuantConfig.resolve(profile=args.profile, config=args.config, **changes)
    if args.dry_run:
        return _dry_run(args, cfg)
    gguf_weights_only = cfg.output_format == "gguf" and not cfg.gptq
    if cfg.calibration == "auto" and not gguf_weights_only and not args.json:
        from arrowquant.diffusion import drivable

        if drivable(args.model, cfg.model_config)[
            0
        ]:  # the default job will sample the model: say so first
            sys.stderr.write(
                f"arrowquant: calibrating on the model's own samples ({cfg.calibration_samples} "
                f"x {cfg.calibration_steps} DDIM steps, cached); --no-calibration skips it\n"
            )
    tty = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int, name: str) -> bool:
        if tty:
            pct = 100 * done / total if total else 100
            sys.stderr.write(f"\r{pct:5.1f}% {name[:60]:<60}")
            sys.stderr.flush()
        return True

    report = ArrowQuantV2().quantize_diffusion_model(
        args.model,
        args.out,
        cfg,
        progress_callback=progress,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
    )
    if tty:
        sys.stderr.write("\n")
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        s = report.summary()
        print(
            f"{args.out}: {s['source_bytes'] / 2**20:.1f} MiB -> {s['file_bytes'] / 2**20:.1f} MiB "
            f"({s['compression_ratio']:.2f}x, {s['bits_per_weight']:.2f} bits/weight), "
            f"{s['tensors']} tensors: " + ", ".join(f"{k} x{v}" for k, v in s["formats"].items())
        )
        print(f"report: {args.out}/report.md, {args.out}/report.json")
    return 1 if report.threshold_missed and cfg.fail_fast else EXIT_OK


def _dry_run(args: argparse.Namespace, cfg: Any) -> int:
    import arrowquant._core as _core
    from arrowquant.api import component_profiles, set_components

    core = cfg.to_core()
    set_components(core, cfg, component_profiles(args.model, cfg), calibrated=False)
    plan = _core.plan(args.model, core)
    rules = cfg.rules() + _core.default_rules(cfg.modality or "image", args.model)
    if args.json:
        rows = [{"name": n, "bits": b, "threshold": t, "why": w} for n, b, t, w in plan]
        json.dump({"rules": rules, "tensors": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    print("selection rules, first match wins (user overrides, then defaults):")
    for pattern, bits, why in rules:
        target = "keep" if bits == 0 else "target width" if bits < 0 else f"int{bits}"
        print(f"  {pattern}  ->  {target}  ({why})")
    width = max((len(n) for n, *_ in plan), default=4)
    for name, bits, threshold, why in plan:
        action = f"int{bits} (max relRMSE {threshold:.3f})" if bits else "keep"
        print(f"{name:<{width}}  {action:<28} {why}")
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from arrowquant.model import QuantizedModel
    from arrowquant.model import open as open_model

    model = open_model(args.path)
    infos = [model.info(n) for n in model.names()]
    if args.json:
        json.dump({"metadata": model.metadata, "tensors": infos}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return EXIT_OK
    meta = model.metadata
    version = meta.get("arrowquant.format_version", "?")
    tool = meta.get("arrowquant.tool_version", "?")
    legacy = " (seed schema)" if model.legacy else ""
    dataset = isinstance(model, QuantizedModel) and len(model.files) > 1
    files = f", {len(model.files)} files (a Parquet dataset)" if dataset else ""
    print(f"{model.path}: {len(infos)} tensors{files}, format {version}{legacy}, tool {tool}")
    width = max((len(i["name"]) for i in infos), default=4)
    for i in infos:
        fmt = i["spec"]["format"] if i["spec"] else f"{i['quant_type']} {i['dtype']}"
        rel = f"{i['metrics']['rel_rmse']:.4f}" if i["metrics"] else ""
        shape = "x".join(str(d) for d in i["shape"])
        print(f"{i['name']:<{width}}  {shape:<20} {fmt:<28} {rel}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if dest.suffix not in (".gguf", ".safetensors"):
        raise ConfigurationError(f"{dest}: the destination must end in .gguf or .safetensors")
    if not dest.parent.is_dir():
        raise ConfigurationError(f"{dest.parent}: no such folder")
    if dest.suffix == ".gguf":
        from arrowquant.gguf import export_model

        rows = export_model(args.model, dest)
        kinds: dict[str, int] = {}
        for r in rows:
            kinds[r["type"]] = kinds.get(r["type"], 0) + 1
        print(f"{dest}: {len(rows)} tensors: " + ", ".join(f"{k} x{v}" for k, v in kinds.items()))
        return EXIT_OK
    from arrowquant.model import export_safetensors

    export_safetensors(args.model, dest)
    print(f"{dest}: written")
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from arrowquant.api import ArrowQuantV2

    rows = ArrowQuantV2().validate_quality(args.model, args.out)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    for r in rows:
        print(
            f"{r['name']:<60} {r['format']:<28} relRMSE {r['rel_rmse']:.4f}  "
            f"SQNR {r['sqnr_db']:.1f} dB  cosine {r['cosine']:.5f}"
        )
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from arrowquant.eval import evaluate

    settings: dict[str, str] = {}
    for item in args.quantized:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            p = Path(item)
            name = p.name if p.is_dir() else p.stem
        if name in settings:
            raise ConfigurationError(f"two settings named {name!r}; use NAME=PATH")
        settings[name] = path
    log = None if args.json else (lambda m: print(m, file=sys.stderr))
    prompts = None
    if args.prompts:
        from arrowquant.calibration.data import load_calibration

        got = load_calibration(args.prompts)
        if got.texts is None:
            raise ConfigurationError(f"--prompts {args.prompts}: no prompt / text column")
        prompts = got.texts
    doc = evaluate(
        args.model,
        settings,
        samples=args.samples,
        steps=args.steps,
        seed=args.seed,
        out_dir=args.out,
        log=log,
        prompts=prompts,
    )
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    if doc.get("kind") == "masked diffusion language model":
        from arrowquant.eval.masked import markdown as masked_markdown

        print(masked_markdown(doc))
        print(f"eval.json, eval.md and samples.json in {args.out}/")
        return EXIT_OK
    from arrowquant.eval.report import markdown

    print(markdown(doc))
    print(f"eval.json, eval.md and grid.png in {args.out}/")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from arrowquant import __version__

    p = _Parser(prog="arrowquant", description="Post-training quantization for diffusion models.")
    p.add_argument("--version", action="version", version=f"arrowquant {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser(
        "summary",
        help="list the tensors of a checkpoint (file, sharded index or model folder)",
    )
    s.add_argument("model", help=".safetensors file, *.safetensors.index.json, or model folder")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_summary)

    q = sub.add_parser(
        "quantize", help="quantize a checkpoint into OUT/", description=_PROFILE_HELP
    )
    q.add_argument("model", help=".safetensors file, sharded index, or (diffusers) model folder")
    q.add_argument("out", help="output folder (model.aq.parquet, report.json, report.md)")
    q.add_argument(
        "--profile",
        choices=list(PROFILES),
        help="defaults for bits, threshold and time groups (local when not given)",
    )
    q.add_argument(
        "--config",
        metavar="YAML",
        help="DiffusionQuantConfig as YAML; precedence: defaults < profile < YAML < "
        "ARROW_QUANT_* environment < flags",
    )
    q.add_argument("--bits", type=int, choices=list(WEIGHT_BITS))
    q.add_argument("--group-size", type=int, choices=[0, 32, 64, 128, 256])
    q.add_argument("--scale-dtype", choices=["f16", "f32", "q6", "q7", "q8"])
    q.add_argument("--method", choices=["search", "minmax"])
    q.add_argument("--max-rel-rmse", type=float, help="per-layer threshold for the fallback")
    q.add_argument("--modality", choices=["image", "video", "audio", "text", "code"])
    q.add_argument(
        "--override",
        action="append",
        metavar="REGEX=BITS",
        help="BITS 2/3/4/8, or 16/keep to keep; first match wins, before the defaults",
    )
    q.add_argument(
        "--component",
        action="append",
        metavar="NAME=PROFILE[,...]",
        help="a pipeline component's own profile (edge/compact/local/cloud, or keep), e.g. "
        "unet=local,vae=cloud,text_encoder=cloud; unnamed components take --profile, a VAE cloud",
    )
    q.add_argument(
        "--target-bpw",
        type=float,
        metavar="BITS",
        help="size budget: bits per weight over the whole model; widths by sensitivity",
    )
    c = q.add_argument_group("calibration (activation quantization, time-aware, equalization)")
    c.add_argument(
        "--calibration",
        metavar="PATH|synthetic[:N]|auto",
        help="calibration data: .jsonl / .parquet / saved datasets folder, or the FP model's "
        "own samples (synthetic); default auto: synthetic for a model the tool can sample",
    )
    c.add_argument(
        "--no-calibration",
        dest="calibration",
        action="store_const",
        const="",
        help="the weight-only path (no sampling, no GPTQ)",
    )
    c.add_argument("--calibration-samples", type=int, metavar="N")
    c.add_argument(
        "--model-config",
        metavar="DIR",
        help="a single file's diffusers pipeline folder (configs, tokenizer, scheduler) to "
        "build the model it is calibrated on; default: read off the tensors' shapes",
    )
    c.add_argument("--calibration-steps", type=int, metavar="S", help="DDIM steps sampled")
    c.add_argument(
        "--calibration-batch",
        type=int,
        metavar="B",
        help="trajectories sampled together (default 64): calibration's unit of work, which "
        "--ray spreads over the cluster",
    )
    c.add_argument("--time-groups", type=int, metavar="K")
    c.add_argument(
        "--adaptive-groups",
        dest="adaptive_groups",
        action="store_true",
        default=None,
        help="merge timesteps by measured error (default)",
    )
    c.add_argument("--uniform-groups", dest="adaptive_groups", action="store_false")
    c.add_argument("--equalize", action="store_true", help="DiTAS channel equalization")
    c.add_argument(
        "--gptq",
        dest="gptq",
        action="store_true",
        default=None,
        help="with calibration, quantize weights by GPTQ on the layers' inputs (default)",
    )
    c.add_argument(
        "--gptq-act-order",
        action="store_true",
        help="GPTQ columns by decreasing input energy, with static groups",
    )
    c.add_argument(
        "--activation-stats",
        action="store_true",
        help="store each layer's per-channel input min/max/absmax in the file (provenance)",
    )
    c.add_argument(
        "--no-gptq",
        dest="gptq",
        action="store_false",
        help="with calibration, round weights to nearest (calibrate activations only)",
    )
    c.add_argument(
        "--no-allocate",
        dest="allocate",
        action="store_false",
        default=None,
        help="with GPTQ, the profile's width per layer with threshold fallback, instead of widths "
        "by measured sensitivity at the profile's size",
    )
    c.add_argument("--act-bits", type=int, choices=[4, 8])
    q.add_argument(
        "--nan-policy",
        choices=["error", "keep-fp16"],
        help="a weight with NaN/Inf: stop with an error naming it (default) or keep it in f16",
    )
    lim = q.add_argument_group("limits on the input (0 = none)")
    lim.add_argument("--max-header-bytes", type=int, metavar="N")
    lim.add_argument("--max-tensors", type=int, metavar="N")
    lim.add_argument("--max-tensor-bytes", type=int, metavar="N")
    lim.add_argument("--max-total-bytes", type=int, metavar="N")
    gg = q.add_argument_group(
        "GGUF output (docs/interop.md; weights only: with calibration, codes by GPTQ)"
    )
    gg.add_argument(
        "--format",
        choices=["parquet", "gguf"],
        help="parquet: OUT/model.aq.parquet (default); gguf: OUT/model.gguf in ggml block types",
    )
    gg.add_argument(
        "--gguf-type",
        metavar="TYPE",
        help="type of the tensors at the target width: Q8_0, Q6_K, Q5_K, Q5_0, Q4_K, Q4_0, Q3_K, "
        "Q2_K (default: the profile's width as a K-quant; wider layers keep their width's type)",
    )
    gg.add_argument(
        "--gguf-names",
        choices=["diffusers", "sdcpp"],
        help="diffusers: the checkpoint's names, a file per pipeline component (diffusers' GGUF "
        "loader); sdcpp: original (LDM) names, one file (stable-diffusion.cpp)",
    )
    q.add_argument(
        "--max-file-size",
        metavar="SIZE",
        help="write the model as a Parquet dataset: OUT/model.aq.parquet/ holds files "
        "model-00001-of-0000N.parquet of at most SIZE each (2GB, 500MB, 1.5GiB); every reader "
        "here, pyarrow.dataset and DuckDB open the folder",
    )
    q.add_argument("--threads", type=int)
    q.add_argument(
        "--ray",
        nargs="?",
        const="default",
        metavar="ADDRESS",
        help="run calibration's batches and the job's tensors as Ray tasks: on the cluster at "
        "ADDRESS ('auto': the one `ray start` started here), or without one on the cluster "
        "RAY_ADDRESS names, else a local cluster started for the job; docs/scale-out.md",
    )
    q.add_argument(
        "--ray-transfer",
        choices=["storage", "object-store"],
        help="how Ray workers get the checkpoint: storage (they read the path the driver reads; "
        "default) or object-store (the driver sends each task its tensors and gets its output "
        "back: workers without shared storage)",
    )
    q.add_argument("--fail-fast", action="store_true", help="exit 1 at the first layer that misses")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a PyTorch pickle (.ckpt/.bin/.pt/.pth), loaded with "
        "torch.load(weights_only=True); refused otherwise",
    )
    q.add_argument("--json", action="store_true")
    q.add_argument(
        "--dry-run", action="store_true", help="show what the rules decide; write nothing"
    )
    q.set_defaults(func=_cmd_quantize)

    x = sub.add_parser(
        "export",
        help="write a quantized model as GGUF (same codes, no requantizing) or as a dequantized "
        ".safetensors file",
    )
    x.add_argument("model", help="output folder of arrowquant quantize, or a .aq.parquet file")
    x.add_argument("dest", help="DEST.gguf or DEST.safetensors")
    x.set_defaults(func=_cmd_export)

    i = sub.add_parser("inspect", help="list the tensors of a quantized model")
    i.add_argument("path", help="output folder or .parquet model file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_inspect)

    v = sub.add_parser("validate", help="measure a quantized model against its source")
    v.add_argument("model")
    v.add_argument("out")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_cmd_validate)

    e = sub.add_parser(
        "eval",
        help="sample the FP model and quantized versions with the same noise; compare images",
    )
    e.add_argument(
        "model",
        help="the FP diffusers model folder (UNet2DModel, DiT, or a text-to-image pipeline)",
    )
    e.add_argument(
        "quantized", nargs="+", help="quantize output folders or .parquet files, as [NAME=]PATH"
    )
    e.add_argument("--samples", type=int, default=512)
    e.add_argument("--steps", type=int, default=50, help="DDIM steps")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--prompts",
        metavar="PATH",
        help="text-to-image: prompts (.jsonl / .parquet / datasets folder with a prompt column), "
        "cycled over the samples; default: synthetic prompts from the tokenizer's words. Masked "
        "diffusion LM: held-out texts (default: the model folder's heldout.jsonl)",
    )
    e.add_argument("--out", default="eval-out", help="folder for eval.json, eval.md, grid.png")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_cmd_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as e:
        print(f"arrowquant: {e}", file=sys.stderr)
        return EXIT_THRESHOLD
    except ArrowQuantError as e:
        print(f"arrowquant: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("arrowquant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
