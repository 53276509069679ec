"""Fixed-shape inference rendering: a whole frame per call, static buffers, few host syncs.

:func:`render_rays_inference` (``raymarch_inference.py``) compacts the alive rays after each
step with boolean masks, so every step makes several host syncs (``nonzero``, mask gathers and
stores) and allocates data-dependent shapes. This loop keeps every ray of the frame in
fixed-size state (``t``, ``counts``, ``T``, ``alive`` [R]) and, per step:

1. ``march_compact_count``: each alive ray counts the samples of its next ``k``
   (``k`` from a fixed schedule, e.g. 8, 16, 32, 64, 64, ...);
2. an inclusive prefix sum of the counts (on the device) gives each ray its range of a
   **compacted sample list** of fixed capacity;
3. ``march_compact_fill``: rays whose range fits write their samples there and advance
   their march state; a ray that does not fit keeps its state and marches next step;
4. the field shades the list;
5. ``composite_compact``: each ray composites its range and **marks itself finished in
   place** (``alive[r] = False``) when its march ended or its transmittance fell below
   ``T_thresh``.

With ``read_back=True`` a step reads back one small value, the number of filled slots (the
field then shades exactly those, and the loop stops at 0). With ``read_back=False`` no step
reads anything back: the field shades the whole capacity every step (fixed shapes, what a
CUDA graph needs) for a fixed number of steps, and one value per frame (are rays left?)
decides whether more steps follow. The samples, the compositing arithmetic and hence the
image are those of :func:`render_rays_inference` (same sample positions bit for bit; the
composite runs the same float operations per ray).

Kernels: ``nerfhead._C`` (bodies ``MarchCompact`` / ``CompositeCompact`` in
``csrc/raymarch_kernels.h``, CPU and CUDA launchers); PyTorch references here
(``*_reference``: backend ``torch``; they use boolean masks, so only the kernel backends are
sync-free).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import Tensor

from nerfhead.ops.backend import KERNEL_BACKENDS, resolve_backend
from nerfhead.ops.occupancy import OccupancyGrid, march_params, march_segment_reference

log = logging.getLogger("nerfhead.ops")

FieldFn = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]

DEFAULT_SCHEDULE = (8, 16, 32, 64)
"""Samples per alive ray at steps 0, 1, 2, ...; the last entry repeats."""
DEFAULT_CAPACITY = 1 << 21
"""Slots of the compacted sample list (2M samples: a few GB of MLP activations at most)."""


def _ext():
    from nerfhead.ops._loader import load_extension

    return load_extension()


# ---------------------------------------------------------------- references
def march_compact_count_reference(alive: Tensor, t: Tensor, counts: Tensor, rays_o: Tensor,
                                  rays_d: Tensor, fars: Tensor, grid: OccupancyGrid, p: dict,
                                  k: int, max_steps: int, n_out: Tensor) -> None:
    """PyTorch reference of :func:`march_compact_count`."""
    idx = alive.nonzero().squeeze(-1)
    n_out.zero_()
    if idx.numel():
        seg = march_segment_reference(rays_o[idx], rays_d[idx], t[idx], fars[idx], counts[idx],
                                      grid.bitfield, p, max_samples=k, max_steps=max_steps)
        n_out[idx] = (seg.counts - counts[idx]).int()


def march_compact_fill_reference(alive: Tensor, t: Tensor, counts: Tensor, rays_o: Tensor,
                                 rays_d: Tensor, fars: Tensor, grid: OccupancyGrid, p: dict,
                                 k: int, max_steps: int, ends: Tensor, n: Tensor,
                                 positions: Tensor, deltas: Tensor, ts: Tensor,
                                 ray_ids: Tensor) -> None:
    """PyTorch reference of :func:`march_compact_fill`."""
    cap = positions.shape[0]
    idx = (alive & (ends <= cap)).nonzero().squeeze(-1)
    if not idx.numel():
        return
    seg = march_segment_reference(rays_o[idx], rays_d[idx], t[idx], fars[idx], counts[idx],
                                  grid.bitfield, p, max_samples=k, max_steps=max_steps)
    ri = seg.ray_indices  # into idx; each ray's samples are consecutive and in order
    per_ray = torch.bincount(ri, minlength=idx.numel())
    within = torch.arange(ri.numel(), device=t.device) - (torch.cumsum(per_ray, 0) - per_ray)[ri]
    slot = (ends[idx] - n[idx].long())[ri] + within
    keep = within < n[idx].long()[ri]
    slot, ri = slot[keep], ri[keep]
    positions[slot] = seg.positions[keep]
    deltas[slot] = seg.deltas[keep]
    ts[slot] = ((seg.t_starts + (seg.t_starts + seg.deltas)) * 0.5)[keep]
    ray_ids[slot] = idx[ri]
    t[idx] = seg.t
    counts[idx] = seg.counts


def composite_compact_reference(alive: Tensor, T: Tensor, sigmas: Tensor, rgbs: Tensor,
                                deltas: Tensor, ts: Tensor, ends: Tensor, n: Tensor,
                                capacity: int, k: int, T_thresh: float, weights_sum: Tensor,
                                depth: Tensor, image: Tensor) -> None:
    """PyTorch reference of :func:`composite_compact`."""
    S = sigmas.shape[0]
    idx = (alive & (ends <= capacity)).nonzero().squeeze(-1)
    if not idx.numel():
        return
    cnt = n[idx].long()
    start = ends[idx] - cnt
    Ti, ws, dp, img = T[idx], weights_sum[idx], depth[idx], image[idx]
    dead = cnt < k
    stopped = torch.zeros_like(dead)
    for j in range(k):
        live = ~stopped & (j < cnt)
        if S == 0 or not bool(live.any()):
            break
        s = (start + j).clamp(0, S - 1)
        alpha = 1 - torch.exp(-sigmas[s] * deltas[s])
        w = alpha * Ti
        ws = torch.where(live, ws + w, ws)
        dp = torch.where(live, dp + w * ts[s], dp)
        img = torch.where(live[:, None], img + w[:, None] * rgbs[s], img)
        Ti = torch.where(live, Ti * (1 - alpha), Ti)
        hit = live & (Ti < T_thresh)
        stopped |= hit
        dead |= hit
    T[idx], weights_sum[idx], depth[idx], image[idx] = Ti, ws, dp, img
    alive[idx] = ~dead


# ---------------------------------------------------------------- public ops
def march_compact_count(alive: Tensor, t: Tensor, counts: Tensor, rays_o: Tensor, rays_d: Tensor,
                        fars: Tensor, grid: OccupancyGrid, k: int, n_out: Tensor,
                        dt_gamma: float = 1 / 256, max_steps: int = 1024,
                        backend: str = "auto") -> None:
    """Count pass of a fixed-shape step: ``n_out`` [R] int32 = samples that each alive ray
    emits in its next ``k`` (0 for rays not alive). alive [R] bool, t [R] float32, counts
    [R] int32 (march state, not changed), rays_o / rays_d [R, 3], fars [R]."""
    p = march_params(grid, dt_gamma, max_steps)
    if resolve_backend("raymarch", backend, rays_o.device) in KERNEL_BACKENDS:
        _ext().march_compact_count(alive, t, counts, rays_o, rays_d, fars, grid.bitfield,
                                   p["bound"], p["inv_bound"], p["dt_gamma"], p["dt_min"],
                                   p["dt_max"], p["dt_to_cells"], p["C"], p["G"], int(k),
                                   int(max_steps), n_out)
        return
    march_compact_count_reference(alive, t, counts, rays_o, rays_d, fars, grid, p, k, max_steps,
                                  n_out)


def march_compact_fill(alive: Tensor, t: Tensor, counts: Tensor, rays_o: Tensor, rays_d: Tensor,
                       fars: Tensor, grid: OccupancyGrid, k: int, ends: Tensor, n: Tensor,
                       positions: Tensor, deltas: Tensor, ts: Tensor, ray_ids: Tensor,
                       dt_gamma: float = 1 / 256, max_steps: int = 1024,
                       backend: str = "auto") -> None:
    """Fill pass: ray r (alive, ``ends[r] <= S``) writes its ``n[r]`` samples to slots
    ``[ends[r] - n[r], ends[r])`` of positions [S, 3], deltas [S], ts [S] (midpoints) and
    ray_ids [S] int64, and advances t / counts in place. ``ends`` [R] int64 is the inclusive
    prefix sum of ``n`` (from the count pass with the same ``k``). Other slots are left as
    they were."""
    p = march_params(grid, dt_gamma, max_steps)
    if resolve_backend("raymarch", backend, rays_o.device) in KERNEL_BACKENDS:
        _ext().march_compact_fill(alive, t, counts, rays_o, rays_d, fars, grid.bitfield,
                                  p["bound"], p["inv_bound"], p["dt_gamma"], p["dt_min"],
                                  p["dt_max"], p["dt_to_cells"], p["C"], p["G"], int(k),
                                  int(max_steps), ends, n, positions, deltas, ts, ray_ids)
        return
    march_compact_fill_reference(alive, t, counts, rays_o, rays_d, fars, grid, p, k, max_steps,
                                 ends, n, positions, deltas, ts, ray_ids)


def composite_compact(alive: Tensor, T: Tensor, sigmas: Tensor, rgbs: Tensor, deltas: Tensor,
                      ts: Tensor, ends: Tensor, n: Tensor, capacity: int, k: int,
                      T_thresh: float, weights_sum: Tensor, depth: Tensor, image: Tensor,
                      backend: str = "auto") -> None:
    """Composite step: each alive ray whose range ends within ``capacity`` composites
    sigmas [S] / rgbs [S, C] (S <= capacity rows: the field at the first S slots) with
    deltas / ts [capacity] over ``[ends[r] - n[r], ends[r])`` into T [R], weights_sum [R],
    depth [R], image [R, C] (in place) and sets ``alive[r] = False`` when it finished (fewer
    than ``k`` samples: its march ended; or T below ``T_thresh``)."""
    if resolve_backend("raymarch", backend, sigmas.device) in KERNEL_BACKENDS:
        _ext().composite_compact(alive, T, sigmas, rgbs, deltas, ts, ends, n, int(capacity),
                                 int(k), float(T_thresh), weights_sum, depth, image)
        return
    composite_compact_reference(alive, T, sigmas, rgbs, deltas, ts, ends, n, capacity, k,
                                T_thresh, weights_sum, depth, image)


# ---------------------------------------------------------------- the loop
class FixedRenderBuffers:
    """Every device tensor a fixed-shape render of R rays needs, allocated once and reused
    frame after frame (nothing is allocated per step; a CUDA graph can replay over them)."""

    def __init__(self, num_rays: int, capacity: int, channels: int, device):
        R, f = num_rays, dict(device=device, dtype=torch.float32)
        self.num_rays, self.capacity, self.channels = R, capacity, channels
        self.nears, self.fars = torch.zeros(R, **f), torch.zeros(R, **f)
        self.t, self.T = torch.zeros(R, **f), torch.zeros(R, **f)
        self.counts = torch.zeros(R, dtype=torch.int32, device=device)
        self.alive = torch.zeros(R, dtype=torch.bool, device=device)
        self.weights_sum, self.depth = torch.zeros(R, **f), torch.zeros(R, **f)
        self.image = torch.zeros(R, channels, **f)
        self.n = torch.zeros(R, dtype=torch.int32, device=device)
        self.ends = torch.zeros(R, dtype=torch.int64, device=device)
        self.filled = torch.zeros((), dtype=torch.int64, device=device)
        self.positions = torch.zeros(capacity, 3, **f)
        self.deltas, self.ts = torch.zeros(capacity, **f), torch.zeros(capacity, **f)
        self.ray_ids = torch.zeros(capacity, dtype=torch.int64, device=device)

    def matches(self, num_rays: int, capacity: int, channels: int, device) -> bool:
        return (self.num_rays, self.capacity, self.channels) == (num_rays, capacity, channels) \
            and self.t.device == torch.device(device)

    def reset(self, nears: Tensor, fars: Tensor) -> None:
        """Start state of a frame: every ray that hits the box alive at its near."""
        self.nears.copy_(nears)
        self.fars.copy_(fars)
        self.t.copy_(nears)
        torch.lt(nears, fars, out=self.alive)
        self.counts.zero_()
        self.T.fill_(1.0)
        self.weights_sum.zero_()
        self.depth.zero_()
        self.image.zero_()


def schedule_k(schedule: Sequence[int], step: int) -> int:
    return int(schedule[min(step, len(schedule) - 1)])


def steps_to_finish(schedule: Sequence[int], max_steps: int) -> int:
    """Steps after which every ray that was never deferred has finished: its samples reach
    ``max_steps`` (one more step sees the march end)."""
    total, step = 0, 0
    while total < max_steps:
        total += schedule_k(schedule, step)
        step += 1
    return step + 1


def fixed_step(field_fn: FieldFn, buf: FixedRenderBuffers, rays_o: Tensor, rays_d: Tensor,
               grid: OccupancyGrid, k: int, dt_gamma: float, max_steps: int, T_thresh: float,
               backend: str, read_back: bool, capacity: int | None = None,
               demand_out: Tensor | None = None) -> int:
    """One step over all rays (see the module doc). Returns the number of filled slots when
    ``read_back`` (the one host sync of the step), else -1 (nothing read back).

    ``capacity``: use only the first ``capacity`` slots of the buffers this step (rays beyond
    them are deferred, as beyond the buffers' own capacity); without read-back the field
    shades exactly that many. ``demand_out`` (a 0-d int64 device tensor): receives the slots
    every alive ray asked for this step (device work, nothing read back), so a caller can
    tell afterwards whether the capacity deferred rays."""
    cap = buf.capacity if capacity is None else max(1, min(int(capacity), buf.capacity))
    march_compact_count(buf.alive, buf.t, buf.counts, rays_o, rays_d, buf.fars, grid, k, buf.n,
                        dt_gamma, max_steps, backend=backend)
    torch.cumsum(buf.n, 0, dtype=torch.int64, out=buf.ends)
    if demand_out is not None:
        demand_out.copy_(buf.ends[-1])
    # filled slots = end of the last ray whose range fits (ranges are a prefix of the list)
    torch.amax(torch.where(buf.ends <= cap, buf.ends, torch.zeros_like(buf.ends)), 0,
               out=buf.filled)
    used = cap
    if read_back:
        used = int(buf.filled.item())
        if used == 0:  # no alive ray has a sample left: all of them have finished
            return 0
    # prefix views: the fill kernel takes its capacity from the outputs' length
    march_compact_fill(buf.alive, buf.t, buf.counts, rays_o, rays_d, buf.fars, grid, k, buf.ends,
                       buf.n, buf.positions[:cap], buf.deltas[:cap], buf.ts[:cap],
                       buf.ray_ids[:cap], dt_gamma, max_steps, backend=backend)
    ids = buf.ray_ids[:used]
    sigma, rgb = field_fn(buf.positions[:used], rays_d.index_select(0, ids), ids)
    composite_compact(buf.alive, buf.T, sigma.reshape(-1).float().contiguous(),
                      rgb.float().contiguous(), buf.deltas[:cap], buf.ts[:cap], buf.ends, buf.n, cap, k,
                      T_thresh, buf.weights_sum, buf.depth, buf.image, backend=backend)
    return used if read_back else -1


class FixedLoop:
    """The fixed-shape loop in parts, for callers that capture some of it in a CUDA graph:
    :meth:`start` and :meth:`run_fixed` never read anything back; :meth:`finish` reads back
    whether rays are left (one value) and finishes them with one read-back per step."""

    def __init__(self, grid: OccupancyGrid, dt_gamma: float = 1 / 256, max_steps: int = 1024,
                 T_thresh: float = 1e-4, backend: str = "auto",
                 schedule: Sequence[int] = DEFAULT_SCHEDULE, capacity: int = DEFAULT_CAPACITY):
        if not schedule or min(int(k) for k in schedule) < 1:
            raise ValueError(f"FixedLoop: schedule entries must be >= 1, got {tuple(schedule)}")
        kmax = max(int(k) for k in schedule)
        if capacity < kmax:
            raise ValueError(f"FixedLoop: capacity {capacity} is below the largest k {kmax} of "
                             "the schedule (a ray's samples of one step must fit)")
        self.grid, self.schedule, self.capacity, self.kmax = grid, tuple(schedule), int(capacity), kmax
        self.kw = dict(dt_gamma=dt_gamma, max_steps=max_steps, T_thresh=T_thresh)
        self.backend = backend
        self.buffers: FixedRenderBuffers | None = None
        self.rays_o = self.rays_d = None
        self.step_index = 0
        self.samples = 0

    def start(self, rays_o: Tensor, rays_d: Tensor, channels: int = 3, *,
              nears: Tensor | None = None, fars: Tensor | None = None, aabb=None,
              min_near: float = 0.05, buffers: FixedRenderBuffers | None = None) -> None:
        """Reset the state for rays [R, 3] (float32, contiguous); device work only. ``aabb``
        may be a device tensor (then no host tensor is made)."""
        from nerfhead.ops.raymarch import near_far_from_aabb

        which = resolve_backend("raymarch", self.backend, rays_o.device)
        if which == "nerfacc":  # nerfacc has no inference step: use ours
            which = resolve_backend("raymarch", "auto", rays_o.device)
        self.kw["backend"] = which
        R = rays_o.shape[0]
        cap = min(self.capacity, max(R * self.kmax, self.kmax))
        if buffers is None or not buffers.matches(R, cap, channels, rays_o.device):
            buffers = FixedRenderBuffers(R, cap, channels, rays_o.device)
        self.buffers, self.rays_o, self.rays_d = buffers, rays_o, rays_d
        if nears is None or fars is None:
            nears, fars = near_far_from_aabb(rays_o, rays_d, aabb if aabb is not None else self.grid.aabb,
                                             min_near, backend=which)
        buffers.reset(nears.float(), fars.float())
        self.step_index, self.samples = 0, 0

    def step(self, field_fn: FieldFn, read_back: bool, capacity: int | None = None,
             demand_out: Tensor | None = None) -> int:
        k = schedule_k(self.schedule, self.step_index)
        used = fixed_step(field_fn, self.buffers, self.rays_o, self.rays_d, self.grid, k,
                          read_back=read_back, capacity=capacity, demand_out=demand_out,
                          **self.kw)
        self.step_index += 1
        self.samples += max(used, 0)
        return used

    def run_fixed(self, field_fn: FieldFn, steps: int) -> None:
        """``steps`` steps without any read-back (fixed shapes: the field shades the capacity)."""
        for _ in range(steps):
            self.step(field_fn, read_back=False)

    def run_capacities(self, field_fn: FieldFn, capacities: Sequence[int],
                       demand_out: Tensor) -> None:
        """One step per entry of ``capacities`` without any read-back, step i shading
        ``capacities[i]`` slots (fixed shapes, smaller than the buffers: what a frame measured
        with :meth:`run_exact` needs, plus headroom); ``demand_out[i]`` receives the slots
        step i asked for (``demand_out[i] > capacities[i]``: rays were deferred)."""
        for i, cap in enumerate(capacities):
            self.step(field_fn, read_back=False, capacity=cap, demand_out=demand_out[i])

    def run_exact(self, field_fn: FieldFn) -> list[int]:
        """Every step with its read-back, the field shading exactly the filled slots, until
        no ray has a sample left; returns the filled slots of each step."""
        used = []
        while n := self.step(field_fn, read_back=True):
            used.append(n)
        return used

    def finish(self, field_fn: FieldFn, rays_left: bool | None = None) -> int:
        """Read back whether rays are left (unless the caller did: ``rays_left``); finish
        them with one read-back per step. Returns the steps it took (0: none were left)."""
        if rays_left is None:
            rays_left = bool(self.buffers.alive.any().item())
        if not rays_left:
            return 0
        n = 0
        while self.step(field_fn, read_back=True):
            n += 1
        return n + 1

    def outputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """image [R, C], depth [R], weights_sum [R]: the buffers themselves (copy to keep)."""
        b = self.buffers
        return b.image, b.depth, b.weights_sum


@torch.no_grad()
def render_rays_fixed(field_fn: FieldFn, rays_o: Tensor, rays_d: Tensor, grid: OccupancyGrid,
                      dt_gamma: float = 1 / 256, max_steps: int = 1024, T_thresh: float = 1e-4,
                      backend: str = "auto", *, nears: Tensor | None = None,
                      fars: Tensor | None = None, aabb=None, min_near: float = 0.05,
                      bg: Tensor | None = None, channels: int = 3,
                      schedule: Sequence[int] = DEFAULT_SCHEDULE,
                      capacity: int = DEFAULT_CAPACITY, read_back: bool = True,
                      fixed_steps: int | None = None,
                      buffers: FixedRenderBuffers | None = None, stats: dict | None = None):
    """Render R rays with the fixed-shape loop; same arguments and results as
    :func:`render_rays_inference` (image [R, C], depth [R], weights_sum [R]).

    field_fn(positions [S, 3], dirs [S, 3], ray_indices [S] int64) -> (sigma [S], rgb [S, C])
    must return ``channels`` colour channels. ``schedule``: samples per alive ray at each
    step (the last repeats). ``capacity``: slots of the compacted sample list (at least the
    largest k; clipped to R * max k). ``read_back``: one host sync per step (the field shades
    only the filled slots); False: none per step, the field shades all ``capacity`` slots for
    ``fixed_steps`` steps (default: enough for every ray that was never deferred), then one
    read-back per frame says whether rays are left (they finish with per-step read-backs).
    ``buffers``: reuse these (see :class:`FixedRenderBuffers`) instead of allocating.
    ``stats``: filled with ``steps``, ``samples`` (when read back) and ``buffers`` (to pass
    back next frame).
    """
    if rays_o.shape[0] == 0:
        z = rays_o.new_zeros(0)
        return rays_o.new_zeros(0, channels), z, z
    loop = FixedLoop(grid, dt_gamma, max_steps, T_thresh, backend, schedule, capacity)
    loop.start(rays_o.float().contiguous(), rays_d.float().contiguous(), channels, nears=nears,
               fars=fars, aabb=aabb, min_near=min_near, buffers=buffers)
    if read_back:
        loop.run_exact(field_fn)
    else:
        loop.run_fixed(field_fn, fixed_steps if fixed_steps is not None
                       else steps_to_finish(schedule, max_steps))
        if loop.finish(field_fn):
            log.debug("render_rays_fixed: rays left after the fixed steps; finished them with "
                      "per-step read-backs")
    if stats is not None:
        stats.update(steps=loop.step_index, samples=loop.samples if read_back else None,
                     buffers=loop.buffers)
    image, depth, wsum = (x.clone() for x in loop.outputs())
    if bg is not None:
        image = image + (1 - wsum)[:, None] * bg.to(image)
    return image, depth, wsum
