"""Cameras, pose conversion and ray generation.

Conventions (COMMON contract):

* ``transform_matrix`` in transforms_*.json is camera-to-world in the OpenGL convention
  (x right, y up, camera looks down -z), translation in metres, head near the origin.
* The model works in SyncTalk's "ngp" frame: :func:`nerf_matrix_to_ngp` permutes the axes
  (new x, y, z = old y, z, x), flips the camera's y and z axes (OpenGL -> OpenCV) and
  scales the translation by 4, so the head (about 0.25 m) spans about one unit.
* Pixel ``(u, v)`` (column, row) casts a ray through its centre:
  ``dir_cam = ((u + 0.5 - cx) / f, (v + 0.5 - cy) / f, 1)`` (x right, y down, z forward),
  rotated to world by the converted c2w and normalised; the origin is the camera centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NGP_SCALE = 4.0  # SyncTalk / ER-NeRF: metres -> model units
NGP_OFFSET = (0.0, 0.0, 0.0)


@dataclass
class Camera:
    """Pinhole intrinsics in pixels of an image of ``height`` x ``width``."""

    focal: float
    cx: float
    cy: float
    height: int
    width: int

    def scaled(self, height: int, width: int) -> Camera:
        """The same camera for an image resized to ``height`` x ``width``."""
        sy, sx = height / self.height, width / self.width
        return Camera(focal=self.focal * sx, cx=self.cx * sx, cy=self.cy * sy,
                      height=int(height), width=int(width))


def nerf_matrix_to_ngp(pose, scale: float = NGP_SCALE, offset=NGP_OFFSET):
    """OpenGL c2w [..., 4, 4] (metres) -> model-frame c2w [..., 4, 4] (OpenCV axes, x4).

    ``new = [[p10, -p11, -p12, p13*s + o0], [p20, -p21, -p22, p23*s + o1],
    [p00, -p01, -p02, p03*s + o2], [0, 0, 0, 1]]`` (SyncTalk's formula). Works on numpy
    arrays and torch tensors.
    """
    lib = torch if isinstance(pose, Tensor) else np
    p = pose
    rows = [
        [p[..., 1, 0], -p[..., 1, 1], -p[..., 1, 2], p[..., 1, 3] * scale + offset[0]],
        [p[..., 2, 0], -p[..., 2, 1], -p[..., 2, 2], p[..., 2, 3] * scale + offset[1]],
        [p[..., 0, 0], -p[..., 0, 1], -p[..., 0, 2], p[..., 0, 3] * scale + offset[2]],
    ]
    zeros = lib.zeros_like(p[..., 0, 0])
    ones = lib.ones_like(p[..., 0, 0])
    rows.append([zeros, zeros, zeros, ones])
    return lib.stack([lib.stack(r, -1) for r in rows], -2)


def pixel_rays(c2w: Tensor, camera: Camera, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres.

    c2w: [4, 4] model-frame (converted) camera-to-world; u, v: [R] integer or float pixel
    column / row. Returns ``rays_o`` [R, 3] and unit ``rays_d`` [R, 3] (float32, on c2w's
    device).
    """
    c2w = c2w.float()
    x = (u.float() + 0.5 - camera.cx) / camera.focal
    y = (v.float() + 0.5 - camera.cy) / camera.focal
    dirs = torch.stack([x, y, torch.ones_like(x)], -1).to(c2w.device)
    rays_d = dirs @ c2w[:3, :3].T
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    rays_o = c2w[:3, 3].expand_as(rays_d).contiguous()
    return rays_o, rays_d


def full_frame_pixels(camera: Camera, device="cpu") -> tuple[Tensor, Tensor]:
    """Row-major pixel coordinates (u [H*W], v [H*W]) of a whole image."""
    v, u = torch.meshgrid(torch.arange(camera.height, device=device),
                          torch.arange(camera.width, device=device), indexing="ij")
    return u.reshape(-1), v.reshape(-1)
