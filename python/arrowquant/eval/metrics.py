"""Paired image metrics, Fréchet distance and bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# A pair of identical images has infinite PSNR; it is counted as this many dB so that a mean over
# samples stays finite (and is stated in the report).
PSNR_CAP_DB = 100.0


def relative_error(ref: Any, test: Any) -> float:
    """||test - ref|| / ||ref|| of two torch tensors (in float64)."""
    d = float((test.double() - ref.double()).pow(2).sum().sqrt())
    n = float(ref.double().pow(2).sum().sqrt())
    return d / n if n > 0 else float("inf") if d > 0 else 0.0


def as_numpy(t: Any) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy())


def _unit(images: Any) -> np.ndarray:
    """[-1, 1] model space -> [0, 1], clipped as an image viewer would."""
    return (np.clip(np.asarray(images, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0


def psnr(ref: Any, test: Any) -> np.ndarray:
    """Per-sample PSNR in dB of [N, C, H, W] images in [-1, 1] (data range 1 after mapping)."""
    a, b = _unit(ref), _unit(test)
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(1.0 / mse)
    out: np.ndarray = np.minimum(db, PSNR_CAP_DB)
    return out


def ssim(ref: Any, test: Any) -> np.ndarray:
    """Per-sample SSIM (scikit-image, 7x7 window, channels averaged) on [0, 1] images."""
    from skimage.metrics import structural_similarity

    a, b = _unit(ref), _unit(test)
    win = min(7, a.shape[-1], a.shape[-2])
    win -= 1 - win % 2  # odd
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        out[i] = np.mean(
            [
                structural_similarity(  # type: ignore[no-untyped-call]
                    a[i, c], b[i, c], data_range=1.0, win_size=win
                )
                for c in range(a.shape[1])
            ]
        )
    return out


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (FID's formula)."""
    import warnings

    from scipy import linalg

    mu_a, mu_b = feat_a.mean(axis=0), feat_b.mean(axis=0)
    sa = np.cov(feat_a, rowvar=False)
    sb = np.cov(feat_b, rowvar=False)
    with warnings.catch_warnings():
        # Dead ReLU features make the covariances singular; sqrtm still returns the right
        # square root of the (PSD) product, and non-finite results are retried regularised.
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sa @ sb)
        if not np.isfinite(covmean).all():
            eps = 1e-6 * np.eye(sa.shape[0])
            covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean))


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over `n` paired samples."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(rounds)])
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_normal_ci(
    value: float,
    n: int,
    statistic: Callable[[np.ndarray], float],
    rounds: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """value +- 1.96 bootstrap standard errors. For statistics biased under resampling (the
    Fréchet distance grows when a resample repeats samples), percentile intervals can miss the
    estimate itself; the normal interval keeps it at the centre."""
    rng = np.random.default_rng(seed)
    reps = np.array([statistic(rng.integers(0, n, n)) for _ in range(rounds)])
    se = float(reps.std(ddof=1))
    return max(0.0, value - 1.96 * se), value + 1.96 * se


def mean_ci(values: np.ndarray, rounds: int = 1000, seed: int = 0) -> dict[str, Any]:
    lo, hi = bootstrap_ci(len(values), lambda i: float(values[i].mean()), rounds, seed)
    return {"mean": float(values.mean()), "ci95": [lo, hi]}
