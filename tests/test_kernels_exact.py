"""Exactness of the kernels in nerfhead._C against the PyTorch references (issue 10, point 3).

The kernels run on CPU (the C++ launcher of the per-item bodies) on every CI machine, and on
CUDA (``cuda`` marker) where a GPU is present; the reference always runs on the CPU, where it
is the specification. Bit-exact where the math is designed to be (hash-grid forward for
float32 and float16 tables, near/far, Morton codes and their inverse, packbits, training
march in both passes, inference march); named tolerances where it cannot be (composites,
gradients), with the reason beside each.

Sizes: the kernels run at training sizes (2^18 points x 16 levels x 2 features with 2^19-row
tables; 65,536 rays through a half-occupied 128^3 grid with 3 cascades). The torch reference
takes ~20 s for the full forward and ~35 s forward + backward on 2 CI cores, so per-point and
per-ray comparisons check the kernel's full-size output on a fixed subset of 1/16 of the
points or rays (each point / ray is computed independently: the subset is an exact test of
those items at training size). The table gradient sums over all points, so it is compared
at 2^15 points on the full-size table. ``slow`` variants compare all points (hash grid) and
a quarter of the rays (march) at full size.
"""

from __future__ import annotations

import math

import pytest
import torch

from nerfhead.ops._loader import extension_available, extension_error
from nerfhead.ops.hashgrid import HashGridConfig, hashgrid_encode, hashgrid_encode_reference
from nerfhead.ops.occupancy import (OccupancyGrid, march_params, morton3d, morton3d_invert,
                                    morton3d_invert_reference, morton3d_reference, packbits,
                                    packbits_reference)
from nerfhead.ops.raymarch import (composite_rays_train, composite_rays_train_reference,
                                   march_rays_train, march_rays_train_reference,
                                   near_far_from_aabb, near_far_from_aabb_reference)
from nerfhead.ops.raymarch_inference import (composite_rays_inference,
                                             composite_rays_inference_reference,
                                             march_rays_inference, march_rays_inference_reference)

pytestmark = pytest.mark.skipif(not extension_available(), reason=extension_error() or "no extension")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# ---------------------------------------------------------------- named tolerances
# Table gradient: float32 sums of up to ~10^4 contributions per coarse row, in another order
# than autograd's scatter (GPU: atomics in any order). Relative to the largest entry.
GRAD_TABLE_REL = 2e-6
GRAD_TABLE_REL_FP16 = 2e-3   # the float32 sums are rounded to half at the end (~1 half ulp)
# Input gradient: analytic formula vs autograd through the interpolation, summed over levels
# whose terms (up to scale_l * |table| ~ 1e4 at the finest 3D level) largely cancel, so the
# float32 error scales with the largest gradient, not with each entry; the device may fuse
# multiply-adds.
GRAD_INPUT_RTOL = 1e-4
GRAD_INPUT_ATOL_REL = 1e-6  # times the largest |gradient|
# Composites: the reference multiplies transmittance in log space (exp of a cumulative sum
# of sigma * delta in float64), the kernel multiplies (1 - alpha) step by step in float32;
# expf (host libm or CUDA, both accurate to ~1-2 ulp; no --use_fast_math) vs torch.exp.
COMPOSITE = dict(rtol=1e-4, atol=2e-5)
COMPOSITE_GRAD = dict(rtol=1e-3, atol=1e-4)
# Rays whose T lands within rounding of T_thresh may stop one sample apart: the difference is
# at most the weight of one sample with T < T_thresh.
T_THRESH = 1e-4
# Inference composite: the same multiplicative arithmetic in the same order on both sides;
# only exp differs (torch.exp vs expf, ~1 ulp) and the device may fuse multiply-adds.
INFERENCE_COMPOSITE = dict(rtol=1e-5, atol=1e-6)


def _on(device: str, *ts):
    return [t.to(device) for t in ts]


def _assert_bit_equal(actual, expected, msg=None):
    """Equal values, NaN where the reference has NaN (-0.0 == 0.0)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=msg)


# ================================================================ hash grid
TRAIN_POINTS = 2 ** 18


def _training_cfg(dim: int) -> HashGridConfig:
    """16 levels x 2 features, 2^19 rows per hashed level (as `nerfhead bench kernels`)."""
    return HashGridConfig(input_dim=dim, num_levels=16, features_per_level=2, log2_hashmap_size=19,
                          base_resolution=16, per_level_scale=2.0 if dim == 3 else 1.5)


def _points(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Uniform points plus the edges: 0, 1, clamped on one axis, NaN on one axis."""
    x = torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))
    edges = torch.tensor([[0.0] * dim, [1.0] * dim, [1.5] + [0.5] * (dim - 1), [0.5] * (dim - 1) + [-0.25],
                          [float("nan")] + [0.25] * (dim - 1), [0.3] * (dim - 1) + [float("inf")]])
    x[:len(edges)] = edges
    return x


