"""Activation capture: forward pre-hooks on every Linear / Conv2d while the FP sampler runs.

Each hook hands the layer's input tensor to a C++ ActivationCollector (per-channel min / max /
absmax and a fixed-size histogram per timestep), reading the tensor's memory in place: nothing is
kept between calls, so memory stays bounded by the collectors, whatever the number of samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant.calibration.data import CalibrationSet
from arrowquant.calibration.recording import Recording, rows_cap
from arrowquant.diffusion import Denoiser, encode_prompts, sample, synthetic_prompts
from arrowquant.errors import UnsupportedError

# Rows of each call's input that go into a layer's H (and, disjoint, into its held-out H). A
# sampled call holds batch x tokens rows; a subset carries the same second moments at a fraction
# of the cost (each row costs dim^2 / 2 multiply-adds).
MOMENT_ROWS = 256
CHECK_ROWS = 64
# A big model's calls are few but each is expensive to record: 128 + 64 rows are drawn instead
# of 256 + 64 (a fifth of them held out), since H took a third of an SD1.5-sized UNet's
# sampling time on 2 cores; its 40 calls still give 6,000 fit rows, 3x the widest full H.
BIG_MODEL_PARAMS = 100_000_000
BIG_MODEL_MOMENT_ROWS = 128
# Layers with more input columns get a block-diagonal H (blocks of this many columns): memory
# cols x block instead of cols^2 (docs/gptq.md).
FULL_H_MAX_DIM = 2048
H_BLOCK = 1024
# Under the memory cap, held-out H (output errors only: no group has to fit a block) go to
# blocks of this many columns first: an SD1.5-sized UNet's take 0.35 GiB instead of 0.70 at 256.
CHECK_BLOCK = 128
# Cap on all layers' H together (fit and held-out), bytes, when DiffusionQuantConfig's
# moments_memory_gb is 0 (auto): a share of the model's own memory, so that a big model's run
# stays within a small multiple of the model (an SD1.5-sized f32 UNet: 3.4 GB of weights, H
# 1.12 GiB), within these bounds.
MOMENTS_CAP = 2 * 2**30
MOMENTS_CAP_MIN = 2**29
MOMENTS_CAP_SHARE = 0.35


def moments_cap_bytes(module: Any, gb: float) -> float:
    """Bytes every layer's H may take together: `gb` GiB when given, else MOMENTS_CAP_SHARE of
    the module's parameter bytes, between MOMENTS_CAP_MIN and MOMENTS_CAP."""
    if gb > 0:
        return gb * 2**30
    own = sum(p.numel() * p.element_size() for p in module.parameters())
    return float(min(MOMENTS_CAP, max(MOMENTS_CAP_MIN, MOMENTS_CAP_SHARE * own)))


def quantizable_layers(module: Any) -> dict[str, Any]:
    """Module name -> nn.Linear / nn.Conv2d with a weight."""
    from torch import nn

    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "weight", None) is not None
    }


def weight_name(ref: Denoiser, module_name: str) -> str:
    prefix = f"{ref.component}/" if ref.component else ""
    return f"{prefix}{module_name}.weight"


def _layout(m: Any, x: Any) -> tuple[int, int, int]:
    from torch import nn

    if isinstance(m, nn.Conv2d):
        return x.shape[0], x.shape[1], math.prod(x.shape[2:])
    c = x.shape[-1]
    return x.numel() // c, c, 1


def conditioning(ref: Denoiser, calib: CalibrationSet, seed: int = 0) -> tuple[int, Any]:
    """(number of trajectories, class labels, prompts (text-to-image) or None) for this model and
    calibration set."""
    import torch

    if ref.text is not None:
        if calib.labels is not None:
            raise UnsupportedError(
                f"{calib.source}: class labels, but {ref.path} is a text-to-image pipeline "
                "(calibrate it with prompts: a `prompt` column, or synthetic)"
            )
        return calib.count, calib.texts or synthetic_prompts(ref, calib.count, seed)
    if calib.texts is not None:
        raise UnsupportedError(
            f"{calib.source}: text prompts, but {type(ref.module).__name__} takes "
            + ("class labels" if ref.num_classes else "no conditioning")
            + " (prompts calibrate text-to-image pipelines)"
        )
    if not ref.num_classes:
        return calib.count, None
    if calib.labels is not None:
        bad = [v for v in calib.labels if v >= ref.num_classes]
        if bad:
            raise UnsupportedError(
                f"{calib.source}: label {bad[0]} but the model has {ref.num_classes} classes"
            )
        return calib.count, torch.tensor(calib.labels, dtype=torch.long)
    return calib.count, torch.arange(calib.count) % ref.num_classes


