"""``nerfhead bench kernels``: our ops against their references, side by side in one run.

Two workloads, each timed for every backend that can run on the chosen device:

* ``encode``: hash-grid encoding forward + backward (gradient to the table) of N points,
  for the 3D grid and for the 2D grids of the tri-plane field; reported as points/s.
* ``march+composite``: ``march_rays_train`` through an occupancy grid with about half of its
  cells occupied, a cheap analytic field, then ``composite_rays_train`` forward + backward;
  reported as rays/s (and samples per ray).

Backends: ``torch`` (the references) and every other backend that runs on the device:
``cpu`` (our C++ kernels) on a CPU; ``cuda`` (our kernels) and, where they import, ``tcnn`` /
``nerfacc`` on a GPU. They take turns call by call, so a load change on a shared machine
hits all of them alike. Training sizes (the defaults on a GPU) are 2**18 points x 16 levels
and 65,536 rays; a CPU run uses smaller sizes unless ``--full`` (the torch reference on 2
cores is slow). Ratios are against the ``torch`` row measured in the same run on the same
device.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import torch

from nerfhead.ops.backend import available_backends
from nerfhead.ops.hashgrid import HashGridConfig, hashgrid_encode
from nerfhead.ops.occupancy import OccupancyGrid, packbits
from nerfhead.ops.raymarch import composite_rays_train, march_rays_train, near_far_from_aabb


@dataclass
class BenchRow:
    workload: str  #: "encode 3D", "encode 2D", "march+composite"
    backend: str  #: torch | cuda | tcnn | nerfacc
    size: int  #: points or rays per call
    ms: float  #: median milliseconds per call (forward + backward)
    per_second: float  #: points/s or rays/s
    speedup: float  #: torch-row ms / this row's ms (same run, same device)
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fns: dict, device: torch.device, repeats: int, warmup: int = 2) -> dict:
    """Median wall milliseconds of each ``fns[name]()`` over ``repeats`` calls after ``warmup``.

    The backends take turns call by call (A, B, A, B, ...), so on a machine shared with other
    work both see the same load and their ratio stays meaningful when the load changes."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def _usable(family: str, device: torch.device) -> list[str]:
    """torch first, then every other backend that runs on ``device`` here."""
    status = available_backends(family)
    on_device = ("cpu",) if device.type == "cpu" else tuple(b for b in status if b not in ("torch", "cpu"))
    return ["torch"] + [b for b in on_device if not status[b]]


def bench_encode(dim: int, n_points: int, levels: int, device: torch.device, repeats: int,
                 log2_hashmap_size: int = 19) -> list[BenchRow]:
    cfg = HashGridConfig(input_dim=dim, num_levels=levels, features_per_level=2,
                         log2_hashmap_size=log2_hashmap_size, base_resolution=16,
                         per_level_scale=2.0 if dim == 3 else 1.5)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(n_points, dim, generator=gen).to(device)
    table = (torch.rand(cfg.num_rows(), 2, generator=gen) * 2e-4 - 1e-4).to(device)
    table.requires_grad_(True)
    grad = torch.ones(n_points, cfg.out_dim, device=device)

    def step(backend):
        table.grad = None
        hashgrid_encode(x, table, cfg, backend=backend).backward(grad)

    backends = _usable("hashgrid", device)
    ms = _time({b: (lambda b=b: step(b)) for b in backends}, device, repeats)
    return [BenchRow(f"encode {dim}D", b, n_points, ms[b], n_points / ms[b] * 1e3, 1.0,
                     f"{levels} levels x 2 features, 2^{log2_hashmap_size} rows") for b in backends]


def _half_occupied_grid(device: torch.device, resolution: int) -> OccupancyGrid:
    """A grid whose occupied cells fill a sphere holding about half the cube's volume."""
    grid = OccupancyGrid(bound=1.0, resolution=resolution, cascades=1).to(device)
    idx = torch.arange(resolution ** 3, device=device)
    centres = grid.cell_centers(0, idx)
    radius = (3 * 0.5 * 8 / (4 * math.pi)) ** (1 / 3)  # sphere volume = half of [-1,1]^3
    grid.density_grid[0] = (centres.norm(dim=-1) < radius).float() * 10
    grid.bitfield.copy_(packbits(grid.density_grid, 0.01, backend="torch"))
    return grid


