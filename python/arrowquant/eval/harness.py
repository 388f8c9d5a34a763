"""`arrowquant.eval.evaluate`: FP vs quantized settings, sampled in pairs, measured end to end.

Metrics per setting (see docs/evaluation.md):
- drift: denoiser-output relative error per timestep along each model's own trajectory (the
  quantized run drifts away from the FP one), and one-step: the quantized denoiser on the FP
  run's inputs (error of the weights alone, without accumulated drift);
- PSNR / SSIM of the final samples to the paired FP samples;
- Fréchet distance to real digits, and to the FP samples, in the digits classifier's feature
  space; accuracy (conditional models: predicted class = requested class) and label agreement
  with the paired FP sample. Bootstrap 95% intervals over samples throughout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arrowquant.diffusion import (
    Denoiser,
    Parts,
    Trajectory,
    cycled,
    encode_prompts,
    initial_noise,
    load_reference,
    quantized_parts,
    sample,
    synthetic_prompts,
)
from arrowquant.errors import ConfigurationError
from arrowquant.eval.metrics import (
    PSNR_CAP_DB,
    as_numpy,
    bootstrap_normal_ci,
    frechet_distance,
    mean_ci,
    relative_error,
)

# A model file / quantize output folder, a state dict for the denoiser, or a ready module (e.g.
# with quantized activations from arrowquant.torch.apply).
Setting = str | os.PathLike[str] | Mapping[str, Any] | Any


def _fd_block(feats: np.ndarray, ref_feats: np.ndarray, rounds: int, seed: int) -> dict[str, Any]:
    value = frechet_distance(feats, ref_feats)
    rounds = min(rounds, 200)
    lo, hi = bootstrap_normal_ci(
        value, len(feats), lambda i: frechet_distance(feats[i], ref_feats), rounds, seed
    )
    return {"value": value, "ci95": [lo, hi]}


class _Features:
    """Digits-classifier features, or the reason they do not apply to this model."""

    def __init__(self, ref: Denoiser) -> None:
        self.reason = ""
        channels, size = ref.image_shape
        if channels != 1 or size % 8:
            self.reason = "Fréchet distance / accuracy need 1-channel images of a size 8k"
            return
        from arrowquant.eval.classifier import DigitsClassifier
        from arrowquant.eval.digits import load_digits_images

        self.clf = DigitsClassifier.load()
        real, _ = load_digits_images(size)
        self.real = self.clf.features(as_numpy(real))
        # The noise floor: two random halves of the real digits.
        perm = np.random.default_rng(0).permutation(len(self.real))
        half = len(perm) // 2
        self.floor = frechet_distance(self.real[perm[:half]], self.real[perm[half:]])

    def __bool__(self) -> bool:
        return not self.reason


def evaluate(
    model: str | os.PathLike[str],
    settings: Mapping[str, Setting],
    samples: int = 512,
    steps: int = 50,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    bootstrap_rounds: int = 500,
    log: Callable[[str], None] | None = None,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Samples the FP model and every setting from the same noise; returns (and with `out_dir`
    writes) eval.json, eval.md and grid.png. A setting is a model file / quantize output folder,
    or a state dict for the denoiser (e.g. to plant a fault). A text-to-image pipeline samples
    `prompts` (cycled over the samples; synthetic ones when None), each setting through its own
    text encoder, denoiser and VAE; the report adds per-prompt PSNR, prompt adherence where the
    prompts name digits, and a grid per prompt."""
    import arrowquant
    from arrowquant.masked_diffusion import is_masked_lm

    say = log or (lambda _m: None)
    if samples < 2 or steps < 1:
        raise ConfigurationError(f"need samples >= 2 and steps >= 1 (got {samples}, {steps})")
    if is_masked_lm(model):  # text/code diffusion: NLL by mask ratio, generation agreement
        from arrowquant.eval.masked import evaluate_masked

        return evaluate_masked(
            model, settings, samples, steps, seed, out_dir, bootstrap_rounds, log, prompts
        )
    ref = load_reference(model)
    # Every setting is loaded (and checked against the model) before any sampling starts.
    n_weights = sum(v.numel() for v in ref.module.state_dict().values())
    prepared = [(name, *_prepare(ref, s, n_weights)) for name, s in settings.items()]
    feats = _Features(ref)
    if ref.text is None and prompts:
        raise ConfigurationError(
            f"{ref.path}: prompts given, but it is not a text-to-image pipeline"
        )
    if ref.text is not None:
        prompts = cycled(prompts or synthetic_prompts(ref, samples, seed), samples)
    noise, labels = initial_noise(ref, samples, seed, prompts)
    t0 = time.perf_counter()
    fp = sample(ref, ref.module, noise, labels, steps, keep_inputs=True)
    fp_np = as_numpy(fp.samples)
    doc: dict[str, Any] = {
        "tool": f"arrowquant {arrowquant.__version__}",
        "model": str(ref.path),
        "denoiser": type(ref.module).__name__,
        "conditional_classes": ref.num_classes,
        "samples": samples,
        "steps": steps,
        "sampler": "DDIM eta=0, same noise and labels for every setting"
        + (
            f", classifier-free guidance {ref.text.guidance}, each setting's own text encoder "
            "and VAE"
            if ref.text is not None
            else ""
        ),
        "seed": seed,
        "psnr_cap_db": PSNR_CAP_DB,
        "metrics_note": feats.reason,
        "reference": {"seconds": 0.0},
        "settings": [],
    }
    fp_feats = None
    if feats:
        fp_feats = feats.clf.features(fp_np)
        doc["reference"]["fd_real"] = _fd_block(fp_feats, feats.real, bootstrap_rounds, seed)
        doc["reference"]["fd_real_halves"] = feats.floor
        if ref.num_classes:
            hit = (feats.clf.predict(fp_np) == as_numpy(labels)).astype(np.float64)
            doc["reference"]["accuracy"] = mean_ci(hit, bootstrap_rounds, seed)
    asked = _asked_digits(prompts) if feats and prompts else None
    if asked is not None:
        hit = (feats.clf.predict(fp_np) == asked).astype(np.float64)
        doc["reference"]["adherence"] = mean_ci(hit, bootstrap_rounds, seed)
    if prompts is not None:
        doc["prompts"] = sorted(set(prompts), key=prompts.index)
    doc["reference"]["seconds"] = round(time.perf_counter() - t0, 2)
    say(f"FP: {samples} samples x {steps} steps in {doc['reference']['seconds']} s")
    grid_rows: list[tuple[str, np.ndarray]] = [("FP", fp_np)]
    for name, parts, info in prepared:
        t1 = time.perf_counter()
        entry: dict[str, Any] = {"name": name} | info
        q_labels = labels
        if prompts is not None and parts.text_encoder is not None:
            q_labels = encode_prompts(ref, parts.text_encoder, prompts)
        q = sample(ref, parts.denoiser, noise, q_labels, steps, probe=fp, vae=parts.vae)
        entry.update(_compare(ref, fp, fp_np, fp_feats, q, labels, feats, bootstrap_rounds, seed))
        if prompts is not None:
            entry.update(_per_prompt(fp_np, as_numpy(q.samples), prompts, asked, feats))
            if asked is not None:
                hit = (feats.clf.predict(as_numpy(q.samples)) == asked).astype(np.float64)
                entry["adherence"] = mean_ci(hit, bootstrap_rounds, seed)
        entry["seconds"] = round(time.perf_counter() - t1, 2)
        doc["settings"].append(entry)
        grid_rows.append((name, as_numpy(q.samples)))
        say(
            f"{name}: PSNR {entry['psnr']['mean']:.2f} dB, SSIM {entry['ssim']['mean']:.4f}, "
            f"{entry['seconds']} s"
        )
    if out_dir is not None:
        from arrowquant.eval.report import write_outputs

        write_outputs(doc, grid_rows, Path(out_dir), prompts)
    return doc


