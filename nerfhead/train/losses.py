"""Loss terms of the three stages.

head : MSE on RGB; after ``uncertainty_start`` the uncertainty-weighted NLL
       ``|c - c_gt|^2 / (2 beta^2) + log beta`` with ``beta = 0.1 + softplus(u)`` (ER-NeRF);
       + lambda_entropy * binary entropy of each ray's alpha
       + lambda_audio_att * |audio region attention|_1.
lips : MSE on the mouth patch + lips_frame_weight * MSE on ``lips_frame_rays`` random rays of
       the whole frame (so nothing away from the mouth drifts into floaters) +
       lambda_lpips * LPIPS(patch) when the LPIPS weights exist, else + lambda_patch_ssim *
       (1 - SSIM(patch)) (logged as a warning), + the regularisers.
torso: MSE of the composite + lambda_entropy * entropy of the torso alpha.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("nerfhead.train")


def uncertainty_nll(pred: Tensor, target: Tensor, raw_unc: Tensor, beta_min: float = 0.1) -> Tensor:
    beta = beta_min + F.softplus(raw_unc)
    err = ((pred - target) ** 2).mean(-1)
    return (err / (2 * beta ** 2) + torch.log(beta)).mean()


def alpha_entropy(alpha: Tensor) -> Tensor:
    a = alpha.clamp(1e-5, 1 - 1e-5)
    return (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None].repeat(3, 1, 1, 1)


def ssim(a: Tensor, b: Tensor, size: int = 7) -> Tensor:
    """Mean SSIM of [B, 3, H, W] images in [0, 1] (Gaussian window, valid region)."""
    w = _gaussian_window(size).to(a)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = F.conv2d(a, w, groups=3), F.conv2d(b, w, groups=3)
    saa = F.conv2d(a * a, w, groups=3) - mu_a ** 2
    sbb = F.conv2d(b * b, w, groups=3) - mu_b ** 2
    sab = F.conv2d(a * b, w, groups=3) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2)
    return (num / den).mean()


class PatchPerceptualLoss:
    """LPIPS on a patch when its weights can be found, else 1 - SSIM (with a warning)."""

    def __init__(self, device, lambda_lpips: float, lambda_ssim: float, net=None):
        """``net``: an ``nerfhead.eval.lpips.LPIPS`` to use instead of loading one."""
        self.kind = "ssim"
        self.weight = lambda_ssim
        self.net = net
        if net is not None:
            self.kind, self.weight = "lpips", lambda_lpips
            return
        try:
            from nerfhead.eval.lpips import LPIPS, LPIPSUnavailable
            from nerfhead.weights import WeightsUnavailable

            try:
                self.net = LPIPS.load(device=device)
                self.kind, self.weight = "lpips", lambda_lpips
            except (LPIPSUnavailable, WeightsUnavailable) as e:
                log.warning("lips stage: LPIPS unavailable (%s); using 1 - SSIM on the mouth "
                            "patch (weight %g) instead", e, lambda_ssim)
        except ImportError as e:
            log.warning("lips stage: nerfhead.eval.lpips not importable (%s); using 1 - SSIM", e)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: [1, 3, P, P] in [0, 1]."""
        if self.net is None:
            return self.weight * (1 - ssim(pred, target))
        return self.weight * self.net(pred, target).mean()


def psnr(pred: Tensor, target: Tensor) -> float:
    mse = float(((pred - target) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()
