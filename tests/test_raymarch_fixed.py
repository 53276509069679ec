"""The fixed-shape inference loop (nerfhead/ops/raymarch_fixed.py) against today's loop
(render_rays_inference), its kernels against their torch references, and its host syncs."""

from __future__ import annotations

import pytest
import torch

from nerfhead.ops.host_sync import HostSyncCounter
from nerfhead.ops.occupancy import OccupancyGrid
from nerfhead.ops.raymarch import near_far_from_aabb, render_rays_inference
from nerfhead.ops.raymarch_fixed import (FixedRenderBuffers, composite_compact,
                                         march_compact_count, march_compact_fill,
                                         render_rays_fixed, steps_to_finish)

# Named tolerances. Same samples and the same per-ray float32 compositing order: the images
# agree to the last bit on one backend; across backends (C++ expf vs torch.exp) they differ by
# the composite's rounding only.
TOL_SAME_BACKEND = 0.0
TOL_ACROSS_BACKENDS = 2e-5


def _need_ext():
    from nerfhead.ops._loader import extension_available, extension_error

    if not extension_available():
        pytest.skip(extension_error())


def _field(pos, dirs, ray_idx):
    # a dense ball (rays through it terminate early on T) plus a faint shell: long marches
    r2 = (pos ** 2).sum(-1)
    sigma = 40.0 * torch.exp(-r2 / 0.05) + 0.3 * (r2 < 0.6).float()
    rgb = torch.stack([pos[:, 0].sigmoid(), pos[:, 1].sigmoid(), dirs[:, 2].abs(),
                       (ray_idx % 3).float() / 2], -1)
    return sigma, rgb


def _scene(n_side=24, res=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = OccupancyGrid(1.0, res, 1)
    g.update(lambda x: _field(x, x, torch.zeros(x.shape[0], dtype=torch.long))[0],
             threshold=0.2, generator=gen)
    u = torch.linspace(-0.7, 0.7, n_side)  # the corners miss the box
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    d = torch.nn.functional.normalize(torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(-1, 3), dim=-1)
    o = torch.tensor([0.05, -0.02, -2.5]).expand_as(d).contiguous()
    return g, o, d


BACKENDS = ["torch", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule,capacity", [((8, 16, 32, 64), 1 << 20), ((1, 2, 4), 1 << 20),
                                               ((8, 16), 64)])  # 64: most steps defer rays
def test_fixed_loop_renders_the_image_of_todays_loop(backend, schedule, capacity):
    if backend == "cpu":
        _need_ext()
    g, o, d = _scene()
    kw = dict(dt_gamma=1 / 128, max_steps=256, T_thresh=1e-3, backend=backend, aabb=[-1] * 3 + [1] * 3,
              channels=4)
    old = render_rays_inference(_field, o, d, g, **kw)
    stats = {}
    new = render_rays_fixed(_field, o, d, g, schedule=schedule, capacity=capacity, stats=stats, **kw)
    ws = old[2]
    assert float(ws.max()) > 0.99 and float(ws.min()) == 0.0  # opaque centre, rays that miss
    assert 0 < float((ws > 0.5).float().mean()) < 0.9
    for name, a, b in zip(("image", "depth", "weights_sum"), old, new):
        assert torch.allclose(a, b, atol=TOL_SAME_BACKEND, rtol=0), (name, float((a - b).abs().max()))
    if capacity == 64:  # deferrals cost steps, not samples
        assert stats["steps"] > 10
    assert stats["samples"] > 0


def test_fixed_loop_without_read_back_and_reused_buffers():
    _need_ext()
    g, o, d = _scene()
    kw = dict(dt_gamma=1 / 128, max_steps=256, T_thresh=1e-3, aabb=[-1] * 3 + [1] * 3, channels=4)
    old = render_rays_inference(_field, o, d, g, **kw)
    buf = FixedRenderBuffers(o.shape[0], 4096, 4, "cpu")
    ptr = buf.positions.data_ptr()
    for fixed_steps in (None, 2):  # 2: rays are left; the frame finishes with read-backs
        new = render_rays_fixed(_field, o, d, g, read_back=False, fixed_steps=fixed_steps,
                                capacity=4096, buffers=buf, **kw)
        for a, b in zip(old, new):
            assert torch.equal(a, b)
    assert buf.positions.data_ptr() == ptr  # the same buffers, frame after frame
    assert steps_to_finish((8, 16, 32, 64), 256) == 8  # 8+16+32+4*64 = 312 >= 256, +1


