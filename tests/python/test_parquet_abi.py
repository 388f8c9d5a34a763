"""The C++ core (linked against the pyarrow wheel's Arrow C++) writes Parquet that pyarrow, loaded
in the same process, reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import safetensors.numpy

import arrowquant

DATA_PAGE_V2 = 3  # parquet.thrift PageType


def _page_type(path: Path, offset: int) -> int:
    """PageHeader field 1 (type, i32) in Thrift compact encoding: 0x15, then a zigzag varint."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(2)
    assert head[0] == 0x15, head
    return head[1] >> 1


def test_cpp_written_parquet_reads_in_pyarrow(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "w1": rng.standard_normal((8, 16)).astype(np.float32),
        "w2": rng.standard_normal((3,)).astype(np.float16),
        "ids": np.arange(5, dtype=np.int64),
        "empty": np.zeros((0,), np.float32),
    }
    src = tmp_path / "m.safetensors"
    safetensors.numpy.save_file(arrays, src)
    ck = arrowquant.load_checkpoint(str(src))
    out = tmp_path / "m.parquet"
    ck.write_tensor_table(str(out))
    assert not any(p.name.startswith("m.parquet.tmp") for p in tmp_path.iterdir())

    pf = pq.ParquetFile(out)
    assert pf.metadata.format_version == "2.6"
    table = pf.read()
    assert table.schema.field("data").type == pa.large_binary()
    assert table.schema.field("shape").type == pa.list_(pa.int64())
    rows = {r["name"]: r for r in table.to_pylist()}
    assert set(rows) == set(arrays)
    for name, a in arrays.items():
        assert rows[name]["data"] == a.tobytes()
        assert rows[name]["shape"] == list(a.shape)
    assert rows["w2"]["dtype"] == "F16"
    for rg in range(pf.metadata.num_row_groups):
        for c in range(pf.metadata.num_columns):
            col = pf.metadata.row_group(rg).column(c)
            assert _page_type(out, col.data_page_offset) == DATA_PAGE_V2
    # Page checksums were written: reading with verification on succeeds.
    pq.read_table(out, page_checksum_verification=True)
