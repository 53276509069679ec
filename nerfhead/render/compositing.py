"""Portrait-Sync blending and paste-back into the full-resolution source video.

Portrait-Sync (SyncTalk): the NeRF is good at the face and weak at hair and background, so the
rendered crop is blended into the original crop with the soft face mask from parsing
(``parsing/<i>_face.png``, hair excluded): ``out = m * render + (1 - m) * original``. Where the
mask is 0 the output is copied from the original bit for bit.

Paste-back: the (composited) crop goes back into the source frame at the crop box ``[x0, y0,
side]`` from the dataset's manifest (the square the crop was cut from, possibly reaching past
the frame edge where preprocessing padded). The crop is resized to side x side and blended
with a feathered mask that is 1 inside the box and falls smoothly to 0 over ``feather``
pixels at the box edge, so JPEG/resampling differences leave no visible seam. ``method="laplacian"``
instead blends a Laplacian pyramid of the box region (Burt & Adelson), which hides colour
steps over a wider band; both only ever write inside the box, so every pixel outside it is the
source pixel unchanged. (cv2.seamlessClone is not used: it shifts the face's colours toward the
surroundings, which would alter the measured pixels.)
"""

from __future__ import annotations

import cv2
import numpy as np


def _as_weight(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    m = m.astype(np.float32) / 255.0 if m.dtype == np.uint8 else m.astype(np.float32)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(m, 0.0, 1.0)


def portrait_blend(render: np.ndarray, original: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
    """Blend ``render`` into ``original`` (both uint8 [H, W, 3]) with the soft face mask
    (uint8 0-255 or float 0-1, [H, W]); pixels with mask 0 are exactly ``original``."""
    if render.shape != original.shape:
        raise ValueError(f"render {render.shape} and original frame {original.shape} differ")
    m = _as_weight(face_mask, original.shape[:2])
    blended = m[..., None] * render.astype(np.float32) + (1 - m[..., None]) * original.astype(np.float32)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[m <= 0] = original[m <= 0]
    return out


def feather_mask(side: int, feather: int) -> np.ndarray:
    """[side, side] float mask: 1 in the middle, falling to 0 at the border over ``feather``
    pixels along a smoothstep (3t^2 - 2t^3, so the blend has no visible kink where the ramp
    starts, unlike a linear ramp); the outermost ring gets t = 1/(feather+1)."""
    if feather <= 0:
        return np.ones((side, side), np.float32)
    idx = np.arange(side, dtype=np.float32)
    dist = np.minimum(idx, side - 1 - idx) + 1.0  # 1 at the border pixel
    t = np.clip(dist / (feather + 1.0), 0.0, 1.0)
    ramp = t * t * (3 - 2 * t)
    return np.minimum(ramp[:, None], ramp[None, :])


def _laplacian_blend(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """Blend float images with a Gaussian pyramid of ``mask`` over Laplacian pyramids."""
    gm, gf, gb = [mask], [fg], [bg]
    for _ in range(levels):
        if min(gf[-1].shape[:2]) < 8:
            break
        gm.append(cv2.pyrDown(gm[-1]))
        gf.append(cv2.pyrDown(gf[-1]))
        gb.append(cv2.pyrDown(gb[-1]))
    out = gm[-1][..., None] * gf[-1] + (1 - gm[-1][..., None]) * gb[-1]
    for k in range(len(gf) - 2, -1, -1):
        size = (gf[k].shape[1], gf[k].shape[0])
        lf = gf[k] - cv2.pyrUp(gf[k + 1], dstsize=size)
        lb = gb[k] - cv2.pyrUp(gb[k + 1], dstsize=size)
        band = gm[k][..., None] * lf + (1 - gm[k][..., None]) * lb
        out = cv2.pyrUp(out, dstsize=size) + band
    return out


def paste_back(frame: np.ndarray, crop: np.ndarray, box, feather: int = 16,
               method: str = "feather", region_mask: np.ndarray | None = None) -> np.ndarray:
    """Place ``crop`` (uint8 [h, w, 3]) into a copy of ``frame`` (uint8 [H, W, 3]) at
    ``box = [x0, y0, side]`` (source pixels; may extend past the frame).

    ``region_mask`` (crop-sized, optional) limits the paste to part of the crop, e.g. the
    parsing head+neck mask; it is multiplied with the feathered box mask.
    """
    x0, y0, side = (int(round(v)) for v in box)
    if side <= 0:
        raise ValueError(f"paste-back box {box} has no size")
    if method not in ("feather", "laplacian"):
        raise ValueError(f"unknown paste-back method {method!r} (feather, laplacian)")
    H, W = frame.shape[:2]
    interp = cv2.INTER_AREA if side < crop.shape[0] else cv2.INTER_LINEAR
    big = cv2.resize(crop, (side, side), interpolation=interp).astype(np.float32)
    weight = feather_mask(side, feather)
    if region_mask is not None:
        weight = weight * _as_weight(cv2.resize(np.asarray(region_mask), (side, side),
                                                interpolation=cv2.INTER_LINEAR), (side, side))
    # the part of the box that lies inside the frame
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, W), min(y0 + side, H)
    out = frame.copy()
    if fx0 >= fx1 or fy0 >= fy1:
        return out  # box entirely outside the frame: nothing to paste
    cx0, cy0 = fx0 - x0, fy0 - y0
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    fg = big[cy0:cy0 + (fy1 - fy0), cx0:cx0 + (fx1 - fx0)]
    w = np.ascontiguousarray(weight[cy0:cy0 + (fy1 - fy0), cx0:cx0 + (fx1 - fx0)])
    if method == "laplacian":
        # pyramid depth such that the coarsest band is about as wide as the feather ramp
        levels = max(1, int(np.log2(max(feather, 2))))
        blended = _laplacian_blend(fg, region, w, levels)
    else:
        blended = w[..., None] * fg + (1 - w[..., None]) * region
    patch = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    untouched = w <= 0
    patch[untouched] = frame[fy0:fy1, fx0:fx1][untouched]
    out[fy0:fy1, fx0:fx1] = patch
    return out
