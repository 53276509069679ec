"""Volume rendering of the face field through the occupancy grid.

Training: ``near_far_from_aabb`` -> ``march_rays_train`` (packed samples in occupied cells,
start jittered by ``noise``) -> field -> ``composite_rays_train`` (differentiable). RGB and
the raw uncertainty are composited together as a 4-channel colour.

Inference: ``render_rays_inference`` (march + composite with early ray termination, no
autograd) in chunks of rays, with a field callback.

All ops use the model's backend ("auto": our kernels on CUDA and CPU tensors alike).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerfhead.models.config import ModelConfig
from nerfhead.models.field import Conditions, FaceField
from nerfhead.ops.occupancy import OccupancyGrid
from nerfhead.ops.raymarch import (
    composite_rays_train,
    march_rays_train,
    near_far_from_aabb,
    render_rays_inference,
)


def render_head_train(field: FaceField, grid: OccupancyGrid, cfg: ModelConfig, rays_o: Tensor,
                      rays_d: Tensor, cond: Conditions, noise: Tensor | None) -> dict[str, Tensor]:
    """Differentiable head render of R rays (``cond`` per frame, or one row per ray).

    Returns ``rgb`` [R, 3] (premultiplied: over black), ``alpha`` [R], ``depth`` [R],
    ``uncertainty`` [R] (composited raw value), ``audio_att`` [S, A] (for its L1 penalty),
    ``weights`` [S].
    """
    nears, fars = near_far_from_aabb(rays_o, rays_d, cfg.aabb, cfg.min_near, backend=cfg.backend)
    samples = march_rays_train(rays_o, rays_d, nears, fars, grid, cfg.dt_gamma, cfg.max_steps,
                               noise=noise, backend=cfg.backend)
    R = rays_o.shape[0]
    if samples.num_samples == 0:  # every ray missed the occupied cells
        z = rays_o.new_zeros(R)
        return {"rgb": rays_o.new_zeros(R, 3), "alpha": z, "depth": z, "uncertainty": z,
                "audio_att": rays_o.new_zeros(0, cfg.audio_dim), "weights": rays_o.new_zeros(0)}
    if cond.per_row:  # one condition row per ray (several frames in one step): per sample
        cond = cond.rows(samples.ray_indices.long())
    out = field(samples.positions, samples.dirs, cond)
    colours = torch.cat([out["rgb"], out["uncertainty"][:, None]], -1)
    weights, alpha, depth, image = composite_rays_train(
        out["sigma"], colours, samples.deltas, samples.packed_info, cfg.T_thresh,
        backend=cfg.backend, ts=samples.t_mids)
    return {"rgb": image[:, :3], "alpha": alpha, "depth": depth, "uncertainty": image[:, 3],
            "audio_att": out["audio_att"], "weights": weights}


@torch.no_grad()
def render_head_inference(field: FaceField, grid: OccupancyGrid, cfg: ModelConfig,
                          rays_o: Tensor, rays_d: Tensor, cond: Conditions,
                          chunk: int = 1 << 16) -> dict[str, Tensor]:
    """Head render without autograd: ``rgb`` [R, 3] premultiplied, ``alpha`` [R], ``depth`` [R]."""

    def field_fn(pos: Tensor, dirs: Tensor, ray_idx: Tensor):
        out = field(pos, dirs, cond)
        return out["sigma"], out["rgb"]

    rgbs, alphas, depths = [], [], []
    for s in range(0, rays_o.shape[0], chunk):
        image, depth, wsum = render_rays_inference(
            field_fn, rays_o[s:s + chunk], rays_d[s:s + chunk], grid, dt_gamma=cfg.dt_gamma,
            max_steps=cfg.max_steps, T_thresh=cfg.T_thresh, backend=cfg.backend,
            aabb=cfg.aabb, min_near=cfg.min_near)
        rgbs.append(image)
        alphas.append(wsum)
        depths.append(depth)
    return {"rgb": torch.cat(rgbs), "alpha": torch.cat(alphas), "depth": torch.cat(depths)}
