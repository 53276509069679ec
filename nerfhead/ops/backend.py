"""One place that decides which implementation runs each op family.

Backends: ``torch`` (pure-PyTorch references, any device), ``cuda`` (our kernels in
``nerfhead._C``, CUDA tensors only), ``tcnn`` (tinycudann, hash grid only) and
``nerfacc`` (sampling / compositing only). ``auto`` picks ``cuda`` for CUDA tensors when
the extension loads, else ``torch``, and logs its choice and the reason once per family.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from nerfhead.ops._loader import extension_available, extension_error

log = logging.getLogger("nerfhead.ops")

Family = Literal["hashgrid", "raymarch"]
Backend = Literal["auto", "cuda", "torch", "tcnn", "nerfacc"]

_OPTIONAL = {"hashgrid": "tcnn", "raymarch": "nerfacc"}
_MODULE = {"tcnn": "tinycudann", "nerfacc": "nerfacc"}
_announced: set[tuple[str, str, str]] = set()


def optional_backend_error(name: str) -> str:
    """Why optional backend ``name`` cannot run here; empty string when it can."""
    mod = _MODULE[name]
    if importlib.util.find_spec(mod) is None:
        return f"{mod} is not installed"
    try:
        importlib.import_module(mod)
    except Exception as e:  # a broken install raises all sorts of things at import
        return f"{mod} failed to import: {e}"
    return ""


def available_backends(family: Family) -> dict[str, str]:
    """Map backend name -> '' if usable, else the reason it is not (for ``nerfhead info``)."""
    import torch

    out = {"torch": ""}
    if not torch.cuda.is_available():
        out["cuda"] = "no CUDA device" if extension_available() else extension_error()
    else:
        out["cuda"] = extension_error()
    opt = _OPTIONAL[family]
    out[opt] = optional_backend_error(opt)
    if not out[opt] and not torch.cuda.is_available():
        out[opt] = f"{_MODULE[opt]} imports but needs a CUDA device"
    return out


def resolve_backend(family: Family, requested: str, device) -> str:
    """Concrete backend for ``family`` on ``device``; raises if an explicit choice cannot run."""
    import torch

    device = torch.device(device)
    if requested not in ("auto", "cuda", "torch", _OPTIONAL[family]):
        raise ValueError(f"backend {requested!r} is not valid for {family}; "
                         f"choose auto, cuda, torch or {_OPTIONAL[family]}")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        if device.type == "cuda" and extension_available():
            choice, why = "cuda", "CUDA tensor and nerfhead._C loaded"
        elif device.type == "cuda":
            choice, why = "torch", extension_error()
        else:
            choice, why = "torch", f"tensors on {device.type}"
        key = (family, choice, why)
        if key not in _announced:
            _announced.add(key)
            log.info("%s backend: auto -> %s (%s)", family, choice, why)
        return choice
    if device.type != "cuda":
        raise RuntimeError(f"{family} backend {requested!r} needs CUDA tensors, got {device}")
    if requested == "cuda":
        if not extension_available():
            raise RuntimeError(extension_error())
        return "cuda"
    why = optional_backend_error(requested)
    if why:
        raise RuntimeError(f"{family} backend {requested!r} unavailable: {why}")
    return requested
