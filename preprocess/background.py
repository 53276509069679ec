"""Step ``background``: the static background plate and the training targets built on it.

* ``bc.jpg``: on ``num_samples`` frames spread over the clip, each background pixel's
  distance to the nearest non-background pixel (``cv2.distanceTransform``); every pixel takes
  its colour from the sampled frame where it lies farthest from the person (SyncTalk's rule:
  far from the silhouette there is no hair fringe, motion blur or shadow). Pixels that were
  never background, or never farther than ``min_distance_px``, are filled by ``cv2.inpaint``
  (Telea); the filled fraction goes into the stats.
* ``gt_imgs/<i>.jpg``: the frame with its background pixels replaced by the plate, so the
  NeRF's target background is exactly the static plate it composites over.
* ``torso_imgs/<i>.png``: RGBA, the frame's colour with alpha 255 on neck and torso, 0 on head
  and background. The neck continues under the head: when the jaw moves up at test time it
  uncovers neck that the torso field never saw (a hole). So in every column of the neck, the
  topmost neck pixel's colour is copied upward over any gap to the chin line (the lowest head
  pixel of that column) and ``neck_fill_px`` rows on into the head, alpha 255 there. Columns
  with no head within ``neck_fill_px`` rows above the neck are left as they are.

The plate's samples are spread over the frames that belong to the clip's main scene:
``scenes.json`` (step ``scenes``) lists shots from another session (another background, another
shirt) and garbage frames, and frames where the landmarks step found no face are left out too;
a plate that took pixels from them carried a grey wedge into every GT image.

Frame outputs written after their inputs, ``bc.jpg`` and the settings stamp
(``gt_imgs/.settings.json``) are kept, so an interrupted run resumes; an unchanged plate is not
rewritten. GT and torso images are written in chunks spread over ``workers`` processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from preprocess.parsing import BG, HEAD, NECK, TORSO, read_regions, settings_stamp
from nerfhead.fileio import write_image
from preprocess.steps import Step, StepContext, StepError, atomic_path, like_frames

STEP = "background"


@dataclass
class BackgroundConfig:
    """Background plate (bc.jpg), gt_imgs and torso_imgs."""

    num_samples: int = 40  #: frames, spread evenly over the clip, the plate is built from
    #: a pixel needs this distance from the person in some sampled frame, else it is inpainted
    min_distance_px: float = 5.0
    inpaint_radius: int = 5  #: cv2.inpaint neighbourhood radius (pixels)
    neck_fill_px: int = 32  #: most rows the neck colour is extended upward under the head
    jpeg_quality: int = 95  #: quality of bc.jpg and gt_imgs/*.jpg
    chunk_frames: int = 250  #: frames per work unit when spread over workers


def crop_size(ctx: StepContext, step: str) -> tuple[int, int]:
    """(H, W) of the decoded crops, from ``ori_imgs/0.jpg``."""
    import cv2

    img = cv2.imread(str(ctx.path("ori_imgs/0.jpg")))
    if img is None:
        raise StepError(step, "missing or unreadable", ctx.path("ori_imgs/0.jpg"))
    return img.shape[:2]


def _read_frame(ctx: StepContext, i: int) -> np.ndarray:
    import cv2

    path = ctx.path(f"ori_imgs/{i}.jpg")
    img = cv2.imread(str(path))
    if img is None:
        raise StepError(STEP, "frame missing or unreadable", path)
    return img


def _read_regions(ctx: StepContext, i: int, shape) -> np.ndarray:
    path = ctx.path(f"parsing/{i}.png")
    if not path.is_file():
        raise StepError(STEP, "parsing missing; run the parsing step first", path)
    region = read_regions(path)
    if region.shape != tuple(shape[:2]):
        raise StepError(STEP, f"parsing size {region.shape} != frame size {shape[:2]}", path)
    return region


def background_plate(frames: list[np.ndarray], bg_masks: list[np.ndarray], min_distance_px: float,
                     inpaint_radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(plate [H, W, 3] uint8, filled [H, W] bool) from frames and their background masks."""
    import cv2

    best = np.zeros(bg_masks[0].shape, np.float32)
    plate = np.zeros_like(frames[0])
    for img, bg in zip(frames, bg_masks):
        # distance of every background pixel to the nearest person pixel (0 on the person)
        dist = cv2.distanceTransform(bg.astype(np.uint8), cv2.DIST_L2, 5)
        better = dist > best
        plate[better] = img[better]
        best[better] = dist[better]
    filled = best < max(min_distance_px, 1e-6)
    if filled.all():
        raise StepError(STEP, "no pixel was background in any sampled frame")
    if filled.any():
        plate = cv2.inpaint(plate, filled.astype(np.uint8), inpaint_radius, cv2.INPAINT_TELEA)
    return plate, filled


