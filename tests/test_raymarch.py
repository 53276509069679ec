"""Ray marching family: near/far, Morton codes, bitfield, occupancy grid, march, composite.

CPU tests check the PyTorch references against hand-computed values; ``cuda`` tests compare
every kernel in nerfhead._C with its reference (outputs and gradients).
"""

from __future__ import annotations

import math

import pytest
import torch

from nerfhead.ops.occupancy import march_params
from nerfhead.ops.raymarch import (NEAR_FAR_MISS, OccupancyGrid, composite_rays_train,
                                   composite_rays_train_reference, march_rays_train,
                                   morton3d, morton3d_invert, near_far_from_aabb, packbits,
                                   render_rays_inference)

UNIT_BOX = [-1, -1, -1, 1, 1, 1]
# named tolerances of the CUDA-vs-reference comparisons
TOL_EXACT = 0.0        # integer ops, march positions/t (same float32 ops in the same order)
TOL_COMPOSITE = 2e-5   # fast-math exp in the kernel vs torch.exp, float32 accumulation
TOL_GRAD = 1e-4


def _grid(bound=1.0, res=4, cascades=1, occupied=()):
    """Grid whose occupied cells are exactly ``occupied`` ((cascade, ix, iy, iz) tuples)."""
    g = OccupancyGrid(bound, res, cascades)
    g.density_grid.zero_()
    for c, ix, iy, iz in occupied:
        code = int(morton3d(torch.tensor([[ix, iy, iz]]))[0])
        g.density_grid[c, code] = 1.0
    g.repack(threshold=0.5)
    return g


def _full_grid(bound=1.0, res=4, cascades=1):
    g = OccupancyGrid(bound, res, cascades)
    g.density_grid.fill_(1.0)
    g.repack(0.5)
    return g


def _ray(o, d):
    return torch.tensor([o], dtype=torch.float32), torch.tensor([d], dtype=torch.float32)


# ---------------------------------------------------------------- near / far
def test_near_far_hand_placed_rays():
    o = torch.tensor([[0, 0, -3], [0, 0, 0], [0, 3, -3], [0, 0, 3], [-2, 0, 0], [0.5, 0, -3]],
                     dtype=torch.float32)
    d = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 2]],
                     dtype=torch.float32)
    near, far = near_far_from_aabb(o, d, UNIT_BOX, min_near=0.05)
    # front hit; inside (near clamped to min_near); miss; box behind; grazing an edge at t=1;
    # non-unit direction (t in units of |d|)
    assert near[0] == 2 and far[0] == 4
    assert near[1] == pytest.approx(0.05) and far[1] == 1
    assert near[2] == NEAR_FAR_MISS and far[2] == NEAR_FAR_MISS
    assert near[3] == NEAR_FAR_MISS and far[3] == NEAR_FAR_MISS
    assert near[4] == 1 and far[4] == 1
    assert near[5] == 1 and far[5] == 2


def test_near_far_rejects_bad_shapes():
    with pytest.raises(ValueError, match="rays_o and rays_d"):
        near_far_from_aabb(torch.zeros(4, 3), torch.zeros(4, 2), UNIT_BOX)
    with pytest.raises(ValueError, match="6 numbers"):
        near_far_from_aabb(torch.zeros(4, 3), torch.ones(4, 3), [0, 1])