def _asked_digits(prompts: list[str]) -> np.ndarray | None:
    """The digit each prompt asks for (by name or numeral), or None unless every prompt names
    exactly one."""
    from arrowquant.eval.digits import requested_digit

    asked = [requested_digit(p) for p in prompts]
    return None if any(a is None for a in asked) else np.asarray(asked)


def _per_prompt(
    fp_np: np.ndarray,
    q_np: np.ndarray,
    prompts: list[str],
    asked: np.ndarray | None,
    feats: _Features,
) -> dict[str, Any]:
    """PSNR / SSIM (and adherence where the prompts name digits) for each distinct prompt."""
    from arrowquant.eval.metrics import psnr, ssim

    p, s = psnr(fp_np, q_np), ssim(fp_np, q_np)
    hits = None
    if asked is not None and feats:
        hits = feats.clf.predict(q_np) == asked
        fp_hits = feats.clf.predict(fp_np) == asked
    out = []
    for text in sorted(set(prompts), key=prompts.index):
        idx = np.asarray([i for i, x in enumerate(prompts) if x == text])
        row: dict[str, Any] = {
            "prompt": text,
            "samples": len(idx),
            "psnr": float(p[idx].mean()),
            "ssim": float(s[idx].mean()),
        }
        if hits is not None:
            row["adherence"] = float(hits[idx].mean())
            row["adherence_fp"] = float(fp_hits[idx].mean())
        out.append(row)
    return {"per_prompt": out}


