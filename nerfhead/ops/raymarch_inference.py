"""Inference rendering: march a few samples per alive ray, shade them, composite, compact.

Same samples and the same compositing arithmetic as the training path with no noise
(``march_rays_train`` + ``composite_rays_train`` with ``ts=samples.t_mids``), but only rays
that are still alive are marched and shaded, so opaque rays stop costing work early.

The two per-step ops are public, for renderers that drive their own loop:

* :func:`march_rays_inference`: up to ``k`` samples for each alive ray, from its march
  state ``(t, counts)``, which it advances in place;
* :func:`composite_rays_inference`: composites those ``k`` slots into per-ray running
  outputs (transmittance ``T``, ``weights_sum``, ``depth``, ``image``, updated in place) and
  says which rays died.

Both run the kernels of ``nerfhead._C`` (``march_rays`` / ``composite_rays``, bodies in
``csrc/raymarch_kernels.h``; backend ``cuda`` on CUDA tensors, ``cpu`` on CPU tensors) or
their PyTorch references here (``torch``). Output shapes depend only on ``(n, k)``, never on
the data, and on the kernel backends neither op synchronises with the host, so a
fixed-shape loop (no compaction) can call them back to back.
:func:`render_rays_inference` is the reference driver (it compacts alive rays each step,
with boolean masks: several host syncs per step). ``raymarch_fixed.render_rays_fixed`` renders
the same image from fixed-size buffers with at most one host sync per step; it is what
``TalkingHead.render_frame`` runs by default.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from nerfhead.ops.backend import KERNEL_BACKENDS, resolve_backend
from nerfhead.ops.occupancy import OccupancyGrid, march_params, march_segment_reference

FieldFn = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]


def _ext():
    from nerfhead.ops._loader import load_extension

    return load_extension()


def march_rays_inference_reference(alive: Tensor, t: Tensor, counts: Tensor, rays_o: Tensor,
                                   rays_d: Tensor, fars: Tensor, grid: OccupancyGrid, p: dict,
                                   k: int, max_steps: int):
    """Up to ``k`` samples for each alive ray from its current ``t``.

    alive [n] int64 ray ids; t [n] float32 and counts [n] int32 are the march state and are
    updated in place. Returns positions [n, k, 3], deltas [n, k] (0 in unused slots) and
    ts [n, k] (sample midpoints).
    """
    n = alive.shape[0]
    seg = march_segment_reference(rays_o[alive], rays_d[alive], t, fars[alive], counts,
                                  grid.bitfield, p, max_samples=k, max_steps=max_steps)
    t.copy_(seg.t)
    counts.copy_(seg.counts)
    per_ray = torch.bincount(seg.ray_indices, minlength=n)
    first = torch.cumsum(per_ray, 0) - per_ray
    slot = torch.arange(seg.ray_indices.numel(), device=t.device) - first[seg.ray_indices]
    positions = torch.zeros(n, k, 3, device=t.device)
    deltas = torch.zeros(n, k, device=t.device)
    ts = torch.zeros(n, k, device=t.device)
    positions[seg.ray_indices, slot] = seg.positions
    deltas[seg.ray_indices, slot] = seg.deltas
    ts[seg.ray_indices, slot] = (seg.t_starts + (seg.t_starts + seg.deltas)) * 0.5
    return positions, deltas, ts


def composite_rays_inference_reference(alive: Tensor, T: Tensor, sigmas: Tensor, rgbs: Tensor,
                                       deltas: Tensor, ts: Tensor, T_thresh: float,
                                       weights_sum: Tensor, depth: Tensor, image: Tensor) -> Tensor:
    """Composite [n, k] slots into the running outputs of rays ``alive`` (in place).

    T [n] is the running transmittance (updated in place); weights_sum [R], depth [R],
    image [R, C] are indexed by ray id. A ray dies at an empty slot (delta == 0: its march
    ended) or after the sample that takes T below T_thresh. Returns dead [n] bool.
    """
    n, k = deltas.shape
    ws, dp, img = weights_sum[alive], depth[alive], image[alive]
    dead = torch.zeros(n, dtype=torch.bool, device=T.device)
    for j in range(k):
        dead |= deltas[:, j] == 0
        live = ~dead
        alpha = 1 - torch.exp(-sigmas[:, j] * deltas[:, j])
        w = alpha * T
        ws = torch.where(live, ws + w, ws)
        dp = torch.where(live, dp + w * ts[:, j], dp)
        img = torch.where(live[:, None], img + w[:, None] * rgbs[:, j], img)
        T.copy_(torch.where(live, T * (1 - alpha), T))
        dead |= live & (T < T_thresh)
    weights_sum[alive], depth[alive], image[alive] = ws, dp, img
    return dead


def march_rays_inference(alive: Tensor, t: Tensor, counts: Tensor, rays_o: Tensor,
                         rays_d: Tensor, fars: Tensor, grid: OccupancyGrid, k: int,
                         dt_gamma: float = 1 / 256, max_steps: int = 1024,
                         backend: str = "auto"):
    """One inference march step: up to ``k`` new samples for each alive ray.

    alive [n] int64: ids (rows of rays_o / rays_d / fars) of the rays to march.
    t [n] float32, counts [n] int32: march state of those rays (distance reached, samples
    taken so far; start from ``nears[alive]`` and zeros), advanced in place; on the kernel
    backends both must be contiguous (they are written through).
    rays_o, rays_d [R, 3], fars [R] float32: all rays. A ray stops at ``far`` or after
    ``max_steps`` samples in all (the same samples as :func:`march_rays_train` without noise).
    Returns positions [n, k, 3], deltas [n, k] (0 in unused slots: the ray's march ended
    before that slot) and ts [n, k] (sample midpoints), all float32.
    """
    p = march_params(grid, dt_gamma, max_steps)
    if resolve_backend("raymarch", backend, rays_o.device) in KERNEL_BACKENDS:
        return tuple(_ext().march_rays(
            alive, t, counts, rays_o, rays_d, fars, grid.bitfield, p["bound"], p["inv_bound"],
            p["dt_gamma"], p["dt_min"], p["dt_max"], p["dt_to_cells"], p["C"], p["G"], int(k),
            int(max_steps)))
    return march_rays_inference_reference(alive, t, counts, rays_o, rays_d, fars, grid, p, k,
                                          max_steps)


def composite_rays_inference(alive: Tensor, T: Tensor, sigmas: Tensor, rgbs: Tensor,
                             deltas: Tensor, ts: Tensor, T_thresh: float, weights_sum: Tensor,
                             depth: Tensor, image: Tensor, backend: str = "auto") -> Tensor:
    """One inference composite step: the ``k`` slots of each alive ray, front to back.

    alive [n] int64 ray ids; T [n] float32 running transmittance of those rays (start at 1),
    updated in place. sigmas [n, k], rgbs [n, k, C], deltas [n, k], ts [n, k] float32: the
    field at the samples of :func:`march_rays_inference` (slots with delta 0 are ignored).
    weights_sum [R], depth [R], image [R, C] float32: outputs of all rays, indexed by ray
    id, accumulated in place. A ray dies at an empty slot (its march ended) or after the
    sample that takes T below ``T_thresh``. Returns dead [n] bool. On the kernel backends
    the in-place tensors must be contiguous.
    """
    if resolve_backend("raymarch", backend, sigmas.device) in KERNEL_BACKENDS:
        return _ext().composite_rays(alive, T, sigmas, rgbs, deltas, ts, float(T_thresh),
                                     weights_sum, depth, image)
    return composite_rays_inference_reference(alive, T, sigmas, rgbs, deltas, ts, T_thresh,
                                              weights_sum, depth, image)


@torch.no_grad()
def render_rays_inference(field_fn: FieldFn, rays_o: Tensor, rays_d: Tensor, grid: OccupancyGrid,
                          dt_gamma: float = 1 / 256, max_steps: int = 1024,
                          T_thresh: float = 1e-4, n_step: int = 8, backend: str = "auto", *,
                          nears: Tensor | None = None, fars: Tensor | None = None,
                          aabb=None, min_near: float = 0.05, bg: Tensor | None = None,
                          channels: int = 3):
    """Render R rays without autograd, marching only rays that are still alive.

    field_fn(positions [K, 3], dirs [K, 3], ray_indices [K] int64) -> (sigma [K], rgb [K, C]);
    ray_indices index the input rays (for per-ray conditioning). nears/fars default to the
    slab test against ``aabb`` (default: the grid's outer cube). ``bg`` ([C] or [R, C]) is
    composited as ``image + (1 - weights_sum) * bg``. ``channels`` is C when no ray hits
    anything (otherwise taken from field_fn). Each loop step marches up to
    ``n_step * min(8, R // alive)`` samples per alive ray, so memory stays ~R * n_step * 8.
    Returns image [R, C], depth [R], weights_sum [R].
    """
    from nerfhead.ops.raymarch import near_far_from_aabb

    which = resolve_backend("raymarch", backend, rays_o.device)
    if which == "nerfacc":  # nerfacc has no alive-ray inference step: use ours
        which = resolve_backend("raymarch", "auto", rays_o.device)
    o, d = rays_o.float().contiguous(), rays_d.float().contiguous()
    R, dev = o.shape[0], o.device
    if nears is None or fars is None:
        nears, fars = near_far_from_aabb(o, d, aabb if aabb is not None else grid.aabb, min_near,
                                         backend=which)
    nears, fars = nears.float().contiguous(), fars.float().contiguous()
    alive = torch.nonzero(nears < fars).squeeze(-1)
    t = nears[alive].clone()
    counts = torch.zeros(alive.numel(), dtype=torch.int32, device=dev)
    T = torch.ones(alive.numel(), device=dev)
    weights_sum = torch.zeros(R, device=dev)
    depth = torch.zeros(R, device=dev)
    image: Tensor | None = None
    while alive.numel():
        k = n_step * max(1, min(8, R // alive.numel()))
        pos, deltas, ts = march_rays_inference(alive, t, counts, o, d, fars, grid, k, dt_gamma,
                                               max_steps, backend=which)
        valid = deltas > 0
        sig = rgb = None
        if bool(valid.any()):  # field_fn never sees an empty batch
            ray_ids = alive[:, None].expand(-1, k)[valid]
            sig, rgb = field_fn(pos[valid], d[ray_ids], ray_ids)
            if image is None:
                image = torch.zeros(R, rgb.shape[-1], device=dev)
        if image is None:  # no alive ray produced a sample: all of them end here
            image = torch.zeros(R, channels, device=dev)
        sigmas = torch.zeros(alive.numel(), k, device=dev)
        rgbs = torch.zeros(alive.numel(), k, image.shape[1], device=dev)
        if sig is not None:
            sigmas[valid] = sig.reshape(-1).float()
            rgbs[valid] = rgb.float()
        dead = composite_rays_inference(alive, T, sigmas, rgbs, deltas, ts, T_thresh,
                                        weights_sum, depth, image, backend=which)
        keep = ~dead
        alive, t, counts, T = alive[keep], t[keep], counts[keep], T[keep]
    if image is None:
        image = torch.zeros(R, channels, device=dev)
    if bg is not None:
        image = image + (1 - weights_sum)[:, None] * bg.to(image)
    return image, depth, weights_sum