def bench_march_composite(n_rays: int, device: torch.device, repeats: int,
                          resolution: int = 128) -> list[BenchRow]:
    grid = _half_occupied_grid(device, resolution)
    gen = torch.Generator(device="cpu").manual_seed(0)
    # cameras on a sphere of radius 3 looking at the origin, jittered directions
    origins = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen), dim=-1) * 3
    target = torch.randn(n_rays, 3, generator=gen) * 0.3
    dirs = torch.nn.functional.normalize(target - origins, dim=-1)
    rays_o, rays_d = origins.to(device), dirs.to(device)
    noise = torch.rand(n_rays, generator=gen).to(device)
    samples_per_ray = {}

    def step(backend):
        nears, fars = near_far_from_aabb(rays_o, rays_d, [-1, -1, -1, 1, 1, 1],
                                         backend="torch" if backend == "nerfacc" else backend)
        s = march_rays_train(rays_o, rays_d, nears, fars, grid, noise=noise, backend=backend)
        # cheap analytic field so the kernels, not an MLP, dominate
        sigma = (20 * (1 - s.positions.norm(dim=-1))).relu().requires_grad_(True)
        rgb = (s.positions * 0.5 + 0.5).clamp(0, 1).requires_grad_(True)
        _, wsum, depth, image = composite_rays_train(sigma, rgb, s.deltas, s.packed_info,
                                                     backend=backend, ts=s.t_mids)
        (image.sum() + depth.sum() * 1e-3 + wsum.sum()).backward()
        samples_per_ray[backend] = s.num_samples / n_rays

    backends = _usable("raymarch", device)
    ms = _time({b: (lambda b=b: step(b)) for b in backends}, device, repeats)
    return [BenchRow("march+composite", b, n_rays, ms[b], n_rays / ms[b] * 1e3, 1.0,
                     f"{samples_per_ray[b]:.1f} samples/ray, grid {resolution}^3 half occupied")
            for b in backends]


def _with_speedups(rows: list[BenchRow]) -> list[BenchRow]:
    ref = {r.workload: r.ms for r in rows if r.backend == "torch"}
    for r in rows:
        r.speedup = ref[r.workload] / r.ms if r.workload in ref else float("nan")
    return rows


def run_benchmarks(device: torch.device, n_points: int, n_rays: int, levels: int,
                   repeats: int, grid_resolution: int) -> list[BenchRow]:
    rows = bench_encode(3, n_points, levels, device, repeats)
    rows += bench_encode(2, n_points, levels, device, repeats)
    rows += bench_march_composite(n_rays, device, repeats, grid_resolution)
    return _with_speedups(rows)


def format_table(rows: list[BenchRow]) -> str:
    head = f"{'workload':17s} {'backend':8s} {'size':>8s} {'ms':>10s} {'per second':>12s} {'vs torch':>9s}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.workload:17s} {r.backend:8s} {r.size:8d} {r.ms:10.2f} "
                     f"{r.per_second:12.4g} {r.speedup:8.1f}x  {r.note}")
    return "\n".join(lines)


def run(args) -> int:
    dev_arg = getattr(args, "device", "auto")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev_arg == "auto"
                          else dev_arg)
    gpu = device.type == "cuda"
    quick = getattr(args, "quick", False)
    full = getattr(args, "full", False) or gpu
    n_points = getattr(args, "points", None) or (2 ** 18 if full and not quick else 2 ** 14)
    n_rays = getattr(args, "rays", None) or (65536 if full and not quick else 2048)
    levels = getattr(args, "levels", None) or 16
    repeats = getattr(args, "repeats", None) or (3 if quick else (20 if gpu else 5))
    grid_res = 128 if full and not quick else 64
    rows = run_benchmarks(device, n_points, n_rays, levels, repeats, grid_res)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"nerfhead bench kernels on {name} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    print(format_table(rows))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
        print(f"wrote {args.json}")
    return 0