def torso_rgba(bgr: np.ndarray, region: np.ndarray, neck_fill_px: int) -> np.ndarray:
    """BGRA torso image (see the module docstring for the neck fill under the head)."""
    body = (region == NECK) | (region == TORSO)
    out = np.zeros((*region.shape, 4), np.uint8)
    out[body, :3] = bgr[body]
    out[body, 3] = 255
    neck = region == NECK
    if neck_fill_px <= 0 or not neck.any():
        return out
    h = region.shape[0]
    rows = np.arange(h)[:, None]
    has_neck = neck.any(0)
    top = np.argmax(neck, axis=0)  # topmost neck pixel of each column
    head_above = (region == HEAD) & (rows < top[None])
    has_head = head_above.any(0)
    chin = h - 1 - np.argmax(head_above[::-1], axis=0)  # the head's lowest pixel above the neck
    # columns with head right above their neck: the neck hides under the chin there
    fill = has_neck & has_head & (top - 1 - chin <= neck_fill_px)
    y0 = np.maximum(chin + 1 - neck_fill_px, 0)  # gap to the chin, then neck_fill_px rows under it
    mask = fill[None] & (rows >= y0[None]) & (rows < top[None])
    ys, xs = np.nonzero(mask)
    out[ys, xs, :3] = bgr[top[xs], xs]
    out[ys, xs, 3] = 255
    return out


def plate_samples(ctx: StepContext, n: int, num: int) -> tuple[list[int], int]:
    """Up to ``num`` frames spread over the clip's main scene (not foreign shots, not frames
    without a face); also how many frames were left out of the choice."""
    from preprocess.scenes import frame_mask, read_scenes

    excluded = np.zeros(n, bool)
    doc = read_scenes(ctx)
    if doc is not None:
        excluded |= frame_mask(doc["foreign_frames"], n)
    ranges = ctx.manifest.get("steps", {}).get("landmarks", {}).get("stats", {}).get(
        "interpolated_ranges", [])
    excluded |= frame_mask([[a, b + 1] for a, b in ranges], n)
    ok = np.flatnonzero(~excluded)
    if len(ok) == 0:  # nothing left: better a plate from every frame than none
        ok = np.arange(n)
    pick = np.linspace(0, len(ok) - 1, min(num, len(ok))).round().astype(int)
    return sorted(set(ok[pick].tolist())), int(excluded.sum())


def write_frames(data_dir: str, neck_fill_px: int, jpeg_quality: int, newest_common: int,
                 a: int, b: int) -> int:
    """GT and torso images of frames a..b-1 (a work unit of ``run``); returns frames reused."""
    import cv2

    from preprocess.parsing import read_regions

    d = Path(data_dir)
    plate = cv2.imread(str(d / "bc.jpg"))
    if plate is None:
        raise StepError(STEP, "missing or unreadable", d / "bc.jpg")
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    reused = 0
    for i in range(a, b):
        outs = (d / "gt_imgs" / f"{i}.jpg", d / "torso_imgs" / f"{i}.png")
        ins = (d / "ori_imgs" / f"{i}.jpg", d / "parsing" / f"{i}.png")
        if all(p.is_file() for p in outs + ins) and min(p.stat().st_mtime_ns for p in outs) >= max(
                newest_common, *(p.stat().st_mtime_ns for p in ins)):
            reused += 1  # written after its inputs, the plate and the settings: resume past it
            continue
        img = cv2.imread(str(ins[0]))
        if img is None:
            raise StepError(STEP, "frame missing or unreadable", ins[0])
        if not ins[1].is_file():
            raise StepError(STEP, "parsing missing; run the parsing step first", ins[1])
        region = read_regions(ins[1])
        if region.shape != img.shape[:2]:
            raise StepError(STEP, f"parsing size {region.shape} != frame size {img.shape[:2]}", ins[1])
        gt = img.copy()
        cv2.copyTo(plate, (region == BG).astype(np.uint8), gt)
        with atomic_path(outs[0]) as tmp:
            write_image(tmp, gt, jpeg)
        with atomic_path(outs[1]) as tmp:
            write_image(tmp, torso_rgba(img, region, neck_fill_px))
    return reused


