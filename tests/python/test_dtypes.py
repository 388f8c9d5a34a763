"""Python's dtype handling comes from the core's one table (_core.DTYPES)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import arrowquant as aq
import arrowquant._core as _core
from arrowquant.dtypes import QUANTIZABLE, core_name, float_core_name, numpy_dtype
from arrowquant.errors import ConfigurationError


@pytest.mark.parametrize("entry", list(_core.DTYPES), ids=lambda d: str(d["name"]))
def test_every_core_dtype_maps_both_ways(entry: dict[str, object]) -> None:
    core = str(entry["name"])
    np_dtype = numpy_dtype(core)
    assert np_dtype.itemsize * 8 == entry["bits"]
    assert core_name(np_dtype) == core
    assert core_name(core.lower()) == core
    torch_dtype = getattr(torch, str(entry["array_name"]), None)
    if torch_dtype is not None:
        assert core_name(torch_dtype) == core


def test_quantizable_is_the_core_flag() -> None:
    assert set(QUANTIZABLE) == {str(d["name"]) for d in _core.DTYPES if d["quantizable"]}
    assert float_core_name("bf16", "x") == "BF16" and float_core_name(torch.half, "x") == "F16"
    with pytest.raises(ConfigurationError, match="int8 is not one of float32, float16, bfloat16"):
        float_core_name(np.int8, "quantize")


def test_every_core_dtype_is_stored_and_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for entry in _core.DTYPES:
        core = str(entry["name"])
        values = rng.integers(0, 2, size=(3, 5)) if core == "BOOL" else rng.integers(0, 7, (3, 5))
        tensors[core] = values.astype(numpy_dtype(core))
    aq.save(tmp_path / "all.parquet", tensors)
    model = aq.open(tmp_path / "all.parquet")
    for core, want in tensors.items():
        assert model.info(core)["dtype"] == core
        got = model.raw(core)
        assert got.dtype == want.dtype and got.shape == want.shape, core
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8), err_msg=core)
