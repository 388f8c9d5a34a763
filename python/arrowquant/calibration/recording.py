"""What calibration records over one batch of trajectories, and how batches merge.

A calibration set runs in batches; each batch is recorded from scratch (its own random row picks
and call sample, seeded by the batch's index) and the batches are merged in batch order: counts,
histograms, minima and maxima merge exactly, second moments are f64 sums added in that order,
kept rows are concatenated and the call samples merged as one uniform sample. So the result is
the same whether the batches ran in one process or spread over workers (scale_out), however many.
"""

from __future__ import annotations

import copyreg
import random
from dataclasses import dataclass, field
from typing import Any

import arrowquant._core as _core

# Layers' kept input rows (equalization search) stop at this many bytes each.
ROWS_BYTES = 8 << 20


def rows_cap(dim: int, max_rows: int) -> int:
    """Input rows kept for a layer of `dim` columns."""
    return min(max_rows, max(1, ROWS_BYTES // (4 * dim)))


@dataclass
class Recording:
    """One batch's (or several merged batches') calibration record."""

    collectors: dict[str, Any] = field(default_factory=dict)  # name -> ActivationCollector
    moments: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # (fit, held-out)
    rows: dict[str, Any] = field(default_factory=dict)  # name -> kept input rows [n, dim]
    calls: list[Any] = field(default_factory=list)  # a uniform sample of the denoiser's calls
    seen: int = 0  # denoiser calls the sample was drawn from
    worker_peak_rss: int = 0  # of the Ray worker that recorded it (scale_out), bytes

    def merge(self, other: Recording, max_rows: int, max_calls: int, rng: random.Random) -> None:
        """Adds the next batch's record (`rng`: seeded by that batch's index)."""
        import torch

        for name, col in other.collectors.items():
            mine = self.collectors.get(name)
            if mine is None:
                self.collectors[name] = col
                continue
            for s in col.stats():
                mine.merge(
                    s["timestep"], s["count"], s["min"], s["max"], s["absmax"], s["histogram"]
                )
        for name, (fit, check) in other.moments.items():
            pair = self.moments.get(name)
            if pair is None:
                self.moments[name] = (fit, check)
            else:
                pair[0].merge(fit)
                pair[1].merge(check)
        for name, rows in other.rows.items():
            have = self.rows.get(name)
            joined = rows if have is None else torch.cat([have, rows])
            self.rows[name] = joined[: rows_cap(int(joined.shape[1]), max_rows)]
        self.calls = merged_sample(self.calls, self.seen, other.calls, other.seen, max_calls, rng)
        self.seen += other.seen


def merged_sample(
    a: list[Any], seen_a: int, b: list[Any], seen_b: int, k: int, rng: random.Random
) -> list[Any]:
    """A uniform sample of up to k of seen_a + seen_b items from uniform samples of each part
    (reservoirs of min(k, seen) items): how many come from each part is drawn as sampling
    without replacement from the union would draw it."""
    take_a = 0
    left_a, left_b = seen_a, seen_b
    for _ in range(min(k, seen_a + seen_b)):
        if rng.randrange(left_a + left_b) < left_a:
            take_a += 1
            left_a -= 1
        else:
            left_b -= 1
    take_b = min(k, seen_a + seen_b) - take_a
    return _subset(a, take_a, rng) + _subset(b, take_b, rng)


def _subset(items: list[Any], n: int, rng: random.Random) -> list[Any]:
    """n of `items`, uniformly, in their order."""
    if n >= len(items):
        return list(items)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


# Records travel between processes (Ray workers): the C++ accumulators pickle by their contents.
def _restore_collector(channels: int, stats: list[dict[str, Any]]) -> Any:
    c = _core.ActivationCollector.make(channels)
    for s in stats:
        c.merge(s["timestep"], s["count"], s["min"], s["max"], s["absmax"], s["histogram"])
    return c


def _reduce_collector(c: Any) -> tuple[Any, tuple[Any, ...]]:
    return _restore_collector, (c.channels, list(c.stats()))


def _restore_moments(dim: int, block: int, data: Any, count: int) -> Any:
    h = _core.SecondMoments.make(dim, block)
    h.restore(data, count)
    return h


def _reduce_moments(h: Any) -> tuple[Any, tuple[Any, ...]]:
    block = 0 if h.block >= h.dim else h.block  # 0: the full matrix
    return _restore_moments, (h.dim, block, h.data(), h.count)


copyreg.pickle(_core.ActivationCollector, _reduce_collector)
copyreg.pickle(_core.SecondMoments, _reduce_moments)
