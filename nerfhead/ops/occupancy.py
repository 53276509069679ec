"""Multi-cascade occupancy grid (torch-ngp layout): Morton codes, bitfield, EMA update.

Layout, shared with the kernels (``csrc/raymarch_kernels.h``):

* ``C`` cascades of ``G**3`` cells each (``G`` a power of two, at most 1024). Cascade ``c``
  covers the cube ``[-bound * 2**c, bound * 2**c]**3``; cascade 0 is the finest.
* Inside a cascade, cell ``(ix, iy, iz)`` (integer coordinates in ``[0, G)``, x fastest in
  space) is stored at flat index ``morton3d(ix, iy, iz)`` (3D Z-order, bit ``3k`` of the code
  is bit ``k`` of x, ``3k+1`` of y, ``3k+2`` of z). Cell ``c * G**3 + m`` of the whole grid
  is cascade ``c``, Morton code ``m``.
* ``packbits``: bit ``k`` of byte ``b`` of the bitfield is cell ``8 * b + k``.
* ``density_grid`` holds an EMA-max of sampled densities; ``-1`` marks cells known to be
  empty (e.g. outside every training camera) that updates leave alone.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from nerfhead.ops.backend import KERNEL_BACKENDS, resolve_backend

__all__ = ["morton3d", "morton3d_invert", "packbits", "OccupancyGrid", "march_params",
           "march_segment_reference", "morton3d_reference", "morton3d_invert_reference",
           "packbits_reference"]


MAX_CASCADES = 16  # kMaxCascades in csrc/raymarch_kernels.h


def _ext():
    from nerfhead.ops._loader import load_extension

    return load_extension()


# ---------------------------------------------------------------- Morton codes
def _expand_bits(v: Tensor) -> Tensor:
    # Spread the low 10 bits of v so that there are two zero bits between each (uint32 math
    # done in int64: every product stays below 2**50, the masks drop the overflow).
    v = (v * 0x00010001) & 0xFF0000FF
    v = (v * 0x00000101) & 0x0F00F00F
    v = (v * 0x00000011) & 0xC30C30C3
    v = (v * 0x00000005) & 0x49249249
    return v


def _compact_bits(v: Tensor) -> Tensor:
    v = v & 0x49249249
    v = (v | (v >> 2)) & 0xC30C30C3
    v = (v | (v >> 4)) & 0x0F00F00F
    v = (v | (v >> 8)) & 0xFF0000FF
    v = (v | (v >> 16)) & 0x0000FFFF
    return v


def _check_coords(coords: Tensor) -> None:
    if coords.dim() != 2 or coords.shape[1] != 3:
        raise ValueError(f"morton3d: coords must be [M, 3], got {tuple(coords.shape)}")
    if coords.is_floating_point():
        raise TypeError("morton3d: coords must be an integer tensor")


def morton3d_reference(coords: Tensor) -> Tensor:
    """PyTorch reference of :func:`morton3d`."""
    _check_coords(coords)
    c = coords.long()
    code = _expand_bits(c[:, 0]) | (_expand_bits(c[:, 1]) << 1) | (_expand_bits(c[:, 2]) << 2)
    return code.int()


def morton3d_invert_reference(indices: Tensor) -> Tensor:
    """PyTorch reference of :func:`morton3d_invert`."""
    i = indices.long()
    return torch.stack([_compact_bits(i), _compact_bits(i >> 1), _compact_bits(i >> 2)], -1).int()


def morton3d(coords: Tensor, backend: str = "auto") -> Tensor:
    """Morton (Z-order) code of integer cell coordinates.

    coords: [M, 3] integer tensor, each coordinate in [0, 1024) -> [M] int32 codes.
    """
    _check_coords(coords)
    if resolve_backend("raymarch", backend, coords.device) in KERNEL_BACKENDS:
        return _ext().morton3d(coords.int().contiguous())
    return morton3d_reference(coords)


def morton3d_invert(indices: Tensor, backend: str = "auto") -> Tensor:
    """Inverse of :func:`morton3d`: [M] integer codes -> [M, 3] int32 coordinates."""
    if indices.dim() != 1 or indices.is_floating_point():
        raise ValueError(f"morton3d_invert: indices must be a 1-D integer tensor, "
                         f"got {indices.dtype} {tuple(indices.shape)}")
    if resolve_backend("raymarch", backend, indices.device) in KERNEL_BACKENDS:
        return _ext().morton3d_invert(indices.int().contiguous())
    return morton3d_invert_reference(indices)


# ---------------------------------------------------------------- bitfield
def packbits_reference(density_grid: Tensor, threshold: float) -> Tensor:
    """PyTorch reference of :func:`packbits`."""
    bits = (density_grid.reshape(-1, 8) > threshold).to(torch.int32)
    weights = (1 << torch.arange(8, device=bits.device, dtype=torch.int32))
    return (bits * weights).sum(-1).to(torch.uint8)


def packbits(density_grid: Tensor, threshold: float, backend: str = "auto") -> Tensor:
    """Occupancy bitfield: [C, G**3] float densities -> [C * G**3 // 8] uint8.

    A cell is occupied when its density is strictly greater than ``threshold``; bit ``k``
    of byte ``b`` is cell ``8 * b + k`` (cells in Morton order within each cascade).
    """
    if density_grid.numel() % 8:
        raise ValueError(f"packbits: number of cells {density_grid.numel()} is not a multiple of 8")
    if resolve_backend("raymarch", backend, density_grid.device) in KERNEL_BACKENDS:
        return _ext().packbits(density_grid.float().contiguous().reshape(-1), float(threshold))
    return packbits_reference(density_grid, threshold)


# ---------------------------------------------------------------- the grid
class OccupancyGrid(nn.Module):
    """Occupancy grid over ``cascades`` nested cubes, updated from a density function.

    Args:
        bound: half-size of cascade 0 (the cube [-bound, bound]^3); cascade c covers
            bound * 2**c.
        resolution: cells per axis per cascade (power of two, at most 1024; default 128).
        cascades: number of nested cascades.

    Buffers (saved in state_dict): ``density_grid`` [C, G**3] float32 (Morton order; 0 at
    start, -1 = known empty), ``bitfield`` [C * G**3 // 8] uint8 (all cells occupied until
    the first ``update`` so marching works from step 0), ``num_updates`` (int64 scalar).
    """

    def __init__(self, bound: float = 1.0, resolution: int = 128, cascades: int = 1):
        super().__init__()
        if resolution < 2 or resolution > 1024 or resolution & (resolution - 1):
            raise ValueError(f"OccupancyGrid: resolution must be a power of two in [2, 1024], "
                             f"got {resolution}")
        if not 1 <= cascades <= MAX_CASCADES or bound <= 0:
            raise ValueError(f"OccupancyGrid: need 1 <= cascades <= {MAX_CASCADES} and bound > 0, "
                             f"got {cascades}, {bound}")
        self.bound = float(bound)
        self.resolution = int(resolution)
        self.cascades = int(cascades)
        n = self.cascades * self.resolution ** 3
        self.register_buffer("density_grid", torch.zeros(self.cascades, self.resolution ** 3))
        self.register_buffer("bitfield", torch.full((n // 8,), 255, dtype=torch.uint8))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def outer_bound(self) -> float:
        """Half-size of the coarsest cascade: the grid covers [-outer_bound, outer_bound]^3."""
        return self.bound * 2 ** (self.cascades - 1)

    @property
    def aabb(self) -> list[float]:
        """The outer cube as (xmin, ymin, zmin, xmax, ymax, zmax), for near_far_from_aabb."""
        b = self.outer_bound
        return [-b, -b, -b, b, b, b]

    @property
    def mean_density(self) -> float:
        """Mean of the density grid, known-empty (-1) cells counted as 0 (as torch-ngp)."""
        return float(self.density_grid.clamp(min=0).mean())

    def occupancy_fraction(self) -> float:
        """Fraction of cells marked occupied in the bitfield."""
        bits = torch.bitwise_and(self.bitfield[:, None].int(),
                                 1 << torch.arange(8, device=self.bitfield.device)) > 0
        return float(bits.float().mean())

    def cell_centers(self, cascade: int, indices: Tensor) -> Tensor:
        """World positions [M, 3] of the centres of cells ``indices`` (Morton codes) of a cascade."""
        coords = morton3d_invert(indices.int()).float()
        half = self.bound * 2 ** cascade
        return ((coords + 0.5) * (2.0 / self.resolution) - 1.0) * half

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], *, decay: float = 0.95,
               threshold: float = 0.01, full_updates: int = 16, chunk: int = 2 ** 18,
               generator: torch.Generator | None = None) -> None:
        """One occupancy update, as torch-ngp's ``update_extra_state``.

        The first ``full_updates`` calls sample every cell; later calls sample G**3 / 4
        random cells plus as many cells drawn from the currently occupied ones, per cascade.
        Each sampled cell is evaluated at a uniformly jittered point inside it; the grid
        becomes ``max(old * decay, new)`` on sampled cells that are not known-empty (-1);
        the bitfield is repacked with threshold ``min(mean_density, threshold)``.

        density_fn: world positions [N, 3] -> densities [N] or [N, 1] (called in chunks
        of ``chunk`` points, under ``torch.no_grad``).
        """
        dev = self.density_grid.device
        G3 = self.resolution ** 3
        fresh = torch.full_like(self.density_grid, -1.0)
        for cas in range(self.cascades):
            if int(self.num_updates) < full_updates:
                indices = torch.arange(G3, device=dev)
            else:
                n = G3 // 4
                rand = torch.randint(0, G3, (n,), device=dev, generator=generator)
                occupied = torch.nonzero(self.density_grid[cas] > 0).squeeze(-1)
                if occupied.numel():
                    pick = torch.randint(0, occupied.numel(), (n,), device=dev, generator=generator)
                    rand = torch.cat([rand, occupied[pick]])
                indices = rand
            half_cell = self.bound * 2 ** cas / self.resolution
            for start in range(0, indices.numel(), chunk):
                idx = indices[start:start + chunk]
                xyz = self.cell_centers(cas, idx)
                jitter = torch.rand(xyz.shape, device=dev, generator=generator) * 2 - 1
                xyz = xyz + jitter * half_cell
                sigma = density_fn(xyz).reshape(-1).float()
                if sigma.numel() != idx.numel():
                    raise ValueError(f"OccupancyGrid.update: density_fn returned {sigma.numel()} "
                                     f"values for {idx.numel()} points")
                fresh[cas, idx] = sigma
        valid = (self.density_grid >= 0) & (fresh >= 0)
        self.density_grid[valid] = torch.maximum(self.density_grid[valid] * decay, fresh[valid])
        self.num_updates += 1
        self.repack(threshold)

    @torch.no_grad()
    def prune_floaters(self) -> dict:
        """Clear the bitfield's occupied cells that lie apart from the largest occupied piece
        of each cascade (the head): floaters, small clouds of density in empty space that
        training left where few rays check them (on the benchmark's seed-0 run a dark speck
        beside the hair in every frame). A piece counts as part of the head when it comes
        within ``resolution // 32`` cells of it (26-connected at 32^3; the same distance in
        space at finer grids, where strands of hair may break up), so only pieces clearly
        apart go.

        Only the bitfield changes (what rendering marches through); ``density_grid`` is left
        as training made it, so a later ``update`` or ``repack`` brings the cells back: prune
        for rendering, after loading. Returns {"cells": cleared, "pieces": pieces cleared,
        "kept": occupied cells kept}."""
        from scipy import ndimage

        G = self.resolution
        xyz = morton3d_invert(torch.arange(G ** 3, dtype=torch.int32)).long().numpy()
        bits = np.unpackbits(self.bitfield.cpu().numpy(), bitorder="little").astype(bool)
        bits = bits.reshape(self.cascades, G ** 3)
        cleared = pieces = 0
        conn = np.ones((3, 3, 3), bool)
        for cas in range(self.cascades):
            vol = np.zeros((G, G, G), bool)
            vol[xyz[:, 0], xyz[:, 1], xyz[:, 2]] = bits[cas]
            labels, n = ndimage.label(vol, structure=conn)
            if n <= 1:
                continue
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            near = labels == int(sizes.argmax())
            if G // 32 > 1:  # at 32^3 and below the labels' own 26-connectivity is the reach
                near = ndimage.binary_dilation(near, structure=conn, iterations=G // 32)
            head = np.isin(labels, np.unique(labels[near]))
            drop = vol & ~head
            if drop.any():
                cleared += int(drop.sum())
                pieces += len(np.unique(labels[drop]))
                bits[cas] &= ~drop[xyz[:, 0], xyz[:, 1], xyz[:, 2]]
        if cleared:
            packed = np.packbits(bits.reshape(-1), bitorder="little")
            self.bitfield.copy_(torch.from_numpy(packed).to(self.bitfield.device))
        return {"cells": cleared, "pieces": pieces, "kept": int(bits.sum())}

    @contextmanager
    def floaters_pruned(self):
        """``prune_floaters`` for the duration of a ``with`` block (training's validation
        renders, so that they show what ``render`` will), then the bitfield as it was: the
        training steps after it march exactly as they would have. Yields the counts."""
        saved = self.bitfield.clone()
        try:
            yield self.prune_floaters()
        finally:
            self.bitfield.copy_(saved)

    @torch.no_grad()
    def repack(self, threshold: float = 0.01) -> None:
        """Rebuild the bitfield from density_grid with threshold min(mean_density, threshold)."""
        thresh = min(self.mean_density, threshold)
        self.bitfield.copy_(packbits(self.density_grid, thresh))

    @torch.no_grad()
    def mark_unseen(self, c2w: Tensor, focal: float, cx: float, cy: float, width: int,
                    height: int, chunk: int = 2 ** 16, pose_batch: int = 64) -> None:
        """Mark cells whose centre no camera sees as known-empty (-1), as torch-ngp's
        ``mark_untrained_grid``; later updates leave them empty.

        c2w: [P, 4, 4] camera-to-world in the OpenCV convention used for ray casting
        (x right, y down, z forward); pinhole intrinsics in pixels. Cells within one cell
        width (projected) of the image border count as seen. Cost is cells x poses: on CPU
        pass a subsample of the poses (e.g. every 10th frame).
        """
        dev = self.density_grid.device
        c2w = c2w.to(dev, torch.float32).reshape(-1, 4, 4)
        G3 = self.resolution ** 3
        for cas in range(self.cascades):
            cell = 2 * self.bound * 2 ** cas / self.resolution
            for start in range(0, G3, chunk):
                idx = torch.arange(start, min(start + chunk, G3), device=dev)
                xyz = self.cell_centers(cas, idx)
                seen = torch.zeros(idx.numel(), dtype=torch.bool, device=dev)
                for p0 in range(0, c2w.shape[0], pose_batch):
                    R, T = c2w[p0:p0 + pose_batch, :3, :3], c2w[p0:p0 + pose_batch, :3, 3]
                    cam = torch.einsum("pnj,pji->pni", xyz[None] - T[:, None], R)  # R^T (x - t)
                    z = cam[..., 2].clamp(min=1e-6)
                    u = cam[..., 0] / z * focal + cx
                    v = cam[..., 1] / z * focal + cy
                    pad = focal * cell / z  # a cell of slack, so cells cut by the frustum stay
                    inside = ((cam[..., 2] > 0) & (u >= -pad) & (u < width + pad)
                              & (v >= -pad) & (v < height + pad))
                    seen |= inside.any(0)
                grid = self.density_grid[cas, idx]
                self.density_grid[cas, idx] = torch.where(seen, grid, torch.full_like(grid, -1.0))


# ---------------------------------------------------------------- grid traversal
_FLT_MAX = float(np.finfo(np.float32).max)


def _f32(v: float) -> float:
    """Round to the nearest float32, so the kernel (which receives floats) and the torch
    reference use bit-identical constants."""
    return float(np.float32(v))


def march_params(grid: OccupancyGrid, dt_gamma: float, max_steps: int) -> dict:
    """Constants of one march, rounded to float32 exactly as the kernel receives them."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    G, C = grid.resolution, grid.cascades
    return dict(bound=_f32(grid.bound), inv_bound=_f32(1.0 / grid.bound),
                outer=_f32(grid.bound * 2 ** (C - 1)), dt_gamma=_f32(dt_gamma),
                dt_min=_f32(2 * math.sqrt(3) / max_steps),
                dt_max=_f32(2 * math.sqrt(3) * 2 ** (C - 1) / G),
                dt_to_cells=_f32(G / (2.0 * grid.bound)), G=G, C=C)


