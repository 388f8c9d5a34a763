"""QuantizationReport: what the job did to every layer, with totals; JSON and Markdown."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _component(layer: dict[str, Any]) -> str:
    """A layer's component: the job's record (a single file's components by prefix), else its
    name's pipeline folder ("" for a lone model)."""
    return str(
        layer.get("component") or (layer["name"].split("/", 1)[0] if "/" in layer["name"] else "")
    )


@dataclass
class QuantizationReport:
    model_path: str
    output_path: str
    modality: str
    modality_reason: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    source_bytes: int
    stored_bytes: int
    file_bytes: int
    quantized_params: int
    total_params: int
    threshold_missed: bool
    seconds: float
    peak_rss_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        return self.source_bytes / self.file_bytes if self.file_bytes else 0.0

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per parameter over all tensors (kept ones included)."""
        return 8 * self.stored_bytes / self.total_params if self.total_params else 0.0

    def components(self) -> dict[str, dict[str, Any]]:
        """Per component (a pipeline's folder, a single file's component by prefix; "" for a lone
        model of one component): its profile,
        tensors, parameters, bytes and bits per weight as stored, and formats."""
        import math

        profiles = self.extra.get("component_profiles", {})
        out: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            name = _component(layer)
            c = out.setdefault(
                name,
                {
                    "profile": profiles.get(name, self.config.get("profile")),
                    "tensors": 0,
                    "params": 0,
                    "source_bytes": 0,
                    "stored_bytes": 0,
                    "formats": {},
                },
            )
            c["tensors"] += 1
            c["params"] += math.prod(layer["shape"])
            c["source_bytes"] += layer.get("source_bytes", 0)
            c["stored_bytes"] += layer.get("stored_bytes", 0)
            key = layer["format"] if layer["action"] == "quantized" else f"kept {layer['format']}"
            c["formats"][key] = c["formats"].get(key, 0) + 1
        for c in out.values():
            c["bits_per_weight"] = round(8 * c["stored_bytes"] / max(1, c["params"]), 3)
        return out

    def summary(self) -> dict[str, Any]:
        by_action: dict[str, int] = {}
        for layer in self.layers:
            key = layer["format"] if layer["action"] == "quantized" else f"kept {layer['format']}"
            by_action[key] = by_action.get(key, 0) + 1
        return {
            "tensors": len(self.layers),
            "formats": by_action,
            "source_bytes": self.source_bytes,
            "file_bytes": self.file_bytes,
            "compression_ratio": round(self.compression_ratio, 3),
            "bits_per_weight": round(self.bits_per_weight, 3),
            "quantized_params": self.quantized_params,
            "total_params": self.total_params,
            "fallbacks": sum(1 for layer in self.layers if layer["fallbacks"]),
            "threshold_missed": self.threshold_missed,
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "components": self.components(),
        } | self.extra

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "output_path": self.output_path,
            "modality": self.modality,
            "modality_reason": self.modality_reason,
            "config": self.config,
            "summary": self.summary(),
            "layers": self.layers,
        }

    def to_markdown(self) -> str:
        s = self.summary()
        lines = [
            "# ArrowQuant report",
            "",
            f"- model: `{self.model_path}` ({self.modality}; {self.modality_reason})",
            f"- output: `{self.output_path}`",
            f"- size: {s['source_bytes'] / 2**20:.2f} MiB -> {s['file_bytes'] / 2**20:.2f} MiB "
            f"({s['compression_ratio']:.2f}x), {s['bits_per_weight']:.3f} bits per weight overall",
            f"- formats: {', '.join(f'{k} x{v}' for k, v in s['formats'].items())}",
            f"- layers that fell back to more bits: {s['fallbacks']}",
            *(
                [f"- path: {self.extra['path']['path']} ({self.extra['path']['why']})"]
                if "path" in self.extra
                else []
            ),
            *([f"- size budget: {self.extra['budget']}"] if "budget" in self.extra else []),
            *(
                [_calibration_line(self.extra["calibration"])]
                if "calibration" in self.extra
                else []
            ),
            f"- time {s['seconds']:.2f} s, peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB",
        ]
        comps = self.components()
        if len(comps) > 1:
            lines += [
                "",
                "| component | profile | tensors | parameters | MiB before -> stored | "
                "bits/weight |",
                "|---|---|---|---|---|---|",
            ]
            for name, c in comps.items():
                lines.append(
                    f"| {name or '(top level)'} | {c['profile']} | {c['tensors']} | "
                    f"{c['params']:,} | {c['source_bytes'] / 2**20:.2f} -> "
                    f"{c['stored_bytes'] / 2**20:.2f} | {c['bits_per_weight']:.3f} |"
                )
        header = [
            "| tensor | shape | action | format | method | rel RMSE | SQNR dB | output error "
            "(held out) | why / fallbacks |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        current: str | None = None
        for layer in self.layers:
            comp = _component(layer)
            if comp != current:
                current = comp
                title = f"## {comp} ({comps[comp]['profile']})" if len(comps) > 1 else ""
                lines += ["", *([title, ""] if title else []), *header]
            m = layer["metrics"] or {}
            rel = f"{m['rel_rmse']:.4f}" if m else ""
            sq = f"{m['sqnr_db']:.1f}" if m else ""
            note = "; ".join(layer["fallbacks"]) or layer["why"]
            shape = "x".join(str(d) for d in layer["shape"])
            method = layer.get("method", "rtn") if layer["action"] == "quantized" else ""
            out = layer.get("output_error")
            out_s = f"{out:.4f}" if out is not None else ""
            lines.append(
                f"| {layer['name']} | {shape} | {layer['action']} | {layer['format']} | {method} | "
                f"{rel} | {sq} | {out_s} | {note} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, folder: Path) -> None:
        (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (folder / "report.md").write_text(self.to_markdown())
        self.plot(folder / "report.png")

    def plot(self, path: Path) -> None:
        """Per-layer weight error and bits, in file order (matplotlib, no display needed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        idx = list(range(len(self.layers)))
        rel = [(layer["metrics"] or {}).get("rel_rmse", float("nan")) for layer in self.layers]
        bits = [layer["bits"] if layer["action"] == "quantized" else 16 for layer in self.layers]
        fig, (a, b) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
        a.scatter(idx, rel, s=6)
        a.axhline(
            self.config.get("max_rel_rmse", float("nan")), color="red", lw=0.8, label="threshold"
        )
        a.set_ylabel("weight rel. RMSE")
        a.legend(loc="upper right")
        b.scatter(idx, bits, s=6)
        b.set_ylabel("bits (16 = kept)")
        b.set_xlabel("tensor (file order)")
        fig.suptitle(
            f"{Path(self.model_path).name}: {self.bits_per_weight:.2f} bits/weight overall"
        )
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _calibration_line(c: dict[str, Any]) -> str:
    eq = ""
    if c.get("equalize") and c.get("equalize_search"):
        eq = f", equalization chosen per layer ({c['equalized_layers']} layers equalized)"
    elif c.get("equalize"):
        eq = f", equalization alpha {c['equalize_alpha']}"
    sm = c.get("second_moments")
    if sm:
        eq += (
            f"; GPTQ weights on input second moments of {sm['layers']} layers "
            f"({sm['rows_per_layer']} rows each, {sm['held_out_rows_per_layer']} held out "
            f"for validation)"
        )
    sens = c.get("sensitivity")
    if sens:
        eq += (
            f"; widths by measured sensitivity ({sens['layers']} layers, {sens['calls']} "
            f"calls x {sens['probes']} probes, {sens['seconds']} s)"
        )
    check = c.get("one_step_check")
    tail = ""
    if check:
        groups = ", ".join(
            f"t {g['timesteps'][0]}-{g['timesteps'][1]}: {g['mean']:.4f}" for g in check["groups"]
        )
        tail = (
            f"\n- whole-model check: one-step prediction error of the stored weights against FP "
            f"(relative, {check['samples']} fresh trajectories): mean {check['mean']:.4f}; "
            f"by timestep group: {groups}"
        )
    line = (
        f"- calibration: {c['source']} ({c['rows']} rows, {c['kind']}), {c['sampler']}, "
        f"{len(c['timesteps'])} timesteps -> {c['time_groups']} "
        f"{'adaptive' if c['adaptive_groups'] else 'uniform'} groups, A{c['act_bits']} "
        f"({c['act_clip']} clipping){eq}; {c['layers']} layers; cache {c['cache']}, "
        f"{c['seconds']} s"
    )
    return line + tail