class Recorder:
    """Forward pre-hooks on every Linear / Conv2d of `module` that hand each call's input to C++:
    an ActivationCollector per layer (statistics per timestep, read from `state`), and with
    `moments` (a dict to fill) the layer's input second moments (GPTQ's H): a seeded random
    subset of each call's input rows (unfolded patches for convolutions) goes to `fit`, a
    disjoint subset to `check` (held-out, for validation). With `scales` (equalization), a
    layer's input is recorded as X * s, as the runtime will see it; the model runs unchanged.
    With `row_samples` (a dict to fill), up to `max_rows` random input rows per layer are kept
    (at most 8 MiB a layer), `per_call` at a time, for choices that need real inputs."""

    def __init__(
        self,
        module: Any,
        weight_names: Callable[[str], str],
        state: Any,
        seed: int = 0,
        scales: dict[str, np.ndarray] | None = None,
        moments: dict[str, tuple[Any, Any]] | None = None,
        row_samples: dict[str, Any] | None = None,
        per_call: int = 1,
        max_rows: int = 512,
        threads: int = 1,
        moments_cap: float = MOMENTS_CAP,
    ) -> None:
        import torch

        self.collectors: dict[str, Any] = {}
        self.state = state
        self.scales, self.moments, self.row_samples = scales, moments, row_samples
        self.per_call, self.max_rows, self.threads = per_call, max_rows, threads
        self.g_rows = torch.Generator().manual_seed(seed + 1)
        self.g_moments = torch.Generator().manual_seed(seed + 2)
        layers = {weight_names(name): m for name, m in quantizable_layers(module).items()}
        dims = {n: d for n, m in layers.items() if (d := layer_dim(m)) is not None}
        # H for every layer is held while sampling: bounded (moment_plan), planned up front.
        self.plan = moment_plan(dims, moments_cap) if moments is not None else {}
        params = sum(p.numel() for p in module.parameters())
        self.moment_rows = BIG_MODEL_MOMENT_ROWS if params > BIG_MODEL_PARAMS else MOMENT_ROWS
        self.handles = [m.register_forward_pre_hook(self._hook(n, m)) for n, m in layers.items()]

    def _hook(self, name: str, m: Any) -> Callable[..., None]:
        import torch

        s = None
        if self.scales is not None and name in self.scales:
            s = torch.from_numpy(np.ascontiguousarray(self.scales[name], dtype=np.float32))

        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().cpu()
            if s is not None:
                shape = [1] * x.dim()
                shape[1 if isinstance(m, torch.nn.Conv2d) else -1] = -1
                x = x * s.view(shape)
            x = x.float().contiguous()
            outer, c, inner = _layout(m, x)
            col = self.collectors.get(name)
            if col is None:
                col = self.collectors[name] = _core.ActivationCollector.make(c)
            t = self.state.current
            col.add(-1 if t is None else t, x.numpy().reshape(-1), outer, c, inner, self.threads)
            if self.row_samples is not None and s is None:
                _keep_rows(name, m, x, self.row_samples, self.per_call, self.max_rows, self.g_rows)
            if self.moments is not None and name in self.plan:
                blocks = self.plan[name]
                _add_moments(
                    name, m, x, self.moments, self.g_moments, self.threads, blocks, self.moment_rows
                )

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass(frozen=True)
class CaptureSpec:
    """What a capture records, batch by batch (picklable: batches may run on other workers)."""

    steps: int
    seed: int
    scales: dict[str, np.ndarray] | None
    batch: int
    max_rows: int
    rows: bool  # keep input rows (equalization search)
    moments: bool  # second moments (GPTQ's H)
    calls: bool  # a sample of the denoiser's calls (sensitivity)
    threads: int
    moments_cap: float  # 0: MOMENTS_CAP

    def batches(self, count: int) -> int:
        return math.ceil(count / self.batch)