@dataclass
class MarchSegment:
    """Samples emitted by one call of the traversal, grouped by ray in marching order, and
    the march state (next t, samples emitted so far) of every ray afterwards."""

    ray_indices: Tensor  # [S] int64
    t_starts: Tensor     # [S]
    deltas: Tensor       # [S]
    positions: Tensor    # [S, 3]
    t: Tensor            # [R]
    counts: Tensor       # [R] int32


def _step_size(t: Tensor, p: dict) -> Tensor:
    return torch.clamp(t * p["dt_gamma"], p["dt_min"], p["dt_max"])


def _clampf(v: Tensor, lo: float, hi: float) -> Tensor:
    """C ``fminf(fmaxf(v, lo), hi)``: like clamp, but NaN becomes ``lo`` (as in the kernels)."""
    return torch.clamp(v, lo, hi).nan_to_num(nan=lo)


def march_segment_reference(o: Tensor, d: Tensor, t: Tensor, fars: Tensor, counts: Tensor,
                            bitfield: Tensor, p: dict, max_samples: int,
                            max_steps: int) -> MarchSegment:
    """March every ray from its ``t`` until ``far``, ``max_samples`` new samples, or
    ``counts`` reaching ``max_steps``. Float32 ops in the order of ``march_segment`` in
    ``csrc/raymarch_kernels.h`` (one loop iteration = one cell visit, vectorised over rays).
    A ray that cannot leave an empty cell (zero or NaN direction), whose far end lies in
    it, or whose ``t`` stops growing in float32 ends there (``t = far``), as in the kernels.
    """
    R, dev = o.shape[0], o.device
    G, C = p["G"], p["C"]
    t, counts = t.clone(), counts.clone()
    emitted = torch.zeros(R, dtype=torch.int32, device=dev)
    rd = 1.0 / d
    forward = ~torch.signbit(d)  # copysign(1, d) > 0: the cell's upper face is the exit
    mip_bound = torch.tensor([math.ldexp(p["bound"], lv) for lv in range(C)], device=dev)
    mip_rbound = torch.tensor([math.ldexp(p["inv_bound"], -lv) for lv in range(C)], device=dev)
    bits = bitfield.to(dev).long()
    found: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def alive(idx: Tensor) -> Tensor:
        keep = (t[idx] < fars[idx]) & (emitted[idx] < max_samples) & (counts[idx] < max_steps)
        return idx[keep]

    act = alive(torch.arange(R, device=dev))
    while act.numel():
        ta = t[act]
        x = _clampf(o[act] + ta[:, None] * d[act], -p["outer"], p["outer"])
        dt = _step_size(ta, p)
        level_pos = torch.frexp(x.abs().amax(-1) * p["inv_bound"]).exponent
        level_dt = torch.frexp(dt * p["dt_to_cells"]).exponent
        level = torch.clamp(torch.maximum(level_pos, level_dt), 0, C - 1).long()
        rb = mip_rbound[level]
        cell = torch.clamp(((x * rb[:, None] + 1) * 0.5) * G, 0, G - 1).long()
        code = _expand_bits(cell[:, 0]) | (_expand_bits(cell[:, 1]) << 1) \
            | (_expand_bits(cell[:, 2]) << 2)
        index = level * G ** 3 + code
        occ = ((bits[index >> 3] >> (index & 7)) & 1).bool()

        hit = act[occ]
        found.append((hit, ta[occ], dt[occ], x[occ]))
        t[hit] = ta[occ] + dt[occ]
        emitted[hit] += 1
        counts[hit] += 1

        miss = ~occ
        idx = act[miss]
        if idx.numel():
            edge = (cell[miss] + forward[idx].long()).float()
            face = (edge * (2.0 / G) - 1) * mip_bound[level[miss]][:, None]
            tx = (face - x[miss]) * rd[idx]
            gap = torch.fmin(tx[:, 0], torch.fmin(tx[:, 1], tx[:, 2]))
            target = ta[miss] + torch.fmax(gap, torch.zeros_like(gap))
            # gap inf or NaN: never leaves this empty cell; target >= far: the ray ends in it
            ends = ~(gap <= _FLT_MAX) | ~(target < fars[idx])
            tm = ta[miss]
            more = ~ends  # do { t += dt } while (t < target), stopping where t + dt == t
            while bool(more.any()):
                nxt = tm + _step_size(tm, p)
                stuck = more & ~(nxt > tm)
                ends |= stuck
                more &= ~stuck
                tm = torch.where(more, nxt, tm)
                more &= tm < target
            t[idx] = torch.where(ends, fars[idx], tm)
        act = alive(act)

    if found:
        ray, ts, dts, pos = (torch.cat(z) for z in zip(*found))
        order = torch.sort(ray, stable=True).indices  # per ray, iterations are chronological
        ray, ts, dts, pos = ray[order], ts[order], dts[order], pos[order]
    else:
        ray = torch.zeros(0, dtype=torch.long, device=dev)
        ts = dts = torch.zeros(0, device=dev)
        pos = torch.zeros(0, 3, device=dev)
    return MarchSegment(ray, ts, dts, pos, t, counts)
