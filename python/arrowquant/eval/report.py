"""eval.json, eval.md and grid.png (first 16 samples of FP and each setting, same seeds)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from arrowquant._atomic import write_atomic

GRID_COLUMNS = 16


def _ci(block: dict[str, Any] | None, fmt: str, key: str = "mean") -> str:
    if not block:
        return "n/a"
    lo, hi = block["ci95"]
    return f"{block[key]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def markdown(doc: dict[str, Any]) -> str:
    ref = doc["reference"]
    lines = [
        f"# Evaluation of {doc['model']}",
        "",
        f"{doc['denoiser']}, {doc['samples']} samples, {doc['sampler']}, {doc['steps']} steps, "
        f"seed {doc['seed']}; {doc['tool']}. Brackets: bootstrap 95% intervals. "
        f"PSNR/SSIM are to the paired FP sample (identical pairs count as {doc['psnr_cap_db']:g} "
        "dB). FD: Fréchet distance in the digits classifier's feature space.",
        "",
    ]
    if doc["metrics_note"]:
        lines += [f"Note: {doc['metrics_note']}.", ""]
    if "fd_real_halves" in ref:
        lines += [
            f"FD between two random halves of the real digits (the metric's noise floor): "
            f"{ref['fd_real_halves']:.2f}. FD intervals: value +- 1.96 bootstrap standard errors.",
            "",
        ]
    head = (
        "| setting | bits/weight (file) | PSNR dB | SSIM | FD to real | FD to FP | "
        "label agreement | accuracy | drift mean | one-step mean | time s |"
    )
    lines += [head, "|" + "---|" * 11]
    acc = _ci(ref.get("accuracy"), ".3f")
    lines.append(
        f"| FP | 32 | - | - | {_ci(ref.get('fd_real'), '.2f', 'value')} | 0 | 1 | {acc} "
        f"| 0 | 0 | {ref['seconds']:.1f} |"
    )
    for s in doc["settings"]:
        bpw = f"{s['file_bits_per_weight']:.2f}" if "file_bits_per_weight" in s else "-"
        fd_fp = f"{s['fd_fp']:.2f}" if "fd_fp" in s else "n/a"
        lines.append(
            f"| {s['name']} | {bpw} | {_ci(s['psnr'], '.2f')} | {_ci(s['ssim'], '.4f')} "
            f"| {_ci(s.get('fd_real'), '.2f', 'value')} | {fd_fp} "
            f"| {_ci(s.get('label_agreement'), '.3f')} | {_ci(s.get('accuracy'), '.3f')} "
            f"| {s['drift']['trajectory_mean']:.4f} | {s['drift']['one_step_mean']:.4f} "
            f"| {s['seconds']:.1f} |"
        )
    if "adherence" in ref:
        lines += [
            "",
            "Prompt adherence (the digits classifier's prediction = the digit the prompt names): "
            f"FP {_ci(ref['adherence'], '.3f')}; "
            + "; ".join(f"{s['name']} {_ci(s.get('adherence'), '.3f')}" for s in doc["settings"]),
        ]
    for s in doc["settings"]:
        if "per_prompt" not in s:
            continue
        lines += ["", f"Per prompt, {s['name']}:", ""]
        lines += ["| prompt | samples | PSNR dB | SSIM | adherence (FP) |", "|---|---|---|---|---|"]
        for r in s["per_prompt"]:
            adh = f"{r['adherence']:.2f} ({r['adherence_fp']:.2f})" if "adherence" in r else "-"
            lines.append(
                f"| {r['prompt']} | {r['samples']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {adh} |"
            )
    lines += ["", "Drift (denoiser output relative error) by timestep:", ""]
    if doc["settings"]:
        ts = doc["settings"][0]["drift"]["timesteps"]
        pick = sorted({0, len(ts) // 4, len(ts) // 2, 3 * len(ts) // 4, len(ts) - 1})
        lines.append("| setting | " + " | ".join(f"t={ts[i]}" for i in pick) + " |")
        lines.append("|---|" + "---|" * len(pick))
        for s in doc["settings"]:
            d = s["drift"]["trajectory"]
            lines.append(f"| {s['name']} | " + " | ".join(f"{d[i]:.4f}" for i in pick) + " |")
    return "\n".join(lines) + "\n"


def write_grid(rows: list[tuple[str, np.ndarray]], fh: IO[bytes]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(GRID_COLUMNS, rows[0][1].shape[0])
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.55 + 1.2, len(rows) * 0.7 + 0.2))
    axes = np.atleast_1d(axes)
    for ax, (name, imgs) in zip(axes, rows, strict=True):
        x = (np.clip(imgs[:n], -1, 1) + 1) / 2  # [n, C, H, W]
        strip = np.concatenate([np.pad(im.mean(axis=0), 1, constant_values=1.0) for im in x], 1)
        ax.imshow(strip, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def _grid_writer(rows: list[tuple[str, np.ndarray]]) -> Callable[[IO[bytes]], None]:
    return lambda fh: write_grid(rows, fh)


def write_outputs(
    doc: dict[str, Any],
    rows: list[tuple[str, np.ndarray]],
    out: Path,
    prompts: list[str] | None = None,
) -> None:
    """eval.json, eval.md, grid.png; with `prompts` (one per sample), also grid-prompt-K.png per
    distinct prompt K (its samples in every setting, same seeds) and prompts.json naming them."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    write_atomic(out / "eval.json", lambda fh: fh.write(text.encode()))
    write_atomic(out / "eval.md", lambda fh: fh.write(markdown(doc).encode()))
    write_atomic(out / "grid.png", lambda fh: write_grid(rows, fh))
    if prompts is None:
        return
    names = {}
    for k, p in enumerate(sorted(set(prompts), key=prompts.index)):
        idx = np.asarray([i for i, x in enumerate(prompts) if x == p])
        names[f"grid-prompt-{k}.png"] = p
        write_atomic(out / f"grid-prompt-{k}.png", _grid_writer([(n, x[idx]) for n, x in rows]))
    listing = json.dumps(names, indent=2) + "\n"
    write_atomic(out / "prompts.json", lambda fh: fh.write(listing.encode()))