def run(ctx: StepContext) -> dict:
    import cv2

    from preprocess.focal import section
    from preprocess.parallel import chunk_ranges, num_workers, run_chunks
    from preprocess.progress import step_progress

    cfg = section(ctx.cfg, STEP, BackgroundConfig)
    n = ctx.num_frames()
    samples, excluded = plate_samples(ctx, n, cfg.num_samples)
    if excluded:
        ctx.log.warning("background: %d frames (another scene, or no face) are left out of the "
                        "plate; see scenes.json and previews/scenes.png", excluded)
    frames, masks = [], []
    for i in samples:
        img = _read_frame(ctx, i)
        frames.append(img)
        masks.append(_read_regions(ctx, i, img.shape) == BG)
    plate, filled = background_plate(frames, masks, cfg.min_distance_px, cfg.inpaint_radius)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)]
    encoded = cv2.imencode(".jpg", plate, jpeg)[1].tobytes()
    bc_path = ctx.path("bc.jpg")
    if not (bc_path.is_file() and bc_path.read_bytes() == encoded):  # unchanged plate keeps its mtime
        with atomic_path(bc_path) as tmp:
            tmp.write_bytes(encoded)
    gt_dir, torso_dir = ctx.path("gt_imgs"), ctx.path("torso_imgs")
    gt_dir.mkdir(parents=True, exist_ok=True)
    torso_dir.mkdir(parents=True, exist_ok=True)
    stamp = {k: v for k, v in asdict(cfg).items() if k != "chunk_frames"}
    newest_common = max(bc_path.stat().st_mtime_ns, settings_stamp(gt_dir, stamp))
    # workers read the plate from bc.jpg: GT images hold exactly the pixels the trainer decodes
    with step_progress(STEP, n) as advance:
        reused = sum(run_chunks(write_frames, chunk_ranges(n, cfg.chunk_frames),
                                (str(ctx.data_dir), cfg.neck_fill_px, cfg.jpeg_quality, newest_common),
                                num_workers(ctx.cfg), advance))
    return {"frames": n, "reused_frames": reused, "plate_samples": len(samples),
            "plate_excluded_frames": excluded, "plate_filled_fraction": float(filled.mean())}


def check(ctx: StepContext) -> None:
    """Every output present; the plate and a sample of frames decoded and sized
    (``parsing.sampled_frames``: decoding all 15,000 images of a 5-minute clip took a minute)."""
    import cv2

    from preprocess.parsing import sampled_frames

    size = crop_size(ctx, STEP)
    n = ctx.num_frames()
    for i in range(n):
        for rel in (f"gt_imgs/{i}.jpg", f"torso_imgs/{i}.png"):
            p = ctx.path(rel)
            if not p.is_file() or p.stat().st_size == 0:
                raise StepError(STEP, "missing or empty", p)
    for i in [-1] + sampled_frames(n):
        files = [("bc.jpg", 3)] if i < 0 else [(f"gt_imgs/{i}.jpg", 3), (f"torso_imgs/{i}.png", 4)]
        for rel, channels in files:
            img = cv2.imread(str(ctx.path(rel)), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise StepError(STEP, "missing or unreadable", ctx.path(rel))
            if img.shape != (*size, channels):
                raise StepError(STEP, f"expected {(*size, channels)}, got {img.shape}", ctx.path(rel))


BACKGROUND_STEP = Step(
    name=STEP,
    inputs=("ori_imgs/*.jpg", "parsing/*.png", "scenes.json"),
    outputs=("bc.jpg", "gt_imgs", "torso_imgs"),
    run=run,
    check=check,
    settings=lambda cfg: {k: v for k, v in __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        __import__("preprocess.focal", fromlist=["section"]).section(cfg, STEP, BackgroundConfig)).items()
                          if k != "chunk_frames"},
    doc="background plate bc.jpg (farthest-from-person rule + Telea inpaint), gt_imgs, torso_imgs",
    space=like_frames(2.0),  # a JPEG like the frame and an RGBA PNG of the torso per frame
)
