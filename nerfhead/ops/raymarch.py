"""Ray marching through an occupancy grid and volume compositing (torch-ngp semantics).

Every op has a public function (shapes in its docstring), a ``*_reference`` in PyTorch that
runs on any device, and a kernel path in ``nerfhead._C`` (bodies in
``csrc/raymarch_kernels.h``, run by the CUDA launcher on CUDA tensors and by the C++ launcher
on CPU tensors) chosen by ``resolve_backend("raymarch", backend, device)``. The march
reference performs the same float32 operations in the same order as the kernels (which never
fuse multiply-adds), so all three emit the same samples for the same noise.

Conventions
-----------
* Rays that miss the box (or whose box lies behind ``min_near``) get ``near = far =
  NEAR_FAR_MISS`` (float32 max); marching them yields no samples.
* Step size at distance t: ``dt = clamp(t * dt_gamma, dt_min, dt_max)`` with
  ``dt_min = 2*sqrt(3)/max_steps`` and ``dt_max = 2*sqrt(3) * 2**(C-1) / G``.
* Cascade of a point x with step dt: the larger of frexp-exponent(max|x| / bound) and
  frexp-exponent(dt * G / (2 * bound)), clamped to [0, C-1] (torch-ngp's mip_from_pos /
  mip_from_dt with cascade 0 = [-bound, bound]^3): max|x| in [bound*2^(c-1), bound*2^c) uses
  cascade c, and a step never uses cells smaller than itself.
* A sample covers [t, t + dt]; its position is ``o + t*d`` clamped to the grid cube; depth is
  ``sum(weight * (t_start + t_end) / 2)`` when t midpoints are given (``ts=``), else the
  midpoints are measured along the occupied samples only (cumulative deltas, RAD-NeRF style).
* Compositing: ``alpha = 1 - exp(-sigma*delta)``, ``weight = alpha*T``, ``T *= 1 - alpha``; a
  ray stops after the first sample that leaves ``T < T_thresh`` (later samples weigh 0).
* ``backend="nerfacc"`` (CUDA tensors, nerfacc installed) runs nerfacc's traverse_grids on our
  bitfield and its compositing; its samples are placed by nerfacc's own rules, it does not
  terminate early and has no inference step. It exists for comparisons and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nerfhead.ops.backend import KERNEL_BACKENDS, resolve_backend
from nerfhead.ops.occupancy import (OccupancyGrid, march_params, march_segment_reference,
                                    morton3d, morton3d_invert, packbits)
from nerfhead.ops.raymarch_inference import render_rays_inference

__all__ = ["NEAR_FAR_MISS", "RaySamples", "near_far_from_aabb", "near_far_from_aabb_reference",
           "march_rays_train", "march_rays_train_reference", "composite_rays_train",
           "composite_rays_train_reference", "render_rays_inference", "OccupancyGrid",
           "morton3d", "morton3d_invert", "packbits"]

NEAR_FAR_MISS = float(np.finfo(np.float32).max)
"""near and far of a ray that misses the box (float32 max)."""


def _ext():
    from nerfhead.ops._loader import load_extension

    return load_extension()


def _check_rays(rays_o: Tensor, rays_d: Tensor, where: str) -> None:
    if rays_o.shape != rays_d.shape or rays_o.dim() != 2 or rays_o.shape[1] != 3:
        raise ValueError(f"{where}: rays_o and rays_d must both be [R, 3], got "
                         f"{tuple(rays_o.shape)} and {tuple(rays_d.shape)}")


# ---------------------------------------------------------------- near / far
def _aabb_tensor(aabb, device) -> Tensor:
    a = torch.as_tensor(aabb, dtype=torch.float32, device=device).reshape(-1)
    if a.numel() != 6:
        raise ValueError(f"aabb must hold 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {a.numel()}")
    return a


def near_far_from_aabb_reference(rays_o: Tensor, rays_d: Tensor, aabb, min_near: float = 0.05):
    """PyTorch reference of :func:`near_far_from_aabb`."""
    _check_rays(rays_o, rays_d, "near_far_from_aabb")
    o, d = rays_o.float(), rays_d.float()
    a = _aabb_tensor(aabb, o.device)
    rd = 1.0 / d
    t1, t2 = (a[:3] - o) * rd, (a[3:] - o) * rd
    # fmin/fmax ignore NaN (0 * inf for a ray parallel to and on a slab plane), like the kernel.
    lo, hi = torch.fmin(t1, t2), torch.fmax(t1, t2)
    near = torch.fmax(torch.fmax(lo[:, 0], lo[:, 1]), lo[:, 2])
    far = torch.fmin(torch.fmin(hi[:, 0], hi[:, 1]), hi[:, 2])
    miss = (near > far) | (far < min_near)
    near = torch.fmax(near, torch.full_like(near, min_near))  # fmaxf: a NaN near becomes min_near
    near = torch.where(miss, torch.full_like(near, NEAR_FAR_MISS), near)
    far = torch.where(miss, torch.full_like(far, NEAR_FAR_MISS), far)
    return near, far


def near_far_from_aabb(rays_o: Tensor, rays_d: Tensor, aabb, min_near: float = 0.05,
                       backend: str = "auto"):
    """Ray / box slab test.

    rays_o, rays_d: [R, 3]; aabb: 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax).
    Returns nears [R], fars [R] float32; near is clamped to at least ``min_near``; rays that
    miss (or whose exit is before ``min_near``) get ``near = far = NEAR_FAR_MISS``.
    """
    _check_rays(rays_o, rays_d, "near_far_from_aabb")
    if resolve_backend("raymarch", backend, rays_o.device) in KERNEL_BACKENDS:
        return tuple(_ext().near_far_from_aabb(rays_o.float().contiguous(),
                                               rays_d.float().contiguous(),
                                               _aabb_tensor(aabb, rays_o.device), float(min_near)))
    return near_far_from_aabb_reference(rays_o, rays_d, aabb, min_near)


# ---------------------------------------------------------------- training march
@dataclass
class RaySamples:
    """Packed samples of R rays, S samples in all, each ray's samples contiguous and in order.

    positions [S, 3], dirs [S, 3], deltas [S] (= t_ends - t_starts), t_starts [S], t_ends [S],
    ray_indices [S] int64, packed_info [R, 2] int32 (offset of the ray's first sample, count).
    """

    positions: Tensor
    dirs: Tensor
    deltas: Tensor
    t_starts: Tensor
    t_ends: Tensor
    ray_indices: Tensor
    packed_info: Tensor

    @property
    def t_mids(self) -> Tensor:
        """Sample midpoints [S], the depth of each sample (pass as ``ts=`` to composite)."""
        return (self.t_starts + self.t_ends) * 0.5

    @property
    def num_samples(self) -> int:
        return int(self.deltas.shape[0])

    @property
    def num_rays(self) -> int:
        return int(self.packed_info.shape[0])


def _start_t(nears: Tensor, noise: Tensor | None, p: dict) -> Tensor:
    """near + dt(near) * noise, in the kernel's float32 order."""
    if noise is None:
        return nears.clone()
    dt = torch.clamp(nears * p["dt_gamma"], p["dt_min"], p["dt_max"])
    return nears + dt * noise.float()


def _check_march_inputs(rays_o, rays_d, nears, fars, noise, where):
    _check_rays(rays_o, rays_d, where)
    R = rays_o.shape[0]
    if nears.shape != (R,) or fars.shape != (R,):
        raise ValueError(f"{where}: nears and fars must be [{R}], got {tuple(nears.shape)}, {tuple(fars.shape)}")
    if noise is not None and noise.shape != (R,):
        raise ValueError(f"{where}: noise must be [{R}] in [0, 1), got {tuple(noise.shape)}")


def march_rays_train_reference(rays_o: Tensor, rays_d: Tensor, nears: Tensor, fars: Tensor,
                               grid: OccupancyGrid, dt_gamma: float = 1 / 256,
                               max_steps: int = 1024, noise: Tensor | None = None) -> RaySamples:
    """PyTorch reference of :func:`march_rays_train` (same samples, same order)."""
    _check_march_inputs(rays_o, rays_d, nears, fars, noise, "march_rays_train")
    p = march_params(grid, dt_gamma, max_steps)
    o, d = rays_o.float(), rays_d.float()
    R = o.shape[0]
    t0 = _start_t(nears.float(), noise, p)
    counts0 = torch.zeros(R, dtype=torch.int32, device=o.device)
    seg = march_segment_reference(o, d, t0, fars.float(), counts0, grid.bitfield, p,
                                  max_samples=max_steps, max_steps=max_steps)
    ray_idx, t_s, dt, pos = seg.ray_indices, seg.t_starts, seg.deltas, seg.positions
    counts = torch.bincount(ray_idx, minlength=R).int()
    offsets, _ = packed_offsets(counts)
    return RaySamples(positions=pos, dirs=d[ray_idx], deltas=dt, t_starts=t_s, t_ends=t_s + dt,
                      ray_indices=ray_idx, packed_info=torch.stack([offsets.int(), counts], -1))


def march_rays_train(rays_o: Tensor, rays_d: Tensor, nears: Tensor, fars: Tensor,
                     grid: OccupancyGrid, dt_gamma: float = 1 / 256, max_steps: int = 1024,
                     noise: Tensor | None = None, backend: str = "auto") -> RaySamples:
    """March R rays through ``grid``'s bitfield, emitting samples in occupied cells only.

    rays_o, rays_d [R, 3] (d need not be unit; t is in units of |d|), nears/fars [R] (from
    :func:`near_far_from_aabb`), noise [R] in [0, 1) jitters the start by ``noise * dt`` (None
    = no jitter). A ray stops at ``far`` or after ``max_steps`` samples. In an empty cell the
    ray jumps to the cell's exit and then on by whole steps. Returns packed :class:`RaySamples`.
    """
    _check_march_inputs(rays_o, rays_d, nears, fars, noise, "march_rays_train")
    which = resolve_backend("raymarch", backend, rays_o.device)
    if which in KERNEL_BACKENDS:
        return _march_rays_train_kernel(rays_o, rays_d, nears, fars, grid, dt_gamma, max_steps,
                                        noise)
    if which == "nerfacc":
        return _march_rays_train_nerfacc(rays_o, rays_d, nears, fars, grid, dt_gamma, max_steps,
                                         noise)
    return march_rays_train_reference(rays_o, rays_d, nears, fars, grid, dt_gamma, max_steps, noise)


PACKED_MAX_SAMPLES = 2 ** 31 - 1
"""Most samples one march may produce: packed_info holds int32 offsets."""


def packed_offsets(counts: Tensor) -> tuple[Tensor, int]:
    """Offsets (int64 [R], exclusive prefix sum) and total S of per-ray sample ``counts``.

    Raises ValueError when S exceeds what int32 ``packed_info`` offsets can address (instead
    of letting them wrap to negative values).
    """
    ends = torch.cumsum(counts, 0, dtype=torch.int64)
    total = int(ends[-1]) if counts.numel() else 0
    if total > PACKED_MAX_SAMPLES:
        raise ValueError(f"march_rays_train: {total} samples exceed the 2^31 - 1 that int32 "
                         f"packed_info offsets can address; march fewer rays per call "
                         f"({counts.numel()} now) or lower max_steps")
    return ends - counts, total


def _march_rays_train_kernel(rays_o, rays_d, nears, fars, grid, dt_gamma, max_steps, noise):
    """Two kernel passes: count the samples of each ray, prefix sum, fill (no padding)."""
    p = march_params(grid, dt_gamma, max_steps)
    R = rays_o.shape[0]
    noise = (torch.zeros(R, device=rays_o.device) if noise is None else noise.float()).contiguous()
    args = (rays_o.float().contiguous(), rays_d.float().contiguous(), nears.float().contiguous(),
            fars.float().contiguous(), noise, grid.bitfield.contiguous(), p["bound"],
            p["inv_bound"], p["dt_gamma"], p["dt_min"], p["dt_max"], p["dt_to_cells"], p["C"],
            p["G"], int(max_steps))
    C = _ext()
    counts = C.march_rays_train_count(*args)
    offsets, S = packed_offsets(counts)
    f = dict(device=rays_o.device, dtype=torch.float32)
    out = RaySamples(positions=torch.empty(S, 3, **f), dirs=torch.empty(S, 3, **f),
                     deltas=torch.empty(S, **f), t_starts=torch.empty(S, **f),
                     t_ends=torch.empty(S, **f),
                     ray_indices=torch.empty(S, dtype=torch.int64, device=rays_o.device),
                     packed_info=torch.stack([offsets.int(), counts], -1))
    C.march_rays_train_fill(*args, offsets, counts, out.positions, out.dirs, out.deltas,
                            out.t_starts, out.t_ends, out.ray_indices)
    return out


# ---------------------------------------------------------------- training composite
def _sample_order(packed_info: Tensor, num_samples: int):
    """(sample index, ray index) of every referenced sample, grouped by ray, in ray order."""
    offsets, counts = packed_info[:, 0].long(), packed_info[:, 1].long()
    R = counts.shape[0]
    rays = torch.repeat_interleave(torch.arange(R, device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts  # position of each ray's first entry in `rays`
    within = torch.arange(rays.shape[0], device=counts.device) - first[rays]
    idx = offsets[rays] + within
    if idx.numel() and int(idx.max()) >= num_samples:
        raise ValueError(f"composite: packed_info refers to sample {int(idx.max())} of {num_samples}")
    return idx, rays, first


def cumulative_t_mids(deltas: Tensor, packed_info: Tensor) -> Tensor:
    """Per-sample midpoints measured along each ray's samples only: sum(prev deltas) + delta/2."""
    idx, rays, first = _sample_order(packed_info, deltas.shape[0])
    dl = deltas.detach()[idx].double()
    csum = torch.cumsum(dl, 0)
    excl = csum - dl
    start = torch.zeros(packed_info.shape[0], dtype=torch.float64, device=deltas.device)
    has = packed_info[:, 1] > 0
    start[has] = excl[first[has]]
    out = torch.zeros_like(deltas, dtype=torch.float32)
    out[idx] = (excl - start[rays] + 0.5 * dl).float()
    return out


def composite_rays_train_reference(sigmas: Tensor, rgbs: Tensor, deltas: Tensor,
                                   packed_info: Tensor, T_thresh: float = 1e-4,
                                   ts: Tensor | None = None):
    """Differentiable PyTorch reference of :func:`composite_rays_train` (log-space cumsum)."""
    S = sigmas.shape[0]
    idx, rays, first = _sample_order(packed_info, S)
    R = packed_info.shape[0]
    dtype = sigmas.dtype
    if ts is None:
        ts = cumulative_t_mids(deltas, packed_info)
    tau = sigmas[idx] * deltas[idx].to(dtype)
    # exclusive cumulative optical depth per ray; float64 so the global cumsum minus the ray's
    # start keeps precision over millions of samples.
    csum = torch.cumsum(tau.double(), 0)
    excl = csum - tau.double()
    start = torch.zeros(R, dtype=torch.float64, device=sigmas.device)
    has = packed_info[:, 1] > 0
    start = start.index_put((has.nonzero().squeeze(-1),), excl[first[has]])
    T = torch.exp(-(excl - start[rays])).to(dtype)
    alpha = 1 - torch.exp(-tau)
    keep = (T >= T_thresh).detach()  # the kernel breaks after the sample that drops T below
    w = torch.where(keep, alpha * T, torch.zeros_like(T))
    weights = torch.zeros(S, dtype=dtype, device=sigmas.device).index_put((idx,), w)
    zeros_r = torch.zeros(R, dtype=dtype, device=sigmas.device)
    weights_sum = zeros_r.index_add(0, rays, w)
    depth = zeros_r.index_add(0, rays, w * ts[idx].to(dtype))
    image = torch.zeros(R, rgbs.shape[1], dtype=rgbs.dtype, device=rgbs.device).index_add(
        0, rays, w[:, None].to(rgbs.dtype) * rgbs[idx])
    return weights, weights_sum, depth, image


class _CompositeTrainKernel(torch.autograd.Function):
    """nerfhead._C composite (CPU or CUDA, by device) and its analytic backward."""

    @staticmethod
    def forward(ctx, sigmas, rgbs, deltas, ts, packed_info, T_thresh):
        weights, weights_sum, depth, image = _ext().composite_rays_train_forward(
            sigmas, rgbs, deltas, ts, packed_info, T_thresh)
        ctx.save_for_backward(sigmas, rgbs, deltas, ts, packed_info)
        ctx.T_thresh = T_thresh
        return weights, weights_sum, depth, image

    @staticmethod
    def backward(ctx, g_weights, g_weights_sum, g_depth, g_image):
        sigmas, rgbs, deltas, ts, packed_info = ctx.saved_tensors
        grads = [g if g is not None else torch.zeros_like(ref) for g, ref in
                 ((g_weights, sigmas), (g_weights_sum, packed_info[:, 0].float()),
                  (g_depth, packed_info[:, 0].float()),
                  (g_image, torch.empty(packed_info.shape[0], rgbs.shape[1], device=rgbs.device)))]
        g_sigmas, g_rgbs = _ext().composite_rays_train_backward(
            *(g.float().contiguous() for g in grads), sigmas, rgbs, deltas, ts, packed_info,
            ctx.T_thresh)
        return g_sigmas, g_rgbs, None, None, None, None


def _composite_rays_train_kernel(sigmas, rgbs, deltas, ts, packed_info, T_thresh):
    return _CompositeTrainKernel.apply(sigmas.float().contiguous(), rgbs.float().contiguous(),
                                 deltas.float().contiguous(), ts.float().contiguous(),
                                 packed_info.int().contiguous(), float(T_thresh))


def composite_rays_train(sigmas: Tensor, rgbs: Tensor, deltas: Tensor, packed_info: Tensor,
                         T_thresh: float = 1e-4, backend: str = "auto", ts: Tensor | None = None):
    """Front-to-back alpha compositing of packed samples (differentiable in sigmas and rgbs).

    sigmas [S], rgbs [S, C] (any C; every channel is composited), deltas [S], packed_info
    [R, 2] int32 (offset, count), ts [S] sample depths (use ``samples.t_mids``; None = along
    occupied samples, see module doc). Returns weights [S], weights_sum [R], depth [R],
    image [R, C]; add a background as ``image + (1 - weights_sum)[:, None] * bg``.
    """
    if sigmas.dim() != 1 or rgbs.dim() != 2 or rgbs.shape[0] != sigmas.shape[0] \
            or deltas.shape != sigmas.shape:
        raise ValueError(f"composite_rays_train: need sigmas [S], rgbs [S, C], deltas [S]; got "
                         f"{tuple(sigmas.shape)}, {tuple(rgbs.shape)}, {tuple(deltas.shape)}")
    if packed_info.dim() != 2 or packed_info.shape[1] != 2:
        raise ValueError(f"composite_rays_train: packed_info must be [R, 2], got {tuple(packed_info.shape)}")
    which = resolve_backend("raymarch", backend, sigmas.device)
    if which in KERNEL_BACKENDS:
        if ts is None:
            ts = cumulative_t_mids(deltas, packed_info)
        return _composite_rays_train_kernel(sigmas, rgbs, deltas, ts, packed_info, T_thresh)
    if which == "nerfacc":
        return _composite_rays_train_nerfacc(sigmas, rgbs, deltas, packed_info, ts)
    return composite_rays_train_reference(sigmas, rgbs, deltas, packed_info, T_thresh, ts)



# ---------------------------------------------------------------- nerfacc (optional, CUDA only)
def _march_rays_train_nerfacc(rays_o, rays_d, nears, fars, grid, dt_gamma, max_steps, noise):
    """nerfacc's ``traverse_grids`` on our bitfield: same grid, nerfacc's own stepping rule
    (samples differ from ours in placement; ``max_steps`` is not enforced). For benchmarks."""
    from nerfacc.grid import traverse_grids

    p = march_params(grid, dt_gamma, max_steps)
    G, C, dev = grid.resolution, grid.cascades, rays_o.device
    axis = torch.arange(G, device=dev)
    xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    code = morton3d(xyz.int(), backend="torch").long()
    bits = grid.bitfield.long()
    binaries = torch.stack([((bits[(c * G ** 3 + code) >> 3] >> ((c * G ** 3 + code) & 7)) & 1)
                            .bool().reshape(G, G, G) for c in range(C)])
    half = torch.tensor([grid.bound * 2 ** c for c in range(C)], device=dev)[:, None]
    aabbs = torch.cat([-half.expand(-1, 3), half.expand(-1, 3)], -1)
    hit = nears < fars
    start = torch.where(hit, _start_t(nears.float(), noise, p), torch.zeros_like(nears))
    end = torch.where(hit, fars.float(), torch.zeros_like(fars))
    intervals, samples, _ = traverse_grids(rays_o.float(), rays_d.float(), binaries, aabbs,
                                           near_planes=start, far_planes=end,
                                           step_size=p["dt_min"], cone_angle=p["dt_gamma"])
    t_s, t_e = intervals.vals[intervals.is_left], intervals.vals[intervals.is_right]
    ray_idx = samples.ray_indices.long()
    counts = torch.bincount(ray_idx, minlength=rays_o.shape[0]).int()
    offsets = torch.cumsum(counts, 0, dtype=torch.int32) - counts
    d = rays_d.float()[ray_idx]
    return RaySamples(positions=rays_o.float()[ray_idx] + t_s[:, None] * d, dirs=d,
                      deltas=t_e - t_s, t_starts=t_s, t_ends=t_e, ray_indices=ray_idx,
                      packed_info=torch.stack([offsets, counts], -1))


def _composite_rays_train_nerfacc(sigmas, rgbs, deltas, packed_info, ts):
    """nerfacc's render_weight_from_density + accumulate_along_rays (no early termination)."""
    from nerfacc.volrend import accumulate_along_rays, render_weight_from_density

    idx, rays, _ = _sample_order(packed_info, sigmas.shape[0])
    if ts is None:
        ts = cumulative_t_mids(deltas, packed_info)
    R = packed_info.shape[0]
    tm, dl = ts[idx].float(), deltas[idx].float()
    w, _, _ = render_weight_from_density(tm - 0.5 * dl, tm + 0.5 * dl, sigmas[idx],
                                         ray_indices=rays, n_rays=R)
    weights = torch.zeros_like(sigmas).index_put((idx,), w)
    weights_sum = accumulate_along_rays(w, None, ray_indices=rays, n_rays=R)[:, 0]
    depth = accumulate_along_rays(w, tm[:, None], ray_indices=rays, n_rays=R)[:, 0]
    image = accumulate_along_rays(w, rgbs[idx], ray_indices=rays, n_rays=R)
    return weights, weights_sum, depth, image
