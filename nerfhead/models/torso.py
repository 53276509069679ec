"""2D deformable torso field (ER-NeRF): image coordinates -> torso RGBA.

The torso moves with the head but is nearly planar in the image, so ER-NeRF models it in 2D:
a pixel's normalised coordinate ``x`` in [-1, 1]^2 is displaced by an MLP conditioned on the
head pose (three anchor points pushed through the frame's c2w, frequency-encoded) and a
per-frame torso latent; the displaced coordinate is looked up in a 2D hash grid and an MLP
returns alpha and colour (sigmoids stretched by 0.1% so 0 and 1 are reachable).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nerfhead.models.config import ModelConfig
from nerfhead.models.layers import MLP, FrequencyEncoding
from nerfhead.ops.hashgrid import HashGridConfig, HashGridEncoding

# Points near the head centre (model units); their images under c2w summarise the pose.
ANCHORS = torch.tensor([[0.01, 0.01, 0.1, 1.0], [-0.1, -0.1, 0.1, 1.0], [0.1, -0.1, 0.1, 1.0]])


class TorsoField(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        grid = HashGridConfig.from_finest_resolution(
            cfg.torso_finest_resolution, base_resolution=16, num_levels=cfg.torso_levels,
            input_dim=2, features_per_level=2, log2_hashmap_size=cfg.torso_log2_size)
        self.grid = HashGridEncoding(grid, backend=cfg.backend)
        self.register_buffer("anchors", ANCHORS.clone(), persistent=False)
        self.pose_enc = FrequencyEncoding(9, 4)
        self.coord_enc = FrequencyEncoding(2, 8)
        cond_dim = self.pose_enc.out_dim + self.coord_enc.out_dim + cfg.torso_latent_dim
        self.deform_net = MLP(cond_dim, 2, cfg.torso_hidden_dim * 2, 3)
        self.rgba_net = MLP(grid.out_dim + cond_dim, 4, cfg.torso_hidden_dim, 3)

    def forward(self, coords: Tensor, pose: Tensor, latent: Tensor) -> Tensor:
        """coords [R, 2] in [-1, 1] (x right, y down), pose [4, 4] model-frame c2w,
        latent [torso_latent_dim] -> rgba [R, 4] in [0, 1]."""
        n = coords.shape[0]
        anchors = (self.anchors @ pose[:3, :].T).reshape(1, 9)  # [3 points x 3]
        h = [self.coord_enc(coords), self.pose_enc(anchors).expand(n, -1)]
        if self.cfg.torso_latent_dim:
            h.append(latent.expand(n, -1))
        h = torch.cat(h, -1)
        moved = (coords + torch.tanh(self.deform_net(h))).clamp(-1.0, 1.0)
        feat = self.grid((moved + 1.0) * 0.5)
        out = self.rgba_net(torch.cat([feat, h], -1))
        return torch.sigmoid(out) * 1.002 - 0.001
