"""Writes the seed corpora of the fuzz targets (committed under corpus/; rerun to refresh):
`make_seeds.py [TARGET...]`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import safetensors.numpy

import arrowquant as aq

HERE = Path(__file__).resolve().parent / "corpus"


def safetensors_seeds(d: Path) -> None:
    rng = np.random.default_rng(0)
    safetensors.numpy.save_file(
        {"a": rng.normal(size=(4, 4)).astype(np.float32), "b": np.zeros(3, np.float16)},
        d / "two.safetensors",
        metadata={"format": "pt"},
    )
    safetensors.numpy.save_file({"e": np.zeros((0, 4), np.float32)}, d / "empty.safetensors")
    header = b'{"x":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]}}'
    (d / "bf16.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    (d / "huge_claim.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")


def index_seeds(d: Path) -> None:
    (d / "ok.json").write_text(
        json.dumps({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}})
    )
    (d / "escape.json").write_text(json.dumps({"weight_map": {"z": "../outside.safetensors"}}))
    (d / "meta.json").write_text(
        json.dumps({"metadata": {"total_size": 16}, "weight_map": {"x": "a.safetensors"}})
    )


def model_seeds(d: Path) -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (8, 64)).astype(np.float32)
    tensors = {f"w{b}": aq.quantize(w, bits=b) for b in (2, 4, 8)}
    tensors["bias"] = np.zeros(8, np.float16)  # type: ignore[assignment]
    aq.save(d / "small.parquet", tensors)
    aq.save(d / "one.parquet", {"w": aq.quantize(w[:2, :32], bits=4, group_size=32)})


def calibration_data_seeds(d: Path) -> None:
    """First byte: 0 JSONL, 1 Parquet, 2.. the files of a saved dataset in name order (the
    target's own choice: see fuzz_calibration_data.py)."""
    import tempfile

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "a thin zero"}, {"label": 7}, {"text": "a seven", "label": None}]
    (d / "rows.jsonl").write_bytes(b"\0" + "\n".join(json.dumps(r) for r in rows).encode())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"label": [1, 2, 3]}), sink)
    (d / "labels.parquet").write_bytes(b"\1" + sink.getvalue().to_pybytes())
    with tempfile.TemporaryDirectory() as tmp:
        ds = datasets.Dataset.from_dict({"prompt": ["a thin zero", "a handwritten seven"]})
        ds.save_to_disk(tmp)
        for i, name in enumerate(sorted(p.name for p in Path(tmp).iterdir())):
            (d / f"dataset-{name}").write_bytes(bytes([2 + i]) + (Path(tmp) / name).read_bytes())


def gguf_seeds(d: Path) -> None:
    """Files from gguf's own writer (the reference): metadata of every kind, float and block
    tensors."""
    import gguf

    rng = np.random.default_rng(2)
    w = gguf.GGUFWriter(str(d / "small.gguf"), "diffusers")
    w.add_uint32("u", 7)
    w.add_float32("f", 0.5)
    w.add_bool("b", True)
    w.add_array("names", ["a", "bc"])
    w.add_array("ints", [1, 2, 3])
    w.add_string("s", "text")
    x = rng.normal(0, 0.02, (2, 256)).astype(np.float32)
    w.add_tensor(
        "q8",
        gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    w.add_tensor(
        "q4",
        gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0),
        raw_dtype=gguf.GGMLQuantizationType.Q4_0,
    )
    w.add_tensor("f16", x[:, :8].astype(np.float16))
    w.add_tensor("f32", x[0, :4].copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(only: list[str]) -> None:
    for name, fn in [
        ("fuzz_safetensors", safetensors_seeds),
        ("fuzz_sharded_index", index_seeds),
        ("fuzz_model_reader", model_seeds),
        ("fuzz_calibration_data", calibration_data_seeds),
        ("fuzz_gguf", gguf_seeds),
    ]:
        if only and name not in only:
            continue
        d = HERE / name
        d.mkdir(parents=True, exist_ok=True)
        fn(d)
        print(name, sorted(p.name for p in d.iterdir()))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])  # target names, or none for all
