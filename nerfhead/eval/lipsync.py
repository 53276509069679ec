"""Face landmarks for evaluation and the audio-visual lip-sync proxy.

``FaceLandmarks`` wraps MediaPipe's Face Landmarker (Tasks API, offline with
``face_landmarker.task`` from ``nerfhead.weights``) for single images; it returns None when no
face is found so callers can count failures instead of crashing.

Lip-sync proxy (always available, no learned weights): per video frame, the mouth opening is
the outer-lip gap (landmarks 0-17) divided by the inter-ocular distance (33-263), so it does
not depend on scale or on lip rounding; the audio energy is the log RMS of the 300-3000 Hz band
(speech formants) of the 16 kHz waveform in an 80 ms window centred on the frame. The Pearson
correlation corr(opening[t], energy[t - d]) is computed for every offset d in [-max_offset,
max_offset] frames (d > 0: the mouth lags the audio). The report gives the correlation at
d = 0, the best offset and its correlation. These choices correlated best on real footage
here (GRID s1, first 750 frames: r = 0.49 at d = 0, peak 0.60 at d = +8; the peak is broad
because syllables last several frames), so the GT row of a report is the reference a render
should approach. Frames without a face are left out (they are counted by the caller).

SyncNet LSE-C / LSE-D (Chung & Zisserman's SyncNet as Wav2Lip evaluates it) run only when the
user supplies ``syncnet_v2.model`` (``nerfhead.weights`` key ``syncnet``); otherwise they are
reported unavailable with the reason. See ``syncnet_scores``.
"""

from __future__ import annotations

import numpy as np

UPPER_LIP_TOP, LOWER_LIP_BOTTOM, EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 0, 17, 33, 263
FPS = 25


class FaceLandmarks:
    """MediaPipe Face Landmarker for still images: ``__call__(rgb uint8) -> [478, 2] | None``
    in pixel coordinates."""

    def __init__(self, model_path=None):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        from nerfhead.weights import resolve

        path = resolve("face_landmarker", path=model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=path.read_bytes()),
            running_mode=vision.RunningMode.IMAGE, num_faces=1)
        self._mp = mp
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        img = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        result = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                                                        data=img))
        if not result.face_landmarks:
            return None
        h, w = img.shape[:2]
        return np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0]], np.float64)

    def close(self) -> None:
        self._landmarker.close()


def mouth_opening(landmarks) -> float:
    """Outer-lip gap over inter-ocular distance (dimensionless); nan for missing landmarks."""
    if landmarks is None:
        return float("nan")
    lm = np.asarray(landmarks, np.float64)
    gap = np.linalg.norm(lm[UPPER_LIP_TOP, :2] - lm[LOWER_LIP_BOTTOM, :2])
    eyes = np.linalg.norm(lm[EYE_OUTER_RIGHT, :2] - lm[EYE_OUTER_LEFT, :2])
    return float(gap / eyes) if eyes > 0 else float("nan")


def audio_energy_per_frame(samples: np.ndarray, num_frames: int, sr: int = 16000,
                           fps: int = FPS, window_s: float = 0.08,
                           band: tuple[float, float] | None = (300.0, 3000.0)) -> np.ndarray:
    """log RMS of ``samples`` (band-passed to ``band`` Hz unless None) in a window centred on
    each video frame's centre, [num_frames]; silence is floored at log(1e-4)."""
    from scipy.signal import butter, sosfiltfilt

    x = np.asarray(samples, np.float64).reshape(-1)
    if band is not None and x.size > 64:
        x = sosfiltfilt(butter(4, band, btype="band", fs=sr, output="sos"), x)
    half = int(round(window_s * sr / 2))
    out = np.zeros(num_frames)
    for i in range(num_frames):
        c = int(round((i + 0.5) * sr / fps))
        seg = x[max(0, c - half):max(0, c + half)]
        out[i] = np.sqrt(np.mean(seg ** 2)) if seg.size else 0.0
    return np.log(out + 1e-4)


def _is_constant(x: np.ndarray) -> bool:
    """Constant up to float noise (a render whose mouth never moves)."""
    return x.size == 0 or float(x.std()) <= 1e-9 * max(1.0, float(np.abs(x).max()))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if _is_constant(a) or _is_constant(b):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def offset_correlation(opening, energy, max_offset: int = 10, min_overlap: int = 8) -> dict:
    """Pearson correlation of opening[t] with energy[t - d] for each offset d.

    nan entries (no face) are excluded pairwise. Returns {"offsets", "correlations",
    "best_offset", "best_correlation", "zero_offset_correlation", "frames_used"}; the best is
    None when no offset has ``min_overlap`` valid pairs or a series is constant.
    """
    o = np.asarray(opening, np.float64)
    e = np.asarray(energy, np.float64)
    n = min(len(o), len(e))
    o, e = o[:n], e[:n]
    offsets = list(range(-max_offset, max_offset + 1))
    corrs = []
    for d in offsets:
        if d >= 0:
            a, b = o[d:], e[:n - d]
        else:
            a, b = o[:n + d], e[-d:]
        ok = np.isfinite(a) & np.isfinite(b)
        corrs.append(_pearson(a[ok], b[ok]) if ok.sum() >= min_overlap else float("nan"))
    c = np.asarray(corrs)
    result = {"offsets": offsets, "correlations": [None if np.isnan(v) else v for v in corrs],
              "frames_used": int(np.isfinite(o).sum()), "best_offset": None,
              "best_correlation": None, "zero_offset_correlation": None}
    if np.isfinite(c).any():
        k = int(np.nanargmax(c))
        result.update(best_offset=offsets[k], best_correlation=float(c[k]))
        z = c[offsets.index(0)]
        result["zero_offset_correlation"] = None if np.isnan(z) else float(z)
    return result


