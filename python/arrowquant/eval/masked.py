"""Evaluation of a masked diffusion language model: FP vs quantized settings on the same masks
and the same unmasking order.

- masked-token NLL (nats per masked token) at mask ratios 0.15, 0.5 and 0.85 on held-out texts
  (the model folder's heldout.jsonl, or `prompts`), the same masks for every setting; relative
  change against FP with a bootstrap interval over sequences;
- paired generation agreement: from all-mask with the same seed and unmasking order, the share
  of positions where the setting's sequence has FP's token.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arrowquant.errors import ConfigurationError

RATIOS = (0.15, 0.5, 0.85)
GENERATED = 32  # sequences generated per setting (at most `samples`)


def _nll_per_sequence(ref: Any, module: Any, x: Any, ratio: float, seed: int) -> np.ndarray:
    """Per sequence: summed NLL of its masked tokens and their count, as [N, 2]."""
    import torch.nn.functional as F

    from arrowquant.masked_diffusion import call, masked

    ids, m = masked(ref, x, ratio, seed)
    logits = call(ref, module, ids, ratio)
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none") * m
    return np.stack([ce.sum(1).double().numpy(), m.sum(1).double().numpy()], axis=1)


def _relative_ci(
    q: np.ndarray, fp: np.ndarray, rounds: int, seed: int
) -> tuple[float, list[float]]:
    """(NLL_q / NLL_fp - 1, bootstrap 95% interval over sequences)."""
    rng = np.random.default_rng(seed)
    value = q[:, 0].sum() / fp[:, 0].sum() - 1
    boots = []
    for _ in range(rounds):
        i = rng.integers(0, len(q), len(q))
        boots.append(q[i, 0].sum() / fp[i, 0].sum() - 1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(value), [float(lo), float(hi)]


def evaluate_masked(
    model: str | os.PathLike[str],
    settings: Mapping[str, Any],
    samples: int = 64,
    steps: int = 32,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    bootstrap_rounds: int = 500,
    log: Callable[[str], None] | None = None,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """FP vs each setting (model file / quantize output folder, or a module): NLL at RATIOS on
    up to `samples` held-out sequences, agreement of GENERATED sequences unmasked in `steps`."""
    import arrowquant
    from arrowquant.masked_diffusion import (
        generate,
        load_masked_lm,
        quantized_module,
        windows,
    )

    say = log or (lambda _m: None)
    ref = load_masked_lm(model)
    texts = texts or ref.texts()
    if not texts:
        raise ConfigurationError(
            f"{ref.path}: no held-out texts ({ref.path}/heldout.jsonl); pass prompts"
        )
    x = windows(ref, texts)[:samples]
    n_gen = min(samples, GENERATED)
    steps = max(1, min(steps, ref.length))
    n_weights = sum(v.numel() for v in ref.module.state_dict().values())
    prepared = []
    for name, s in settings.items():
        if callable(getattr(s, "forward", None)):
            prepared.append((name, s.eval(), {"source": type(s).__name__}))
            continue
        from arrowquant.model import file_bytes, resolve_model_path

        size = file_bytes(s)
        info = {
            "source": str(resolve_model_path(s)),
            "file_bytes": size,
            "file_bits_per_weight": 8.0 * size / n_weights,
        }
        prepared.append((name, quantized_module(ref, s), info))
    t0 = time.perf_counter()
    fp_nll = {r: _nll_per_sequence(ref, ref.module, x, r, seed + i) for i, r in enumerate(RATIOS)}
    fp_gen = generate(ref, ref.module, n_gen, steps, seed)
    doc: dict[str, Any] = {
        "tool": f"arrowquant {arrowquant.__version__}",
        "model": str(ref.path),
        "denoiser": type(ref.module).__name__,
        "kind": "masked diffusion language model",
        "sequences": int(x.shape[0]),
        "tokens_per_sequence": ref.length,
        "generated": n_gen,
        "unmasking_steps": steps,
        "seed": seed,
        "reference": {
            "masked_nll": {str(r): float(v[:, 0].sum() / v[:, 1].sum()) for r, v in fp_nll.items()},
            "seconds": round(time.perf_counter() - t0, 2),
        },
        "settings": [],
    }
    say(f"FP: NLL {doc['reference']['masked_nll']}")
    samples_text = {"FP": [ref.tokenizer.decode(s.tolist()) for s in fp_gen[:4]]}
    for name, module, info in prepared:
        t1 = time.perf_counter()
        entry: dict[str, Any] = {"name": name} | info
        entry["masked_nll"] = {}
        for i, r in enumerate(RATIOS):
            q = _nll_per_sequence(ref, module, x, r, seed + i)
            rel, ci = _relative_ci(q, fp_nll[r], bootstrap_rounds, seed)
            entry["masked_nll"][str(r)] = {
                "value": float(q[:, 0].sum() / q[:, 1].sum()),
                "relative": rel,
                "relative_ci95": ci,
            }
        gen = generate(ref, module, n_gen, steps, seed)
        entry["generation_agreement"] = float((gen == fp_gen).double().mean())
        entry["seconds"] = round(time.perf_counter() - t1, 2)
        samples_text[name] = [ref.tokenizer.decode(s.tolist()) for s in gen[:4]]
        doc["settings"].append(entry)
        rels = ", ".join(
            f"{r}: {100 * v['relative']:+.2f}%" for r, v in entry["masked_nll"].items()
        )
        say(f"{name}: NLL vs FP {rels}; agreement {entry['generation_agreement']:.3f}")
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out / "eval.md").write_text(markdown(doc))
        (out / "samples.json").write_text(json.dumps(samples_text, indent=2) + "\n")
    return doc


def markdown(doc: dict[str, Any]) -> str:
    ref = doc["reference"]["masked_nll"]
    lines = [
        f"# Evaluation of {doc['model']}",
        "",
        f"{doc['denoiser']} ({doc['kind']}), {doc['sequences']} held-out sequences of "
        f"{doc['tokens_per_sequence']} tokens, the same masks for every setting; "
        f"{doc['generated']} sequences generated from all-mask in {doc['unmasking_steps']} "
        f"steps with the same unmasking order (greedy tokens); seed {doc['seed']}; {doc['tool']}. "
        "NLL in nats per masked token; brackets: bootstrap 95% intervals over sequences.",
        "",
        "| setting | bits/weight (file) | "
        + " | ".join(f"NLL at {r} (FP {v:.4f})" for r, v in ref.items())
        + " | generation agreement | time s |",
        "|---|---|" + "---|" * len(ref) + "---|---|",
    ]
    for s in doc["settings"]:
        bpw = f"{s['file_bits_per_weight']:.2f}" if "file_bits_per_weight" in s else "-"
        cells = []
        for r in ref:
            v = s["masked_nll"][r]
            lo, hi = v["relative_ci95"]
            cells.append(
                f"{v['value']:.4f} ({100 * v['relative']:+.2f}% [{100 * lo:+.2f}, {100 * hi:+.2f}])"
            )
        lines.append(
            f"| {s['name']} | {bpw} | "
            + " | ".join(cells)
            + f" | {s['generation_agreement']:.3f} | {s['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"
