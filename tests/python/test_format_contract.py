"""docs/format.md is the contract: a decoder written from it alone reproduces every tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from format_decoder import decode

import arrowquant as aq

FORMATS = [
    (bits, scheme, sd, method)
    for bits in (2, 3, 4, 8)
    for scheme in ("asym", "sym")
    for sd in ("f16", "f32", "q6", "q7", "q8")
    for method in ("search", "minmax")
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    tensors: dict[str, object] = {}
    for i, (bits, scheme, sd, method) in enumerate(FORMATS):
        shape = [(24, 100), (8, 3, 3, 5), (70,)][i % 3]  # ragged last group, conv, 1-D
        w = rng.standard_t(4, size=shape).astype(np.float32) * 0.05
        g = [32, 64, 0, 128, 256][i % 5]
        name = f"q{i}.int{bits}-{scheme}-{sd}-{method}-g{g}"
        tensors[name] = aq.quantize(
            w, bits, group_size=g, scheme=scheme, method=method, scale_dtype=sd
        )
    tensors["bias.f32"] = rng.normal(size=33).astype(np.float32)
    tensors["ids.i64"] = np.arange(12, dtype=np.int64).reshape(3, 4)
    path = tmp_path_factory.mktemp("c") / "m.aq.parquet"
    aq.save(path, tensors, max_chunk_bytes=64)  # several chunks (rows / bytes) per tensor
    return path


def test_decoder_from_the_doc_matches_the_reader_bit_for_bit(model: Path) -> None:
    ours = decode(str(model))
    m = aq.open(model)
    assert set(ours) == set(m.names())
    assert any(m.info(n)["rows"] > 1 for n in m.names())  # chunking exercised
    for name, arr in ours.items():
        want = m.load([name], np.float32)[0]
        assert arr.dtype == want.dtype and arr.shape == want.shape, name
        assert arr.tobytes() == want.tobytes(), name
