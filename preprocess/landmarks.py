"""Step ``landmarks``: MediaPipe Face Landmarker on every frame.

Writes ``landmarks.npy`` [N, 478, 3] (x, y in crop pixels, z = MediaPipe's z x width),
``bs_raw.npy`` [N, 52] blendshapes as detected, ``bs.npy`` the same smoothed over time
(Savitzky-Golay: removes frame-to-frame flicker of eye/brow scores without lagging mouth
motion the way a causal filter would), and ``ori_imgs/<i>.lms``, the 68 iBUG points ("x y"
per line) taken from the 478 through ``IBUG68_FROM_MEDIAPIPE``.

The landmarker runs in VIDEO mode (it tracks between frames, faster and steadier than
per-image detection) over fixed chunks of ``chunk_frames`` frames, each with its own landmarker,
spread over ``workers`` processes; the chunks do not depend on the number of workers, so the
outputs do not either. Frames without a face: runs of up to ``max_gap`` frames are filled by
linear interpolation between the neighbouring detections (or copied from the nearest one at
the clip's ends) and listed in the manifest; a longer run fails with its frame range.

Every detected face is checked for a plausible layout (``implausible_frames``): the eyes above
the mouth and the subject's right eye on the image's left, with the head tilted less than
``max_roll_degrees``. A clip where the camera turned part-way (the decode step's probe frames
only sample it) fails naming the frames; a few odd frames are warned about.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from preprocess.steps import Step, StepContext, StepError, atomic_path


@dataclass
class LandmarksConfig:
    """Face landmarks and blendshapes per frame."""

    max_gap: int = 10  #: longest run of frames without a face that is interpolated
    smooth_window: int = 5  #: Savitzky-Golay window (frames, odd) for bs.npy; 1 disables
    smooth_order: int = 2  #: Savitzky-Golay polynomial order
    min_detection_confidence: float = 0.5  #: MediaPipe face detection threshold
    min_tracking_confidence: float = 0.5  #: MediaPipe landmark tracking threshold
    chunk_frames: int = 250  #: frames per work unit (a fresh landmarker starts each one)
    max_roll_degrees: float = 50.0  #: a face tilted more than this (or upside down) is implausible
    max_implausible_fraction: float = 0.05  #: fail when more detected faces than this are implausible


STEP = "landmarks"

# 478-point MediaPipe face mesh index for each of the 68 iBUG points, in iBUG order. Chosen on
# the canonical mesh so that left/right pairs are mirror indices (e.g. 93<->323, 33<->263).
# "right"/"left" are the subject's (right = image left for a frontal face).
IBUG68_FROM_MEDIAPIPE: tuple[int, ...] = (
    # 0-16 jaw: right ear level (234) down the face oval to the chin (152), up to 454
    234, 93, 132, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 361, 323, 454,
    # 17-21 right brow, outer -> inner (upper brow contour)
    70, 63, 105, 66, 107,
    # 22-26 left brow, inner -> outer
    336, 296, 334, 293, 300,
    # 27-30 nose bridge, between the eyes -> tip
    168, 197, 5, 4,
    # 31-35 nose base, right alar -> subnasale (2) -> left alar
    98, 97, 2, 326, 327,
    # 36-41 right eye: outer corner, upper lid x2, inner corner, lower lid x2
    33, 160, 158, 133, 153, 144,
    # 42-47 left eye: inner corner, upper lid x2, outer corner, lower lid x2
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lips: right corner, upper lip to the left corner (291), lower lip back
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lips: right corner, upper inner, left corner (308), lower inner
    78, 81, 13, 311, 308, 402, 14, 178,
)
assert len(IBUG68_FROM_MEDIAPIPE) == 68


@contextlib.contextmanager
def make_landmarker(weights_dir=None, video_mode: bool = True, blendshapes: bool = True,
                    min_detection_confidence: float = 0.5,
                    min_tracking_confidence: float = 0.5) -> Iterator[object]:
    """A MediaPipe FaceLandmarker (Tasks API) from ``face_landmarker.task`` via the resolver."""
    from mediapipe.tasks.python import BaseOptions, vision

    from nerfhead.weights import resolve

    model = resolve("face_landmarker", weights_dir=weights_dir)
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(model)),
        running_mode=vision.RunningMode.VIDEO if video_mode else vision.RunningMode.IMAGE,
        num_faces=1, output_face_blendshapes=blendshapes,
        min_face_detection_confidence=min_detection_confidence,
        min_face_presence_confidence=min_detection_confidence,
        min_tracking_confidence=min_tracking_confidence)
    lm = vision.FaceLandmarker.create_from_options(opts)
    try:
        yield lm
    finally:
        lm.close()


def fill_gaps(found: np.ndarray, arrays: list[np.ndarray], max_gap: int) -> list[tuple[int, int]]:
    """Interpolate, in place along axis 0, the rows of ``arrays`` where ``found`` is False.

    Returns the filled runs as inclusive ``(first, last)`` frame ranges. Raises ValueError
    naming the first run longer than ``max_gap`` (or when no frame has a face).
    """
    n = len(found)
    good = np.flatnonzero(found)
    if good.size == 0:
        raise ValueError(f"no face in any of the {n} frames")
    runs, i = [], 0
    while i < n:
        if found[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and not found[j + 1]:
            j += 1
        runs.append((i, j))
        i = j + 1
    for a, b in runs:
        if b - a + 1 > max_gap:
            raise ValueError(f"no face in frames {a}-{b} ({b - a + 1} frames > max_gap {max_gap})")
    missing = np.flatnonzero(~found)
    for arr in arrays:
        flat = arr.reshape(n, -1)
        for c in range(flat.shape[1]):  # np.interp holds the end values beyond the first/last face
            flat[missing, c] = np.interp(missing, good, flat[good, c])
    return runs


def implausible_frames(ibug: np.ndarray, max_roll_degrees: float) -> np.ndarray:
    """Bool [N]: frames whose 68 iBUG points [N, 68, 2] are not an upright face: the head
    tilted more than ``max_roll_degrees`` (the eye line against the image's horizontal, the
    eyes-to-mouth direction against its vertical), or the eyes not above the mouth, or the
    subject's right eye not on the image's left (a mirrored or garbled fit)."""
    right_eye, left_eye = ibug[:, 36:42].mean(1), ibug[:, 42:48].mean(1)
    mouth = ibug[:, 48:68].mean(1)
    eye_line = left_eye - right_eye  # points to the image's right for an upright face
    roll = np.degrees(np.arctan2(eye_line[:, 1], eye_line[:, 0]))
    down = mouth - (left_eye + right_eye) / 2  # points down the image for an upright face
    tilt = np.degrees(np.arctan2(down[:, 0], down[:, 1]))
    return (np.abs(roll) > max_roll_degrees) | (np.abs(tilt) > max_roll_degrees)


def _ranges(frames: np.ndarray) -> str:
    runs, start = [], None
    for k, f in enumerate(frames):
        if start is None:
            start = f
        if k + 1 == len(frames) or frames[k + 1] != f + 1:
            runs.append(f"{start}-{f}" if f > start else f"{start}")
            start = None
    return ", ".join(runs[:8]) + (f" and {len(runs) - 8} more" if len(runs) > 8 else "")


def smooth_blendshapes(bs: np.ndarray, window: int, order: int) -> np.ndarray:
    from scipy.signal import savgol_filter

    if window <= 1 or len(bs) < window:
        return bs.copy()
    return np.clip(savgol_filter(bs, window, order, axis=0, mode="interp"), 0.0, 1.0).astype(np.float32)


def detect_frames(data_dir: str, weights_dir, cfg: LandmarksConfig, fps: float, a: int, b: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Landmarks [b-a, 478, 3], blendshapes [b-a, 52], found [b-a] and the blendshape names
    for frames a..b-1, with a landmarker of their own (a work unit of ``run``)."""
    import cv2
    import mediapipe as mp

    img_dir = Path(data_dir) / "ori_imgs"
    lms = np.zeros((b - a, 478, 3), np.float32)
    bs = np.zeros((b - a, 52), np.float32)
    found = np.zeros(b - a, bool)
    names: list[str] = []
    with make_landmarker(weights_dir, True, True, cfg.min_detection_confidence,
                         cfg.min_tracking_confidence) as lm:
        for k, i in enumerate(range(a, b)):
            bgr = cv2.imread(str(img_dir / f"{i}.jpg"))
            if bgr is None:
                raise StepError(STEP, "frame missing or unreadable", img_dir / f"{i}.jpg")
            h, w = bgr.shape[:2]
            image = mp.Image(image_format=mp.ImageFormat.SRGB,
                             data=np.ascontiguousarray(bgr[:, :, ::-1]))
            res = lm.detect_for_video(image, int(round(i * 1000 / fps)))
            if not res.face_landmarks:
                continue
            found[k] = True
            lms[k] = [(p.x * w, p.y * h, p.z * w) for p in res.face_landmarks[0][:478]]
            cats = res.face_blendshapes[0]
            bs[k] = [c.score for c in cats]
            if not names:
                names = [c.category_name for c in cats]
    return lms, bs, found, names