def test_fixed_loop_across_backends_and_bg():
    _need_ext()
    g, o, d = _scene()
    kw = dict(dt_gamma=1 / 128, max_steps=256, aabb=[-1] * 3 + [1] * 3, channels=4)
    bg = torch.tensor([1.0, 0.0, 0.5, 0.25])
    a = render_rays_fixed(_field, o, d, g, backend="torch", bg=bg, **kw)
    b = render_rays_fixed(_field, o, d, g, backend="cpu", bg=bg, **kw)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=TOL_ACROSS_BACKENDS, rtol=0)


def _state(g, o, d, alive_frac=0.8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    near, far = near_far_from_aabb(o, d, [-1] * 3 + [1] * 3, backend="torch")
    alive = (near < far) & (torch.rand(o.shape[0], generator=gen) < alive_frac)
    t = torch.where(alive, near + 0.3 * torch.rand(o.shape[0], generator=gen), near)
    counts = torch.randint(0, 200, (o.shape[0],), generator=gen, dtype=torch.int32)
    return alive, t, counts, far


@pytest.mark.parametrize("capacity", [4096, 100])
def test_compact_kernels_match_references(capacity):
    _need_ext()
    g, o, d = _scene(n_side=16)
    k, max_steps = 8, 256
    alive, t, counts, far = _state(g, o, d)
    R = o.shape[0]
    outs = {}
    T0 = torch.rand(R, generator=torch.Generator().manual_seed(5)) + 0.001
    for be in ("torch", "cpu"):
        a, tt, cc = alive.clone(), t.clone(), counts.clone()
        n = torch.full((R,), -7, dtype=torch.int32)
        march_compact_count(a, tt, cc, o, d, far, g, k, n, 1 / 128, max_steps, backend=be)
        assert torch.equal(tt, t) and torch.equal(cc, counts)  # the count pass changes no state
        ends = torch.cumsum(n, 0, dtype=torch.int64)
        pos, dl, ts = torch.zeros(capacity, 3), torch.zeros(capacity), torch.zeros(capacity)
        ids = torch.full((capacity,), -1, dtype=torch.int64)
        march_compact_fill(a, tt, cc, o, d, far, g, k, ends, n, pos, dl, ts, ids, 1 / 128, max_steps,
                           backend=be)
        sig, rgb = _field(pos, d[ids.clamp(min=0)], ids.clamp(min=0))
        T, ws, dep, img = T0.clone(), torch.zeros(R), torch.zeros(R), torch.zeros(R, 4)
        T_in = T.clone()
        used = int(torch.where(ends <= capacity, ends, 0).max())
        composite_compact(a, T, sig[:used].contiguous(), rgb[:used].contiguous(), dl, ts, ends, n,
                          capacity, k, 1e-3, ws, dep, img, backend=be)
        outs[be] = dict(n=n, tt=tt, cc=cc, pos=pos, dl=dl, ts=ts, ids=ids, a=a, T=T, ws=ws, dep=dep,
                        img=img, ends=ends, T_in=T_in)
    r, c = outs["torch"], outs["cpu"]
    for key in ("n", "tt", "cc", "pos", "dl", "ts", "ids", "a"):  # march: bit-exact
        assert torch.equal(r[key], c[key]), key
    n, ends = r["n"], r["ends"]
    assert int((n[~alive]).abs().sum()) == 0 and int(n.max()) == k and int(n[alive].min()) < k
    fits = alive & (ends <= capacity)
    if capacity == 100:
        assert 0 < int(fits.sum()) < int(alive.sum())  # some rays deferred
    # deferred rays keep their state and stay alive; fitted rays advanced
    deferred = alive & ~fits
    assert torch.equal(c["tt"][deferred], t[deferred]) and bool(c["a"][deferred].all())
    assert bool((c["cc"][fits] == counts[fits] + n[fits]).all())
    # each fitted ray's slots hold its own id
    for rr in fits.nonzero().squeeze(-1).tolist()[:50]:
        s0, s1 = int(ends[rr] - n[rr]), int(ends[rr])
        assert bool((c["ids"][s0:s1] == rr).all())
    # finished: ended marches (n < k) are dead; composite matches
    assert not bool(c["a"][fits & (n < k)].any())
    for key in ("T", "ws", "dep", "img"):
        assert torch.allclose(r[key], c[key], atol=TOL_ACROSS_BACKENDS, rtol=0), key


def test_compact_kernels_reject_bad_ranges_on_cpu():
    _need_ext()
    g, o, d = _scene(n_side=4)
    R = o.shape[0]
    alive = torch.ones(R, dtype=torch.bool)
    n = torch.full((R,), 2, dtype=torch.int32)
    ends = torch.cumsum(n, 0, dtype=torch.int64) - 5  # the first ranges start below 0
    with pytest.raises(RuntimeError, match="sample range"):
        composite_compact(alive, torch.ones(R), torch.zeros(64), torch.zeros(64, 3), torch.zeros(64),
                          torch.zeros(64), ends, n, 64, 2, 1e-3, torch.zeros(R), torch.zeros(R),
                          torch.zeros(R, 3), backend="cpu")
    with pytest.raises(RuntimeError, match="alive"):
        march_compact_count(alive.long(), torch.zeros(R), torch.zeros(R, dtype=torch.int32), o, d,
                            torch.ones(R), g, 4, n, backend="cpu")


def test_host_syncs_per_step():
    """Today's loop makes several host syncs per step; the fixed loop one per step (kernel
    backend, read_back=True) or one per frame (read_back=False)."""
    _need_ext()
    g, o, d = _scene()
    kw = dict(dt_gamma=1 / 128, max_steps=256, T_thresh=1e-3, aabb=[-1] * 3 + [1] * 3, channels=4,
              backend="cpu")
    with HostSyncCounter() as old:
        render_rays_inference(_field, o, d, g, **kw)
    stats = {}
    with HostSyncCounter() as new:
        render_rays_fixed(_field, o, d, g, stats=stats, **kw)
    assert new.total <= stats["steps"], new.by_op  # at most one per step
    assert set(new.by_op) == {"_local_scalar_dense"}
    assert old.total >= 4 * new.total, (old.by_op, new.by_op)
    with HostSyncCounter() as none:
        render_rays_fixed(_field, o, d, g, read_back=False, **kw)
    assert none.total == 1, none.by_op  # the frame's "rays left?"


def test_host_sync_counter_sees_what_syncs_on_a_gpu():
    x = torch.arange(6.0)
    with HostSyncCounter() as c:
        x.sum().item()
        bool((x > 2).any())
        x[x > 2]
        x[x > 2] = 0
        torch.nonzero(x)
        x[torch.tensor([0, 1])]  # integer index: no sync
        torch.cumsum(x, 0)
    assert c.by_op == {"_local_scalar_dense": 2, "index(bool mask)": 1, "index_put_(bool mask)": 1,
                       "nonzero": 1}


@pytest.mark.cuda
def test_cuda_fixed_loop_matches_cpu_and_makes_no_unexpected_syncs():
    _need_ext()
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g, o, d = _scene(n_side=64)
    gc = OccupancyGrid(1.0, 32, 1).cuda()
    gc.load_state_dict(g.state_dict())
    kw = dict(dt_gamma=1 / 128, max_steps=256, T_thresh=1e-3, aabb=[-1] * 3 + [1] * 3, channels=4)
    ref = render_rays_inference(_field, o, d, g, **kw)
    stats = {}
    torch.cuda.synchronize()
    with HostSyncCounter() as c:
        cu = render_rays_fixed(_field, o.cuda(), d.cuda(), gc, stats=stats, **kw)
    for a, b in zip(ref, cu):
        assert torch.allclose(a, b.cpu(), atol=1e-4, rtol=1e-4)
    assert c.total <= stats["steps"], c.by_op
    with HostSyncCounter() as c:
        render_rays_fixed(_field, o.cuda(), d.cuda(), gc, read_back=False, **kw)
    assert c.total == 1, c.by_op
