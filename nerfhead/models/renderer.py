"""Volume rendering of the face field through the occupancy grid.

Training: ``near_far_from_aabb`` -> ``march_rays_train`` (packed samples in occupied cells,
start jittered by ``noise``) -> field -> ``composite_rays_train`` (differentiable). RGB and
the raw uncertainty are composited together as a 4-channel colour.

Inference (``render_head_inference``): by default the whole frame through the fixed-shape
loop ``render_rays_fixed`` (static buffers, one host sync per step) with the fused inference
shader (``nerfhead.models.shading``) under autocast on CUDA; ``InferenceConfig(loop="compact",
fused_heads=False)`` is the earlier path (``render_rays_inference`` in chunks of rays).

All ops use the model's backend ("auto": our kernels on CUDA and CPU tensors alike).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from nerfhead.models.config import InferenceConfig, ModelConfig
from nerfhead.models.field import Conditions, FaceField
from nerfhead.ops.occupancy import OccupancyGrid
from nerfhead.ops.raymarch import (
    composite_rays_train,
    march_rays_train,
    near_far_from_aabb,
    render_rays_inference,
)
from nerfhead.ops.raymarch_fixed import render_rays_fixed

log = logging.getLogger("nerfhead.render")


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


_announced: set[str] = set()


def _say_once(msg: str, *args) -> None:
    text = msg % args
    if text not in _announced:
        _announced.add(text)
        log.info(text)


def autocast_dtype(inference: InferenceConfig, device: torch.device) -> torch.dtype | None:
    """The MLPs' autocast dtype for ``inference.precision`` on ``device`` (None: float32)."""
    p = inference.precision
    if p == "auto":
        return torch.float16 if device.type == "cuda" else None
    return None if p == "float32" else getattr(torch, p)


def head_shader(field: FaceField, cond: Conditions, inference: InferenceConfig,
                device: torch.device):
    """field_fn(pos, dirs, ray_idx) -> (sigma, rgb) of the inference settings: the fused
    inference shader or the training forward, under autocast when asked, through
    tiny-cuda-nn's fused MLPs when asked and available."""
    base = None
    if not inference.fused_mlp:
        _say_once("head MLPs: torch (inference.fused_mlp is off)")
    elif device.type != "cuda":
        _say_once("head MLPs: torch (tiny-cuda-nn's fused MLP needs CUDA tensors, these are on %s)",
                  device.type)
    else:
        from nerfhead.models.fused_mlp import tcnn_shader

        base, why = tcnn_shader(field, cond)
        if base is not None:
            _say_once("head MLPs: tiny-cuda-nn FullyFusedMLP (float16)")
        else:
            _say_once("head MLPs: torch, not tiny-cuda-nn's fused MLP: %s", why)
    if base is None and inference.fused_heads_for(device):
        base = field.inference_shader(cond)
    elif base is None:
        def base(pos, dirs):
            out = field(pos, dirs, cond, uncertainty=False)
            return out["sigma"], out["rgb"]
    dtype = autocast_dtype(inference, device)

    def field_fn(pos: Tensor, dirs: Tensor, ray_idx: Tensor):
        if dtype is None:
            return base(pos, dirs)
        # no autocast weight cache: its cached casts would be stale inside a replayed CUDA graph
        with torch.autocast(device.type, dtype=dtype, cache_enabled=False):
            sigma, rgb = base(pos, dirs)
        return sigma.float(), rgb.float()

    return field_fn


@torch.no_grad()
def render_head_inference(field: FaceField, grid: OccupancyGrid, cfg: ModelConfig,
                          rays_o: Tensor, rays_d: Tensor, cond: Conditions,
                          chunk: int = 1 << 16, inference: InferenceConfig | None = None,
                          buffers: dict | None = None) -> dict[str, Tensor]:
    """Head render without autograd: ``rgb`` [R, 3] premultiplied, ``alpha`` [R], ``depth`` [R].

    ``inference`` (default: ``InferenceConfig()``) picks the loop and the shading; the
    image is the same within the tolerances of tests/test_fast_render.py. ``buffers``: a
    dict in which the fixed loop keeps its device buffers from frame to frame.
    """
    inference = inference or InferenceConfig()
    field_fn = head_shader(field, cond, inference, rays_o.device)
    # field.aabb: the box as a device buffer (no host tensor per call)
    kw = dict(dt_gamma=cfg.dt_gamma, max_steps=cfg.max_steps, T_thresh=cfg.T_thresh,
              backend=cfg.backend, aabb=field.aabb, min_near=cfg.min_near)
    if inference.loop == "fixed":
        key = (rays_o.shape[0], str(rays_o.device))
        buf = buffers.get(key) if buffers is not None else None
        stats: dict = {}
        image, depth, wsum = render_rays_fixed(
            field_fn, rays_o, rays_d, grid, schedule=inference.schedule_for(rays_o.device),
            capacity=inference.capacity_for(rays_o.device), read_back=inference.read_back, buffers=buf,
            stats=stats, **kw)
        if buffers is not None:
            buffers.clear()  # one frame size at a time: a new size frees the old buffers
            buffers[key] = stats["buffers"]
        return {"rgb": image, "alpha": wsum, "depth": depth}
    if inference.loop != "compact":
        raise ValueError(f"inference.loop must be 'fixed' or 'compact', got {inference.loop!r}")
    rgbs, alphas, depths = [], [], []
    for s in range(0, rays_o.shape[0], chunk):
        image, depth, wsum = render_rays_inference(
            field_fn, rays_o[s:s + chunk], rays_d[s:s + chunk], grid, **kw)
        rgbs.append(image)
        alphas.append(wsum)
        depths.append(depth)
    return {"rgb": torch.cat(rgbs), "alpha": torch.cat(alphas), "depth": torch.cat(depths)}
