"""Head keypoint tracking (step ``tracking``): dense flow from a reference frame, stable points.

1. Reference = the most frontal frame of the face fit (smallest pitch/yaw).
2. Candidates: a grid of pixels inside the rigid head region of the reference frame: the parsing
   face mask (``parsing/<ref>_face.png``) or, without parsing, the face oval from the 68
   landmarks (brows raised to cover the forehead); minus the eyes and the lower face (jaw, lips,
   cheeks below the nostrils: they move with speech); eroded away from the mask border.
3. OpenCV DIS optical flow (``flow_scale`` resolution) from the reference to every frame,
   walking outwards from the reference so each flow starts from its neighbour's (large slow head
   motions stay in reach), plus the backward flow for a forward-backward consistency check.
   The frames are cut into fixed chunks of ``chunk_frames`` (each walk restarts at the chunk's
   end nearest the reference), spread over ``workers`` processes: the same tracks for any
   number of workers.
4. A temporal Laplacian filter on each candidate's trajectory, ``x[t-1] - 2 x[t] + x[t+1]``,
   scores stability: rigid points move smoothly with the head; points on skin that stretches,
   eyelids, texture-less spots the flow slides over, jitter. The lowest mean scores win, with
   non-maximum suppression (``min_distance_px``) so they spread over the head.
5. A frame whose selected points fail the forward-backward check too often is dropped
   (recorded in ``track_valid.npy`` and the step's stats; see ``frames_kept``).

Pixel coordinates are continuous (pixel (i, j) covers [i, i+1), centre i + 0.5), as the
landmarks. Outputs: ``keypoints.txt`` ("# reference_frame R" then "x y" per keypoint in the
reference frame), ``track_xys.npy`` [N, K, 2] float32, ``track_valid.npy`` [N, K] bool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from preprocess.steps import Step, StepContext, StepError, atomic_path

EYES = (tuple(range(36, 42)), tuple(range(42, 48)))
LOWER_FACE = tuple(range(3, 14)) + (31, 32, 33, 34, 35) + tuple(range(48, 60))


@dataclass
class TrackingConfig:
    """Settings of the ``tracking`` step (config section ``tracking``)."""

    flow_scale: float = 0.5  #: flow resolution / crop resolution (DIS: ~12 ms at 256, 37 at 512)
    dis_preset: str = "medium"  #: OpenCV DIS preset: ultrafast, fast, medium
    num_keypoints: int = 96  #: keypoints to keep
    min_distance_px: float = 12.0  #: non-maximum suppression radius (crop pixels)
    candidate_stride_px: float = 4.0  #: candidate grid spacing (crop pixels)
    max_candidates: int = 4000  #: the stride grows until the candidates fit (memory: N*M*8 bytes)
    erode_px: int = 6  #: keep candidates this far inside the rigid mask
    eye_margin: float = 0.35  #: eye regions grown by this fraction of the eye width
    fb_threshold_px: float = 1.5  #: forward-backward error (crop pixels) counted as a failure
    max_candidate_failures: float = 0.1  #: candidates failing the check in more frames are out
    #: ... unless too few candidates pass: then the most reliable ones, up to this failure rate
    max_candidate_failures_relaxed: float = 0.5
    max_bad_fraction: float = 0.5  #: a frame with more failing keypoints than this is dropped
    #: ... except under the relaxed cap: then a frame is dropped with fewer passing keypoints
    min_frame_keypoints: int = 8
    use_parsing: bool = True  #: use parsing/<ref>_face.png when it exists
    chunk_frames: int = 250  #: frames per work unit (the neighbour-seeded walk restarts at each)


def reference_frame(euler: np.ndarray) -> int:
    """Index of the most frontal frame: smallest pitch/yaw magnitude."""
    return int(np.argmin(np.linalg.norm(np.asarray(euler)[:, :2], axis=-1)))


def rigid_region_mask(lms: np.ndarray, size: tuple[int, int], cfg: TrackingConfig,
                      face_mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean [H, W] mask of the rigid head region of one frame (see the module docstring)."""
    h, w = size
    lms = np.asarray(lms, np.float32)
    if face_mask is not None:
        mask = (face_mask > 127).astype(np.uint8)
    else:  # face oval: contour + brows raised by 60% of the brow-to-nose-tip height
        brows = lms[17:27].copy()
        brows[:, 1] -= 0.6 * (lms[30, 1] - lms[17:27, 1].mean())
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.r_[lms[0:17], brows]).astype(np.int32), 1)
    for eye in EYES:
        pts = lms[list(eye)]
        centre = pts.mean(0)
        grown = centre + (pts - centre) * (1 + 2 * cfg.eye_margin)
        cv2.fillConvexPoly(mask, cv2.convexHull(grown).astype(np.int32), 0)
    cv2.fillConvexPoly(mask, cv2.convexHull(lms[list(LOWER_FACE)]).astype(np.int32), 0)
    if cfg.erode_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * cfg.erode_px + 1,) * 2)
        mask = cv2.erode(mask, kernel)
    return mask.astype(bool)