# ---------------------------------------------------------------- Morton / packbits
def test_morton_hand_worked_codes_and_round_trip():
    coords = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 0], [3, 5, 6],
                           [1023, 1023, 1023]], dtype=torch.int32)
    # (3,5,6): x=011 y=101 z=110 -> bit triples (z y x) per level: 011, 101, 110 -> 427
    expected = [1, 2, 4, 7, 8, 427, 2 ** 30 - 1]
    assert morton3d(coords).tolist() == expected
    rand = torch.randint(0, 1024, (1000, 3), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(morton3d_invert(morton3d(rand)), rand)


def test_packbits_hand_built_grid():
    grid = torch.zeros(1, 16)
    grid[0, [0, 3, 9, 15]] = 1.0
    grid[0, 5] = 0.5  # equal to the threshold: not occupied (strictly greater)
    assert packbits(grid, 0.5).tolist() == [1 + 8, 2 + 128]


# ---------------------------------------------------------------- march
# A ray along +x through the bottom row of a 4^3 grid over [-1, 1]^3 (cells 0.5 wide):
# it enters at t=2, cell ix covers t in [2 + ix/2, 2.5 + ix/2); with dt_gamma=0 every step is
# dt_min = 2*sqrt(3)/64 = 0.05413 and samples sit at t = 2 + k*dt.
RAY_X = ([-3.0, -0.8, -0.8], [1.0, 0.0, 0.0])
DT64 = 2 * math.sqrt(3) / 64


def _march(grid, o, d, **kw):
    near, far = near_far_from_aabb(o, d, [-grid.outer_bound] * 3 + [grid.outer_bound] * 3)
    return march_rays_train(o, d, near, far, grid, **kw)


def test_march_one_occupied_cell_at_entry():
    o, d = _ray(*RAY_X)
    s = _march(_grid(occupied=[(0, 0, 0, 0)]), o, d, dt_gamma=0.0, max_steps=64)
    assert s.packed_info.tolist() == [[0, math.ceil(0.5 / DT64)]]  # 10 samples in [2, 2.5)
    assert torch.allclose(s.t_starts, 2 + torch.arange(10) * DT64, atol=1e-5)
    assert torch.allclose(s.t_ends - s.t_starts, s.deltas) and torch.allclose(s.deltas, torch.full((10,), DT64))
    assert torch.allclose(s.positions, o + s.t_starts[:, None] * d)
    assert s.ray_indices.tolist() == [0] * 10 and s.dirs.shape == (10, 3)


def test_march_skips_empty_cells_to_an_occupied_one():
    o, d = _ray(*RAY_X)
    s = _march(_grid(occupied=[(0, 2, 0, 0)]), o, d, dt_gamma=0.0, max_steps=64)
    # skipping keeps the lattice 2 + k*dt: samples with t in [3, 3.5) are k = 19..27
    assert s.num_samples == 9
    assert torch.allclose(s.t_starts, 2 + torch.arange(19, 28) * DT64, atol=1e-5)


def test_march_empty_and_full_grids():
    o, d = _ray(*RAY_X)
    assert _march(_grid(), o, d, dt_gamma=0.0, max_steps=64).num_samples == 0
    s = _march(_full_grid(), o, d, dt_gamma=0.0, max_steps=64)
    assert s.num_samples == math.ceil(2.0 / DT64)  # 37
    # max_steps caps the samples of a long ray: box [-4, 4], length 8 > 16 * dt_min
    g = _full_grid(bound=4.0)
    s = _march(g, *_ray([-9.0, 0.1, 0.1], [1.0, 0.0, 0.0]), dt_gamma=0.0, max_steps=16)
    assert s.num_samples == 16


def test_march_dt_gamma_and_noise_and_cascades():
    g = _full_grid(res=16, cascades=2)
    o, d = _ray([-3.0, 0.1, 0.2], [1.0, 0.0, 0.0])
    s = _march(g, o, d, dt_gamma=1 / 64)
    p = march_params(g, 1 / 64, 1024)
    expect = torch.clamp(s.t_starts * p["dt_gamma"], p["dt_min"], p["dt_max"])
    assert torch.equal(s.deltas, expect)  # dt grows with t, within [dt_min, dt_max]
    assert s.t_starts[0] == 1.0  # outer cascade: box [-2, 2]
    noisy = _march(g, o, d, dt_gamma=1 / 64, noise=torch.tensor([0.5]))
    assert noisy.t_starts[0] == pytest.approx(1.0 + 0.5 * float(s.deltas[0]))
    # positions of the outer cascade stay inside its box
    assert float(s.positions.abs().max()) <= 2.0


def test_march_misses_and_packing_of_many_rays():
    g = _full_grid(res=8)
    gen = torch.Generator().manual_seed(1)
    o = torch.randn(50, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen) * 0.3 + torch.tensor([0, 0, 1.0]), dim=-1)
    o[7] = torch.tensor([5.0, 5.0, -3.0])  # misses
    s = _march(g, o, d, noise=torch.rand(50, generator=gen))
    off, cnt = s.packed_info[:, 0].long(), s.packed_info[:, 1].long()
    assert cnt[7] == 0 and int(cnt.sum()) == s.num_samples
    assert torch.equal(off[1:], torch.cumsum(cnt, 0)[:-1])
    assert torch.equal(s.ray_indices, torch.repeat_interleave(torch.arange(50), cnt))
    assert bool((s.t_starts[1:] > s.t_starts[:-1])[s.ray_indices[1:] == s.ray_indices[:-1]].all())


