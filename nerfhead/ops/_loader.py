"""Lazy access to the compiled extension ``nerfhead._C`` and its operators.

``import nerfhead`` and ``import nerfhead.ops`` never import ``_C``; the first op that runs
on a kernel backend (``cpu`` or ``cuda``) calls ``load_extension()``. Importing ``_C``
registers the operators ``torch.ops.nerfhead.*`` (torch is imported first: the extension
links against torch's libraries). The result (the operator namespace, or the reason it is
missing) is cached so the failure is explained once, not on every call.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

# Must equal NERFHEAD_OPS_VERSION in csrc/ext.cpp: a _C built from older sources (a stale
# in-place build) has other operator schemas and is refused with the way to rebuild.
OPS_VERSION = 3
_REBUILD = ("rebuild it: `pip install --no-build-isolation -e .` (or `python3 setup.py "
            "build_ext --inplace`) in the nerfhead checkout")


def _import_module(name: str):
    return importlib.import_module(name)


@lru_cache(maxsize=1)
def _try_import() -> tuple[Any, Any, str]:
    """(module, torch.ops.nerfhead, '') or (None, None, why not)."""
    import torch  # first: nerfhead._C needs libc10/libtorch already loaded

    try:
        mod = _import_module("nerfhead._C")
    except ImportError as e:  # not built, or built against another torch
        return None, None, f"nerfhead._C cannot be imported ({e}); {_REBUILD}"
    version = getattr(mod, "OPS_VERSION", None)
    if version != OPS_VERSION:
        return None, None, (f"nerfhead._C at {mod.__file__} is a stale build (operators version "
                            f"{version}, this nerfhead needs {OPS_VERSION}); {_REBUILD}")
    return mod, torch.ops.nerfhead, ""


def extension_available() -> bool:
    return _try_import()[0] is not None


def extension_error() -> str:
    """Why the extension cannot be used; empty string when it can."""
    return _try_import()[2]


def extension_with_cuda() -> bool:
    """True when the loaded extension was built with its CUDA part."""
    mod = _try_import()[0]
    return bool(mod is not None and getattr(mod, "WITH_CUDA", 0))


def load_extension():
    """Return the operator namespace ``torch.ops.nerfhead`` or raise RuntimeError saying why
    ``nerfhead._C`` cannot be loaded."""
    mod, ops, why = _try_import()
    if mod is None:
        raise RuntimeError(why)
    return ops