def candidate_points(mask: np.ndarray, cfg: TrackingConfig) -> np.ndarray:
    """Grid of candidate pixels (flow-resolution integer indices [M, 2], x y) inside ``mask``."""
    s = cfg.flow_scale
    fh, fw = int(round(mask.shape[0] * s)), int(round(mask.shape[1] * s))
    small = cv2.resize(mask.astype(np.uint8), (fw, fh), interpolation=cv2.INTER_NEAREST).astype(bool)
    step = max(1, int(round(cfg.candidate_stride_px * s)))
    while True:
        ys, xs = np.mgrid[0:fh:step, 0:fw:step]
        keep = small[ys, xs]
        if keep.sum() <= cfg.max_candidates:
            return np.stack([xs[keep], ys[keep]], -1).astype(np.float32)
        step += 1


def laplacian_scores(traj: np.ndarray, valid: np.ndarray | None = None,
                     relative: bool = True) -> np.ndarray:
    """Mean norm of the temporal Laplacian of each trajectory ``traj`` [N, M, 2] -> [M].

    ``relative`` subtracts, per frame, the median Laplacian over all candidates: the whole
    head's acceleration is shared by rigid points, what remains is a point's own jitter.
    ``valid`` [N, M] masks samples; a Laplacian needs its three frames valid. Candidates with
    no valid triple score +inf."""
    lap = traj[2:] - 2 * traj[1:-1] + traj[:-2]  # [N-2, M, 2]
    ok = np.ones(lap.shape[:2], bool) if valid is None else valid[2:] & valid[1:-1] & valid[:-2]
    if relative:  # remove the head's common acceleration (e.g. a cut in the clip hits all points)
        common = np.nanmedian(np.where(ok[..., None], lap, np.nan), axis=1, keepdims=True)
        lap = lap - np.nan_to_num(common)
    lap = np.linalg.norm(lap, axis=-1)
    count = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(ok, lap, 0).sum(0) / count
    return np.where(count > 0, score, np.inf)


def select_stable_points(points: np.ndarray, scores: np.ndarray, num: int,
                         min_distance: float) -> np.ndarray:
    """Indices of up to ``num`` points with the lowest scores, no two closer than
    ``min_distance`` (greedy non-maximum suppression)."""
    chosen: list[int] = []
    for i in np.argsort(scores, kind="stable"):
        if not np.isfinite(scores[i]) or len(chosen) >= num:
            break
        if chosen and np.min(np.linalg.norm(points[chosen] - points[i], axis=-1)) < min_distance:
            continue
        chosen.append(int(i))
    return np.asarray(chosen, np.int64)


