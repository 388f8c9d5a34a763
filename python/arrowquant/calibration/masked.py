"""Calibration of a masked diffusion language model: the FP model predicts masked tokens at
`calibration_steps` mask ratios spread over (0, 1], every Linear recorded at the timestep of its
ratio (masked_diffusion.timestep_of), so timestep groups are groups of mask ratios.

Calibration texts: a `text` / `prompt` column (.jsonl, Parquet, datasets folder), or
`synthetic[:N]`: N sequences the FP model generates itself from all-mask.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from arrowquant.calibration.capture import Recorder, moments_cap_bytes
from arrowquant.calibration.data import load_calibration
from arrowquant.errors import UnsupportedError

BATCH = 64


def ratios(steps: int) -> list[float]:
    """`steps` mask ratios, evenly spaced in (0, 1]."""
    return [(i + 1) / steps for i in range(steps)]


def calibrate_masked(
    model_path: str | os.PathLike[str],
    cfg: Any,
    log: Callable[[str], None] | None = None,
    moments: dict[str, tuple[Any, Any]] | None = None,
    sensitivity: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(plans, summary) as `calibration.calibrate` returns them, for a masked LM folder."""
    from arrowquant.calibration import fit_plans, moments_summary, recording_summary
    from arrowquant.calibration import sensitivity as sens
    from arrowquant.checkpoint import load_checkpoint
    from arrowquant.masked_diffusion import (
        NUM_TIMESTEPS,
        call,
        load_masked_lm,
        masked,
        synthetic_texts,
        windows,
    )
    from arrowquant.torch import TimestepState

    t0 = time.perf_counter()
    calib = load_calibration(cfg.calibration, cfg.calibration_samples)
    if calib.labels is not None:
        raise UnsupportedError(
            f"{calib.source}: class labels, but {model_path} is a masked language model "
            "(calibrate it with texts: a `text` column, or synthetic)"
        )
    ref = load_masked_lm(model_path)
    texts = calib.texts or synthetic_texts(ref, calib.count, cfg.seed)
    x = windows(ref, texts)
    stored = set(load_checkpoint(os.fspath(model_path)).names())
    rec = Recorder(
        ref.module,
        lambda n: f"{n}.weight",
        TimestepState(),
        cfg.seed,
        moments=moments if cfg.gptq else None,
        threads=cfg.threads or (os.cpu_count() or 1),
        moments_cap=moments_cap_bytes(ref.module, cfg.moments_memory_gb),
    )
    calls = sens.CallRecorder(ref.module, seed=cfg.seed) if sensitivity is not None else None
    steps = cfg.calibration_steps
    try:
        for i, r in enumerate(ratios(steps)):
            for start in range(0, x.shape[0], BATCH):
                ids, _ = masked(ref, x[start : start + BATCH], r, cfg.seed + 1000 * i + start)
                call(ref, ref.module, ids, r)
        if log:
            log(f"calibration: {x.shape[0]} sequences x {steps} mask ratios")
    finally:
        rec.remove()
        if calls is not None:
            calls.remove()
    # A tied weight (the decoder shares the word embeddings) is stored under its owner's name.
    collectors = {k: v for k, v in rec.collectors.items() if k in stored}
    if moments is not None:
        for k in [k for k in moments if k not in stored]:
            del moments[k]
    plans = fit_plans(
        collectors,
        collectors,
        None,
        {},
        cfg.time_groups,
        cfg.adaptive_groups,
        cfg.act_bits,
        cfg.act_clip,
        NUM_TIMESTEPS,
        cfg.activation_stats,
    )
    sens_summary = None
    if calls is not None and sensitivity is not None:
        values, sens_summary = sens.measure(
            ref.module, calls.calls, lambda n: f"{n}.weight", seed=cfg.seed
        )
        sensitivity.update({k: v for k, v in values.items() if k in stored})
    summary = calib.summary()
    if calib.texts is None:
        summary["kind"] = "the FP model's own generations (16 unmasking steps)"
    sampler = f"masked prediction at {steps} mask ratios in (0, 1] (timestep = ratio x 999)"
    summary |= recording_summary(ref.module, sampler, collectors, plans, cfg)
    summary |= {
        "denoiser": type(ref.module).__name__,
        "sequences": int(x.shape[0]),
        "tokens_per_sequence": ref.length,
        "equalize": False,
        "equalized_layers": 0,
        "second_moments": moments_summary(moments),
        "sensitivity": sens_summary,
        "cache": "none",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return plans, summary


def nll_check(
    model_path: str | os.PathLike[str], quantized: str | os.PathLike[str], cfg: Any
) -> dict[str, Any]:
    """The whole-model check after quantization: masked-token NLL of the stored weights against
    FP at three mask ratios, on the folder's held-out texts (else the model's own generations
    from another seed than calibration's)."""
    from arrowquant.masked_diffusion import (
        load_masked_lm,
        masked_nll,
        quantized_module,
        synthetic_texts,
        windows,
    )

    ref = load_masked_lm(model_path)
    q = quantized_module(ref, quantized)
    x = windows(ref, ref.texts() or synthetic_texts(ref, 16, cfg.seed + 7919))[:32]
    out = {}
    for r in (0.15, 0.5, 0.85):
        fp = masked_nll(ref, ref.module, x, r, cfg.seed + 17)
        got = masked_nll(ref, q, x, r, cfg.seed + 17)
        out[str(r)] = {"fp": round(fp, 5), "quantized": round(got, 5), "relative": got / fp - 1}
    return {"sequences": int(x.shape[0]), "masked_nll": out}
