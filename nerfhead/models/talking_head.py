"""TalkingHead: the whole per-speaker model (face field, audio, expression, latents, torso,
occupancy grid, background plate) and ``render_frame``, the API render/evaluate build on.

Compositing of a pixel: ``rgb = head + (1 - head_alpha) * (torso * torso_alpha +
(1 - torso_alpha) * bg)``, where ``head`` is the volume-rendered colour premultiplied by its
alpha; without a trained torso the head goes straight over ``bg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from nerfhead.models.audio import AudioEncoder, AudioSmoother, window_indices
from nerfhead.models.config import InferenceConfig, ModelConfig
from nerfhead.models.field import Conditions, FaceField
from nerfhead.models.rays import Camera, full_frame_pixels, nerf_matrix_to_ngp, pixel_rays
from nerfhead.models.renderer import render_head_inference, render_head_train
from nerfhead.models.torso import TorsoField
from nerfhead.ops.occupancy import OccupancyGrid

__all__ = ["Camera", "Conditions", "TalkingHead"]


def _as_tensor(x, device, dtype=torch.float32) -> Tensor:
    """numpy array, list or tensor (any device) -> a fresh tensor on ``device``."""
    if isinstance(x, Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.from_numpy(np.array(x, dtype=np.float32 if dtype == torch.float32 else np.float64)).to(device)


@dataclass
class ModelMeta:
    """What beyond ModelConfig is needed to rebuild a TalkingHead (saved in checkpoints)."""

    audio_len: int  #: T of the [N, T, C] audio features
    audio_channels: int  #: C
    audio_kind: str  #: "mel+ow", "mel", "ow", "hubert" or "precomputed"
    num_latents: int  #: training frames (one latent each)
    camera: dict  #: Camera fields at the training resolution


class TalkingHead(nn.Module):
    """Audio-driven head + torso model of one speaker.

    ``audio_kind`` names the feature it was trained on ("mel+ow", "mel", "ow", "hubert",
    "precomputed"); driving audio must be the same kind (``nerfhead.audio.features`` makes all
    but "precomputed" for new audio).
    """

    def __init__(self, cfg: ModelConfig, meta: ModelMeta):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        self.audio_kind = meta.audio_kind
        self.camera = Camera(**meta.camera)
        self.expr_index = cfg.expression_indices()
        self.audio_encoder = AudioEncoder(meta.audio_channels, meta.audio_len, cfg.audio_dim)
        self.smoother = AudioSmoother(cfg.audio_dim, cfg.audio_window)
        self.field = FaceField(cfg, len(self.expr_index))
        self.latents = nn.Parameter(torch.zeros(meta.num_latents, cfg.latent_dim))
        bound = max(abs(v) for v in cfg.aabb)
        self.grid = OccupancyGrid(bound=bound, resolution=cfg.occupancy_resolution, cascades=1)
        self.torso = TorsoField(cfg) if cfg.torso else None
        self.torso_latents = nn.Parameter(torch.zeros(meta.num_latents, cfg.torso_latent_dim))
        self.register_buffer("background", torch.ones(self.camera.height, self.camera.width, 3))
        self.register_buffer("has_torso", torch.zeros((), dtype=torch.bool))
        self.inference = InferenceConfig()  # how render_frame renders (not saved)
        self._render_buffers: dict = {}  # the fixed loop's device buffers, frame to frame
        self._frame_runners: dict = {}  # CUDA-graph runners (nerfhead.models.frame_graph)

    # ------------------------------------------------------------------ parameters
    def head_parameters(self) -> list[nn.Parameter]:
        mods = [self.audio_encoder, self.smoother, self.field]
        return [p for m in mods for p in m.parameters()] + [self.latents]

    def torso_parameters(self) -> list[nn.Parameter]:
        if self.torso is None:
            raise RuntimeError("this model has no torso field (model.torso: false)")
        return list(self.torso.parameters()) + [self.torso_latents]

    @property
    def device(self) -> torch.device:
        return self.background.device

    # ------------------------------------------------------------------ conditions
    def audio_code(self, audio_feats, index: int) -> Tensor:
        """Smoothed audio code [audio_dim] of frame ``index`` of features [N, T, C]."""
        idx = window_indices(int(index), self.cfg.audio_window, len(audio_feats))
        win = torch.as_tensor(np.asarray(audio_feats[idx], dtype=np.float32)
                              if not isinstance(audio_feats, Tensor) else audio_feats[idx])
        codes = self.audio_encoder(win.float().to(self.device))  # [W, D]
        return self.smoother(codes.unsqueeze(0))[0]

    def conditions(self, audio_feats, index: int, expression, latent_index: int | None) -> Conditions:
        """Everything that conditions one frame: audio code, upper-face expression, latents."""
        expr = _as_tensor(expression, self.device)
        if expr.shape != (52,):
            raise ValueError(f"expression must be the 52 MediaPipe blendshapes, got {tuple(expr.shape)}")
        if latent_index is not None and not 0 <= latent_index < self.latents.shape[0]:
            raise IndexError(f"latent_index {latent_index} outside the {self.latents.shape[0]} "
                             "training frames (None = mean latent)")
        latent = self.latents.mean(0) if latent_index is None else self.latents[latent_index]
        return Conditions(audio=self.audio_code(audio_feats, index), expression=expr[self.expr_index],
                          latent=latent)

    def torso_latent(self, latent_index: int | None) -> Tensor:
        if latent_index is not None and not 0 <= latent_index < self.torso_latents.shape[0]:
            raise IndexError(f"latent_index {latent_index} outside the training frames")
        return self.torso_latents.mean(0) if latent_index is None else self.torso_latents[latent_index]

    # ------------------------------------------------------------------ rendering
    def render_head_rays(self, rays_o: Tensor, rays_d: Tensor, cond: Conditions,
                         noise: Tensor | None = None) -> dict[str, Tensor]:
        """Differentiable head render (training); see ``renderer.render_head_train``."""
        return render_head_train(self.field, self.grid, self.cfg, rays_o, rays_d, cond, noise)

    def torso_rgba(self, u: Tensor, v: Tensor, pose: Tensor, latent: Tensor, camera: Camera) -> Tensor:
        """Torso colour and alpha [R, 4] at pixels (u, v) of an image of ``camera``'s size."""
        coords = torch.stack([(u.float() + 0.5) / camera.width, (v.float() + 0.5) / camera.height], -1)
        return self.torso(coords.to(self.device) * 2.0 - 1.0, pose, latent)

    def torso_where_visible(self, u: Tensor, v: Tensor, pose: Tensor, latent: Tensor, camera: Camera,
                            head_alpha: Tensor) -> Tensor:
        """``torso_rgba`` [R, 4] on the pixels the head leaves visible (head alpha below
        ``1 - inference.torso_alpha_eps``), zeros (transparent) elsewhere: the torso's share
        of such a pixel, ``(1 - head_alpha) * torso_alpha * (torso - bg)``, is at most eps.
        One host sync (the count of visible pixels); ``torso_alpha_eps = 0``: every pixel."""
        eps = float(self.inference.torso_alpha_eps)
        if eps <= 0:
            return self.torso_rgba(u, v, pose, latent, camera)
        visible = torch.nonzero(head_alpha < 1.0 - eps).squeeze(1)
        rgba = head_alpha.new_zeros(head_alpha.shape[0], 4)
        if visible.numel():
            rgba[visible] = self.torso_rgba(u[visible], v[visible], pose, latent, camera)
        return rgba

    @torch.no_grad()
    def update_grid(self, sample_conditions, generator: torch.Generator | None = None,
                    decay: float = 0.95) -> None:
        """One occupancy update; ``sample_conditions()`` returns a random frame's Conditions,
        drawn once per update so the grid covers every mouth shape over time."""
        cond = sample_conditions()
        self.grid.update(lambda x: self.field.density(x, cond), decay=decay,
                         threshold=self.cfg.density_threshold, generator=generator)

    @torch.no_grad()
    def render_frame(self, c2w, audio_feats, index: int, expression, latent_index: int | None = None,
                     bg=None, with_torso: bool = True, camera: Camera | None = None) -> dict[str, Tensor]:
        """Render one frame.

        c2w [4, 4] camera-to-world as in transforms_*.json (OpenGL, metres; converted inside);
        audio_feats [N, T, C] driving audio features (numpy or tensor, the kind in
        ``audio_kind``); index: frame of audio_feats to speak (its neighbours feed the
        temporal smoother); expression [52] MediaPipe blendshapes (upper-face ones used);
        latent_index: a training frame's latent (None: mean latent); bg [H, W, 3] in [0, 1]
        (None: the run's bc.jpg); with_torso: draw the torso when one was trained;
        camera: intrinsics and size (None: the training camera).

        Returns float tensors on the model's device: ``rgb`` [H, W, 3] final composite,
        ``head_rgb`` [H, W, 3] head colour premultiplied by its alpha (over black),
        ``head_alpha`` [H, W], ``torso_alpha`` [H, W] (zeros without torso, and where the
        head hides the torso: ``inference.torso_alpha_eps``), ``depth`` [H, W]
        (model units along the ray, 0 where empty).
        """
        cam = camera or self.camera
        H, W = cam.height, cam.width
        cond = self.conditions(audio_feats, index, expression, latent_index)
        use_torso = with_torso and self.torso is not None and bool(self.has_torso)
        rgba = None
        inf = self.inference
        if inf.loop == "fixed" and inf.cuda_graph and self.device.type == "cuda":
            from nerfhead.models.frame_graph import frame_runner

            head = frame_runner(self, cam, use_torso).render(c2w, cond, self.torso_latent(latent_index))
            rgba = head["torso_rgba"]
        else:
            pose = nerf_matrix_to_ngp(_as_tensor(c2w, "cpu", torch.float64)).float().to(self.device)
            u, v = full_frame_pixels(cam, self.device)
            rays_o, rays_d = pixel_rays(pose, cam, u, v)
            head = render_head_inference(self.field, self.grid, self.cfg, rays_o, rays_d, cond,
                                         inference=inf, buffers=self._render_buffers)
            if use_torso:
                rgba = self.torso_where_visible(u, v, pose, self.torso_latent(latent_index), cam,
                                                head["alpha"])
        if bg is None:
            back = self.background
            if back.shape[:2] != (H, W):
                back = torch.nn.functional.interpolate(back.permute(2, 0, 1)[None], size=(H, W),
                                                       mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        else:
            back = _as_tensor(bg, self.device)
            if back.shape != (H, W, 3):
                raise ValueError(f"bg must be [{H}, {W}, 3], got {tuple(back.shape)}")
        back = back.reshape(-1, 3)
        torso_alpha = torch.zeros(H * W, device=self.device)
        if rgba is not None:
            torso_alpha = rgba[:, 3]
            back = rgba[:, :3] * torso_alpha[:, None] + back * (1 - torso_alpha[:, None])
        rgb = head["rgb"] + (1 - head["alpha"][:, None]) * back
        return {"rgb": rgb.reshape(H, W, 3).clamp(0, 1), "head_rgb": head["rgb"].reshape(H, W, 3),
                "head_alpha": head["alpha"].reshape(H, W), "torso_alpha": torso_alpha.reshape(H, W),
                "depth": head["depth"].reshape(H, W)}
