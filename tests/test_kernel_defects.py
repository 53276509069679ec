"""Latent defects of the kernels found by review (issue 10, point 4), one test each.

Every test here failed against the faithful port of the CUDA kernels (commit e896660) and
passes after the fixes. They run on CPU (the C++ launcher of the same kernel bodies) and,
where a GPU is present, on CUDA (``cuda`` marker).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nerfhead.ops._loader import extension_available, extension_error
from nerfhead.ops.hashgrid import HashGridConfig, hashgrid_encode, hashgrid_encode_reference
from nerfhead.ops.occupancy import OccupancyGrid, march_params
from nerfhead.ops.raymarch import march_rays_train, near_far_from_aabb, packed_offsets

pytestmark = pytest.mark.skipif(not extension_available(), reason=extension_error() or "no extension")

REPO = Path(__file__).resolve().parent.parent
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
BACKEND = {"cpu": "cpu", "cuda": "cuda"}


def _ops():
    return torch.ops.nerfhead


def _scene(device, n=300, res=16, cascades=2, seed=0):
    """A grid with a ball of occupied cells and rays from z = -2.5 towards it."""
    gen = torch.Generator().manual_seed(seed)
    g = OccupancyGrid(1.0, res, cascades)
    g.update(lambda x: 20.0 * (x.norm(dim=-1) < 0.6).float(), generator=gen)
    o = torch.randn(n, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -2.5])
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen) * 0.3 + torch.tensor([0, 0, 1.0]), dim=-1)
    noise = torch.rand(n, generator=gen)
    return g.to(device), o.to(device), d.to(device), noise.to(device)


def _march_args(g, o, d, nears, fars, noise, max_steps=256, dt_gamma=1 / 128):
    p = march_params(g, dt_gamma, max_steps)
    return (o, d, nears, fars, noise, g.bitfield, p["bound"], p["inv_bound"], p["dt_gamma"],
            p["dt_min"], p["dt_max"], p["dt_to_cells"], p["C"], p["G"], max_steps)


# ---------------------------------------------------------------- (a) fill stops at the count
@pytest.mark.parametrize("device", DEVICES)
def test_fill_pass_writes_only_the_counted_samples(device):
    """The fill pass must stop at the count its count pass produced, never write past a
    ray's slots. Given fewer slots than the march finds (count - 1 per ray, and one guard
    slot after each ray), it must fill exactly those and leave every guard untouched."""
    g, o, d, noise = _scene(device)
    nears, fars = near_far_from_aabb(o, d, g.aabb, backend="torch" if device == "cpu" else "cuda")
    args = _march_args(g, o, d, nears, fars, noise)
    counts = _ops().march_rays_train_count(*args)
    assert int(counts.max()) >= 3
    fewer = (counts - 1).clamp(min=0).int()
    slots = fewer.long() + 1  # one guard slot after each ray
    offsets = torch.cumsum(slots, 0) - slots
    S = int(slots.sum())
    f = dict(device=device, dtype=torch.float32)
    out = [torch.full((S, 3), -7.0, **f), torch.full((S, 3), -7.0, **f), torch.full((S,), -7.0, **f),
           torch.full((S,), -7.0, **f), torch.full((S,), -7.0, **f),
           torch.full((S,), -1, dtype=torch.int64, device=device)]
    _ops().march_rays_train_fill(*args, offsets, fewer, *out)
    guard = offsets + fewer.long()
    for t in out:
        sentinel = -1 if t.dtype == torch.int64 else -7.0
        assert bool((t[guard] == sentinel).all()), "the fill pass wrote past a ray's counted samples"
    # and the counted slots hold the ray's first samples, as the full march gives them
    full = march_rays_train(o, d, nears, fars, g, dt_gamma=1 / 128, max_steps=256, noise=noise,
                            backend=BACKEND[device])
    first = full.packed_info[:, 0].long()
    within = torch.arange(S, device=device) - torch.repeat_interleave(offsets, slots)
    ray = torch.repeat_interleave(torch.arange(len(slots), device=device), slots)
    keep = within < fewer.long()[ray]
    assert torch.equal(out[3][keep], full.t_starts[first[ray[keep]] + within[keep]])


# ---------------------------------------------------------------- (b) input gradient per axis
@pytest.mark.parametrize("device", DEVICES)
def test_input_gradient_zero_only_on_the_clamped_axis(device):
    """A point clamped on one axis gets zero gradient on that axis only (autograd of the
    reference); the port zeroed every axis of such a point."""
    cfg = HashGridConfig(input_dim=3, num_levels=4, features_per_level=2, log2_hashmap_size=10,
                         base_resolution=4, per_level_scale=1.5)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, generator=gen) * 0.8 + 0.1
    x[0, 0] = 1.3            # clamped above on x only
    x[1, 1] = -0.2           # clamped below on y only
    x[2, 2] = float("nan")   # NaN on z only (counts as 0, no gradient)
    x[3] = torch.tensor([1.5, -1.0, 0.5])  # two axes clamped
    table = torch.randn(cfg.num_rows(), 2, generator=gen)
    grad_out = torch.randn(6, cfg.out_dim, generator=gen)
    xr = x.clone().requires_grad_(True)
    hashgrid_encode_reference(xr, table, cfg).backward(grad_out)
    xk = x.to(device).requires_grad_(True)
    hashgrid_encode(xk, table.to(device), cfg, backend=BACKEND[device]).backward(grad_out.to(device))
    clamped = torch.zeros(6, 3, dtype=torch.bool)
    clamped[0, 0] = clamped[1, 1] = clamped[2, 2] = clamped[3, 0] = clamped[3, 1] = True
    gk = xk.grad.cpu()
    assert bool((gk[clamped] == 0).all()) and bool((xr.grad[clamped] == 0).all())
    assert bool((gk[~clamped].abs() > 0).all())
    torch.testing.assert_close(gk, xr.grad, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- (c) bounded skip loop
_HANG_SCRIPT = textwrap.dedent("""
    import torch
    from nerfhead.ops.occupancy import OccupancyGrid
    from nerfhead.ops.raymarch import march_rays_train, near_far_from_aabb, render_rays_inference
    dev, backend = {device!r}, {backend!r}
    g = OccupancyGrid(1.0, 8, 2)
    g.density_grid.zero_()
    g.density_grid[0, 0] = 5.0        # one occupied cell in a corner; the centre is empty
    g.repack(0.5)
    g = g.to(dev)
    nan = float("nan")
    o = torch.tensor([[0.1, 0.1, 0.1]] * 4 + [[0.3, -0.2, 0.1]], device=dev)
    d = torch.tensor([[0.0, 0.0, 0.0], [nan, nan, nan], [1e-30, 0.0, 0.0], [nan, 0.0, 1.0],
                      [0.0, -0.0, 0.0]], device=dev)
    for b in (backend, "torch"):
        if b == "torch":  # the Python reference steps ~1e7 times for the 1e-30 direction
            o, d = o[[0, 1, 3, 4]], d[[0, 1, 3, 4]]
        near, far = near_far_from_aabb(o, d, g.aabb, backend=b)
        s = march_rays_train(o, d, near, far, g, max_steps=64, backend=b)
        img, _, _ = render_rays_inference(lambda p, dd, r: (torch.ones(p.shape[0], device=dev),
                                                            torch.ones(p.shape[0], 3, device=dev)),
                                          o, d, g, max_steps=64, backend=b)
        fin = torch.full((o.shape[0],), 10.0, device=dev)      # a caller's own far, beyond the box
        s2 = march_rays_train(o, d, torch.full_like(fin, 0.05), fin, g, max_steps=64, backend=b)
        print(b, s.num_samples, s2.num_samples, bool(torch.isfinite(img).all()))
    print("finished")
