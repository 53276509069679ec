"""Image and landmark metrics: PSNR (whole and masked), SSIM, LMD.

Images are float arrays in [0, 1] shaped [H, W, 3] (numpy or torch); uint8 arrays are
converted. SSIM is Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5, truncated at
3.5 sigma), the population covariance and K1=0.01, K2=0.03, averaged over the "valid" region
and the channels, which is what ``skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` computes.
LMD follows SyncTalk: mouth landmarks of the render and of the ground truth, each set
mean-centred (so a rigid translation of the whole mouth costs nothing), mean Euclidean
distance in pixels of a 512x512 frame.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# MediaPipe face-mesh lip contour (outer then inner ring), 40 points.
MOUTH_LANDMARKS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0,
                   37, 39, 40, 185, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415,
                   310, 311, 312, 13, 82, 81, 80, 191)
LMD_REFERENCE_SIZE = 512


def to_float_image(img) -> torch.Tensor:
    """[H, W, C] float64 tensor in [0, 1] from a uint8/float numpy array or tensor."""
    t = torch.as_tensor(np.asarray(img) if not torch.is_tensor(img) else img)
    if t.dtype == torch.uint8:
        return t.to(torch.float64) / 255.0
    return t.detach().to("cpu", torch.float64)


def _float64(img) -> np.ndarray:
    """float64 numpy array in [0, 1] (uint8 scaled by 1/255). Numpy, not torch: per-frame
    metrics on small images are dominated by torch's per-op overhead on a busy CPU."""
    if torch.is_tensor(img):
        img = img.detach().cpu().numpy()
    a = np.asarray(img)
    return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def mse(pred, gt, mask=None) -> float:
    """Mean squared error; with ``mask`` [H, W] in [0, 1], the mask-weighted mean."""
    p, g = _float64(pred), _float64(gt)
    if p.shape != g.shape:
        raise ValueError(f"image shapes differ: render {p.shape} vs GT {g.shape}")
    err = (p - g) ** 2
    if err.ndim == 3:
        err = err.mean(-1)
    if mask is None:
        return float(err.mean())
    w = _float64(mask)
    if w.ndim == 3:
        w = w[..., 0]
    total = float(w.sum())
    if total <= 0:
        return float("nan")  # empty mask: no pixels to measure
    return float((err * w).sum() / total)


def psnr(pred, gt, mask=None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images, nan for an empty mask)."""
    m = mse(pred, gt, mask)
    if math.isnan(m):
        return float("nan")
    if m == 0:
        return float("inf")
    return 10.0 * math.log10(data_range ** 2 / m)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius int(truncate*sigma+0.5) as scipy.ndimage uses."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_map(pred, gt, data_range: float = 1.0, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-pixel SSIM over the valid region, [C, H-2r, W-2r] (float64).

    Separable Gaussian with ``scipy.ndimage.correlate1d`` in float64 (about 30x faster on the
    CPU than a depthwise torch conv2d, same values); the border is cropped by the window
    radius, i.e. skimage's "valid" region.
    """
    from scipy.ndimage import correlate1d

    p, g = _float64(pred), _float64(gt)
    if p.shape != g.shape:
        raise ValueError(f"image shapes differ: render {p.shape} vs GT {g.shape}")
    if p.ndim == 2:
        p, g = p[..., None], g[..., None]
    w1 = gaussian_window(sigma).numpy()
    r = (len(w1) - 1) // 2
    if min(p.shape[:2]) < 2 * r + 1:
        raise ValueError(f"image {p.shape[:2]} smaller than the SSIM window {2 * r + 1}")

    def blur(t):
        t = correlate1d(correlate1d(t, w1, axis=0, mode="constant"), w1, axis=1, mode="constant")
        return t[r:-r, r:-r]

    mu_p, mu_g = blur(p), blur(g)
    pp = blur(p * p) - mu_p ** 2
    gg = blur(g * g) - mu_g ** 2
    pg = blur(p * g) - mu_p * mu_g
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    out = ((2 * mu_p * mu_g + c1) * (2 * pg + c2)) / ((mu_p ** 2 + mu_g ** 2 + c1) * (pp + gg + c2))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def ssim(pred, gt, data_range: float = 1.0) -> float:
    """Mean SSIM (Gaussian window) over pixels and channels."""
    return float(ssim_map(pred, gt, data_range).mean())


def lmd(pred_landmarks, gt_landmarks, image_size: float = LMD_REFERENCE_SIZE) -> float:
    """Landmark distance: both sets [K, 2] mean-centred, mean L2 distance in pixels of a
    512x512 frame (coordinates are scaled by 512 / ``image_size``)."""
    p = np.asarray(pred_landmarks, np.float64)[:, :2]
    g = np.asarray(gt_landmarks, np.float64)[:, :2]
    if p.shape != g.shape:
        raise ValueError(f"landmark sets differ in shape: {p.shape} vs {g.shape}")
    scale = LMD_REFERENCE_SIZE / float(image_size)
    p = (p - p.mean(0)) * scale
    g = (g - g.mean(0)) * scale
    return float(np.linalg.norm(p - g, axis=1).mean())


def mouth_mask(landmarks, height: int, width: int, margin: float = 0.25) -> np.ndarray:
    """Binary [H, W] float mask: the lip landmarks' bounding box grown by ``margin`` of its
    size on each side (so the chin and philtrum movement near the lips count)."""
    pts = np.asarray(landmarks, np.float64)[list(MOUTH_LANDMARKS), :2]
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin + 2
    mask = np.zeros((height, width), np.float32)
    xa, xb = int(max(0, math.floor(x0 - mx))), int(min(width, math.ceil(x1 + mx)))
    ya, yb = int(max(0, math.floor(y0 - my))), int(min(height, math.ceil(y1 + my)))
    mask[ya:yb, xa:xb] = 1.0
    return mask


def summarize(values) -> dict:
    """mean/std/min/max/count over the finite values of a per-frame list; count of the rest."""
    arr = np.asarray([v for v in values if v is not None], np.float64)
    finite = arr[np.isfinite(arr)]
    out = {"count": int(finite.size), "non_finite": int(len(values) - finite.size)}
    if finite.size:
        out.update(mean=float(finite.mean()), std=float(finite.std()),
                   min=float(finite.min()), max=float(finite.max()))
    else:
        out.update(mean=None, std=None, min=None, max=None)
    # An identical frame gives PSNR=inf; report it rather than dropping it silently.
    out["infinite"] = int(np.isinf(arr).sum())
    return out