def run(ctx: StepContext) -> dict:
    from preprocess.parallel import chunk_ranges, num_workers, run_chunks
    from preprocess.progress import step_progress

    cfg: LandmarksConfig = ctx.cfg.landmarks
    n = ctx.num_frames()
    fps = float(ctx.manifest["video"].get("fps", 25.0))
    img_dir = ctx.path("ori_imgs")
    with step_progress(STEP, n) as advance:
        parts = run_chunks(detect_frames, chunk_ranges(n, cfg.chunk_frames),
                           (str(ctx.data_dir), getattr(ctx.cfg, "weights_dir", None), cfg, fps),
                           num_workers(ctx.cfg), advance)
    lms = np.concatenate([p[0] for p in parts])
    bs = np.concatenate([p[1] for p in parts])
    found = np.concatenate([p[2] for p in parts])
    bs_names = next((p[3] for p in parts if p[3]), [])
    odd = np.flatnonzero(found & implausible_frames(lms[:, IBUG68_FROM_MEDIAPIPE, :2],
                                                    cfg.max_roll_degrees))
    if len(odd) > cfg.max_implausible_fraction * max(1, found.sum()):
        raise StepError(STEP, f"the face is tilted more than {cfg.max_roll_degrees:g} degrees, "
                              f"upside down or garbled in {len(odd)} of {int(found.sum())} frames "
                              f"(frames {_ranges(odd)} of {ctx.manifest.get('video', {}).get('source', ctx.video)}"
                              f", at {fps:g} fps): did the camera turn during the clip? Cut "
                              "the clip to a part where the face is upright (--start-seconds/"
                              "--max-seconds) or turn it (--rotate)", img_dir)
    if len(odd):
        ctx.log.warning("%s: implausible face layout in frames %s (treated as frames without "
                        "a face)", img_dir, _ranges(odd))
        found[odd] = False
    try:
        gaps = fill_gaps(found, [lms, bs], cfg.max_gap)
    except ValueError as e:
        raise StepError(STEP, str(e), img_dir) from e
    bs_smooth = smooth_blendshapes(bs, cfg.smooth_window, cfg.smooth_order)

    for name, arr in (("landmarks.npy", lms), ("bs_raw.npy", bs), ("bs.npy", bs_smooth)):
        with atomic_path(ctx.path(name)) as tmp:
            np.save(tmp, arr)
    ibug = lms[:, IBUG68_FROM_MEDIAPIPE, :2]
    for i in range(n):
        with atomic_path(img_dir / f"{i}.lms") as tmp:
            np.savetxt(tmp, ibug[i], fmt="%.2f")
    jaw = bs_smooth[:, bs_names.index("jawOpen")] if "jawOpen" in bs_names else None
    return {"frames_with_face": int(found.sum()), "interpolated_ranges": [list(r) for r in gaps],
            "interpolated_frames": int((~found).sum()), "blendshape_names": bs_names,
            "implausible_frames": odd.tolist(),
            "jaw_open_range": None if jaw is None else [float(jaw.min()), float(jaw.max())]}


