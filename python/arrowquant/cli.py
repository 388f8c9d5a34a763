"""The `arrowquant` command line.

Exit codes: 0 success, 1 a quality threshold was missed (with --fail-fast), 2 bad input or usage.
A user mistake prints one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from arrowquant.errors import ArrowQuantError

EXIT_OK = 0
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
    for c in ck.components:
        label = c["name"] or "(model)"
        print(f"  component {label}: {c['class_name'] or '?'}, {len(c['files'])} file(s)")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ArrowQuantError as e:
        print(f"arrowquant: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("arrowquant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