def batch_seed(seed: int, b: int) -> int:
    """Batch b's random streams (batch 0: the run's own seed)."""
    return seed + (b << 32)


def record_batch(ref: Denoiser, calib: CalibrationSet, spec: CaptureSpec, b: int) -> Recording:
    """Batch b of the calibration set (trajectories [b * batch, (b + 1) * batch)) sampled by the
    FP model with every layer recorded from scratch (recording.Recording)."""
    import torch

    from arrowquant.calibration.sensitivity import CallRecorder
    from arrowquant.torch import TimestepState, TimestepTracker

    count, labels = conditioning(ref, calib, spec.seed)
    nb = spec.batches(count)
    calls = spec.steps * nb
    # Several batches hold a batch's H besides the sum (recording.py): half the cap each.
    share = 1.0 if nb == 1 else 0.5
    seed = batch_seed(spec.seed, b)
    rows: dict[str, Any] | None = {} if spec.rows else None
    moments: dict[str, tuple[Any, Any]] | None = {} if spec.moments else None
    tracker = TimestepTracker(ref.module)

    # A pipeline's text encoder and VAE run outside the denoising loop: their layers' inputs do
    # not move with t (one activation group), and their H come from the same prompts.
    def prefixed(key: str) -> Callable[[str], str]:
        return lambda n: f"{key}/{n}.weight"

    others = [
        Recorder(
            getattr(ref.text, key),
            prefixed(key),
            TimestepState(),
            seed,
            None,
            moments,
            rows,
            max(1, math.ceil(spec.max_rows / nb)),
            spec.max_rows,
            spec.threads,
            share * moments_cap_bytes(getattr(ref.text, key), 0),
        )
        for key in (ref.text.components if ref.text is not None else ())
    ]
    rec = Recorder(
        ref.module,
        lambda n: weight_name(ref, n),
        tracker.state,
        seed,
        spec.scales,
        moments,
        rows,
        max(1, math.ceil(spec.max_rows / calls)),
        spec.max_rows,
        spec.threads,
        share * (spec.moments_cap or MOMENTS_CAP),
    )
    call_rec = CallRecorder(ref.module, seed=seed) if spec.calls else None
    try:
        # The noise of the batches before this one is drawn too: one stream for the whole set.
        g_noise = torch.Generator().manual_seed(spec.seed)
        for start in range(0, b * spec.batch + 1, spec.batch):
            n = min(spec.batch, count - start)
            noise = torch.randn((n, ref.channels, ref.size, ref.size), generator=g_noise)
        start = b * spec.batch
        lab = None if labels is None else labels[start : start + n]
        if ref.text is not None:  # the prompts through the pipeline's own text encoder
            lab = encode_prompts(ref, ref.text.text_encoder, list(lab or []))
        sample(ref, ref.module, noise, lab, spec.steps)
    finally:
        for r in (rec, *others):
            r.remove()
        tracker.remove()
        if call_rec is not None:
            call_rec.remove()
    out = Recording(dict(rec.collectors), moments or {}, rows or {})
    for r in others:
        out.collectors |= r.collectors
    if call_rec is not None:
        out.calls, out.seen = call_rec.calls, call_rec.seen
    return out


