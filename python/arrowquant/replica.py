"""A checkpoint rebuilt where its storage is not (scale-out workers without the driver's file
system, docs/scale-out.md): the driver packs the files a job reads (configs, indexes, vocabularies
whole; each .safetensors file as its header and the bytes of the tensors a task needs) into one
object that goes through Ray's object store; the worker writes it out under a local folder, the
.safetensors files at their full size with the other tensors' bytes left as holes (sparse: no
disk, never read), and runs the same job on that copy: same names, layout and tensor bytes, so
the same output."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SMALL_FILE = 32 << 20  # other files up to this size travel whole (configs, tokenizers)
_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".h5", ".gguf", ".pb")


@dataclass
class Replica:
    """`model`: the model's path relative to the copy's root. `files`: relative path -> (file
    size, [(offset, bytes)]); a file whose ranges do not cover it is sparse."""

    model: str
    # The bytes as uint8 arrays: Ray hands a worker numpy arrays as read-only views of the
    # object store (no copy into the worker's heap), where bytes would be copied.
    files: dict[str, tuple[int, list[tuple[int, np.ndarray]]]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """The bytes that travel."""
        return sum(int(b.nbytes) for _, ranges in self.files.values() for _, b in ranges)

    def build(self, where: Path) -> str:
        """Writes the copy under `where`; returns the model's path in it."""
        for rel, (size, ranges) in self.files.items():
            p = where / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                for offset, data in ranges:
                    f.seek(offset)
                    f.write(data.data)
                f.truncate(size)
        return str(where / self.model)


def _abs(path: str | Path) -> Path:
    """Absolute, symbolic links kept: a Hugging Face cache's snapshot folder links each file to
    a blob elsewhere, and the copy keeps the folder's names."""
    return Path(os.path.abspath(path))


def _root(model_path: str) -> tuple[Path, str]:
    p = _abs(model_path)
    return (p, ".") if p.is_dir() else (p.parent, p.name)


def _read(path: str | Path, offset: int, n: int) -> np.ndarray:
    out = np.empty(n, np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        if f.readinto(out.data) != n:
            raise OSError(f"{path}: fewer than {n} bytes at offset {offset}")
    return out


def _safetensors_header(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return _read(path, 0, 8 + n)


def _entries(root: Path, model: str) -> list[Path]:
    """The files of the model's folder (recursively), or beside its file."""
    found = root.rglob("*") if model == "." else root.iterdir()
    return [x for x in found if x.is_file()]


def replica_of(model_path: str, names: set[str] | None) -> Replica:
    """The copy of `model_path` that a job on tensors `names` (None: every tensor, e.g. to load
    the whole model) needs."""
    from arrowquant.checkpoint import load_checkpoint
    from arrowquant.errors import ConfigurationError

    root, model = _root(model_path)
    ck = load_checkpoint(model_path)
    out = Replica(model)
    entries = _entries(root, model)
    # The reader names a tensor file by its real path; the copy needs the name the model's
    # folder gives it (a link's, in a Hugging Face cache).
    named: dict[str, str] = {}
    for x in sorted(entries, key=lambda x: not x.is_symlink()):  # links first
        named.setdefault(os.path.realpath(x), str(x.relative_to(root)))

    def rel(path: str) -> str:
        r = named.get(os.path.realpath(path))
        if r is None:
            raise ConfigurationError(
                f"{model_path}: {path} is outside the model's folder; it cannot be sent to "
                "workers without the driver's storage"
            )
        return r

    tensor_files = sorted({f["path"] for c in ck.components for f in c["files"]})
    for f in tensor_files:
        out.files[rel(f)] = (os.path.getsize(f), [(0, _safetensors_header(Path(f)))])
    for info in ck.infos():
        if names is None or info.name in names:
            data = _read(info.file, info.offset, info.nbytes)
            out.files[rel(info.file)][1].append((info.offset, data))
    # Everything else the job may read: a folder's configs, indexes and vocabularies; beside a
    # file (a lone .safetensors, an index), the file itself and its JSON files (config.json).
    for p in entries:
        r = str(p.relative_to(root))
        if model != "." and r != model and p.suffix != ".json":
            continue
        if r in out.files or p.suffix in _WEIGHTS or p.suffix == ".safetensors":
            continue
        size = p.stat().st_size
        if size <= SMALL_FILE:
            out.files[r] = (size, [(0, _read(p, 0, size))])
    return out


class Built:
    """A replica written to a fresh local folder, removed on close()."""

    def __init__(self, replica: Replica) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aq-replica-"))
        try:
            self.path = replica.build(self.folder)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Built:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