def _sample(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples [M, C] of ``field`` [h, w, C] at flow-res positions ``pts`` [M, 2]."""
    mx = pts[None, :, 0].astype(np.float32)
    my = pts[None, :, 1].astype(np.float32)
    return cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]


def _dis(cfg: TrackingConfig):
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if cfg.dis_preset not in presets:
        raise ValueError(f"dis_preset must be one of {sorted(presets)}, got {cfg.dis_preset!r}")
    return cv2.DISOpticalFlow_create(presets[cfg.dis_preset])


def track_walk(read_gray, ref_img: np.ndarray, frames, cand: np.ndarray, cfg: TrackingConfig,
               progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Flow from ``ref_img`` to each of ``frames`` in the given order, each seeded by the
    previous one's. Returns positions [len(frames), M, 2] and forward-backward errors [len, M]
    (flow-resolution pixels)."""
    dis = _dis(cfg)
    pos = np.zeros((len(frames), len(cand), 2), np.float32)
    fb = np.zeros((len(frames), len(cand)), np.float32)
    fwd_prev = None  # the neighbour's flow seeds the next one
    for k, i in enumerate(frames):
        img = read_gray(i)
        fwd = dis.calc(ref_img, img, None if fwd_prev is None else fwd_prev.copy())
        # the backward flow starts from the forward one reversed: unseeded, DIS lost heads
        # turned ~20 degrees away from the reference and the check then failed good tracks
        bwd = dis.calc(img, ref_img, -fwd)
        moved = cand + _sample(fwd, cand)
        pos[k] = moved
        fb[k] = np.linalg.norm(_sample(fwd, cand) + _sample(bwd, moved), axis=-1)
        fwd_prev = fwd
        if progress is not None:
            progress(1)
    return pos, fb


def walk_order(a: int, b: int, ref: int) -> list[list[int]]:
    """The walks that cover frames a..b-1, each leaving from the end nearest the reference
    (the reference itself is not tracked)."""
    if b <= ref:
        return [list(range(b - 1, a - 1, -1))]
    if a > ref:
        return [list(range(a, b))]
    return [w for w in (list(range(ref + 1, b)), list(range(ref - 1, a - 1, -1))) if w]


class _Frames:
    """Grey frames at flow resolution, read from a dataset folder (picklable for workers)."""

    def __init__(self, data_dir: str, size: tuple[int, int], scale: float):
        self.data_dir, self.size, self.scale = data_dir, size, scale

    def __call__(self, i: int) -> np.ndarray:
        path = f"{self.data_dir}/ori_imgs/{i}.jpg"
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise StepError("tracking", "cannot read frame", path)
        return cv2.resize(img, self.size, interpolation=cv2.INTER_AREA) if self.scale != 1 else img


def track_chunk(frames: _Frames, ref: int, cand: np.ndarray, cfg: TrackingConfig, a: int, b: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Positions [b-a, M, 2] and forward-backward errors [b-a, M] of frames a..b-1 (a work unit
    of ``track_candidates``); the reference frame's row holds the candidates themselves."""
    ref_img = frames(ref)
    pos = np.zeros((b - a, len(cand), 2), np.float32)
    fb = np.zeros((b - a, len(cand)), np.float32)
    if a <= ref < b:
        pos[ref - a] = cand
    for walk in walk_order(a, b, ref):
        p, f = track_walk(frames, ref_img, walk, cand, cfg)
        pos[np.asarray(walk) - a], fb[np.asarray(walk) - a] = p, f
    return pos, fb


def track_candidates(read_gray, num_frames: int, ref: int, cand: np.ndarray, cfg: TrackingConfig,
                     progress=None, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Track flow-res candidate pixels ``cand`` [M, 2] from frame ``ref`` through all frames.

    ``read_gray(i)`` returns frame i as a uint8 image at flow resolution; with ``workers`` > 1
    it must be picklable (``_Frames``). Returns positions [N, M, 2] (flow-res pixel indices)
    and forward-backward errors [N, M] (flow-res pixels). ``progress(frames)`` as chunks end.
    """
    from preprocess.parallel import chunk_ranges, run_chunks

    _dis(cfg)  # a bad preset fails here, not in a worker
    parts = run_chunks(track_chunk, chunk_ranges(num_frames, cfg.chunk_frames),
                       (read_gray, ref, cand, cfg), workers, progress)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def frames_kept(valid: np.ndarray, cap: float, cfg: TrackingConfig) -> np.ndarray:
    """Bool [N]: frames whose keypoint samples ``valid`` [N, K] (forward-backward check passed)
    are enough to keep. Under the normal candidate cap a frame goes when more than
    ``max_bad_fraction`` of its keypoints fail. Under the relaxed cap the chosen points are
    known to fail on the frames where the head turned far, so that share rule would drop exactly
    the frames with the most head motion (23 of 75 on 3 s of the HDTF clip at 256 px); such a
    frame keeps its passing points (bundle adjustment uses only those) while at least
    ``min_frame_keypoints`` remain."""
    if cap > cfg.max_candidate_failures:
        return valid.sum(1) >= cfg.min_frame_keypoints
    return (~valid).mean(1) <= cfg.max_bad_fraction


def run_tracking(ctx: StepContext, cfg: TrackingConfig) -> dict:
    """The whole step on a dataset folder; returns stats. Writes the three outputs."""
    from preprocess.focal import image_size, read_lms

    n = ctx.num_frames()
    tp_path = ctx.path("track_params.pt")
    if not tp_path.is_file():
        raise StepError("tracking", "missing; run the face_fit step first", tp_path)
    euler = torch.load(tp_path, weights_only=True)["euler"].numpy()
    if len(euler) != n:
        raise StepError("tracking", f"has {len(euler)} frames, the manifest {n}", tp_path)
    ref = reference_frame(euler)
    height, width = image_size(ctx, "tracking")
    lms = read_lms(ctx, "tracking")
    face_path = ctx.path(f"parsing/{ref}_face.png")
    face = None
    if cfg.use_parsing and face_path.is_file():
        face = cv2.imread(str(face_path), cv2.IMREAD_GRAYSCALE)
        if face is None or face.shape != (height, width):
            raise StepError("tracking", f"unreadable or not {width}x{height}", face_path)
    mask = rigid_region_mask(lms[ref], (height, width), cfg, face)
    cand = candidate_points(mask, cfg)
    if len(cand) < cfg.num_keypoints:
        raise StepError("tracking", f"only {len(cand)} candidate pixels in the rigid head region "
                        f"of frame {ref} (need {cfg.num_keypoints}); is the face too small? The "
                        f"frames are {width} px: preprocess into a new --out with a larger "
                        "--crop-size (default 512), or use a video where the face is larger",
                        ctx.path(f"ori_imgs/{ref}.jpg"))
    from preprocess.parallel import num_workers
    from preprocess.progress import step_progress

    s = cfg.flow_scale
    read_gray = _Frames(str(ctx.data_dir), (int(round(width * s)), int(round(height * s))), s)
    t0 = time.time()
    with step_progress("tracking", n) as advance:
        pos, fb = track_candidates(read_gray, n, ref, cand, cfg, advance, num_workers(ctx.cfg))
    flow_seconds = time.time() - t0
    xy = (pos + 0.5) / s  # flow-res pixel index -> continuous crop pixels
    fb_px = fb / s
    ok = fb_px < cfg.fb_threshold_px
    scores = laplacian_scores(xy, ok)
    fail = (~ok).mean(0)
    cap = cfg.max_candidate_failures
    enough = 4 * cfg.num_keypoints  # room for the spacing rule to choose from
    if (fail <= cap).sum() < enough:  # much head motion: the flow from one reference fails on
        # the turned frames for every candidate; take the most reliable ones, up to a limit
        # (bundle adjustment only uses the samples that pass the check)
        cap = float(min(cfg.max_candidate_failures_relaxed,
                        np.sort(fail)[min(len(fail), enough) - 1]))
        ctx.log.warning("tracking: only %d of %d candidate points track reliably (forward-"
                        "backward check) in %.0f%% of the frames, fewer than the %d to choose "
                        "keypoints from: the head moves far from the reference frame. Taking "
                        "points that track in %.0f%% of the frames instead; bundle adjustment "
                        "uses each only where it tracks. Look at previews/keypoints.png and "
                        "previews/pose_curves.png", int((fail <= cfg.max_candidate_failures).sum()),
                        len(fail), 100 * (1 - cfg.max_candidate_failures), enough, 100 * (1 - cap))
    scores[fail > cap] = np.inf
    sel = select_stable_points(xy[ref], scores, cfg.num_keypoints, cfg.min_distance_px)
    if len(sel) < 8:
        raise StepError("tracking", f"only {len(sel)} stable keypoints found (need >= 8); "
                        "the flow fails on this clip", ctx.path("ori_imgs"))
    valid = ok[:, sel]
    frame_ok = frames_kept(valid, cap, cfg)
    valid &= frame_ok[:, None]
    tracks = xy[:, sel].astype(np.float32)
    with atomic_path(ctx.path("keypoints.txt")) as tmp:
        np.savetxt(tmp, tracks[ref], fmt="%.3f", header=f"reference_frame {ref}")
    with atomic_path(ctx.path("track_xys.npy")) as tmp:
        np.save(tmp, tracks)
    with atomic_path(ctx.path("track_valid.npy")) as tmp:
        np.save(tmp, valid)
    from preprocess.geometry_previews import keypoints_preview

    keypoints_preview(ctx.data_dir, ref, tracks, valid, mask)
    dropped = np.flatnonzero(~frame_ok)
    finite = np.isfinite(scores)
    return {"reference_frame": ref, "num_candidates": int(len(cand)), "num_keypoints": int(len(sel)),
            "laplacian_selected_px": float(np.median(scores[sel])),  # median, as the candidates
            "laplacian_candidates_px": float(np.median(scores[finite])) if finite.any() else None,
            "dropped_frames": int(len(dropped)), "dropped_frame_ids": dropped[:50].tolist(),
            "fb_fail_fraction": float(1 - valid[frame_ok].mean()) if frame_ok.any() else 1.0,
            "flow_seconds": round(flow_seconds, 2), "candidate_failure_cap": cap,
            "mask_source": "parsing" if face is not None else "landmarks"}


def read_keypoints(path) -> tuple[int, np.ndarray]:
    """(reference frame, keypoints [K, 2]) from ``keypoints.txt``."""
    with open(path) as f:
        first = f.readline()
    if not first.startswith("# reference_frame"):
        raise StepError("tracking", "missing '# reference_frame R' header", path)
    return int(first.split()[-1]), np.loadtxt(path, dtype=np.float32, ndmin=2)


def _run(ctx: StepContext) -> dict:
    from preprocess.focal import section

    return run_tracking(ctx, section(ctx.cfg, "tracking", TrackingConfig))


def _check(ctx: StepContext) -> None:
    n = ctx.num_frames()
    ref, kp = read_keypoints(ctx.path("keypoints.txt"))
    tracks = np.load(ctx.path("track_xys.npy"))
    valid = np.load(ctx.path("track_valid.npy"))
    if tracks.shape != (n, len(kp), 2) or valid.shape != (n, len(kp)) or not np.isfinite(tracks).all():
        raise StepError("tracking", f"expected [{n}, {len(kp)}, 2] finite tracks and a matching "
                        f"mask, got {tracks.shape} / {valid.shape}", ctx.path("track_xys.npy"))
    if not np.allclose(tracks[ref], kp, atol=1e-2):
        raise StepError("tracking", "tracks do not start at the keypoints", ctx.path("track_xys.npy"))


TRACKING_STEP = Step(
    name="tracking",
    inputs=("ori_imgs", "track_params.pt", "parsing"),
    outputs=("keypoints.txt", "track_xys.npy", "track_valid.npy", "previews/keypoints.png"),
    run=_run,
    check=_check,
    settings=lambda cfg: __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        __import__("preprocess.focal", fromlist=["section"]).section(cfg, "tracking", TrackingConfig)),
    doc="stable head keypoints: DIS flow from a frontal reference + temporal Laplacian filter",
)