def capture(
    ref: Denoiser,
    calib: CalibrationSet,
    steps: int,
    seed: int,
    scales: dict[str, np.ndarray] | None = None,
    batch: int = 64,
    log: Callable[[str], None] | None = None,
    row_samples: dict[str, Any] | None = None,
    max_rows: int = 512,
    moments: dict[str, tuple[Any, Any]] | None = None,
    threads: int = 1,
    recorded_calls: list[Any] | None = None,
    moments_cap: float = 0,
    pool: Any = None,
) -> dict[str, Any]:
    """Weight name -> ActivationCollector over `steps` DDIM timesteps of the FP model (see
    Recorder for `scales`, `row_samples` and `moments`). With `recorded_calls` (a list to fill), a
    seeded sample of the denoiser's forward calls (sensitivity.CallRecorder). The set runs in
    batches of `batch` trajectories merged in order (recording.py); with `pool`
    (scale_out.CalibrationPool) the batches run on its workers, with the same result."""
    from arrowquant.calibration.sensitivity import replay_budget

    spec = CaptureSpec(
        steps,
        seed,
        scales,
        batch,
        max_rows,
        row_samples is not None,
        moments is not None,
        recorded_calls is not None,
        threads,
        moments_cap,
    )
    count, _ = conditioning(ref, calib, seed)
    nb = spec.batches(count)
    max_calls = replay_budget(ref.module)[0]
    if pool is not None and nb > 1:
        records = pool.record(calib, spec, nb)
    else:
        records = (record_batch(ref, calib, spec, b) for b in range(nb))
    total = Recording()
    for b, rec in enumerate(records):
        if b == 0:
            total = rec
        else:
            total.merge(rec, max_rows, max_calls, random.Random(batch_seed(seed, b)))
        if log:
            log(f"calibration: {min(count, (b + 1) * batch)}/{count} trajectories x {steps} steps")
    if row_samples is not None:
        row_samples.update(total.rows)
    if moments is not None:
        moments.update(total.moments)
    if recorded_calls is not None:
        recorded_calls.extend(total.calls)
    return total.collectors


def moment_block(dim: int) -> int:
    return 0 if dim <= FULL_H_MAX_DIM else H_BLOCK


def _h_bytes(dim: int, block: int) -> int:
    """Bytes of a SecondMoments (f64 upper triangles of the diagonal blocks; block 0: the whole
    matrix)."""

    def tri(m: int) -> int:
        return 8 * m * (m + 1) // 2

    if block == 0 or block >= dim:
        return tri(dim)
    full, rest = divmod(dim, block)
    return full * tri(block) + tri(rest)


