"""Small building blocks: MLP, truncated exp, spherical harmonics, frequency encoding."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, num_layers: int):
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class _TruncExp(torch.autograd.Function):
    # exp forward; the backward clamps the exponent so a large pre-activation early in
    # training cannot blow the density gradient up (torch-ngp's trunc_exp).
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def sh_encode(d: Tensor, degree: int = 4) -> Tensor:
    """Real spherical harmonics of unit directions d [N, 3] up to ``degree`` (1..4 bands).

    Returns [N, degree**2] with the standard real SH basis constants (as tcnn's
    SphericalHarmonics encoding, which takes the same basis).
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"sh_encode: degree must be 1..4, got {degree}")
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [1.0925484305920792 * xy, -1.0925484305920792 * yz,
                0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * xz, 0.54627421529603959 * (xx - yy)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * xx + yy),
                2.8906114426405538 * xy * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz),
                0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz),
                1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy)]
    return torch.stack(out, -1)


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding: x, sin(2^k x), cos(2^k x) for k < num_freqs."""

    def __init__(self, in_dim: int, num_freqs: int):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs).float(), persistent=False)
        self.out_dim = in_dim * (1 + 2 * num_freqs)

    def forward(self, x: Tensor) -> Tensor:
        xf = x[..., None] * self.freqs  # [..., D, K]
        return torch.cat([x, xf.sin().flatten(-2), xf.cos().flatten(-2)], -1)
