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

Frame outputs written after their inputs, ``bc.jpg`` and the settings stamp
(``gt_imgs/.settings.json``) are kept, so an interrupted run resumes; an unchanged plate is not
rewritten.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    head = region == HEAD
    for x in np.unique(np.nonzero(neck)[1]):
        top = int(np.argmax(neck[:, x]))  # topmost neck pixel of this column
        above = np.flatnonzero(head[:top, x])
        if above.size == 0 or top - 1 - above[-1] > neck_fill_px:
            continue  # no head right above this neck column: nothing hides the neck here
        chin = above[-1]  # the head's lowest pixel above the neck: the chin line
        y0 = max(chin + 1 - neck_fill_px, 0)  # gap up to the chin, then neck_fill_px rows under it
        out[y0:top, x, :3] = bgr[top, x]
        out[y0:top, x, 3] = 255
    return out


def run(ctx: StepContext) -> dict:
    import cv2
    from tqdm import tqdm

    from preprocess.focal import section

    cfg = section(ctx.cfg, STEP, BackgroundConfig)
    n = ctx.num_frames()
    samples = sorted(set(np.linspace(0, n - 1, min(cfg.num_samples, n)).round().astype(int).tolist()))
    frames, masks = [], []
    for i in tqdm(samples, desc="background plate", unit="frame", leave=False):
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
    # the plate as the trainer will decode it, so gt_imgs hold exactly those pixels
    plate = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    gt_dir, torso_dir = ctx.path("gt_imgs"), ctx.path("torso_imgs")
    gt_dir.mkdir(parents=True, exist_ok=True)
    torso_dir.mkdir(parents=True, exist_ok=True)
    newest_common = max(bc_path.stat().st_mtime_ns, settings_stamp(gt_dir, asdict(cfg)))
    reused = 0
    for i in tqdm(range(n), desc="gt/torso images", unit="frame", leave=False):
        outs = (gt_dir / f"{i}.jpg", torso_dir / f"{i}.png")
        ins = (ctx.path(f"ori_imgs/{i}.jpg"), ctx.path(f"parsing/{i}.png"))
        if all(p.is_file() for p in outs + ins) and min(p.stat().st_mtime_ns for p in outs) >= max(
                newest_common, *(p.stat().st_mtime_ns for p in ins)):
            reused += 1  # written after its inputs, the plate and the settings: resume past it
            continue
        img = _read_frame(ctx, i)
        region = _read_regions(ctx, i, img.shape)
        gt = np.where((region == BG)[..., None], plate, img)
        with atomic_path(gt_dir / f"{i}.jpg") as tmp:
            write_image(tmp, gt, jpeg)
        with atomic_path(torso_dir / f"{i}.png") as tmp:
            write_image(tmp, torso_rgba(img, region, cfg.neck_fill_px))
    return {"frames": n, "reused_frames": reused, "plate_samples": len(samples),
            "plate_filled_fraction": float(filled.mean())}


def check(ctx: StepContext) -> None:
    import cv2

    size = crop_size(ctx, STEP)
    for i in range(-1, ctx.num_frames()):
        files = [("bc.jpg", 3)] if i < 0 else [(f"gt_imgs/{i}.jpg", 3), (f"torso_imgs/{i}.png", 4)]
        for rel, channels in files:
            img = cv2.imread(str(ctx.path(rel)), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise StepError(STEP, "missing or unreadable", ctx.path(rel))
            if img.shape != (*size, channels):
                raise StepError(STEP, f"expected {(*size, channels)}, got {img.shape}", ctx.path(rel))


BACKGROUND_STEP = Step(
    name=STEP,
    inputs=("ori_imgs/*.jpg", "parsing/*.png"),
    outputs=("bc.jpg", "gt_imgs", "torso_imgs"),
    run=run,
    check=check,
    settings=lambda cfg: __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        __import__("preprocess.focal", fromlist=["section"]).section(cfg, STEP, BackgroundConfig)),
    doc="background plate bc.jpg (farthest-from-person rule + Telea inpaint), gt_imgs, torso_imgs",
    space=like_frames(2.0),  # a JPEG like the frame and an RGBA PNG of the torso per frame
)