def sync_proxy(landmarks_per_frame, samples: np.ndarray, sr: int = 16000,
               max_offset: int = 10) -> dict:
    """The proxy for one rendered sequence: mouth opening from landmarks (None where no face)
    against the audio that drove it. Short sequences search fewer offsets (at most a fifth
    of their length) so every offset keeps most of the frames."""
    opening = np.array([mouth_opening(lm) for lm in landmarks_per_frame])
    energy = audio_energy_per_frame(samples, len(opening), sr)
    max_offset = max(1, min(max_offset, len(opening) // 5))
    result = offset_correlation(opening, energy, max_offset)
    result["faces_missing"] = int(np.isnan(opening).sum())
    valid = opening[np.isfinite(opening)]
    if result["best_offset"] is None:
        result["unavailable"] = (
            "the mouth opening is constant: the mouth never moves" if valid.size >= 8 and
            _is_constant(valid) else "too few frames with a detected face, or silent audio")
    return result


# ---------------------------------------------------------------------------------- SyncNet
def _bn_block(conv, bn, pool=None):
    import torch.nn as nn

    layers = [conv, bn, nn.ReLU(inplace=True)]
    return layers + ([pool] if pool is not None else [])


def build_syncnet():
    """SyncNet (syncnet_python's ``S`` layout, parameter names kept so its weights load):
    an audio CNN on 13x20 MFCC blocks (0.2 s) and a lip 3D-CNN on 5 RGB frames of 224x224,
    each followed by two fully connected layers to a 1024-d embedding."""
    import torch.nn as nn

    c2, b2, c3, b3 = nn.Conv2d, nn.BatchNorm2d, nn.Conv3d, nn.BatchNorm3d
    aud = (_bn_block(c2(1, 64, 3, 1, 1), b2(64), nn.MaxPool2d(1, 1))
           + _bn_block(c2(64, 192, 3, 1, 1), b2(192), nn.MaxPool2d(3, (1, 2)))
           + _bn_block(c2(192, 384, 3, 1, 1), b2(384)) + _bn_block(c2(384, 256, 3, 1, 1), b2(256))
           + _bn_block(c2(256, 256, 3, 1, 1), b2(256), nn.MaxPool2d(3, 2))
           + _bn_block(c2(256, 512, (5, 4), 1, 0), b2(512)))
    lip = (_bn_block(c3(3, 96, (5, 7, 7), (1, 2, 2), 0), b3(96), nn.MaxPool3d((1, 3, 3), (1, 2, 2)))
           + _bn_block(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3(256),
                       nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
           + _bn_block(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256))
           + _bn_block(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256))
           + _bn_block(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256), nn.MaxPool3d((1, 3, 3), (1, 2, 2)))
           + _bn_block(c3(256, 512, (1, 6, 6), 1, 0), b3(512)))

    def fc():
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))

    net = nn.Module()
    net.netcnnaud, net.netfcaud = nn.Sequential(*aud), fc()
    net.netcnnlip, net.netfclip = nn.Sequential(*lip), fc()
    return net


def mfcc(samples: np.ndarray, sr: int = 16000, numcep: int = 13, nfilt: int = 26,
         nfft: int = 512) -> np.ndarray:
    """MFCCs [frames, 13] at 100/s (25 ms windows, pre-emphasis 0.97, 26 mel filters,
    lifter 22, c0 replaced by log frame energy): the front end SyncNet was trained with
    (python_speech_features defaults), on int16-scaled samples."""
    from scipy.fft import dct

    x = np.asarray(samples, np.float64).reshape(-1) * 32768.0
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])
    flen, step = int(0.025 * sr), int(0.01 * sr)
    n = 1 if len(x) <= flen else 1 + int(np.ceil((len(x) - flen) / step))
    x = np.concatenate([x, np.zeros((n - 1) * step + flen - len(x))])
    frames = x[np.arange(flen)[None] + step * np.arange(n)[:, None]]
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = np.maximum(pspec.sum(1), np.finfo(float).eps)
    mel = np.linspace(0, 2595 * np.log10(1 + (sr / 2) / 700), nfilt + 2)
    bins = np.floor((nfft + 1) * (700 * (10 ** (mel / 2595) - 1)) / sr).astype(int)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        a, b, c = bins[j], bins[j + 1], bins[j + 2]
        fb[j, a:b] = (np.arange(a, b) - a) / max(b - a, 1)
        fb[j, b:c] = (c - np.arange(b, c)) / max(c - b, 1)
    feat = np.log(np.maximum(pspec @ fb.T, np.finfo(float).eps))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    feat *= 1 + 11.0 * np.sin(np.pi * np.arange(numcep) / 22)
    feat[:, 0] = np.log(energy)
    return feat