""")


@pytest.mark.parametrize("device", DEVICES)
def test_march_with_zero_or_nan_direction_finishes(device):
    """A zero or NaN direction inside an empty cell made the empty-cell skip loop spin
    forever (t never reaches an infinite target), a tiny one too (t + dt rounds to t before
    the target). The march (training and inference, kernel and reference) must finish."""
    script = _HANG_SCRIPT.format(device=device, backend=BACKEND[device])
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail("the march did not finish within 60 s (unbounded empty-cell skip loop)")
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# ---------------------------------------------------------------- (d) packed offsets
def test_packed_offsets_refuse_more_samples_than_int32_can_address():
    """packed_info holds int32 offsets: a march of 2^31 samples or more must fail clearly
    instead of wrapping to negative offsets."""
    counts = torch.full((3,), 2 ** 30, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"2\^31"):
        packed_offsets(counts)
    offsets, total = packed_offsets(torch.tensor([3, 0, 2], dtype=torch.int32))
    assert offsets.dtype == torch.int64 and offsets.tolist() == [0, 3, 3] and total == 5
    offsets, total = packed_offsets(torch.zeros(0, dtype=torch.int32))
    assert offsets.numel() == 0 and total == 0


# ---------------------------------------------------------------- (e) entry-point checks
def _valid_calls(device):
    """name -> (callable, kwargs of valid tensors, extra positional scalars) per raymarch op."""
    g, o, d, noise = _scene(device, n=16, res=8, cascades=1)
    nears, fars = near_far_from_aabb(o, d, g.aabb, backend="torch" if device == "cpu" else "cuda")
    p = march_params(g, 1 / 128, 64)
    scal = (p["bound"], p["inv_bound"], p["dt_gamma"], p["dt_min"], p["dt_max"], p["dt_to_cells"], p["C"],
            p["G"], 64)
    f = dict(device=device, dtype=torch.float32)
    S, R, C, n, k = 40, 16, 3, 5, 4
    info = torch.stack([torch.arange(R, dtype=torch.int32) * 2, torch.full((R,), 2, dtype=torch.int32)], -1)
    return {
        "near_far_from_aabb": (["rays_o", "rays_d", "aabb"], dict(rays_o=o, rays_d=d, aabb=torch.tensor(g.aabb, **f)),
                               (0.05,)),
        "march_rays_train_count": (["rays_o", "rays_d", "nears", "fars", "noise", "bitfield"],
                                   dict(rays_o=o, rays_d=d, nears=nears, fars=fars, noise=noise,
                                        bitfield=g.bitfield), scal),
        "composite_rays_train_forward": (["sigmas", "rgbs", "deltas", "ts", "packed_info"],
                                         dict(sigmas=torch.rand(S, **f), rgbs=torch.rand(S, C, **f),
                                              deltas=torch.rand(S, **f), ts=torch.rand(S, **f),
                                              packed_info=info.to(device)), (1e-4,)),
        "march_rays": (["alive", "rays_t", "counts", "rays_o", "rays_d", "fars", "bitfield"],
                       dict(alive=torch.arange(n, device=device), rays_t=nears[:n].clone(),
                            counts=torch.zeros(n, dtype=torch.int32, device=device), rays_o=o, rays_d=d,
                            fars=fars, bitfield=g.bitfield), scal[:-1] + (k, 64)),
        "composite_rays": (["alive", "T", "sigmas", "rgbs", "deltas", "ts"],
                           dict(alive=torch.arange(n, device=device), T=torch.ones(n, **f),
                                sigmas=torch.rand(n, k, **f), rgbs=torch.rand(n, k, C, **f),
                                deltas=torch.rand(n, k, **f), ts=torch.rand(n, k, **f)), None),
    }


def _call(name, order, tensors, scalars, device):
    ops = _ops()
    args = [tensors[a] for a in order]
    if name == "composite_rays":
        f = dict(device=device, dtype=torch.float32)
        return ops.composite_rays(*args, 1e-4, torch.zeros(16, **f), torch.zeros(16, **f),
                                  torch.zeros(16, 3, **f))
    if name == "march_rays":
        return ops.march_rays(*args, *scalars)
    return getattr(ops, name)(*args, *scalars)


def _bad_variants(name: str, t: torch.Tensor):
    """Wrong shape (one row short; packed_info, which alone sets R, one column more), wrong
    dtype, and on another device (meta)."""
    yield "shape", torch.cat([t, t[:, :1]], 1) if name == "packed_info" else t[:-1].clone()
    other = torch.float64 if t.is_floating_point() else (torch.int64 if t.dtype != torch.int64 else torch.int32)
    yield "dtype", t.to(other)
    yield "device", torch.empty_like(t, device="meta")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["near_far_from_aabb", "march_rays_train_count", "composite_rays_train_forward",
                                  "march_rays", "composite_rays"])
def test_raymarch_entry_points_check_shapes_dtypes_and_one_device(name, device):
    order, tensors, scalars = _valid_calls(device)[name]
    _call(name, order, tensors, scalars, device)  # the valid call runs
    for arg in order:
        for what, bad in _bad_variants(arg, tensors[arg]):
            with pytest.raises(RuntimeError, match=rf"\b{arg}\b") as err:
                _call(name, order, {**tensors, arg: bad}, scalars, device)
            assert name in str(err.value), (arg, what, str(err.value))