# ---------------------------------------------------------------- composite
def _packed(counts):
    counts = torch.tensor(counts, dtype=torch.int32)
    return torch.stack([torch.cumsum(counts, 0, dtype=torch.int32) - counts, counts], -1)


def test_transmittance_through_constant_density():
    sigma, n, delta = 3.0, 40, 0.01
    info = _packed([n])
    deltas = torch.full((n,), delta)
    ts = (torch.arange(n) + 0.5) * delta
    w, ws, depth, img = composite_rays_train(torch.full((n,), sigma), torch.ones(n, 2), deltas, info,
                                             T_thresh=0.0, ts=ts)
    L = n * delta
    assert float(ws[0]) == pytest.approx(1 - math.exp(-sigma * L), rel=1e-5)
    expect_w = torch.exp(-sigma * torch.arange(n) * delta) * (1 - math.exp(-sigma * delta))
    assert torch.allclose(w, expect_w, atol=1e-6)
    assert torch.allclose(img, ws[:, None].expand(-1, 2), atol=1e-6)


def test_depth_of_single_opaque_sample_and_empty_ray():
    info = _packed([3, 0])
    sig = torch.tensor([0.0, 1e4, 5.0])
    w, ws, depth, img = composite_rays_train(sig, torch.tensor([[0., 0], [0.2, 0.8], [1, 1]]),
                                             torch.full((3,), 0.1), info, ts=torch.tensor([1.0, 2.5, 3.0]))
    assert torch.allclose(w, torch.tensor([0.0, 1.0, 0.0]))
    assert float(depth[0]) == pytest.approx(2.5) and float(ws[0]) == pytest.approx(1.0)
    assert torch.allclose(img[0], torch.tensor([0.2, 0.8]))
    assert float(ws[1]) == 0 and float(depth[1]) == 0


def test_depth_default_is_measured_along_samples():
    w, ws, depth, _ = composite_rays_train(torch.tensor([0.0, 1e4]), torch.zeros(2, 3),
                                           torch.tensor([0.2, 0.4]), _packed([2]))
    assert float(depth[0]) == pytest.approx(0.2 + 0.2)  # midpoint of the 2nd along the samples


def test_early_termination():
    # alphas 0.5 then 0.9: T = 1 -> 0.5 -> 0.05 < 0.1, so the third sample gets no weight
    sig = torch.tensor([-math.log(0.5), -math.log(0.1), 10.0])
    w, ws, _, _ = composite_rays_train(sig, torch.ones(3, 3), torch.ones(3), _packed([3]), T_thresh=0.1)
    assert torch.allclose(w, torch.tensor([0.5, 0.45, 0.0]), atol=1e-6)
    assert float(ws[0]) == pytest.approx(0.95, abs=1e-6)
    w, _, _, _ = composite_rays_train(sig, torch.ones(3, 3), torch.ones(3), _packed([3]), T_thresh=1e-4)
    assert float(w[2]) > 0