def face_crops(frames, landmarks, size: int = 224) -> np.ndarray | None:
    """Square face crops [N, size, size, 3] (BGR, as SyncNet saw them) around the landmarks
    (box 1.4x the landmark extent); a frame without landmarks reuses the previous box."""
    import cv2

    crops, box = [], None
    for img, lm in zip(frames, landmarks):
        h, w = img.shape[:2]
        if lm is not None:
            pts = np.asarray(lm)[:, :2] * [w / 512.0, h / 512.0]  # landmarks are at 512x512
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            half = 0.7 * max(x1 - x0, y1 - y0)
            box = ((x0 + x1) / 2, (y0 + y1) / 2, half)
        if box is None:
            continue
        cx, cy, half = box
        m = cv2.getAffineTransform(np.float32([[cx - half, cy - half], [cx + half, cy - half],
                                               [cx - half, cy + half]]),
                                   np.float32([[0, 0], [size, 0], [0, size]]))
        crops.append(cv2.warpAffine(img[..., ::-1], m, (size, size), borderMode=cv2.BORDER_REPLICATE))
    return np.stack(crops) if len(crops) == len(frames) else None


def syncnet_scores(frames, samples, weights=None, device="cpu", landmarks=None,
                   vshift: int = 15) -> dict:
    """LSE-D (mean embedding distance at the best offset, lower is better) and LSE-C
    (median minus minimum of the offset-averaged distances, higher is better) over +-15
    frames, as Wav2Lip's evaluation computes them; {"available": False, "reason"} when the
    weights or the inputs are missing."""
    import torch

    from nerfhead.weights import WeightsUnavailable, resolve

    try:
        path = resolve("syncnet", path=weights)
    except WeightsUnavailable as e:
        return {"available": False, "reason": str(e)}
    if samples is None or len(frames) < 6 or landmarks is None:
        return {"available": False, "reason": "needs >= 6 frames, their audio and face landmarks"}
    crops = face_crops(frames, landmarks)
    if crops is None:
        return {"available": False, "reason": "no face found in the first frames to crop"}
    net = build_syncnet()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("__S__."): v for k, v in state.items()}
        net.load_state_dict(state, strict=False)
        missing = set(net.state_dict()) - set(state)
        if missing:
            raise KeyError(f"{len(missing)} parameters missing, e.g. {sorted(missing)[:3]}")
    except Exception as e:
        return {"available": False, "reason": f"cannot load SyncNet weights {path}: {e}"}
    net = net.to(device).eval()
    cc = mfcc(samples)  # 4 MFCC frames per video frame
    # windows start at every frame that has 5 frames and 20 MFCC frames (0.2 s) ahead of it
    n = min(len(crops) - 5, len(samples) // 640 - 5, (len(cc) - 20) // 4 + 1)
    if n < 1:
        return {"available": False, "reason": "sequence too short for 5-frame SyncNet windows"}
    vid = torch.from_numpy(crops.astype(np.float32)).permute(3, 0, 1, 2)  # [3, N, H, W]
    aud = torch.from_numpy(cc.T.astype(np.float32))  # [13, M]
    lip_feats, aud_feats = [], []
    with torch.no_grad():
        for s in range(0, n, 20):
            idx = range(s, min(s + 20, n))
            lip = torch.stack([vid[:, i:i + 5] for i in idx]).to(device)
            au = torch.stack([aud[None, :, 4 * i:4 * i + 20] for i in idx]).to(device)
            lip_feats.append(net.netfclip(net.netcnnlip(lip).flatten(1)).cpu())
            aud_feats.append(net.netfcaud(net.netcnnaud(au).flatten(1)).cpu())
    lf, af = torch.cat(lip_feats), torch.cat(aud_feats)
    win = 2 * vshift + 1
    ap = torch.nn.functional.pad(af, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(lf[i:i + 1].expand(win, -1),
                                                               ap[i:i + win]) for i in range(len(lf))])
    mean_d = dists.mean(0)
    minval, minidx = mean_d.min(0)
    return {"available": True, "lse_d": float(minval), "lse_c": float(mean_d.median() - minval),
            "offset": int(vshift - minidx), "windows": int(n)}
