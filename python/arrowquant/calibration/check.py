"""The whole-model check after quantization: the denoiser's one-step prediction with the stored
weights against the FP model's, on FP trajectories from noise calibration did not see (for a
text-to-image pipeline, conditioned by the stored text encoder's embeddings)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from arrowquant.diffusion import (
    call_denoiser,
    encode_prompts,
    initial_noise,
    load_reference,
    quantized_parts,
    sample,
    synthetic_prompts,
)

if TYPE_CHECKING:
    from arrowquant.single_file import Built

SAMPLES = 8


def one_step_check(
    model_path: str | os.PathLike[str],
    quantized: str | os.PathLike[str],
    cfg: Any,
    built: Built | None = None,
) -> dict[str, Any]:
    """Relative error ||eps_q - eps_fp|| / ||eps_fp|| of the quantized weights' prediction at up
    to 10 timesteps of FP DDIM trajectories, per timestep and per timestep group (the profile's
    number of groups, uniform over the training timesteps), and their mean. `built`: the
    pipeline built from the single file `quantized` was made from (single_file.built)."""
    import torch

    ref = load_reference(model_path)
    parts = quantized_parts(ref, quantized, built)
    q = parts.denoiser
    seed = cfg.seed + 7919  # not calibration's noise
    prompts = synthetic_prompts(ref, SAMPLES, seed) if ref.text is not None else None
    noise, labels = initial_noise(ref, SAMPLES, seed, prompts)
    # A text-to-image pipeline's quantized text encoder conditions the quantized denoiser.
    q_labels = labels
    if prompts is not None and parts.text_encoder is not None:
        q_labels = encode_prompts(ref, parts.text_encoder, prompts)
    traj = sample(ref, ref.module, noise, labels, cfg.calibration_steps, keep_inputs=True)
    per_t: dict[int, float] = {}
    with torch.inference_mode():
        for i, x in sorted(traj.inputs.items()):
            t = traj.timesteps[i]
            fp, got = traj.eps[i].double(), call_denoiser(ref, q, x, t, q_labels).double()
            per_t[t] = float((got - fp).norm() / fp.norm().clamp_min(1e-30))
    train_steps = int(ref.scheduler_config.get("num_train_timesteps", 1000))
    k = max(1, int(cfg.time_groups))
    groups = []
    for g in range(k):
        lo, hi = g * train_steps // k, (g + 1) * train_steps // k
        errs = [e for t, e in per_t.items() if lo <= t < hi]
        if errs:
            groups.append({"timesteps": [lo, hi - 1], "mean": float(np.mean(errs))})
    return {
        "samples": SAMPLES,
        "per_timestep": {str(t): round(e, 6) for t, e in sorted(per_t.items())},
        "groups": groups,
        "mean": float(np.mean(list(per_t.values()))),
    }
