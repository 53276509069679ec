"""Face landmarks for evaluation, the lip-sync measures, and SyncNet.

``FaceLandmarks`` wraps MediaPipe's Face Landmarker (Tasks API, offline with
``face_landmarker.task`` from ``nerfhead.weights``) for single images; it returns None when no
face is found so callers can count failures instead of crashing.

Mouth opening (``mouth_opening``): per video frame, the outer-lip gap (MediaPipe landmarks 0
and 17) divided by the inter-ocular distance (33-263), so it depends neither on scale nor on
lip rounding.

Two comparisons of a render with the ground truth (``opening_agreement``), both over the
frames where a face was found in the render and in the GT:

- **opening correlation**: Pearson correlation of the rendered and the GT opening, frame by
  frame (1: the rendered mouth opens and closes exactly when the real one does);
- **amplitude ratio**: std(rendered opening) / std(GT opening) (1: it opens as far; 0.5: half
  as far). The robust variant, (p95 - p5) of the render over (p95 - p5) of the GT, is reported
  beside it; the two agree unless a few frames are outliers (a lost face, a flicker).

Energy proxy (``sync_proxy``; needs no learned weights and no GT video): the audio energy is
the log RMS of the 300-3000 Hz band (speech formants) of the 16 kHz waveform in an 80 ms
window centred on the frame (``audio_energy_per_frame``). The Pearson correlation
corr(opening[t], energy[t - d]) is computed for every offset d in [-max_offset, max_offset]
frames (d > 0: the mouth lags the audio). The report gives the correlation at d = 0 and the
best offset; a best offset at the edge of the search is flagged (``best_at_edge``), since it
only says that no peak was found inside the search. On real footage with audio on the video's
clock the GT peaks at d = +1..+2 frames (the jaw keeps closing after the sound has stopped) with
a broad maximum, e.g. GRID s1 sentences 80-99: 0.62 at d = 0, 0.70 at d = +2; the same
sentences with audio drifting by up to 9 frames (samples concatenated, packet timestamps
ignored): 0.50 at d = 0, peak at d = +5. So the proxy of the GT is also a check of the data's
A/V sync, and the GT row of a report is the reference a render should approach. Frames
without a face are left out (they are counted by the caller).

Speech and silence frames (``speech_frames``): an energy detector on the same per-frame band
energy, threshold at 35% of the way from the clip's quiet level (10th percentile) to its loud
level (95th percentile), then runs shorter than 4 frames (160 ms) merged into their neighbours
(a click, a stop consonant inside a word). On GRID
s1 it agrees with the corpus' word alignments on 96-97% of the frames. It splits LMD into
speech and silence frames (a closed mouth scores well on silence only).

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
    "best_offset", "best_correlation", "best_at_edge", "zero_offset_correlation",
    "frames_used"}; the best is None when no offset has ``min_overlap`` valid pairs or a series
    is constant. ``best_at_edge`` is True when the best offset is the first or last one
    searched: the correlation may still rise beyond the search, so that offset is a bound,
    not a measured lag.
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
              "best_correlation": None, "best_at_edge": False, "zero_offset_correlation": None}
    if np.isfinite(c).any():
        k = int(np.nanargmax(c))
        finite = np.flatnonzero(np.isfinite(c))
        result.update(best_offset=offsets[k], best_correlation=float(c[k]),
                      best_at_edge=bool(len(offsets) > 1 and k in (finite[0], finite[-1])))
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


PROXY_MIN_GT_CORRELATION = 0.3  #: GT correlation at offset 0 below this: the proxy cannot judge
PROXY_MAX_GT_OFFSET = 3  #: GT best offset further than this from 0: audio off the video's clock


def proxy_reference(gt: dict) -> dict:
    """Whether the energy proxy can judge a render on this sequence, from the GT's own proxy.

    It can when the real footage, with the same audio, peaks within ``PROXY_MAX_GT_OFFSET``
    frames of offset 0 (not at the search edge) with r >= ``PROXY_MIN_GT_CORRELATION`` at 0.
    Fluent speech without pauses can fail this on short clips (the 8-s HDTF clip: r <= 0.27 at
    every offset within +-10, the mouth opens in pauses): there only the render/GT mouth-
    opening correlation judges lip sync. A GT peak far from 0 means the audio is not on the
    video's clock. Returns {"meaningful": bool, "reason": str}.
    """
    if not gt or gt.get("best_offset") is None:
        return {"meaningful": False, "reason": "no GT proxy (no face or no audio)"}
    z, b = gt.get("zero_offset_correlation"), gt["best_offset"]
    if gt.get("best_at_edge") or abs(b) > PROXY_MAX_GT_OFFSET:
        return {"meaningful": False, "reason": (
            f"the GT itself peaks at offset {b:+d}{' (search edge)' if gt.get('best_at_edge') else ''}: "
            "the audio may not be on the video's clock, or this speech does not drive the "
            "mouth's energy proxy")}
    if z is None or z < PROXY_MIN_GT_CORRELATION:
        return {"meaningful": False, "reason": (
            f"the GT correlates only {z if z is None else round(z, 3)} with the audio energy "
            f"at offset 0 (< {PROXY_MIN_GT_CORRELATION}): this speech does not drive the proxy")}
    return {"meaningful": True, "reason": f"GT peaks at {b:+d} with r = {z:.3f} at offset 0"}


def speech_frames(energy, rel_threshold: float = 0.35, min_run: int = 4) -> np.ndarray:
    """Boolean [N]: frames with speech, from per-frame log band energy
    (``audio_energy_per_frame``).

    Threshold at ``rel_threshold`` of the way from the quiet level (10th percentile) to the
    loud level (95th percentile); then every run (speech or silence) shorter than ``min_run``
    frames takes the class of its neighbours, so single-frame clicks and stop-consonant gaps
    inside a word do not flip the class. A clip whose loud and quiet levels are within 6 dB of
    each other has no silence to tell apart: all its frames count as speech when its level is
    above the floor of ``audio_energy_per_frame`` by more than 20 dB, else none.
    """
    e = np.asarray(energy, np.float64)
    if e.size == 0:
        return np.zeros(0, bool)
    lo, hi = np.percentile(e, 10), np.percentile(e, 95)
    if hi - lo < np.log(2.0):  # < 6 dB of dynamics: one class
        return np.full(e.shape, bool(np.median(e) > np.log(1e-4) + np.log(10.0)))
    speech = e > lo + rel_threshold * (hi - lo)
    if min_run > 1:
        for _ in range(2):  # short runs are absorbed; a second pass catches merged leftovers
            edges = np.flatnonzero(np.diff(speech.astype(np.int8))) + 1
            starts = np.concatenate([[0], edges])
            ends = np.concatenate([edges, [len(e)]])
            for a, b in zip(starts, ends):
                if b - a < min_run and 0 < a and b < len(e):  # interior runs only
                    speech[a:b] = speech[a - 1]
    return speech


def opening_agreement(render_opening, gt_opening) -> dict:
    """How the rendered mouth opening follows the GT one, over frames valid in both.

    Returns {"correlation": Pearson r of the two per-frame series, "correlation_interval":
    its 90% block-bootstrap interval (``correlation_interval``), "amplitude_ratio":
    std(render) / std(GT), "range_ratio": (p95 - p5) of the render / (p95 - p5) of the GT,
    "render_std", "gt_std", "render_range", "gt_range", "render_mean", "gt_mean",
    "frames_used"}; values are None when fewer than 8 frames are valid in both or a series is
    constant (a frozen render mouth has correlation None, amplitude ratio 0).
    """
    r = np.asarray(render_opening, np.float64)
    g = np.asarray(gt_opening, np.float64)
    n = min(len(r), len(g))
    r, g = r[:n], g[:n]
    ok = np.isfinite(r) & np.isfinite(g)
    r, g = r[ok], g[ok]
    out = {"frames_used": int(ok.sum()), "correlation": None, "correlation_interval": None,
           "amplitude_ratio": None,
           "range_ratio": None, "render_std": None, "gt_std": None, "render_range": None,
           "gt_range": None, "render_mean": None, "gt_mean": None}
    if r.size < 8:
        return out
    rng = lambda x: float(np.percentile(x, 95) - np.percentile(x, 5))  # noqa: E731
    out.update(render_std=float(r.std()), gt_std=float(g.std()), render_range=rng(r),
               gt_range=rng(g), render_mean=float(r.mean()), gt_mean=float(g.mean()))
    if _is_constant(g):
        return out
    out["amplitude_ratio"] = out["render_std"] / out["gt_std"]
    out["range_ratio"] = out["render_range"] / out["gt_range"] if out["gt_range"] > 0 else None
    c = _pearson(r, g)
    out["correlation"] = None if np.isnan(c) else c
    if out["correlation"] is not None:
        out["correlation_interval"] = correlation_interval(r, g)
    return out


def format_interval(interval) -> str:
    """' (90% interval 0.81-0.90)' for a report line, '' without one."""
    if not interval:
        return ""
    return f" (90% interval {interval[0]:.2f} to {interval[1]:.2f})"


def correlation_interval(a, b, level: float = 0.9, block: int = FPS, resamples: int = 1000,
                         seed: int = 0) -> list[float] | None:
    """``level`` interval [low, high] of the Pearson r of ``a`` and ``b`` (finite, equally
    long) by a moving-block bootstrap: whole blocks of ``block`` consecutive frames (one second)
    are drawn with replacement, because a mouth opening lasts several frames and single frames
    are not independent draws. Deterministic (``seed``). It measures how far the r of these
    frames could move on other speech of the same kind (an 8-s clip gives a wide interval),
    not the spread between training runs. None below 8 frames or for a constant series."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b))
    if n < 8 or _is_constant(a[:n]) or _is_constant(b[:n]):
        return None
    block = int(min(block, max(1, n // 4)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(resamples, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    x, y = a[idx], b[idx]
    x -= x.mean(1, keepdims=True)
    y -= y.mean(1, keepdims=True)
    den = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    ok = den > 0
    if not ok.any():
        return None
    r = (x[ok] * y[ok]).sum(1) / den[ok]
    lo, hi = np.quantile(r, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def speech_window(energy, speech, length: int = FPS) -> int | None:
    """Start of the ``length``-frame window that best shows lip motion: among the windows
    with the most speech frames (all of them speech, in a clip with enough speech), the one
    whose energy varies most (syllables, not one held vowel); None when the sequence is
    shorter than ``length``."""
    e = np.asarray(energy, np.float64)
    sp = np.asarray(speech, bool)
    if len(e) < length:
        return None
    counts = np.convolve(sp.astype(int), np.ones(length, int), mode="valid")
    best, best_score = int(np.argmax(counts)), -np.inf
    for s in np.flatnonzero(counts == counts.max()):
        seg = e[s:s + length][sp[s:s + length]]
        score = seg.std() if seg.size else -np.inf
        if score > best_score:
            best, best_score = int(s), score
    return best


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
