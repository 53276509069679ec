"""One place that decides which implementation runs each op family.

Backends:

* ``torch``: the pure-PyTorch references (any device; the specification of every op);
* ``cpu``: our kernels in ``nerfhead._C`` on CPU tensors (the C++ launcher of the same
  per-item bodies the CUDA kernels run);
* ``cuda``: our kernels in ``nerfhead._C`` on CUDA tensors;
* ``tcnn`` (tinycudann, hash grid only) and ``nerfacc`` (sampling / compositing only), CUDA.

``auto`` picks ``cuda`` for CUDA tensors and ``cpu`` for CPU tensors when the extension
loads (with its CUDA part, for CUDA tensors), else ``torch``, and logs its choice and the
reason once per family.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from nerfhead.ops._loader import extension_available, extension_error, extension_with_cuda

log = logging.getLogger("nerfhead.ops")

Family = Literal["hashgrid", "raymarch"]
Backend = Literal["auto", "cpu", "cuda", "torch", "tcnn", "nerfacc"]

KERNEL_BACKENDS = ("cpu", "cuda")
"""Backends that run nerfhead._C (the same operators; they dispatch on the tensors' device)."""

_OPTIONAL = {"hashgrid": "tcnn", "raymarch": "nerfacc"}
_MODULE = {"tcnn": "tinycudann", "nerfacc": "nerfacc"}
_NO_CUDA_PART = ("nerfhead._C was built without its CUDA part (CPU-only torch, no nvcc or "
                 "BUILD_NO_CUDA=1 at build time; the `[nerfhead setup]` line of the install log "
                 "says which)")
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


def _cuda_error() -> str:
    import torch

    if not extension_available():
        return extension_error()
    if not extension_with_cuda():
        return _NO_CUDA_PART
    if not torch.cuda.is_available():
        return "no CUDA device"
    return ""


def available_backends(family: Family) -> dict[str, str]:
    """Map backend name -> '' if usable, else the reason it is not (for ``nerfhead info``)."""
    import torch

    out = {"torch": "", "cpu": extension_error(), "cuda": _cuda_error()}
    opt = _OPTIONAL[family]
    out[opt] = optional_backend_error(opt)
    if not out[opt] and not torch.cuda.is_available():
        out[opt] = f"{_MODULE[opt]} imports but needs a CUDA device"
    return out


def _announce(family: str, choice: str, why: str) -> None:
    key = (family, choice, why)
    if key not in _announced:
        _announced.add(key)
        log.info("%s backend: auto -> %s (%s)", family, choice, why)


def resolve_backend(family: Family, requested: str, device) -> str:
    """Concrete backend for ``family`` on ``device``; raises if an explicit choice cannot run."""
    import torch

    device = torch.device(device)
    valid = ("auto", "cpu", "cuda", "torch", _OPTIONAL[family])
    if requested not in valid:
        raise ValueError(f"backend {requested!r} is not valid for {family}; choose {', '.join(valid)}")
    if requested == "torch":
        return "torch"
    if requested == "auto":
        if device.type == "cuda":
            why = _cuda_error()
            choice, why = ("cuda", "CUDA tensors, nerfhead._C loaded") if not why else ("torch", why)
        elif device.type == "cpu" and extension_available():
            choice, why = "cpu", "CPU tensors, nerfhead._C loaded: C++ kernels"
        elif device.type == "cpu":
            choice, why = "torch", extension_error()
        else:
            choice, why = "torch", f"tensors on {device.type}"
        _announce(family, choice, why)
        return choice
    if requested == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"{family} backend 'cpu' runs the C++ kernels on CPU tensors, got {device}")
        if not extension_available():
            raise RuntimeError(extension_error())
        return "cpu"
    if device.type != "cuda":
        raise RuntimeError(f"{family} backend {requested!r} needs CUDA tensors, got {device}")
    if requested == "cuda":
        why = _cuda_error()
        if why:
            raise RuntimeError(f"{family} backend 'cuda' unavailable: {why}")
        return "cuda"
    why = optional_backend_error(requested)
    if why:
        raise RuntimeError(f"{family} backend {requested!r} unavailable: {why}")
    return requested