def test_composite_reference_gradcheck():
    gen = torch.Generator().manual_seed(0)
    info = _packed([4, 0, 6, 1])
    S = 11
    sig = (torch.rand(S, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    rgb = torch.rand(S, 4, generator=gen, dtype=torch.float64).requires_grad_()
    deltas = torch.rand(S, generator=gen, dtype=torch.float64) * 0.3 + 0.05
    ts = torch.cumsum(deltas, 0)

    def fn(s, c):
        return composite_rays_train_reference(s, c, deltas, info, T_thresh=1e-4, ts=ts)

    assert torch.autograd.gradcheck(fn, (sig, rgb))


# ---------------------------------------------------------------- occupancy grid
def _ball_density(xyz):
    return 50.0 * (xyz.norm(dim=-1) < 0.4).float()


def test_occupancy_update_marks_a_ball_and_decays():
    g = OccupancyGrid(1.0, 16, 1)
    assert g.occupancy_fraction() == 1.0  # everything marches before the first update
    g.update(_ball_density, generator=torch.Generator().manual_seed(0))
    centres = g.cell_centers(0, torch.arange(16 ** 3))
    r = centres.norm(dim=-1)
    occ = g.density_grid[0] > 0
    assert bool(occ[r < 0.3].all()) and not bool(occ[r > 0.55].any())
    assert g.mean_density == pytest.approx(float(g.density_grid.mean()))
    assert 0 < g.occupancy_fraction() < 0.1 and int(g.num_updates) == 1
    before = g.density_grid.clone()
    g.update(lambda x: torch.zeros(x.shape[0]), decay=0.5)
    assert torch.allclose(g.density_grid, before * 0.5)
    with pytest.raises(TypeError):
        g.update(_ball_density, 3)  # options are keyword-only


def test_occupancy_partial_update_and_mark_unseen():
    g = OccupancyGrid(1.0, 8, 2)
    for _ in range(3):
        g.update(_ball_density, full_updates=1, generator=torch.Generator().manual_seed(2))
    assert int(g.num_updates) == 3 and g.occupancy_fraction() > 0
    # one camera at z = -3 looking at +z with a narrow field of view: corners are unseen
    c2w = torch.eye(4)[None].clone()
    c2w[0, 2, 3] = -3.0
    g.mark_unseen(c2w, focal=100.0, cx=16, cy=16, width=32, height=32)
    corner = int(morton3d(torch.tensor([[0, 0, 7]]))[0])
    centre = int(morton3d(torch.tensor([[4, 4, 4]]))[0])
    assert g.density_grid[0, corner] == -1 and g.density_grid[0, centre] >= 0
    g.update(lambda x: torch.full((x.shape[0],), 9.0), full_updates=10)
    assert g.density_grid[0, corner] == -1  # known-empty cells stay empty
    # a second camera far back sees the whole grid: a cell counts as seen by any camera
    far_cam = c2w.clone()
    far_cam[0, 2, 3] = -30.0
    g2 = OccupancyGrid(1.0, 8, 2)
    g2.mark_unseen(torch.cat([c2w, far_cam]), focal=100.0, cx=16, cy=16, width=32, height=32,
                   pose_batch=1)
    assert not bool((g2.density_grid == -1).any())


# ---------------------------------------------------------------- inference
def _field(pos, dirs, ray_idx):
    sigma = 30.0 * torch.exp(-(pos ** 2).sum(-1) / 0.05)
    rgb = torch.stack([pos[:, 0].sigmoid(), pos[:, 1].sigmoid(), dirs[:, 2].abs(),
                       (ray_idx % 3).float() / 2], -1)
    return sigma, rgb


def _camera_rays(n=12):
    u = torch.linspace(-0.4, 0.4, n)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    d = torch.nn.functional.normalize(torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3), dim=-1)
    o = torch.tensor([0.05, -0.02, -2.5]).expand_as(d).contiguous()
    return o, d


def test_inference_loop_matches_training_march_and_composite():
    g = OccupancyGrid(1.0, 32, 1)
    g.update(lambda x: _field(x, x, torch.zeros(x.shape[0], dtype=torch.long))[0],
             generator=torch.Generator().manual_seed(0))
    o, d = _camera_rays()
    near, far = near_far_from_aabb(o, d, UNIT_BOX)
    s = march_rays_train(o, d, near, far, g)
    sig, rgb = _field(s.positions, s.dirs, s.ray_indices)
    _, ws, depth, img = composite_rays_train(sig, rgb, s.deltas, s.packed_info, ts=s.t_mids)
    assert float(ws.max()) > 0.9 and float(ws.min()) < 0.01  # opaque centre, empty corners
    for n_step in (1, 8):
        img_i, depth_i, ws_i = render_rays_inference(_field, o, d, g, n_step=n_step, aabb=UNIT_BOX)
        assert torch.allclose(ws_i, ws, atol=1e-5)
        assert torch.allclose(img_i, img, atol=1e-5)
        assert torch.allclose(depth_i, depth, atol=1e-4)
    bg = torch.tensor([1.0, 0.0, 0.0, 0.5])
    img_bg, _, ws_bg = render_rays_inference(_field, o, d, g, aabb=UNIT_BOX, bg=bg)
    assert torch.allclose(img_bg, img + (1 - ws)[:, None] * bg, atol=1e-5)


def test_inference_with_no_hits_returns_zeros_without_calling_the_field():
    calls = []

    def field(pos, dirs, ray_idx):
        calls.append(pos.shape[0])
        return _field(pos, dirs, ray_idx)

    g = _grid(res=4)
    o, d = _camera_rays(3)
    img, depth, ws = render_rays_inference(field, o, d, g, channels=4)
    assert img.shape == (9, 4) and float(img.abs().sum()) == 0 and float(ws.sum()) == 0
    assert calls == []
    g = _grid(res=4, occupied=[(0, 2, 1, 2)])  # on the centre ray
    render_rays_inference(field, o, d, g, n_step=2)
    assert calls and min(calls) > 0


# ---------------------------------------------------------------- CUDA vs reference
def _need_ext():
    from nerfhead.ops._loader import extension_available, extension_error

    if not extension_available():
        pytest.skip(extension_error())


def _cuda_scene(res=32, cascades=2, n=2000):
    gen = torch.Generator().manual_seed(3)
    g = OccupancyGrid(1.0, res, cascades)
    g.update(lambda x: _field(x, x, torch.zeros(x.shape[0], dtype=torch.long))[0] + 0.02 * (x[:, 0] > 0.5),
             generator=gen)
    o = torch.randn(n, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -2.5])
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen) * 0.4 + torch.tensor([0, 0, 1.0]), dim=-1)
    d[:5] = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, -1, 0], [0.0, 0, -1], [-0.0, 0, 1]])
    noise = torch.rand(n, generator=gen)
    return g, o, d, noise


