"""The face field: tri-plane hash grids + audio / expression region attention + MLPs.

A sample at ``p`` (model frame) is normalised to the head box, ``q = (p - min) / (max - min)``
in [0, 1]^3, and looked up in three 2D hash grids on the planes (x, y), (y, z), (x, z)
(ER-NeRF's decomposition: three 2D tables cost far less memory than one 3D table at the
same resolution). The three features are concatenated by default (``plane_merge``: sum or
product are alternatives that keep the width of one plane).

Region attention (ER-NeRF): small MLPs on the position feature give each sample a weight
vector for the audio code (linear output, so signs can flip) and for the expression code
(ReLU), so audio reaches the mouth region and blinks the eye region without leaking.

Density MLP: [position feature, attended audio, attended expression] -> sigma (truncated
exp) and a geometry feature. Colour MLP: [SH(view dir), geometry feature, per-frame latent]
-> RGB (sigmoid). Uncertainty MLP: detached position feature -> raw uncertainty (softplus'd
by the loss), as ER-NeRF's, used for the uncertainty-weighted loss. The RAD-NeRF "ambient"
coordinates are not kept: region attention replaces them in ER-NeRF and SyncTalk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nerfhead.models.config import ModelConfig
from nerfhead.models.layers import MLP, sh_encode, trunc_exp
from nerfhead.models.shading import FusedShader
from nerfhead.ops.hashgrid import HashGridConfig, HashGridEncoding

PLANES = ((0, 1), (1, 2), (0, 2))  # xy, yz, xz


@dataclass
class Conditions:
    """Per-frame conditioning shared by every sample of a batch of rays, or, with a leading
    dimension, one row per ray (training on several frames per step) or per sample."""

    audio: Tensor  #: [audio_dim] smoothed audio code (or [N, audio_dim])
    expression: Tensor  #: [E] upper-face blendshapes (or [N, E])
    latent: Tensor  #: [latent_dim] per-frame latent, may be empty (or [N, latent_dim])

    @property
    def per_row(self) -> bool:
        return self.audio.dim() == 2

    def rows(self, index: Tensor) -> "Conditions":
        """Per-row conditions gathered at ``index`` (e.g. each sample's ray)."""
        return Conditions(audio=self.audio[index], expression=self.expression[index],
                          latent=self.latent[index])


class FaceField(nn.Module):
    """Tri-plane hash-grid radiance field of the head, conditioned on :class:`Conditions`."""

    def __init__(self, cfg: ModelConfig, num_expression: int):
        super().__init__()
        self.cfg = cfg
        grid = HashGridConfig.from_finest_resolution(
            cfg.grid_finest_resolution, base_resolution=cfg.grid_base_resolution,
            num_levels=cfg.grid_levels, input_dim=2, features_per_level=cfg.grid_features,
            log2_hashmap_size=cfg.grid_log2_size)
        self.planes = nn.ModuleList(HashGridEncoding(grid, backend=cfg.backend) for _ in PLANES)
        plane_dim = grid.out_dim
        self.enc_dim = plane_dim * 3 if cfg.plane_merge == "concat" else plane_dim
        self.register_buffer("aabb", torch.tensor(cfg.aabb, dtype=torch.float32))
        self.audio_att = MLP(self.enc_dim, cfg.audio_dim, cfg.hidden_dim, 2)
        self.num_expression = num_expression
        self.expr_att = MLP(self.enc_dim, num_expression, cfg.hidden_dim, 2) if num_expression else None
        self.sigma_net = MLP(self.enc_dim + cfg.audio_dim + num_expression, 1 + cfg.geo_feat_dim,
                             cfg.hidden_dim, cfg.sigma_layers)
        self.color_net = MLP(cfg.sh_degree ** 2 + cfg.geo_feat_dim + cfg.latent_dim, 3,
                             cfg.hidden_dim, cfg.color_layers)
        self.unc_net = MLP(self.enc_dim, 1, 32, 2) if cfg.uncertainty else None

    def plane_features(self, x: Tensor) -> list[Tensor]:
        """The xy, yz, xz plane features [S, L * F] each of positions x [S, 3]."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        q = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        # basic slicing (xy = 0:2, yz = 1:3, xz = ::2) copies less than a gather of columns
        cols = (q[:, 0:2], q[:, 1:3], q[:, 0::2])
        return [plane(c.contiguous()) for plane, c in zip(self.planes, cols)]

    def encode_position(self, x: Tensor) -> Tensor:
        feats = self.plane_features(x)
        if self.cfg.plane_merge == "concat":
            return torch.cat(feats, -1)
        if self.cfg.plane_merge == "sum":
            return feats[0] + feats[1] + feats[2]
        return feats[0] * feats[1] * feats[2]

    def _geometry(self, enc: Tensor, cond: Conditions) -> tuple[Tensor, Tensor, Tensor]:
        n = enc.shape[0]
        audio_w = self.audio_att(enc)  # [S, audio_dim] region attention on audio
        parts = [enc, audio_w * cond.audio.expand(n, -1)]
        if self.expr_att is not None:
            parts.append(torch.relu(self.expr_att(enc)) * cond.expression.expand(n, -1))
        h = self.sigma_net(torch.cat(parts, -1))
        # exp(15) is opaque for any step size; the clamp keeps sigma * delta finite (no NaN)
        return trunc_exp(h[:, 0].clamp(max=15.0)), h[:, 1:], audio_w

    def density(self, x: Tensor, cond: Conditions) -> Tensor:
        """sigma [S] at positions x [S, 3]."""
        return self._geometry(self.encode_position(x), cond)[0]

    def forward(self, x: Tensor, d: Tensor, cond: Conditions,
                uncertainty: bool = True) -> dict[str, Tensor]:
        """x, d [S, 3] -> sigma [S], rgb [S, 3], uncertainty [S] (raw; zeros when the model has
        no uncertainty head or ``uncertainty`` is False), audio_att [S, A]."""
        enc = self.encode_position(x)
        sigma, geo, audio_w = self._geometry(enc, cond)
        parts = [sh_encode(d, self.cfg.sh_degree), geo]
        if self.cfg.latent_dim:
            parts.append(cond.latent.expand(enc.shape[0], -1))
        rgb = torch.sigmoid(self.color_net(torch.cat(parts, -1)))
        unc = self.unc_net(enc.detach()).squeeze(-1) if self.unc_net is not None and uncertainty \
            else torch.zeros_like(sigma)
        return {"sigma": sigma, "rgb": rgb, "uncertainty": unc, "audio_att": audio_w}

    def inference_shader(self, cond: Conditions) -> FusedShader:
        """The inference form of :meth:`forward` for one frame's conditions: (x, d) -> (sigma
        [S] float32, rgb [S, 3]), merged first-layer GEMM, no uncertainty (see
        ``nerfhead.models.shading``)."""
        return FusedShader(self, cond)