def layer_dim(m: Any) -> int | None:
    """Columns of the layer's flattened weight (H's size), None where layer_rows cannot unfold."""
    import torch

    if isinstance(m, torch.nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        return int(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
    return int(m.in_features)


def moment_plan(dims: dict[str, int], cap_bytes: float) -> dict[str, tuple[int, int]]:
    """(fit block, held-out block) per layer so that every H together stays within cap_bytes:
    first the held-out H (validation only) goes to blocks of CHECK_BLOCK, then the largest fit
    H's block halves (down to 256), then the widest layers get none (round to nearest,
    weight-error validation). Deterministic: ties go by name."""
    plan = {n: (moment_block(d), moment_block(d)) for n, d in dims.items()}

    def total() -> int:
        return sum(_h_bytes(dims[n], f) + _h_bytes(dims[n], c) for n, (f, c) in plan.items())

    if total() > cap_bytes:
        plan = {n: (f, CHECK_BLOCK if dims[n] > CHECK_BLOCK else 0) for n, (f, _) in plan.items()}

    def smaller(n: str) -> int | None:
        now = plan[n][0] or dims[n]
        return next((b for b in (1024, 512, 256) if b < now and b < dims[n]), None)

    while total() > cap_bytes:
        # The largest fit H that can still shrink gets the next smaller block.
        shrinkable = [n for n in plan if smaller(n) is not None]
        if not shrinkable:
            break
        n = max(shrinkable, key=lambda k: (_h_bytes(dims[k], plan[k][0]), k))
        plan[n] = (smaller(n) or 0, plan[n][1])
    for n in sorted(plan, key=lambda k: (-dims[k], k)):
        if total() <= cap_bytes:
            break
        del plan[n]
    return plan


def layer_rows(m: Any, x: Any) -> Any | None:
    """The layer's input as rows of its flattened weight's columns: [rows, in] for a Linear,
    unfolded patches [rows, in*kh*kw] for a Conv2d (None for convs this cannot express)."""
    import torch
    import torch.nn.functional as F

    if isinstance(m, torch.nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            return None
        rows = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # [N, C*k*k, L]
        return rows.transpose(1, 2).reshape(-1, rows.shape[1])
    return x.reshape(-1, x.shape[-1])


def _conv_geometry(m: Any, x: Any) -> tuple[list[int], int, int]:
    """([kh, kw, sh, sw, ph, pw, dh, dw], output height, output width) of conv m on input x
    (a conv layer_dim accepts: zero padding given as numbers)."""
    kh, kw, sh, sw, ph, pw, dh, dw = (
        int(v) for v in (*m.kernel_size, *m.stride, *m.padding, *m.dilation)
    )
    oh = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return [kh, kw, sh, sw, ph, pw, dh, dw], max(int(oh), 0), max(int(ow), 0)


def row_count(m: Any, x: Any) -> int:
    """How many rows layer_rows(m, x) has (output positions x batch for a conv)."""
    import torch

    if isinstance(m, torch.nn.Conv2d):
        _, oh, ow = _conv_geometry(m, x)
        return int(x.shape[0]) * oh * ow
    return int(x.numel() // x.shape[-1])


def picked_rows(m: Any, x: Any, pick: Any) -> Any:
    """layer_rows(m, x)[pick], gathering only the picked patches of a conv: unfolding the whole
    input to keep a few hundred rows cost more than the layer's own forward."""
    import torch
    import torch.nn.functional as F

    if not isinstance(m, torch.nn.Conv2d):
        return x.reshape(-1, x.shape[-1])[pick]
    (kh, kw, sh, sw, ph, pw, dh, dw), oh, ow = _conv_geometry(m, x)
    n, pos = pick // (oh * ow), pick % (oh * ow)
    y0, x0 = (pos // ow) * sh, (pos % ow) * sw
    xp = F.pad(x, (pw, pw, ph, ph))
    # unfold's column order: channel-major, then kernel row, then kernel column.
    taps = [xp[n, :, y0 + ky * dh, x0 + kx * dw] for ky in range(kh) for kx in range(kw)]
    return torch.stack(taps, dim=2).reshape(pick.shape[0], -1)


def _add_moments(
    name: str,
    m: Any,
    x: Any,
    out: dict[str, tuple[Any, Any]],
    g: Any,
    threads: int,
    blocks: tuple[int, int],
    rows: int = MOMENT_ROWS,
) -> None:
    import torch

    if layer_dim(m) is None:
        return
    pick = torch.randperm(row_count(m, x), generator=g)[: rows + CHECK_ROWS]
    chosen = picked_rows(m, x, pick).float().contiguous()
    pair = out.get(name)
    if pair is None:
        dim = chosen.shape[1]
        pair = out[name] = (
            _core.SecondMoments.make(dim, blocks[0] if blocks[0] < dim else 0),
            _core.SecondMoments.make(dim, blocks[1] if blocks[1] < dim else 0),
        )
    # A fifth held out (at least one row when there are two): layers fed few rows per call (the
    # time embedding sees one row per sample) still get held-out rows over the calls.
    n_check = min(CHECK_ROWS, max(chosen.shape[0] // 5, 1 if chosen.shape[0] >= 2 else 0))
    fit, check = chosen[n_check:], chosen[:n_check]
    pair[0].add(fit.numpy(), threads)
    if n_check:
        pair[1].add(check.numpy(), threads)


def _keep_rows(
    name: str, m: Any, x: Any, out: dict[str, Any], per_call: int, max_rows: int, g: Any
) -> None:
    import torch

    dim = layer_dim(m)
    if dim is None:
        return
    cap = rows_cap(dim, max_rows)
    have = out.get(name)
    room = cap - (0 if have is None else have.shape[0])
    if room <= 0:
        return
    # The rows layer_rows would give, gathered without unfolding the whole input.
    pick = torch.randperm(row_count(m, x), generator=g)[: min(per_call, room)]
    new = picked_rows(m, x, pick)
    out[name] = new if have is None else torch.cat([have, new])
