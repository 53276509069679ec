"""Count the operations that make the host wait for the device (host syncs), on any device.

On CUDA a read-back (``.item()``, ``bool(t)``, ``int(t)``), ``nonzero``, boolean-mask
indexing (``x[mask]``, ``x[mask] = v``: their output size depends on the data), ``unique``,
``bincount``, ``masked_select``, ``repeat_interleave`` without ``output_size`` and a copy to
the host all block the CPU until the GPU has caught up; a loop that makes many of them per
frame leaves the GPU idle between them. ``torch.cuda.set_sync_debug_mode`` reports them,
but only on CUDA. :class:`HostSyncCounter` sees the same operators at the dispatcher on any
device (a ``TorchDispatchMode``), so a test on a CPU-only machine can assert how many
syncs a render loop would make on a GPU. It cannot see ``Tensor.tolist()`` or ``.numpy()`` of
a CPU tensor (no operator runs); code meant to be sync-free reads back with ``.item()``.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2",
           "unique_consecutive", "unique_dim", "bincount", "is_nonzero", "equal",
           "masked_scatter"}
_BOOL_INDEX = {"index", "index_put", "index_put_", "_index_put_impl_"}


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in (indices or ()))


def _to_host(name: str, args, kwargs) -> bool:
    if name not in ("_to_copy", "copy_") or not args:
        return False
    src = args[1] if name == "copy_" else args[0]
    dst_dev = args[0].device if name == "copy_" else kwargs.get("device")
    return (isinstance(src, torch.Tensor) and src.device.type != "cpu"
            and dst_dev is not None and torch.device(dst_dev).type == "cpu")


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...`` then ``c.total`` and ``c.by_op`` (op -> count)."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in _ALWAYS:
            self.by_op[name] += 1
        elif name in _BOOL_INDEX and _has_bool_index(args):
            self.by_op[f"{name}(bool mask)"] += 1
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.by_op[name] += 1
        elif _to_host(name, args, kwargs):
            self.by_op["copy to host"] += 1
        return func(*args, **kwargs)
