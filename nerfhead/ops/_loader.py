"""Lazy access to the compiled extension ``nerfhead._C``.

``import nerfhead`` and ``import nerfhead.ops`` never import ``_C``; the first op that
runs on the CUDA backend calls ``load_extension()``. The result (module or the reason it
is missing) is cached so the failure is explained once, not on every call.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType


@lru_cache(maxsize=1)
def _try_import() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("nerfhead._C"), ""
    except ImportError as e:  # not built (CPU install, BUILD_NO_CUDA=1) or broken build
        return None, (f"nerfhead._C is not available ({e}); build it on a CUDA machine with "
                      f"`pip install --no-build-isolation -e .`")


def extension_available() -> bool:
    return _try_import()[0] is not None


def extension_error() -> str:
    """Why the extension cannot be used; empty string when it can."""
    return _try_import()[1]


def load_extension() -> ModuleType:
    """Return ``nerfhead._C`` or raise RuntimeError saying why it cannot be loaded."""
    mod, why = _try_import()
    if mod is None:
        raise RuntimeError(why)
    return mod