def check(ctx: StepContext) -> None:
    n = ctx.num_frames()
    for name, shape in (("landmarks.npy", (n, 478, 3)), ("bs.npy", (n, 52)), ("bs_raw.npy", (n, 52))):
        p = ctx.path(name)
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise StepError(STEP, f"unreadable: {e}", p) from e
        if arr.shape != shape or not np.isfinite(arr).all():
            raise StepError(STEP, f"expected finite {shape}, got {arr.shape}", p)
    for i in (0, n - 1):
        p = ctx.path(f"ori_imgs/{i}.lms")
        try:
            pts = np.loadtxt(p)
        except OSError as e:
            raise StepError(STEP, "missing", p) from e
        if pts.shape != (68, 2):
            raise StepError(STEP, f"expected 68 'x y' lines, got {pts.shape}", p)


def settings(cfg) -> dict:
    from nerfhead.config import to_dict

    return {**to_dict(cfg.landmarks), "ibug_map": list(IBUG68_FROM_MEDIAPIPE)}


def load_ibug68(path: str | Path) -> np.ndarray:
    """Read one ``<i>.lms`` file -> [68, 2] float."""
    return np.loadtxt(path).reshape(68, 2)


LANDMARKS = Step(STEP, inputs=("ori_imgs/*.jpg",),
                 outputs=("landmarks.npy", "bs.npy", "bs_raw.npy", "ori_imgs/*.lms"),
                 run=run, check=check, settings=settings,
                 doc="MediaPipe 478 landmarks, 52 smoothed blendshapes, 68-point .lms files")
