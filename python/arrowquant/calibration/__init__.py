"""Calibration: run the FP model on calibration inputs, record activations per layer and timestep,
fit timestep-grouped activation parameters and (optionally) DiTAS channel equalization.

    plans, summary = calibrate("models/digits-dit", config)

`plans` goes to the C++ pipeline (stored per tensor in the model file); `summary` is the
provenance written into the file's recipe and the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant.calibration import cache
from arrowquant.calibration.capture import (
    capture,
    moments_cap_bytes,
    quantizable_layers,
    weight_name,
)
from arrowquant.calibration.data import CalibrationSet, load_calibration

__all__ = [
    "CalibrationSet",
    "calibrate",
    "load_calibration",
    "fit_plans",
    "capture_cached",
    "moments_summary",
    "recording_summary",
]


def capture_cached(
    ref: Any,
    calib: CalibrationSet,
    steps: int,
    seed: int,
    scales: dict[str, np.ndarray] | None,
    cache_folder: str,
    model_digest: str,
    log: Callable[[str], None] | None = None,
    row_samples: dict[str, Any] | None = None,
    moments: dict[str, tuple[Any, Any]] | None = None,
    threads: int = 1,
    calls: list[Any] | None = None,
    moments_cap: float = 0,
    batch: int = 64,
    pool: Any = None,
) -> tuple[dict[str, Any], bool]:
    """(collectors, cache hit). The key covers the model's bytes, the calibration rows, the
    sampler settings and the equalization scales applied. With `moments` (a dict to fill), the
    layers' input second moments too, cached beside the statistics. `pool`: capture's."""
    settings: dict[str, Any] = {"steps": steps, "seed": seed}
    if calib.count > batch:  # several batches, each recorded on its own (recording.py)
        settings["batch"] = batch
    m_settings = cache.MOMENT_SETTINGS | ({"cap": moments_cap} if moments_cap else {})
    if scales is not None:
        h = np.concatenate([scales[k] for k in sorted(scales)]).astype(np.float32).tobytes()
        settings["scales"] = hashlib.sha256(h).hexdigest()
    key = cache.cache_key(model_digest, calib.digest, settings)
    folder = cache.cache_dir(cache_folder)
    path = folder / f"{key}.npz"
    m_key = cache.cache_key(model_digest, calib.digest, settings | m_settings)
    m_path = folder / f"{m_key}.npz"
    got = cache.load(path)
    got_m = cache.load_moments(m_path) if moments is not None else {}
    if got is not None and got_m is not None:
        if moments is not None:
            moments.update(got_m)
        return got, True
    collectors = capture(
        ref,
        calib,
        steps,
        seed,
        scales,
        log=log,
        row_samples=row_samples,
        moments=moments,
        threads=threads,
        recorded_calls=calls,
        moments_cap=moments_cap,
        batch=batch,
        pool=pool,
    )
    cache.save(path, collectors)
    if moments is not None:
        cache.save_moments(m_path, moments)
    return collectors, False


def recording_summary(
    module: Any, sampler: str, collectors: dict[str, Any], plans: dict[str, Any], cfg: Any
) -> dict[str, Any]:
    """What a calibration summary says about the run and the activation parameters fitted."""
    return {
        "denoiser": type(module).__name__,
        "sampler": sampler,
        "timesteps": sorted({s["timestep"] for c in collectors.values() for s in c.stats()}),
        "layers": len(plans),
        "time_invariant_layers": sum(bool(p.get("time_invariant")) for p in plans.values()),
        "time_groups": cfg.time_groups,
        "adaptive_groups": cfg.adaptive_groups,
        "act_bits": cfg.act_bits,
        "act_clip": cfg.act_clip,
    }


def moments_summary(moments: dict[str, tuple[Any, Any]] | None) -> dict[str, int] | None:
    """What the report says about the second moments GPTQ used (medians over layers)."""
    if not moments:
        return None
    from arrowquant.calibration.capture import _h_bytes

    return {
        "layers": len(moments),
        "rows_per_layer": int(np.median([f.count for f, _ in moments.values()])),
        "held_out_rows_per_layer": int(np.median([c.count for _, c in moments.values()])),
        "block_diagonal_layers": sum(f.block < f.dim for f, _ in moments.values()),
        "memory_mib": round(
            sum(_h_bytes(h.dim, h.block) for pair in moments.values() for h in pair) / 2**20, 1
        ),
    }


def fit_plans(
    collectors: dict[str, Any],
    raw_collectors: dict[str, Any],
    scales: dict[str, np.ndarray] | None,
    alphas: dict[str, float],
    groups: int,
    adaptive: bool,
    act_bits: int,
    clip: str,
    num_train_timesteps: int,
    keep_stats: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per layer: timestep groups and their activation grids, the equalization used, and with
    `keep_stats` the inputs' per-channel min/max/absmax (provenance only: nothing reads them back
    to run the model, and at 12 bytes an input channel they cost ~0.5 bits/weight on small
    models)."""
    plans: dict[str, dict[str, Any]] = {}
    for name, col in collectors.items():
        # Inputs that do not move with t (cross-attention K/V on text embeddings, a text
        # encoder's or VAE's layers) get one group: more would only repeat the same grid.
        still = time_invariant(col)
        ta = _core.fit_time_groups(
            col, 1 if still else groups, adaptive, act_bits, clip, 99.99, num_train_timesteps
        )
        overall = raw_collectors[name].overall()
        plans[name] = {
            "time_aware": ta,
            "equalization_scales": (
                None if scales is None or name not in scales else scales[name].tolist()
            ),
            # The migration strength s was computed with (0: not equalized).
            "smoothing_alpha": (
                float(alphas.get(name, 0.0)) if scales is not None and name in scales else 0.0
            ),
            "stats": (
                {k: overall[k].tolist() for k in ("min", "max", "absmax")} if keep_stats else None
            ),
            "time_invariant": still,  # the report's; the pipeline reads the keys above
        }
    return plans