@pytest.mark.cuda
def test_cuda_near_far_morton_packbits_match_reference():
    _need_ext()
    _, o, d, _ = _cuda_scene()
    n_ref, f_ref = near_far_from_aabb(o, d, [-2, -1, -1.5, 2, 1, 1.5], backend="torch")
    n_cu, f_cu = near_far_from_aabb(o.cuda(), d.cuda(), [-2, -1, -1.5, 2, 1, 1.5], backend="cuda")
    assert torch.equal(n_cu.cpu(), n_ref) and torch.equal(f_cu.cpu(), f_ref)
    coords = torch.randint(0, 1024, (5000, 3), dtype=torch.int32)
    codes = morton3d(coords, backend="torch")
    assert torch.equal(morton3d(coords.cuda(), backend="cuda").cpu(), codes)
    assert torch.equal(morton3d_invert(codes.cuda(), backend="cuda").cpu(), coords)
    grid = torch.rand(2, 32 ** 3)
    assert torch.equal(packbits(grid.cuda(), 0.3, backend="cuda").cpu(), packbits(grid, 0.3, backend="torch"))


@pytest.mark.cuda
def test_cuda_march_rays_train_matches_reference_exactly():
    _need_ext()
    g, o, d, noise = _cuda_scene()
    near, far = near_far_from_aabb(o, d, [-2] * 3 + [2] * 3, backend="torch")
    ref = march_rays_train(o, d, near, far, g, noise=noise, backend="torch")
    gc = OccupancyGrid(1.0, 32, 2).cuda()
    gc.load_state_dict(g.state_dict())
    cu = march_rays_train(o.cuda(), d.cuda(), near.cuda(), far.cuda(), gc, noise=noise.cuda(), backend="cuda")
    assert ref.num_samples > 1000
    for name in ("packed_info", "ray_indices", "t_starts", "t_ends", "deltas", "positions", "dirs"):
        a, b = getattr(ref, name), getattr(cu, name).cpu()
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.allclose(a.double(), b.double(), atol=TOL_EXACT, rtol=0), name


@pytest.mark.cuda
def test_cuda_composite_train_matches_reference_values_and_grads():
    _need_ext()
    g, o, d, noise = _cuda_scene()
    near, far = near_far_from_aabb(o, d, [-2] * 3 + [2] * 3)
    s = march_rays_train(o, d, near, far, g, noise=noise, backend="torch")
    gen = torch.Generator().manual_seed(4)
    sig = torch.rand(s.num_samples, generator=gen) * 40
    rgb = torch.rand(s.num_samples, 5, generator=gen)
    outs_w = [torch.randn(s.num_samples, generator=gen), torch.randn(s.num_rays, generator=gen),
              torch.randn(s.num_rays, generator=gen), torch.randn(s.num_rays, 5, generator=gen)]
    results = []
    for dev, backend in (("cpu", "torch"), ("cuda", "cuda")):
        # fresh leaves per device: sig.to("cpu") would return sig itself, which would then
        # require grad and make the CUDA copy a non-leaf whose .grad stays None
        sg = sig.detach().clone().to(dev).requires_grad_()
        cg = rgb.detach().clone().to(dev).requires_grad_()
        # T_thresh=0: the log-space reference and the multiplicative kernel may round T to
        # opposite sides of a threshold; termination is checked exactly below.
        outs = composite_rays_train(sg, cg, s.deltas.to(dev), s.packed_info.to(dev),
                                    T_thresh=0.0, backend=backend, ts=s.t_mids.to(dev))
        loss = sum((a * b.to(dev)).sum() for a, b in zip(outs, outs_w))
        loss.backward()
        results.append([x.detach().cpu() for x in outs] + [sg.grad.cpu(), cg.grad.cpu()])
    for name, a, b in zip(("weights", "weights_sum", "depth", "image"), results[0][:4], results[1][:4]):
        assert torch.allclose(a, b, atol=TOL_COMPOSITE * max(1.0, float(a.abs().max())), rtol=1e-4), name
    for name, a, b in zip(("grad_sigmas", "grad_rgbs"), results[0][4:], results[1][4:]):
        assert torch.allclose(a, b, atol=TOL_GRAD * max(1.0, float(a.abs().max())), rtol=1e-3), name


