"""The one backend resolver: `auto` picks our kernels on CPU tensors (backend `cpu`) when
nerfhead._C loads and says so once; explicit choices refuse the wrong device; a missing or
stale extension falls back to the torch references with the reason; training-path ops on
CPU tensors run the kernels."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from nerfhead.ops import _loader, backend
from nerfhead.ops.hashgrid import HashGridConfig, HashGridEncoding
from nerfhead.ops.raymarch import composite_rays_train

needs_ext = pytest.mark.skipif(not _loader.extension_available(), reason=_loader.extension_error() or "no ext")


@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(backend, "_announced", set())


@needs_ext
def test_auto_picks_the_cpu_kernels_and_says_so_once(fresh_announcements, caplog):
    with caplog.at_level(logging.INFO, logger="nerfhead.ops"):
        assert backend.resolve_backend("hashgrid", "auto", "cpu") == "cpu"
        assert backend.resolve_backend("hashgrid", "auto", torch.device("cpu")) == "cpu"
        assert backend.resolve_backend("raymarch", "auto", "cpu") == "cpu"
    said = [r.getMessage() for r in caplog.records]
    assert said == ["hashgrid backend: auto -> cpu (CPU tensors, nerfhead._C loaded: C++ kernels)",
                    "raymarch backend: auto -> cpu (CPU tensors, nerfhead._C loaded: C++ kernels)"]
    assert backend.available_backends("raymarch")["cpu"] == ""


def test_explicit_backends_refuse_the_wrong_device():
    with pytest.raises(RuntimeError, match="'cpu' runs the C\\+\\+ kernels on CPU tensors, got cuda"):
        backend.resolve_backend("hashgrid", "cpu", "cuda")
    with pytest.raises(RuntimeError, match="'cuda' needs CUDA tensors, got cpu"):
        backend.resolve_backend("raymarch", "cuda", "cpu")
    with pytest.raises(ValueError, match="choose auto, cpu, cuda, torch, tcnn"):
        backend.resolve_backend("hashgrid", "nerfacc", "cpu")
    assert backend.resolve_backend("raymarch", "torch", "cpu") == "torch"


def test_missing_or_stale_extension_falls_back_to_torch_with_the_reason(monkeypatch, fresh_announcements, caplog):
    stale = SimpleNamespace(OPS_VERSION=_loader.OPS_VERSION - 1, __file__="/x/nerfhead/_C.so")
    monkeypatch.setattr(_loader, "_import_module", lambda name: stale)
    _loader._try_import.cache_clear()
    try:
        why = _loader.extension_error()
        assert "stale build" in why and "/x/nerfhead/_C.so" in why and "build_ext --inplace" in why
        with caplog.at_level(logging.INFO, logger="nerfhead.ops"):
            assert backend.resolve_backend("hashgrid", "auto", "cpu") == "torch"
        assert "stale build" in caplog.records[-1].getMessage()
        with pytest.raises(RuntimeError, match="stale build"):
            backend.resolve_backend("hashgrid", "cpu", "cpu")
        assert backend.available_backends("hashgrid")["cpu"] == why
    finally:
        monkeypatch.undo()
        _loader._try_import.cache_clear()


@needs_ext
def test_training_path_ops_on_cpu_run_the_kernels(monkeypatch):
    """The model's encodings and the composite (backend 'auto', as ModelConfig) call
    torch.ops.nerfhead on CPU tensors."""
    calls = []
    ops = _loader.load_extension()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(ops, name)

    monkeypatch.setattr(_loader, "load_extension", lambda: Spy())
    cfg = HashGridConfig(input_dim=2, num_levels=4, features_per_level=2, log2_hashmap_size=8)
    enc = HashGridEncoding(cfg)
    enc(torch.rand(16, 2)).sum().backward()
    assert calls == ["hashgrid_forward", "hashgrid_backward_table"]
    calls.clear()
    info = torch.tensor([[0, 3], [3, 2]], dtype=torch.int32)
    sig = torch.rand(5, requires_grad=True)
    _, ws, _, _ = composite_rays_train(sig, torch.rand(5, 3), torch.full((5,), 0.1), info, ts=torch.arange(5.0))
    ws.sum().backward()
    assert calls == ["composite_rays_train_forward", "composite_rays_train_backward"]


@needs_ext
def test_info_lists_the_cpu_backend():
    out = subprocess.run([sys.executable, "-m", "nerfhead", "info", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["extension"].startswith("loaded (C++ kernels")
    for fam in ("hashgrid", "raymarch"):
        assert info["backends"][fam]["cpu"] == ""
        if not torch.cuda.is_available():
            assert info["backends"][fam]["cuda"]  # no CUDA here: a reason
