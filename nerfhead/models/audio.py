"""Audio encoder and temporal attention smoother.

``AudioEncoder`` turns one frame's feature window [T, C] (16 log-mel / OpenWakeWord /
DeepSpeech / HuBERT frames, or a single vector when T = 1) into a ``dim``-d code with a stack
of stride-2 1D convolutions over time (ER-NeRF's AudioNet idea). Features are standardised
with per-channel statistics of the training clip (buffers, so render uses the same ones).

``AudioSmoother`` mixes the codes of ``window`` neighbouring frames with learned softmax
weights (ER-NeRF's AudioAttNet idea), which removes frame-to-frame jitter of the mouth.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class AudioEncoder(nn.Module):
    """[B, T, C] feature windows -> [B, dim] codes."""

    def __init__(self, in_channels: int, in_len: int, dim: int, hidden: int = 64):
        super().__init__()
        self.in_channels, self.in_len = in_channels, in_len
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))
        layers: list[nn.Module] = [nn.Conv1d(in_channels, hidden, 3 if in_len > 1 else 1,
                                             padding=1 if in_len > 1 else 0), nn.LeakyReLU(0.02)]
        n_down = math.ceil(math.log2(in_len)) if in_len > 1 else 0
        for _ in range(n_down):  # 16 -> 8 -> 4 -> 2 -> 1
            layers += [nn.Conv1d(hidden, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.02)]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, dim))

    @torch.no_grad()
    def set_statistics(self, features) -> None:
        """Per-channel mean/std from training features [N, T, C] (numpy or tensor)."""
        f = torch.as_tensor(features, dtype=torch.float64).reshape(-1, self.in_channels)
        self.mean.copy_(f.mean(0).float())
        self.std.copy_(f.std(0).clamp(min=1e-3).float())

    def forward(self, feats: Tensor) -> Tensor:
        if feats.dim() != 3 or feats.shape[1:] != (self.in_len, self.in_channels):
            raise ValueError(f"AudioEncoder expects [B, {self.in_len}, {self.in_channels}] windows, "
                             f"got {tuple(feats.shape)} (audio features of another kind?)")
        x = (feats - self.mean) / self.std
        h = self.convs(x.transpose(1, 2))  # [B, hidden, T']
        return self.head(h.mean(-1))


class AudioSmoother(nn.Module):
    """[B, W, dim] codes of W neighbouring frames -> [B, dim] attention-weighted mix."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.window = window
        self.score = nn.Sequential(nn.Conv1d(dim, 16, 3, padding=1), nn.LeakyReLU(0.02),
                                   nn.Conv1d(16, 1, 3, padding=1))
        self.mix = nn.Linear(window, window)

    def forward(self, codes: Tensor) -> Tensor:
        if self.window <= 1:
            return codes[:, codes.shape[1] // 2]
        s = self.score(codes.transpose(1, 2)).squeeze(1)  # [B, W]
        w = torch.softmax(self.mix(s), dim=-1)
        return (w.unsqueeze(-1) * codes).sum(1)


def window_indices(index: int, window: int, length: int) -> list[int]:
    """Frames ``index - window//2 .. index + window - window//2 - 1`` clamped to [0, length)."""
    lo = index - window // 2
    return [min(max(lo + k, 0), length - 1) for k in range(max(window, 1))]