def _prepare(ref: Denoiser, setting: Setting, n_weights: int) -> tuple[Parts, dict[str, Any]]:
    """(what to sample with, what it is)."""
    if isinstance(setting, Mapping):
        return Parts(ref.with_state(dict(setting))), {"source": "state dict"}
    if callable(getattr(setting, "forward", None)):
        module: Any = setting
        return Parts(module.eval()), {"source": type(setting).__name__}
    parts = quantized_parts(ref, setting)
    from arrowquant.model import file_bytes, resolve_model_path

    f = resolve_model_path(setting)
    size = file_bytes(f)
    info = {
        "source": str(f),
        "file_bytes": size,
        "file_bits_per_weight": 8.0 * size / n_weights,
    }
    return parts, info


def _compare(
    ref: Denoiser,
    fp: Trajectory,
    fp_np: np.ndarray,
    fp_feats: np.ndarray | None,
    q: Trajectory,
    labels: Any,
    feats: _Features,
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    from arrowquant.eval.metrics import psnr, ssim

    q_np = as_numpy(q.samples)
    drift = [relative_error(a, b) for a, b in zip(fp.eps, q.eps, strict=True)]
    one_step = [relative_error(fp.eps[i], e) for i, e in q.probe_eps]
    out: dict[str, Any] = {
        "psnr": mean_ci(psnr(fp_np, q_np), rounds, seed),
        "ssim": mean_ci(ssim(fp_np, q_np), rounds, seed),
        "drift": {
            "timesteps": fp.timesteps,
            "trajectory": drift,
            "one_step": one_step,
            "one_step_timesteps": [fp.timesteps[i] for i, _ in q.probe_eps],
            "trajectory_mean": float(np.mean(drift)),
            "one_step_mean": float(np.mean(one_step)),
            "final_sample": relative_error(fp.samples, q.samples),
        },
    }
    if feats and fp_feats is not None:
        qf = feats.clf.features(q_np)
        out["fd_real"] = _fd_block(qf, feats.real, rounds, seed)
        out["fd_fp"] = frechet_distance(qf, fp_feats)
        qp = feats.clf.predict(q_np)
        agree = (qp == feats.clf.predict(fp_np)).astype(np.float64)
        out["label_agreement"] = mean_ci(agree, rounds, seed)
        if ref.num_classes:
            out["accuracy"] = mean_ci((qp == as_numpy(labels)).astype(np.float64), rounds, seed)
    return out
