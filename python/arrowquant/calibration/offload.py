"""The sensitivity replay's saved activations in a scratch file instead of memory.

A backward pass needs the activations its forward saved: for an SD1.5-sized UNet and one
64x64 latent, 1.8 GiB on top of the model (a third of it transposed attention operands). Under
`offloaded(module)`, every saved tensor of at least MIN_BYTES that is not one of the module's
parameters is written to an unnamed temporary file when autograd saves it and read back when the
backward needs it (twice when the graph is retained for a second probe). The values are the
same; the memory is the page cache's, which the system can reclaim, not the process's. The
backward must run inside the block: the file is gone after it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

MIN_BYTES = 1 << 20  # smaller tensors stay in memory: not worth a write


def append(f: Any, t: Any) -> int:
    """Writes tensor `t`'s bytes (contiguous, CPU) at the end of scratch file `f`; returns where."""
    import torch

    f.seek(0, 2)
    at: int = f.tell()
    f.write(t.detach().reshape(-1).view(torch.uint8).numpy().data)
    return at


def read(f: Any, at: int, nbytes: int) -> Any:
    """`nbytes` bytes of scratch file `f` from `at`, as a uint8 tensor."""
    import torch

    f.seek(at)
    return torch.from_numpy(np.fromfile(f, dtype=np.uint8, count=nbytes))


@contextlib.contextmanager
def offloaded(module: Any) -> Iterator[None]:
    import torch

    params = {p.untyped_storage().data_ptr() for p in module.parameters()}

    with tempfile.TemporaryFile(prefix="aq-saved-") as f:
        # A saved tensor is stored as its whole storage and read back with the same strides and
        # offset (the backward sees exactly the layout it saved: transposed attention operands
        # included). Not shared between saved views: once packed, a tensor may be freed and its
        # memory reused by another at the same address.

        def pack(t: Any) -> Any:
            size = t.numel() * t.element_size()
            storage = t.untyped_storage()
            if t.device.type != "cpu" or size < MIN_BYTES or storage.data_ptr() in params:
                return t
            if storage.nbytes() > 4 * size:  # a small view of a big buffer: just its values
                c = t.detach().contiguous()
                return (
                    append(f, c),
                    size,
                    t.dtype,
                    t.shape,
                    c.stride(),
                    0,
                )
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),), (1,))
            return (
                append(f, raw),
                storage.nbytes(),
                t.dtype,
                t.shape,
                t.stride(),
                t.storage_offset(),
            )

        def unpack(saved: Any) -> Any:
            if isinstance(saved, torch.Tensor):
                return saved
            at, nbytes, dtype, shape, stride, offset = saved
            return torch.as_strided(read(f, at, nbytes).view(dtype), shape, stride, offset)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