def time_invariant(collector: Any) -> bool:
    """Whether a layer's inputs were the same at every timestep recorded (identical statistics
    and histograms), or were all recorded outside the denoising loop (timestep -1)."""
    stats = collector.stats()
    if all(s["timestep"] == -1 for s in stats):
        return True
    first = stats[0]
    return all(
        s["count"] == first["count"]
        and all(np.array_equal(s[k], first[k]) for k in ("min", "max", "absmax", "histogram"))
        for s in stats[1:]
    )


def searched_equalization(
    ref: Any,
    calib: CalibrationSet,
    cfg: Any,
    digest: str,
    raw: dict[str, Any],
    rows: dict[str, Any],
    specs: dict[str, dict[str, Any]],
    log: Callable[[str], None] | None,
    pool: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
    """Per-layer equalization chosen on real calibration inputs (spatial.py); cached by model,
    calibration set and the quantizers it was chosen for."""
    from arrowquant.calibration.spatial import choose_equalization

    candidates = tuple(sorted({0.25, 0.5, 0.75, float(cfg.equalize_alpha)}))
    key = cache.cache_key(
        digest,
        calib.digest,
        {
            "what": "equalization",
            "steps": cfg.calibration_steps,
            "seed": cfg.seed,
            "formats": sorted((k, v["format"]) for k, v in specs.items()),
            "act_bits": cfg.act_bits,
            "candidates": candidates,
        }
        | _batch_key(calib, cfg),
    )
    path = cache.cache_dir(cfg.calibration_cache) / f"{key}.npz"
    got = cache.load_arrays(path)
    if got is not None:
        return got[0], got[1]["choices"], True
    if not rows:  # statistics came from the cache: sample the inputs again
        rows = {}
        _resample(ref, calib, cfg, log, pool, row_samples=rows)
    scales, choices = choose_equalization(ref, raw, rows, specs, cfg.act_bits, candidates)
    cache.save_arrays(path, scales, {"choices": choices})
    return scales, choices, False


def _batch_key(calib: CalibrationSet, cfg: Any) -> dict[str, int]:
    """A cache key's batch size: only where the set runs in more than one batch (the results
    of one batch are the unbatched run's)."""
    return {"batch": cfg.calibration_batch} if calib.count > cfg.calibration_batch else {}


def _resample(
    ref: Any,
    calib: CalibrationSet,
    cfg: Any,
    log: Callable[[str], None] | None,
    pool: Any,
    **record: Any,
) -> None:
    """The FP model samples the calibration set again, as calibration did, recording what
    `record` names (row_samples=, recorded_calls=): for a result not in the cache when the
    statistics were."""
    capture(
        ref,
        calib,
        cfg.calibration_steps,
        cfg.seed,
        batch=cfg.calibration_batch,
        log=log,
        pool=pool,
        **record,
    )


def layer_specs(model_path: str | os.PathLike[str], cfg: Any) -> dict[str, dict[str, Any]]:
    """The weight format of every layer the pipeline will quantize (its planned width, the
    config's format at that width): what equalization is measured with."""
    core = cfg.to_core()
    plan = _core.plan(os.fspath(model_path), core)
    return {name: core.spec_for(bits) for name, bits, _, _ in plan if bits}


def equalization(ref: Any, raw: dict[str, Any], alpha: float) -> dict[str, np.ndarray]:
    """s per layer from its weight and the activations' absmax over all timesteps."""
    out: dict[str, np.ndarray] = {}
    for mod_name, m in quantizable_layers(ref.module).items():
        name = weight_name(ref, mod_name)
        if name not in raw:
            continue  # never called while sampling
        w = m.weight.detach().float().contiguous().numpy()
        w_absmax = _core.input_channel_absmax(w, "F32", name)
        x_absmax = np.asarray(raw[name].overall()["absmax"], dtype=np.float32)
        out[name] = np.asarray(_core.equalization_scales(w_absmax, x_absmax, alpha))
    return out


def measured_sensitivity(
    ref: Any,
    calib: CalibrationSet,
    cfg: Any,
    digest: str,
    calls: list[Any],
    log: Callable[[str], None] | None,
    pool: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Each layer's sensitivity (sensitivity.py) on FP calls recorded while sampling; cached by
    model, calibration set and sampler settings. Without recorded calls (the statistics came
    from the cache) the FP model samples again to record them."""
    from arrowquant.calibration import sensitivity

    settings = {
        "what": "sensitivity",
        "version": 2,
        "steps": cfg.calibration_steps,
        "seed": cfg.seed,
        "calls": sensitivity.MAX_CALLS,
        "probes": sensitivity.PROBES,
    } | _batch_key(calib, cfg)
    path = (
        cache.cache_dir(cfg.calibration_cache)
        / f"{cache.cache_key(digest, calib.digest, settings)}.npz"
    )
    got = cache.load_arrays(path)
    if got is not None:
        return got[0], got[1]["summary"] | {"cache": "hit"}
    if not calls:
        _resample(ref, calib, cfg, log, pool, recorded_calls=calls)
    if log:
        log(f"calibration: sensitivity from {len(calls)} recorded calls")
    values, summary = sensitivity.measure(
        ref.module, calls, lambda n: weight_name(ref, n), seed=cfg.seed
    )
    cache.save_arrays(path, values, {"summary": summary})
    return values, summary | {"cache": "miss"}


def calibrate(
    model_path: str | os.PathLike[str],
    cfg: Any,
    log: Callable[[str], None] | None = None,
    moments: dict[str, tuple[Any, Any]] | None = None,
    sensitivity: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(plans for the pipeline, summary) for a DiffusionQuantConfig with `calibration` set.
    With `moments` (a dict to fill), each layer's input second moments as the runtime will see
    its inputs (equalized where equalization was chosen): (fit, held-out) for GPTQ. With
    `sensitivity` (a dict to fill), each layer's measured sensitivity per output row."""
    from arrowquant.masked_diffusion import is_masked_lm

    if is_masked_lm(model_path):
        from arrowquant.calibration.masked import calibrate_masked

        return calibrate_masked(model_path, cfg, log, moments, sensitivity)
    t0 = time.perf_counter()
    calib = load_calibration(cfg.calibration, cfg.calibration_samples)
    batches = math.ceil(calib.count / cfg.calibration_batch)
    with contextlib.ExitStack() as stack:
        pool = None
        if cfg.ray:  # the batches on the cluster's workers
            from arrowquant.scale_out import calibration_pool

            pool = stack.enter_context(
                calibration_pool(
                    os.fspath(model_path),
                    cfg.ray,
                    batches,
                    ship=cfg.ray_transfer == "object-store",
                )
            )
        plans, summary = _calibrate(model_path, cfg, calib, log, moments, sensitivity, pool)
        summary["batches"] = batches
        if pool is not None:
            summary["scale_out"] = {
                "workers": pool.workers,
                "batches_on_workers": pool.recorded,
                "worker_peak_rss": pool.peak_rss,
            }
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        return plans, summary


def _calibrate(
    model_path: str | os.PathLike[str],
    cfg: Any,
    calib: CalibrationSet,
    log: Callable[[str], None] | None,
    moments: dict[str, tuple[Any, Any]] | None,
    sensitivity: dict[str, np.ndarray] | None,
    pool: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """calibrate()'s work for a diffusion model, batches on `pool` (or here: None)."""
    from arrowquant.diffusion import load_reference

    ref = load_reference(model_path)
    digest = cache.model_digest(Path(model_path))
    steps, seed = cfg.calibration_steps, cfg.seed
    rows: dict[str, Any] = {}
    want_rows = cfg.equalize and cfg.equalize_search
    threads = cfg.threads or (os.cpu_count() or 1)
    cap = moments_cap_bytes(ref.module, cfg.moments_memory_gb)
    calls: list[Any] = []
    raw, hit = capture_cached(
        ref,
        calib,
        steps,
        seed,
        None,
        cfg.calibration_cache,
        digest,
        log,
        row_samples=rows if want_rows else None,
        moments=moments if not cfg.equalize else None,  # equalized inputs: the second pass
        threads=threads,
        calls=calls if sensitivity is not None else None,
        moments_cap=cap,
        batch=cfg.calibration_batch,
        pool=pool,
    )
    scales: dict[str, np.ndarray] | None = None
    choices: dict[str, Any] = {}
    alphas: dict[str, float] = {}
    if cfg.equalize and cfg.equalize_search:
        specs = layer_specs(model_path, cfg)
        scales, choices, hit_eq = searched_equalization(
            ref, calib, cfg, digest, raw, rows, specs, log, pool
        )
        alphas = {k: v["alpha"] for k, v in choices.items() if v["alpha"] is not None}
        hit = hit and hit_eq
    elif cfg.equalize:
        scales = equalization(ref, raw, cfg.equalize_alpha)
        alphas = dict.fromkeys(scales, cfg.equalize_alpha)
    used, hit2 = raw, hit
    if scales or (cfg.equalize and moments is not None):
        used, hit2 = capture_cached(
            ref,
            calib,
            steps,
            seed,
            scales or None,
            cfg.calibration_cache,
            digest,
            log,
            moments=moments,
            threads=threads,
            moments_cap=cap,
            batch=cfg.calibration_batch,
            pool=pool,
        )
    plans = fit_plans(
        used,
        raw,
        scales,
        alphas,
        cfg.time_groups,
        cfg.adaptive_groups,
        cfg.act_bits,
        cfg.act_clip,
        int(ref.scheduler_config.get("num_train_timesteps", 1000)),
        cfg.activation_stats,
    )
    sens_summary = None
    if sensitivity is not None:
        values, sens_summary = measured_sensitivity(ref, calib, cfg, digest, calls, log, pool)
        sensitivity.update(values)
    summary = calib.summary()
    if ref.num_classes and calib.labels is None:
        summary["kind"] = f"class labels cycled over {ref.num_classes} classes"
    sampler = f"DDIM eta=0, {steps} steps, seed {seed}"
    if ref.text is not None:
        if calib.texts is None:
            summary["kind"] = "synthetic prompts from the tokenizer's words"
        sampler += (
            f", classifier-free guidance {ref.text.guidance} (both branches recorded); "
            f"prompts through {ref.text.components[0]}, latents decoded by {ref.text.components[1]}"
        )
    summary |= recording_summary(ref.module, sampler, raw, plans, cfg)
    summary |= {
        "equalize": cfg.equalize,
        "equalize_alpha": cfg.equalize_alpha if cfg.equalize else None,
        "equalize_search": cfg.equalize_search if cfg.equalize else None,
        "equalized_layers": 0 if scales is None else len(scales),
        "equalization_choices": {k: v["alpha"] for k, v in choices.items()},
        "equalization_formats": {k: v["format"] for k, v in choices.items()},
        "second_moments": moments_summary(moments),
        "sensitivity": sens_summary,
        "cache": "hit" if hit and hit2 else "miss",
    }
    return plans, summary