def _subset(n: int, every: int = 16) -> torch.Tensor:
    """The first 64 items (the edge cases) and every `every`-th item after them (1/16 of the
    hash-grid points; 1/32 of the rays, whose reference march is a Python loop per cell)."""
    return torch.cat([torch.arange(64), torch.arange(64, n, every)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [3, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_hashgrid_forward_bit_exact_at_training_size(device, dim, dtype):
    cfg = _training_cfg(dim)
    assert cfg.num_rows() > 3_000_000 and max(cfg.level_rows()) == 2 ** 19
    x = _points(TRAIN_POINTS, dim)
    table = (torch.randn(cfg.num_rows(), 2, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype)
    out = hashgrid_encode(*_on(device, x, table), cfg, backend=device).cpu()
    assert out.dtype == dtype and out.shape == (TRAIN_POINTS, 32)
    idx = _subset(TRAIN_POINTS)
    ref = hashgrid_encode_reference(x[idx], table, cfg)
    assert torch.equal(out[idx], ref)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [3, 2])
def test_hashgrid_forward_bit_exact_full_reference(dim):
    """Every one of the 2^18 points against the reference (~20 s of reference on 2 cores)."""
    cfg = _training_cfg(dim)
    x = _points(TRAIN_POINTS, dim, seed=5)
    table = torch.randn(cfg.num_rows(), 2, generator=torch.Generator().manual_seed(6)) * 0.1
    assert torch.equal(hashgrid_encode(x, table, cfg, backend="cpu"), hashgrid_encode_reference(x, table, cfg))


def _table_grads(cfg, x, table, grad_out, device):
    tk = table.detach().clone().to(device).requires_grad_(True)  # fresh leaves on both sides
    hashgrid_encode(x.to(device), tk, cfg, backend=device).backward(grad_out.to(device))
    tr = table.detach().clone().requires_grad_(True)
    hashgrid_encode_reference(x, tr, cfg).backward(grad_out)
    return tk.grad.cpu(), tr.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [3, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_hashgrid_table_gradient_on_full_size_table(device, dim, dtype):
    cfg = _training_cfg(dim)
    n = 2 ** 15
    gen = torch.Generator().manual_seed(2)
    x = _points(n, dim, seed=3)
    table = (torch.randn(cfg.num_rows(), 2, generator=gen) * 0.1).to(dtype)
    grad_out = torch.randn(n, cfg.out_dim, generator=gen).to(dtype)
    gk, gr = _table_grads(cfg, x, table, grad_out, device)
    assert gk.dtype == dtype
    scale = float(gr.float().abs().max())
    rel = GRAD_TABLE_REL if dtype == torch.float32 else GRAD_TABLE_REL_FP16
    torch.testing.assert_close(gk.float(), gr.float(), rtol=rel, atol=rel * scale)
    # every point spreads weight 1 over its corners: the gradient sums to sum(grad_out)
    # per level and feature (clamped and NaN points too: they sit on the grid's edge)
    sums = gk.double().reshape(-1, 2).sum(0)
    torch.testing.assert_close(sums, grad_out.double().reshape(n, 16, 2).sum((0, 1)),
                               rtol=1e-4 if dtype == torch.float32 else 1e-2, atol=1e-2)


@pytest.mark.slow
def test_hashgrid_table_gradient_full_size():
    """2^18 points (about 35 s of reference forward + backward on 2 cores)."""
    cfg = _training_cfg(3)
    gen = torch.Generator().manual_seed(7)
    x = _points(TRAIN_POINTS, 3, seed=8)
    table = torch.randn(cfg.num_rows(), 2, generator=gen) * 0.1
    grad_out = torch.randn(TRAIN_POINTS, cfg.out_dim, generator=gen)
    gk, gr = _table_grads(cfg, x, table, grad_out, "cpu")
    torch.testing.assert_close(gk, gr, rtol=GRAD_TABLE_REL, atol=GRAD_TABLE_REL * float(gr.abs().max()))


def test_hashgrid_cpu_table_gradient_is_deterministic():
    """Levels in parallel, the points of a level in order: bit-identical for any thread count."""
    cfg = _training_cfg(3)
    gen = torch.Generator().manual_seed(4)
    x = _points(2 ** 16, 3, seed=9)
    table = torch.randn(cfg.num_rows(), 2, generator=gen) * 0.1
    grad_out = torch.randn(2 ** 16, cfg.out_dim, generator=gen)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3, 1):
            torch.set_num_threads(n)
            t = table.detach().clone().requires_grad_(True)
            hashgrid_encode(x, t, cfg, backend="cpu").backward(grad_out)
            grads.append(t.grad)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [3, 2])
def test_hashgrid_input_gradient(device, dim):
    """Analytic input gradient vs autograd of the reference, including points clamped on one
    axis only (zero on that axis, the reference's value on the others)."""
    cfg = _training_cfg(dim)
    n = 2 ** 12
    gen = torch.Generator().manual_seed(10)
    x = _points(n, dim, seed=11)
    # keep points away from cell faces (within 1e-3 of a face, float32 rounding of pos may
    # pick the other cell on one side and not the other: a different function)
    scales = torch.tensor(cfg.level_scales()).view(1, -1, 1)
    frac = torch.frac(torch.nan_to_num(x, nan=0.0).clamp(0, 1).unsqueeze(1) * scales + 0.5)
    near_face = ((frac < 1e-3) | (frac > 1 - 1e-3)).flatten(1).any(1)
    near_face[:6] = False  # the edge points: clamped axes have no gradient anyway
    x = x[~near_face]
    table = torch.randn(cfg.num_rows(), 2, generator=gen) * 0.1
    grad_out = torch.randn(x.shape[0], cfg.out_dim, generator=gen)
    xk = x.detach().clone().to(device).requires_grad_(True)  # fresh leaves on both sides
    hashgrid_encode(xk, table.to(device), cfg, backend=device).backward(grad_out.to(device))
    xr = x.detach().clone().requires_grad_(True)
    hashgrid_encode_reference(xr, table, cfg).backward(grad_out)
    clamped = ~((x >= 0) & (x <= 1))
    assert bool(clamped[2:6].any(1).all()) and not bool(clamped[2:6].all(1).any())
    gk = xk.grad.cpu()
    assert bool((gk[clamped] == 0).all())
    torch.testing.assert_close(gk, xr.grad, rtol=GRAD_INPUT_RTOL,
                               atol=GRAD_INPUT_ATOL_REL * float(xr.grad.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
def test_hashgrid_zero_points_and_bad_tensors(device):
    cfg = HashGridConfig(input_dim=3, num_levels=4, features_per_level=2, log2_hashmap_size=10)
    table = torch.randn(cfg.num_rows(), 2, device=device, requires_grad=True)
    x = torch.zeros(0, 3, device=device, requires_grad=True)
    out = hashgrid_encode(x, table, cfg, backend=device)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert table.grad.shape == table.shape and float(table.grad.abs().sum()) == 0 and x.grad.shape == (0, 3)
    # a non-contiguous x is made contiguous by the Python face (same values as the reference)
    xs = torch.rand(64, 6, device=device)[:, ::2]
    assert not xs.is_contiguous()
    assert torch.equal(hashgrid_encode(xs, table.detach(), cfg, backend=device).cpu(),
                       hashgrid_encode_reference(xs.cpu(), table.detach().cpu(), cfg))
    ops = torch.ops.nerfhead
    consts = (cfg.level_scales(), cfg.level_resolutions(), cfg.level_offsets())
    with pytest.raises(RuntimeError, match="contiguous"):  # the operator itself refuses
        ops.hashgrid_forward(xs, table.detach(), *consts)
    with pytest.raises(RuntimeError, match="x is on meta"):
        ops.hashgrid_forward(torch.rand(4, 3, device="meta"), table.detach(), *consts)
    with pytest.raises(RuntimeError, match="x on .* but table on meta"):
        ops.hashgrid_forward(torch.rand(4, 3, device=device), table.detach().to("meta"), *consts)


# ================================================================ near/far, Morton, packbits
TRAIN_RAYS = 65536


def _training_rays(n: int = TRAIN_RAYS, seed: int = 0):
    """Rays from inside (r = 3) and outside (r = 6) the outer cube [-4, 4]^3, aimed near the
    centre, plus edge rays: zero, NaN and -0.0 directions, axis-aligned rays, misses."""
    gen = torch.Generator().manual_seed(seed)
    radius = torch.where(torch.arange(n) % 2 == 0, 3.0, 6.0)[:, None]
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * radius
    target = torch.randn(n, 3, generator=gen) * 0.4
    d = torch.nn.functional.normalize(target - o, dim=-1)
    nan = float("nan")
    o[:12] = torch.tensor([[0.05, 0.02, 0.01]] * 3 + [[0.3, 0.2, -5.0]] * 3
                          + [[-5.0, 0.1, 0.2], [0.1, -5.0, 0.2], [9.0, 9.0, -9.0], [0.0, 0.0, -6.0],
                             [0.5, 0.5, 0.5], [-0.4, 0.3, 2.0]])
    d[:12] = torch.tensor([[0.0, 0.0, 0.0], [nan, nan, nan], [nan, 0.0, 1.0], [0.0, 0.0, 1.0],
                           [-0.0, 0.0, 1.0], [0.0, -0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                           [0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.3, 0.0, -1.0]])
    return o, d


def _training_grid(resolution: int = 128, cascades: int = 3, seed: int = 0) -> OccupancyGrid:
    """About half of cascade 0 occupied (a ball) with 10% of every cascade's cells flipped."""
    g = OccupancyGrid(1.0, resolution, cascades)
    gen = torch.Generator().manual_seed(seed)
    G3 = resolution ** 3
    radius = (3 * 0.5 * 8 / (4 * math.pi)) ** (1 / 3)  # ball of half the volume of [-1, 1]^3
    for c in range(cascades):
        centres = g.cell_centers(c, torch.arange(G3))
        ball = centres.norm(dim=-1) < radius
        flip = torch.rand(G3, generator=gen) < 0.1
        g.density_grid[c] = (ball ^ flip).float() * 5.0
    g.bitfield.copy_(packbits(g.density_grid, 1.0))
    return g


@pytest.fixture(scope="module")
def scene():
    g = _training_grid()
    o, d = _training_rays()
    return g, o, d


@pytest.fixture(scope="module")
def marched(scene):
    """The CPU kernel's training march of the scene (shared by the composite tests)."""
    g, o, d = scene
    near, far = near_far_from_aabb_reference(o, d, g.aabb, 0.05)
    return march_rays_train(o, d, near, far, g, noise=_noise(TRAIN_RAYS), backend="cpu", **MARCH)


def test_training_grid_is_half_occupied(scene):
    g, _, _ = scene
    first = g.density_grid[0] > 0
    assert 0.4 < float(first.float().mean()) < 0.6 and g.cascades == 3 and g.resolution == 128


@pytest.mark.parametrize("device", DEVICES)
def test_near_far_bit_exact(scene, device):
    g, o, d = scene
    ref = near_far_from_aabb_reference(o, d, g.aabb, 0.05)
    out = near_far_from_aabb(*_on(device, o, d), g.aabb, 0.05, backend=device)
    for a, b in zip(ref, out):
        _assert_bit_equal(b.cpu(), a)
    near, far = ref
    min_near = float(torch.tensor(0.05))
    assert float(near[1]) == min_near and math.isnan(float(far[1]))      # NaN direction
    assert float(near[0]) == min_near and math.isinf(float(far[0]))      # zero direction inside
    assert float(near[8]) == float(far[8]) == float(torch.finfo(torch.float32).max)  # miss
    assert int((near < far).sum()) > TRAIN_RAYS * 0.9


@pytest.mark.parametrize("device", DEVICES)
def test_morton_and_inverse_bit_exact(device):
    gen = torch.Generator().manual_seed(0)
    coords = torch.randint(0, 1024, (200_000, 3), generator=gen, dtype=torch.int32)
    coords[:4] = torch.tensor([[0, 0, 0], [1023, 1023, 1023], [1023, 0, 0], [0, 1023, 5]])
    codes = morton3d(coords.to(device), backend=device).cpu()
    assert torch.equal(codes, morton3d_reference(coords))
    all_codes = torch.randint(0, 2 ** 30, (200_000,), generator=gen, dtype=torch.int32)
    assert torch.equal(morton3d_invert(all_codes.to(device), backend=device).cpu(),
                       morton3d_invert_reference(all_codes))
    assert torch.equal(morton3d_invert(codes.to(device), backend=device).cpu(), coords)
    empty = torch.zeros(0, 3, dtype=torch.int32, device=device)
    assert morton3d(empty, backend=device).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_packbits_bit_exact(device):
    density = torch.rand(3, 128 ** 3, generator=torch.Generator().manual_seed(1))
    density[0, :16] = torch.tensor([0.5, 0.5000001, 0.4999999, float("nan")] * 4)
    out = packbits(density.to(device), 0.5, backend=device).cpu()
    assert out.dtype == torch.uint8 and out.shape == (3 * 128 ** 3 // 8,)
    assert torch.equal(out, packbits_reference(density, 0.5))
    assert int(out[0]) == 0b00100010  # strictly greater than the threshold; NaN is not


# ================================================================ training march
MARCH = dict(dt_gamma=1 / 256, max_steps=1024)


def _noise(n: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(12))


def _samples_of(s, rays: torch.Tensor) -> dict:
    """The samples of `rays` (in that order) from packed RaySamples `s`."""
    off, cnt = s.packed_info[rays, 0].long(), s.packed_info[rays, 1].long()
    idx = torch.repeat_interleave(off, cnt) + torch.arange(int(cnt.sum())) - \
        torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    return {name: getattr(s, name)[idx] for name in ("positions", "dirs", "deltas", "t_starts", "t_ends")} | {
        "ray": s.ray_indices[idx], "counts": cnt}


def _check_march_exact(g, o, d, rays, device, k=None):
    near, far = near_far_from_aabb_reference(o, d, g.aabb, 0.05)
    noise = _noise(o.shape[0])
    if k is None:
        gd = OccupancyGrid(g.bound, g.resolution, g.cascades).to(device)
        gd.load_state_dict(g.state_dict())
        k = march_rays_train(*_on(device, o, d, near, far), gd, noise=noise.to(device), backend=device, **MARCH)
        k = type(k)(*(t.cpu() for t in vars(k).values()))
    # count pass: the kernel's per-ray counts are the reference's
    p = march_params(g, MARCH["dt_gamma"], MARCH["max_steps"])
    counts = torch.ops.nerfhead.march_rays_train_count(
        *_on(device, o, d, near, far, noise, g.bitfield), p["bound"], p["inv_bound"], p["dt_gamma"], p["dt_min"],
        p["dt_max"], p["dt_to_cells"], p["C"], p["G"], MARCH["max_steps"]).cpu()
    assert torch.equal(counts, k.packed_info[:, 1])
    assert torch.equal(k.packed_info[:, 0].long(), torch.cumsum(counts.long(), 0) - counts.long())
    r = march_rays_train_reference(o[rays], d[rays], near[rays], far[rays], g, noise=noise[rays], **MARCH)
    mine = _samples_of(k, rays)
    assert torch.equal(mine["counts"], r.packed_info[:, 1].long())
    assert torch.equal(mine["ray"], rays[r.ray_indices])
    for name in ("positions", "dirs", "deltas", "t_starts", "t_ends"):
        _assert_bit_equal(mine[name], getattr(r, name), msg=name)  # dirs of the [nan, 0, 1] ray
    return k, r


@pytest.mark.parametrize("device", DEVICES)
def test_training_march_bit_exact_at_training_size(scene, marched, device):
    g, o, d = scene
    rays = _subset(TRAIN_RAYS, every=32)
    k, r = _check_march_exact(g, o, d, rays, device, marched if device == "cpu" else None)
    per_ray = k.num_samples / TRAIN_RAYS
    assert 40 < per_ray < 400 and r.num_samples > 200_000
    cnt = k.packed_info[:, 1]
    assert int(cnt[[1, 8]].sum()) == 0                    # NaN direction, a miss: no samples
    assert int(cnt[2]) > 0                                 # [nan, 0, 1]: marches at x = -outer
    assert int(cnt[0]) > 0   # zero direction in an occupied cell: samples until dt reaches an empty cascade cell


@pytest.mark.slow
def test_training_march_bit_exact_a_quarter_of_the_rays():
    """16,384 of the 65,536 rays against the reference (the reference for all of them is a
    Python loop of ~2.5 min on 2 cores; 1/4 is ~30 s)."""
    g, o, d = _training_grid(), *_training_rays(seed=1)
    _check_march_exact(g, o, d, torch.arange(0, TRAIN_RAYS, 4), "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_march_hits_max_steps_and_handles_zero_rays(device):
    # fully occupied until the first update; box [-4, 4]: 8 long > 16 steps of 2 sqrt(3) / 16
    g = OccupancyGrid(4.0, 16, 1).to(device)
    o = torch.tensor([[-9.0, 0.1, 0.2], [-9.0, 0.3, -0.2]], device=device)
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0]], device=device)
    near, far = near_far_from_aabb(o, d, g.aabb, backend=device)
    s = march_rays_train(o, d, near, far, g, dt_gamma=0.0, max_steps=16, backend=device)
    assert s.packed_info[:, 1].tolist() == [16, 16]
    ref = march_rays_train_reference(o.cpu(), d.cpu(), near.cpu(), far.cpu(), OccupancyGrid(4.0, 16, 1),
                                     dt_gamma=0.0, max_steps=16)
    assert torch.equal(s.t_starts.cpu(), ref.t_starts) and torch.equal(s.positions.cpu(), ref.positions)
    none = torch.zeros(0, 3, device=device)
    n0, f0 = near_far_from_aabb(none, none, g.aabb, backend=device)
    s0 = march_rays_train(none, none, n0, f0, g, backend=device)
    assert s0.num_samples == 0 and s0.packed_info.shape == (0, 2)
    out = composite_rays_train(torch.zeros(0, device=device), torch.zeros(0, 3, device=device),
                               torch.zeros(0, device=device), s0.packed_info, backend=device,
                               ts=torch.zeros(0, device=device))
    assert [t.shape[0] for t in out] == [0, 0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_march_with_few_steps_on_a_fine_grid(device):
    """max_steps = 16 on a 128^3 grid makes dt_min (2 sqrt(3) / 16) larger than dt_max
    (2 sqrt(3) / 128): the step is dt_max, as torch.clamp gives (the tiny render presets)."""
    g = OccupancyGrid(1.0, 128, 1)
    o, d = _training_rays(512, seed=3)
    near, far = near_far_from_aabb_reference(o, d, g.aabb, 0.05)
    p = march_params(g, 1 / 256, 16)
    assert p["dt_min"] > p["dt_max"]
    gd = OccupancyGrid(1.0, 128, 1).to(device)
    k = march_rays_train(*_on(device, o, d, near, far), gd, dt_gamma=1 / 256, max_steps=16, backend=device)
    r = march_rays_train_reference(o, d, near, far, g, dt_gamma=1 / 256, max_steps=16)
    for name in ("packed_info", "positions", "deltas", "t_starts", "t_ends", "ray_indices"):
        _assert_bit_equal(getattr(k, name).cpu(), getattr(r, name), msg=name)
    assert float(r.deltas.max()) == p["dt_max"]


# ================================================================ training composite
def _composite_inputs(k, rays, seed=13):
    gen = torch.Generator().manual_seed(seed)
    S = k.num_samples
    sigmas = torch.rand(S, generator=gen) * 30
    rgbs = torch.rand(S, 4, generator=gen)
    mine = _samples_of(k, rays)
    cnt = mine["counts"]
    info = torch.stack([torch.cumsum(cnt, 0) - cnt, cnt], -1).int()
    off, c = k.packed_info[rays, 0].long(), k.packed_info[rays, 1].long()
    idx = torch.repeat_interleave(off, c) + torch.arange(int(c.sum())) - torch.repeat_interleave(
        torch.cumsum(c, 0) - c, c)
    return sigmas, rgbs, info, idx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T_thresh", [0.0, T_THRESH])
def test_training_composite_forward_and_backward(marched, device, T_thresh):
    k = marched
    rays = _subset(TRAIN_RAYS)
    sigmas, rgbs, info, idx = _composite_inputs(k, rays)
    gen = torch.Generator().manual_seed(14)
    R = TRAIN_RAYS
    gw = [torch.randn(k.num_samples, generator=gen), torch.randn(R, generator=gen), torch.randn(R, generator=gen),
          torch.randn(R, 4, generator=gen)]
    # kernel over all 65,536 rays (~10^7 samples)
    sk, ck = (t.detach().clone().to(device).requires_grad_(True) for t in (sigmas, rgbs))
    outs_k = composite_rays_train(sk, ck, *_on(device, k.deltas, k.packed_info), T_thresh=T_thresh,
                                  backend=device, ts=k.t_mids.to(device))
    sum((a * b.to(device)).sum() for a, b in zip(outs_k, gw)).backward()
    # reference over the subset's rays (each ray is independent)
    sr, cr = sigmas[idx].clone().requires_grad_(True), rgbs[idx].clone().requires_grad_(True)
    outs_r = composite_rays_train_reference(sr, cr, k.deltas[idx], info, T_thresh=T_thresh, ts=k.t_mids[idx])
    gw_sub = [gw[0][idx], gw[1][rays], gw[2][rays], gw[3][rays]]
    sum((a * b).sum() for a, b in zip(outs_r, gw_sub)).backward()
    slack = 0.0 if T_thresh == 0 else 2 * T_thresh  # one sample below T_thresh may differ
    weights, wsum, depth, image = (t.detach().cpu() for t in outs_k)
    for name, a, b in (("weights", weights[idx], outs_r[0]), ("weights_sum", wsum[rays], outs_r[1]),
                       ("depth", depth[rays], outs_r[2]), ("image", image[rays], outs_r[3])):
        scale = 1.0 if name != "depth" else float(b.detach().abs().max())
        torch.testing.assert_close(a, b.detach(), rtol=COMPOSITE["rtol"],
                                   atol=COMPOSITE["atol"] * scale + slack * scale, msg=name)
    for name, a, b in (("grad_sigmas", sk.grad.cpu()[idx], sr.grad), ("grad_rgbs", ck.grad.cpu()[idx], cr.grad)):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=COMPOSITE_GRAD["rtol"],
                                   atol=(COMPOSITE_GRAD["atol"] + 10 * slack) * scale, msg=name)
    assert float(wsum.max()) > 0.99 and float(wsum.min()) == 0.0


# ================================================================ inference
@pytest.mark.parametrize("device", DEVICES)
def test_inference_march_bit_exact_over_steps(scene, device):
    """Three march steps of k = 8 samples for all 65,536 rays (kernel) and the subset
    (reference), the state (t, counts) carried over: the same samples and states."""
    g, o, d = scene
    near, far = near_far_from_aabb_reference(o, d, g.aabb, 0.05)
    alive = torch.nonzero(near < far).squeeze(-1)
    rows = _subset(alive.numel())
    t_k, c_k = near[alive].clone(), torch.zeros(alive.numel(), dtype=torch.int32)
    t_r, c_r = t_k[rows].clone(), c_k[rows].clone()
    gd = OccupancyGrid(g.bound, g.resolution, g.cascades).to(device)
    gd.load_state_dict(g.state_dict())
    p = march_params(g, MARCH["dt_gamma"], MARCH["max_steps"])
    t_k, c_k = t_k.to(device), c_k.to(device)
    for _ in range(3):
        pk, dk, tsk = march_rays_inference(*_on(device, alive, t_k), c_k, *_on(device, o, d, far), gd, 8,
                                           backend=device, **MARCH)
        pr, dr, tsr = march_rays_inference_reference(alive[rows], t_r, c_r, o, d, far, g, p, 8,
                                                     MARCH["max_steps"])
        assert torch.equal(pk.cpu()[rows], pr) and torch.equal(dk.cpu()[rows], dr) and torch.equal(tsk.cpu()[rows], tsr)
        assert torch.equal(t_k.cpu()[rows], t_r) and torch.equal(c_k.cpu()[rows], c_r)
    assert int((c_r == 24).sum()) > 4000 and bool((t_r > near[alive][rows]).all())


@pytest.mark.parametrize("device", DEVICES)
def test_inference_composite(device):
    gen = torch.Generator().manual_seed(15)
    R, n, k, C = TRAIN_RAYS, TRAIN_RAYS // 2, 8, 3
    alive = torch.randperm(R, generator=gen)[:n]
    T = torch.rand(n, generator=gen) * 0.5 + 0.5
    sigmas = torch.rand(n, k, generator=gen) * 20
    rgbs = torch.rand(n, k, C, generator=gen)
    deltas = torch.rand(n, k, generator=gen) * 0.05
    deltas[:100, 5:] = 0  # these rays' marches ended at slot 5
    ts = torch.cumsum(deltas, 1) + 1.0
    state = [torch.rand(R, generator=gen) * 0.1, torch.rand(R, generator=gen), torch.rand(R, C, generator=gen) * 0.1]
    ref_state = [s.clone() for s in state]
    T_ref = T.clone()
    dead_r = composite_rays_inference_reference(alive, T_ref, sigmas, rgbs, deltas, ts, T_THRESH, *ref_state)
    T_k = T.to(device)
    dev_state = [s.to(device) for s in state]
    dead_k = composite_rays_inference(*_on(device, alive), T_k, *_on(device, sigmas, rgbs, deltas, ts), T_THRESH,
                                      *dev_state, backend=device)
    assert bool(dead_k[:100].all())
    mismatch = (dead_k.cpu() != dead_r)
    assert int(mismatch.sum()) <= 2  # T within rounding of T_thresh
    ok = ~mismatch
    torch.testing.assert_close(T_k.cpu()[ok], T_ref[ok], **INFERENCE_COMPOSITE)
    rows = alive[ok]
    for a, b in zip(dev_state, ref_state):
        torch.testing.assert_close(a.cpu()[rows], b[rows], **INFERENCE_COMPOSITE)


@pytest.mark.parametrize("device", DEVICES)
def test_inference_ops_refuse_bad_tensors(device):
    g = OccupancyGrid(1.0, 8, 1).to(device)
    o = torch.zeros(4, 3, device=device)
    d = torch.ones(4, 3, device=device)
    far = torch.ones(4, device=device)
    alive = torch.arange(4, device=device)
    t, c = torch.zeros(4, device=device), torch.zeros(4, dtype=torch.int32, device=device)
    if device == "cpu":  # ray ids are checked on the CPU only (on a GPU it would synchronise)
        with pytest.raises(RuntimeError, match=r"alive\[2\] = 7 is not a ray id"):
            march_rays_inference(torch.tensor([0, 1, 7, 2]), t, c, o, d, far, g, 4, backend=device)
    t_strided = torch.zeros(8, device=device)[::2]
    with pytest.raises(RuntimeError, match="rays_t must be a contiguous"):
        march_rays_inference(alive, t_strided, c, o, d, far, g, 4, backend=device)
    with pytest.raises(RuntimeError, match="counts must be a contiguous int32"):
        march_rays_inference(alive, t, c.long(), o, d, far, g, 4, backend=device)


# ================================================================ CPU kernels vs CUDA kernels
@pytest.mark.cuda
def test_cpu_and_cuda_kernels_agree_at_training_size(scene, marched):
    """The same bodies on both devices, every point and ray: bit-identical forward and march,
    the table gradient and the composite within their named tolerances."""
    from nerfhead.ops._loader import extension_with_cuda

    if not extension_with_cuda():
        pytest.skip("nerfhead._C was built without its CUDA part")
    for dim in (3, 2):
        cfg = _training_cfg(dim)
        gen = torch.Generator().manual_seed(20 + dim)
        x = _points(TRAIN_POINTS, dim, seed=21)
        table = torch.randn(cfg.num_rows(), 2, generator=gen) * 0.1
        grad_out = torch.randn(TRAIN_POINTS, cfg.out_dim, generator=gen)
        for dtype in (torch.float32, torch.float16):
            outs = [hashgrid_encode(x.to(dev), table.to(dtype).to(dev), cfg, backend=dev).cpu() for dev in ("cpu", "cuda")]
            assert torch.equal(outs[0], outs[1])
        grads = []
        for dev in ("cpu", "cuda"):
            t = table.detach().clone().to(dev).requires_grad_(True)
            hashgrid_encode(x.to(dev), t, cfg, backend=dev).backward(grad_out.to(dev))
            grads.append(t.grad.cpu())
        torch.testing.assert_close(grads[1], grads[0], rtol=GRAD_TABLE_REL, atol=GRAD_TABLE_REL * float(grads[0].abs().max()))
    g, o, d = scene
    near, far = near_far_from_aabb_reference(o, d, g.aabb, 0.05)
    gd = OccupancyGrid(g.bound, g.resolution, g.cascades).cuda()
    gd.load_state_dict(g.state_dict())
    kc = march_rays_train(o.cuda(), d.cuda(), near.cuda(), far.cuda(), gd, noise=_noise(TRAIN_RAYS).cuda(),
                          backend="cuda", **MARCH)
    for name in ("positions", "dirs", "deltas", "t_starts", "t_ends", "ray_indices", "packed_info"):
        _assert_bit_equal(getattr(kc, name).cpu(), getattr(marched, name), msg=name)
    sig = torch.rand(marched.num_samples, generator=torch.Generator().manual_seed(22)) * 30
    rgb = torch.rand(marched.num_samples, 3, generator=torch.Generator().manual_seed(23))
    outs = [composite_rays_train(sig.to(dev), rgb.to(dev), marched.deltas.to(dev), marched.packed_info.to(dev),
                                 T_thresh=0.0, backend=dev, ts=marched.t_mids.to(dev)) for dev in ("cpu", "cuda")]
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(b.cpu(), a, **COMPOSITE)
