"""`nerfhead bench kernels` runs on CPU and reports every usable backend side by side."""

import json
from types import SimpleNamespace

import torch

from nerfhead.ops import bench_kernels
from nerfhead.ops._loader import extension_available


def test_half_occupied_grid_is_about_half():
    grid = bench_kernels._half_occupied_grid(torch.device("cpu"), 32)
    assert 0.4 < grid.occupancy_fraction() < 0.6


def test_bench_runs_small_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    args = SimpleNamespace(device="cpu", quick=True, json=str(out), points=512, rays=64,
                           levels=4, repeats=1)
    assert bench_kernels.run(args) == 0
    data = json.loads(out.read_text())
    workloads = {(r["workload"], r["backend"]) for r in data["rows"]}
    expected = {("encode 3D", "torch"), ("encode 2D", "torch"), ("march+composite", "torch")}
    if extension_available():  # the C++ kernels beside the references, in the same run
        expected |= {(w, "cpu") for w, _ in expected}
    assert workloads == expected
    for r in data["rows"]:
        assert r["per_second"] > 0
        assert r["speedup"] == 1.0 if r["backend"] == "torch" else r["speedup"] > 0