@pytest.mark.cuda
def test_cuda_composite_early_termination_and_gradient():
    _need_ext()
    sig = torch.tensor([-math.log(0.5), -math.log(0.1), 10.0], device="cuda", requires_grad=True)
    rgb = torch.ones(3, 2, device="cuda", requires_grad=True)
    info = _packed([3]).cuda()
    w, ws, _, _ = composite_rays_train(sig, rgb, torch.ones(3, device="cuda"), info, T_thresh=0.1,
                                       backend="cuda", ts=torch.arange(3.0, device="cuda"))
    assert torch.allclose(w.cpu(), torch.tensor([0.5, 0.45, 0.0]), atol=1e-6)
    ws.sum().backward()
    ref_sig = sig.detach().cpu().requires_grad_()
    _, ws_ref, _, _ = composite_rays_train_reference(ref_sig, rgb.detach().cpu(), torch.ones(3), _packed([3]),
                                                     T_thresh=0.1, ts=torch.arange(3.0))
    ws_ref.sum().backward()
    assert torch.allclose(sig.grad.cpu(), ref_sig.grad, atol=TOL_GRAD)
    assert float(sig.grad[2]) == 0.0


@pytest.mark.cuda
def test_cuda_inference_matches_reference_and_training_path():
    _need_ext()
    g, o, d, _ = _cuda_scene()
    gc = OccupancyGrid(1.0, 32, 2).cuda()
    gc.load_state_dict(g.state_dict())
    ref = render_rays_inference(_field, o, d, g, backend="torch")
    cu = render_rays_inference(_field, o.cuda(), d.cuda(), gc, backend="cuda")
    for name, a, b in zip(("image", "depth", "weights_sum"), ref, cu):
        assert torch.allclose(a, b.cpu(), atol=TOL_COMPOSITE * 10, rtol=1e-4), name
    near, far = near_far_from_aabb(o.cuda(), d.cuda(), [-2] * 3 + [2] * 3)
    s = march_rays_train(o.cuda(), d.cuda(), near, far, gc, backend="cuda")
    sig, rgb = _field(s.positions, s.dirs, s.ray_indices)
    _, ws, depth, img = composite_rays_train(sig, rgb, s.deltas, s.packed_info, ts=s.t_mids, backend="cuda")
    assert torch.allclose(img, cu[0], atol=1e-5) and torch.allclose(ws, cu[2], atol=1e-5)


@pytest.mark.cuda
def test_cuda_floater_pruning_matches_cpu_and_restores():
    """OccupancyGrid.prune_floaters on a CUDA grid: the same bitfield as on the CPU, left on
    the device (render and the CUDA-graph frame read it there), and floaters_pruned puts
    the device bitfield back."""
    gen = torch.Generator().manual_seed(0)
    cpu = OccupancyGrid(bound=1.0, resolution=64, cascades=2)
    cpu.density_grid.copy_((torch.rand(cpu.density_grid.shape, generator=gen) > 0.93).float())
    cpu.repack(0.01)
    gpu = OccupancyGrid(bound=1.0, resolution=64, cascades=2).cuda()
    gpu.load_state_dict(cpu.state_dict())
    before = gpu.bitfield.clone()
    with gpu.floaters_pruned() as found:
        assert found["cells"] > 0 and gpu.bitfield.is_cuda
        pruned = gpu.bitfield.cpu()
    assert torch.equal(gpu.bitfield, before)
    assert cpu.prune_floaters() == found
    assert torch.equal(cpu.bitfield, pruned)
