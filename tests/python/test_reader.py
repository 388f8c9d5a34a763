"""The SafeTensors reader against files written by the reference writers."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import arrowquant
from arrowquant import load_checkpoint
from models_util import tiny_clip_text, tiny_unet

NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
TORCH_ONLY = {
    "BF16": (torch.bfloat16, ml_dtypes.bfloat16),
    "F8_E4M3": (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
    "F8_E5M2": (torch.float8_e5m2, ml_dtypes.float8_e5m2),
}


def _torch_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def test_every_dtype_written_by_safetensors_reads_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for name, dt in NUMPY_DTYPES.items():
        raw = rng.integers(0, 256, size=48, dtype=np.uint8)
        arr = (raw % 2).astype(bool) if name == "BOOL" else raw.view(dt)
        arrays[f"t_{name}"] = arr.reshape(2, -1)
    arrays["scalar"] = np.array(3.5, dtype=np.float32)
    arrays["empty"] = np.zeros((0, 4), dtype=np.float16)
    safetensors.numpy.save_file(arrays, tmp_path / "np.safetensors", metadata={"k": "v"})
    ck = load_checkpoint(str(tmp_path / "np.safetensors"))
    assert ck.layout == "single-file"
    assert ck.metadata() == {str(tmp_path / "np.safetensors"): {"k": "v"}}
    for name, ref in arrays.items():
        got = ck.numpy(name)
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert got.tobytes() == ref.tobytes(), name
        assert ck.raw(name).tobytes() == ref.tobytes()

    tensors = {}
    for name, (tdt, _) in TORCH_ONLY.items():
        tensors[f"t_{name}"] = torch.randn(4, 6).to(tdt)
    tensors["nan_bf16"] = torch.tensor([float("nan"), -0.0, float("inf")]).to(torch.bfloat16)
    safetensors.torch.save_file(tensors, tmp_path / "pt.safetensors")
    ck = load_checkpoint(str(tmp_path / "pt.safetensors"))
    for name, t in tensors.items():
        info = ck.info(name)
        assert info.shape == tuple(t.shape)
        assert ck.raw(name).tobytes() == _torch_bytes(t), name
    assert ck.numpy("t_BF16").dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        ck.numpy("t_BF16").astype(np.float32), tensors["t_BF16"].float().numpy()
    )
    assert ck.numpy("t_F8_E4M3").dtype == ml_dtypes.float8_e4m3fn


def test_views_are_zero_copy_read_only_and_outlive_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"w": np.arange(1024, dtype=np.float32)}, path)
    ck = load_checkpoint(str(path))
    a = ck.numpy("w")
    b = ck.numpy("w")
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    info = ck.info("w")
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1.0
    del ck, b
    gc.collect()
    np.testing.assert_array_equal(a, np.arange(1024, dtype=np.float32))
    assert info.offset == os.path.getsize(path) - 4096


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_diffusers_sharded_save_pretrained_reads_bit_exact(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    model = tiny_unet().to(dtype)
    model.save_pretrained(tmp_path / "unet", max_shard_size="60KB")
    shards = list((tmp_path / "unet").glob("*.safetensors"))
    assert len(shards) > 3
    ck = load_checkpoint(str(tmp_path / "unet"))
    assert ck.layout == "sharded"
    sd = model.state_dict()
    assert sorted(ck.names()) == sorted(sd)
    for name, t in sd.items():
        assert ck.raw(name).tobytes() == _torch_bytes(t), name
    assert ck.components[0]["class_name"] == "UNet2DModel"
    # The index file itself is also a valid entry point.
    index = tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    assert len(load_checkpoint(str(index))) == len(sd)


def test_transformers_sharded_save_pretrained_reads_bit_exact(tmp_path: Path) -> None:
    model = tiny_clip_text()
    model.save_pretrained(tmp_path / "te", max_shard_size="20KB")
    ck = load_checkpoint(str(tmp_path / "te"))
    assert ck.layout == "sharded"
    sd = safetensors.torch.load_file  # reference loader for the same files
    for shard in {i.file for i in ck.infos()}:
        for name, t in sd(shard).items():
            assert ck.raw(name).tobytes() == _torch_bytes(t), name


def test_diffusers_pipeline_folder(tmp_path: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = tiny_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(
        tmp_path / "pipe", max_shard_size="100KB"
    )
    ck = load_checkpoint(str(tmp_path / "pipe"))
    assert ck.layout == "diffusers-pipeline"
    assert [c["name"] for c in ck.components] == ["unet"]
    assert ck.components[0]["class_name"] == "UNet2DModel"
    for name, t in unet.state_dict().items():
        assert ck.raw(f"unet/{name}").tobytes() == _torch_bytes(t)


def _write_raw(path: Path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def test_errors_are_typed_and_name_file_and_tensor(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    _write_raw(bad, b'{"conv.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8)
    with pytest.raises(arrowquant.ShapeMismatchError) as ei:
        load_checkpoint(str(bad))
    assert ei.value.code == "SizeMismatch"
    assert str(bad) in str(ei.value) and "'conv.weight'" in str(ei.value)

    bad.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    with pytest.raises(arrowquant.MalformedModelError) as ei:
        load_checkpoint(str(bad))
    assert ei.value.code == "HeaderTooLarge"

    with pytest.raises(arrowquant.ModelNotFoundError):
        load_checkpoint(str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError):  # also a builtin category
        load_checkpoint(str(tmp_path / "missing"))

    (tmp_path / "m").mkdir()
    safetensors.numpy.save_file({"a": np.zeros(2, np.float32)}, tmp_path / "outside.safetensors")
    (tmp_path / "m" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../outside.safetensors"}})
    )
    with pytest.raises(arrowquant.UnsafePathError) as ei:
        load_checkpoint(str(tmp_path / "m"))
    assert ei.value.code == "PathEscape"

    _write_raw(bad, b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    with pytest.raises(arrowquant.LimitExceededError):
        load_checkpoint(str(bad), max_tensor_bytes=2)
    with pytest.raises(arrowquant.ModelNotFoundError):
        load_checkpoint(str(bad)).info("nope")


def test_input_file_is_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"w": np.ones(16, np.float32)}, path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    ck = load_checkpoint(str(path))
    ck.numpy("w").sum()
    ck.write_tensor_table(str(tmp_path / "t.parquet"))
    del ck
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
