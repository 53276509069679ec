"""Step ``parsing``: head / neck / torso / background labels and a soft face mask per frame.

* **BiSeNet** (facexlib, CelebAMask-HQ classes, as SyncTalk): when facexlib imports and
  ``nerfhead.weights.resolve`` finds ``parsing_bisenet.pth``; ``map_bisenet_labels`` maps it.
* **offline** (what ships with MediaPipe; ``offline_regions``): selfie segmentation = the
  person; the face mesh's oval = the face, its lower edge = the jaw line; pose landmarks =
  the shoulders (the neck runs from the chin towards their midpoint). Person pixels above the
  jaw line are head (hair, ears). Below it, each person pixel is labelled by colour: three
  Gaussian models in YCrCb, fitted on the frame itself (skin: the cheeks and forehead inside
  the face; hair: person pixels above the forehead or beside the face; clothing: person pixels
  near the frame's bottom away from the neck), so skin under the chin down to the collar is
  neck, hair falling over the shoulders stays head, and clothing is torso; the neck is kept
  within ``neck_half_width`` of its axis and connected to the chin. Measured against
  hand-drawn labels (``tests/data/parsing``): see docs/benchmarks.md.

``parser="auto"`` takes BiSeNet when available, else the offline parser; which ran and why
goes into the stats and ``manifest.json["parsing"]``. Writes ``parsing/<i>.png`` (RGB: head
(255,0,0), neck (0,255,0), torso (0,0,255), background white), ``parsing/<i>_face.png`` (uint8
soft face mask: 255 inside the oval, feathered inward so it never spills onto hair) and
``previews/parsing.png``. Frames written after their inputs and the current settings stamp
(``parsing/.settings.json``) are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nerfhead.fileio import write_image
from preprocess.steps import Step, StepContext, StepError, atomic_path, like_frames

STEP = "parsing"
BG, HEAD, NECK, TORSO = 0, 1, 2, 3  #: region ids of a region map
#: RGB colour of each region id in parsing/<i>.png (SyncTalk's convention)
REGION_RGB = np.array([(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)
_REGION_OF_BITS = np.array([BG, HEAD, NECK, BG, TORSO, BG, BG, BG], np.uint8)  # r | g<<1 | b<<2

# CelebAMask-HQ classes as facexlib's BiSeNet numbers them
BISENET_HEAD = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18)
BISENET_NECK = (14, 15)  # neck, necklace
BISENET_TORSO = (16,)  # cloth
BISENET_NOT_FACE = (7, 8, 9, 17, 18)  # ears, earring, hair, hat: head but not face
BISENET_MEAN = (0.485, 0.456, 0.406)
BISENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ParsingConfig:
    """Face parsing (head/neck/torso/background) and the soft face mask."""

    parser: str = "auto"  #: "auto" (BiSeNet if available, else offline), "bisenet" or "offline"
    weights: str | None = None  #: explicit parsing_bisenet.pth (keep that name; None: the resolver)
    face_feather_px: int = 8  #: width of the soft face mask's inward feathered rim (pixels)
    person_threshold: float = 0.5  #: selfie-segmentation probability above which a pixel is person
    neck_half_width: float = 0.35  #: the neck lies within this many face widths of its axis
    #: a pixel takes a colour class only within this Mahalanobis distance of it (else clothing)
    colour_max_distance: float = 3.5
    skin_shadow_l: float = 25.0  #: extra luma spread of the skin model (shadowed neck)
    #: pose landmarks (shoulders) on every k-th frame, held in between (they move slowly)
    pose_stride: int = 5
    use_pose: bool = True  #: MediaPipe pose for the shoulders; False: the neck axis is vertical
    device: str = "cpu"  #: torch device for BiSeNet
    #: frames per work unit when spread over workers (rounded up to a multiple of pose_stride;
    #: pose tracking restarts at each, so it is part of the settings, the worker count is not)
    chunk_frames: int = 250


def map_bisenet_labels(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CelebAMask-HQ class map [H, W] -> (region map [H, W] uint8 of BG/HEAD/NECK/TORSO,
    face mask [H, W] bool = head without hair, hat, ears and earrings)."""
    label_map = np.asarray(label_map)
    region = np.full(label_map.shape, BG, np.uint8)
    region[np.isin(label_map, BISENET_HEAD)] = HEAD
    region[np.isin(label_map, BISENET_NECK)] = NECK
    region[np.isin(label_map, BISENET_TORSO)] = TORSO
    face = (region == HEAD) & ~np.isin(label_map, BISENET_NOT_FACE)
    return region, face


def face_oval_order() -> list[int]:
    """MediaPipe's FACEMESH_FACE_OVAL edge set (consistently directed: 10 -> 338 -> ...
    -> 109 -> 10) chained into one closed polygon, starting at the forehead (10)."""
    import mediapipe as mp

    successor, order = dict(mp.solutions.face_mesh.FACEMESH_FACE_OVAL), [10]
    while successor[order[-1]] != order[0] and len(order) <= len(successor):
        order.append(successor[order[-1]])
    return order


#: MediaPipe face-mesh vertices of the features left out of the skin sample
_EYES_BROWS = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
               263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466,
               46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 276, 282, 283, 285, 293, 295, 296,
               300, 334, 336)
_LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
_MIN_SAMPLES = 150  #: pixels a colour model needs


class _Gaussian:
    """A colour class: mean and (regularised) covariance of YCrCb samples [M, 3]; ``extra_l``
    widens it in luma (8-bit units) only: skin in the shadow under the jaw keeps its hue but not
    its brightness."""

    def __init__(self, samples: np.ndarray, extra_l: float = 0.0):
        self.mean = samples.mean(0)
        cov = np.cov(samples.T) + np.eye(3) * 4.0  # 2 units of slack: JPEG, small samples
        cov[0, 0] += extra_l ** 2
        self.inv = np.linalg.inv(cov)

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = x - self.mean
        return np.sqrt(np.maximum(((d @ self.inv) * d).sum(1), 0))


def _hull_mask(shape, pts: np.ndarray, grow: float = 1.0) -> np.ndarray:
    import cv2

    centre = pts.mean(0)
    hull = cv2.convexHull(((pts - centre) * grow + centre).astype(np.int32))
    return cv2.fillConvexPoly(np.zeros(shape, np.uint8), hull, 1).astype(bool)


def jaw_line(face: np.ndarray) -> np.ndarray:
    """[W] row of the jaw line per column: the face mask's lowest row, held flat beyond the
    face's sides (at the height of its outermost columns: ear level)."""
    h, w = face.shape
    cols = np.flatnonzero(face.any(0))
    low = h - 1 - np.argmax(face[::-1], axis=0)
    out = np.empty(w, np.float64)
    out[cols] = low[cols]
    out[: cols[0]] = low[cols[0]]
    out[cols[-1] + 1:] = low[cols[-1]]
    inside = np.arange(cols[0], cols[-1] + 1)  # fill any column gap inside the span
    gaps = inside[~face[:, inside].any(0)]
    if gaps.size:
        out[gaps] = np.interp(gaps, cols, low[cols])
    return out


def offline_regions(person: np.ndarray, lms: np.ndarray, oval: list[int], cfg: ParsingConfig,
                    rgb: np.ndarray | None = None,
                    shoulders: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Region map and hard face mask from a person mask [H, W] bool, 478 landmarks, the frame
    ``rgb`` (for the colour models; None: everything below the jaw is torso except the neck
    band) and the two shoulder points [2, 2] (pixels; None: a vertical neck axis)."""
    import cv2

    h, w = person.shape
    poly = np.round(lms[oval, :2]).astype(np.int32)
    face = cv2.fillPoly(np.zeros((h, w), np.uint8), [poly], 1).astype(bool)
    face_w = float(poly[:, 0].max() - poly[:, 0].min())
    rows = np.arange(h)[:, None].astype(np.float64)
    above = rows < jaw_line(face)[None]  # above the jaw line (and its flat extension)
    head = face | (person & above)
    below = person & ~head
    # the neck axis: from the chin towards the shoulders' midpoint
    chin = lms[152, :2].astype(np.float64)
    if shoulders is not None:
        base = np.asarray(shoulders, np.float64).mean(0)
        if base[1] <= chin[1] + 1:
            base = chin + [0.0, face_w]
    else:
        base = chin + [0.0, face_w]
    t = np.clip((rows - chin[1]) / (base[1] - chin[1]), 0, None)
    axis_x = chin[0] + t * (base[0] - chin[0])  # [H, 1]
    band = np.abs(np.arange(w)[None] - axis_x) <= cfg.neck_half_width * face_w
    core = np.abs(np.arange(w)[None] - axis_x) <= 0.6 * cfg.neck_half_width * face_w
    if rgb is None:
        neck = below & band & (rows <= chin[1] + face_w)
        region = np.where(head, HEAD, np.where(neck, NECK, np.where(person, TORSO, BG)))
        return region.astype(np.uint8), face
    # luma + chroma (YCrCb: as good as CIELAB here and 30x cheaper to convert)
    col = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    pts = lms[:, :2]
    inner = cv2.erode(face.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    skin_px = inner & ~_hull_mask((h, w), pts[list(_EYES_BROWS)], 1.2) & \
        ~_hull_mask((h, w), pts[list(_LIPS)], 1.3)
    top = poly[:, 1].min()
    hair_px = person & ~cv2.dilate(face.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) \
        & above & (rows < top + 0.25 * (chin[1] - top))  # above the forehead / beside the temples
    skin = _Gaussian(col[skin_px], cfg.skin_shadow_l) if skin_px.sum() >= _MIN_SAMPLES else None
    hair = _Gaussian(col[hair_px]) if hair_px.sum() >= _MIN_SAMPLES else None
    # clothing: the frame's bottom rows away from the neck, less what looks like skin or hair
    # (long hair hangs there too)
    cloth_px = below & (rows >= h - max(8, h // 16)) & ~band
    for m in (skin, hair):
        if m is not None and cloth_px.any():
            cloth_px[cloth_px] = m.distance(col[cloth_px]) > cfg.colour_max_distance
    cloth = _Gaussian(col[cloth_px]) if cloth_px.sum() >= _MIN_SAMPLES else None
    label = np.full((h, w), TORSO, np.uint8)  # far from every model: clothing
    models = [(m, k) for m, k in ((skin, NECK), (hair, HEAD), (cloth, TORSO)) if m is not None]
    if models:
        x = col[below]
        dist = np.stack([m.distance(x) for m, _ in models], -1)
        under_jaw = core[below]  # hair does not hang in front of the neck: that is shadow
        dist[under_jaw] = np.where(np.asarray([k for _, k in models]) == HEAD, np.inf,
                                   dist[under_jaw])
        best = dist.argmin(-1)
        near = dist[np.arange(len(x)), best] <= cfg.colour_max_distance
        label[below] = np.where(near, np.asarray([k for _, k in models], np.uint8)[best], TORSO)
    # neck: skin-coloured, inside the band, one piece hanging from the chin
    neck = below & band & (label == NECK)
    neck = cv2.morphologyEx(neck.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    neck = _touching(neck, head, 3)
    # beside the jaw (outside the columns of its two angles): hair hanging down and ears, joined
    # to the head; under the jaw itself there is only neck or clothing
    cols = np.arange(w)[None]
    beside = (cols < pts[58, 0]) | (cols > pts[288, 0])
    side = below & beside & ((label == HEAD) | ((label == NECK) & ~band))
    head = head | _touching(side, head, 3)
    neck &= ~head
    region = np.where(head, HEAD, np.where(neck, NECK, np.where(person, TORSO, BG)))
    return region.astype(np.uint8), face


def _touching(mask: np.ndarray, target: np.ndarray, reach: int) -> np.ndarray:
    """The connected components of ``mask`` that come within ``reach`` pixels of ``target``."""
    import cv2

    n, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    near = cv2.dilate(target.astype(np.uint8), np.ones((2 * reach + 1,) * 2, np.uint8)).astype(bool)
    lut = np.zeros(n, bool)
    lut[comp[near]] = True
    lut[0] = False
    return lut[comp]


def soft_face(face: np.ndarray, feather_px: int) -> np.ndarray:
    """uint8 mask: 255 deep inside ``face``, blurred towards its edge, 0 outside (no spill)."""
    import cv2

    m = face.astype(np.uint8) * 255
    if feather_px <= 0:
        return m
    k = np.ones((feather_px, feather_px), np.uint8)
    blurred = cv2.GaussianBlur(cv2.erode(m, k), (0, 0), feather_px / 2)
    return np.where(face, blurred, 0).astype(np.uint8)


def bisenet_status(cfg: ParsingConfig, weights_dir=None) -> tuple[Path | None, str]:
    """(weights path, "") when BiSeNet can run, else (None, why not)."""
    try:
        import facexlib.parsing  # noqa: F401  (needs torchvision)
    except Exception as e:  # noqa: BLE001  a broken torchvision raises RuntimeError etc.
        return None, f"facexlib does not import ({type(e).__name__}: {e})"
    from nerfhead.weights import WeightsUnavailable, resolve

    try:
        return resolve("parsing_bisenet", path=cfg.weights, weights_dir=weights_dir, download=False), ""
    except WeightsUnavailable as e:
        return None, str(e)


class BiSeNetParser:
    """facexlib's BiSeNet on a 512x512 RGB crop -> CelebAMask-HQ labels -> SyncTalk regions."""

    def __init__(self, weights: Path, device: str):
        import torch
        from facexlib.parsing import init_parsing_model

        self.torch, self.device = torch, device
        self.net = init_parsing_model(model_name="bisenet", device=device,
                                      model_rootpath=str(weights.parent))
        self.net.eval()

    def __call__(self, rgb: np.ndarray, lms: np.ndarray, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        x = (x - np.array(BISENET_MEAN, np.float32)) / np.array(BISENET_STD, np.float32)
        t = self.torch.from_numpy(x.transpose(2, 0, 1)[None].copy()).to(self.device)
        with self.torch.no_grad():
            labels = self.net(t)[0].argmax(1)[0].cpu().numpy().astype(np.uint8)
        if (h, w) != (512, 512):
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        return map_bisenet_labels(labels)


class OfflineParser:
    """Selfie segmentation (person) + face mesh + pose shoulders + colour; see
    ``offline_regions``. Frames must come in order (pose tracks between its frames)."""

    def __init__(self, cfg: ParsingConfig):
        import mediapipe as mp

        self.cfg, self.oval = cfg, face_oval_order()
        self.seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self.pose = (mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1)
                     if cfg.use_pose else None)
        self.shoulders: np.ndarray | None = None

    def update_pose(self, rgb: np.ndarray, index: int) -> None:
        """Shoulders from the pose landmarks on every ``pose_stride``-th frame (kept between)."""
        if self.pose is not None and index % max(1, self.cfg.pose_stride) == 0:
            res = self.pose.process(rgb)
            if res.pose_landmarks is not None:  # 11, 12: left and right shoulder
                h, w = rgb.shape[:2]
                lm = res.pose_landmarks.landmark
                self.shoulders = np.array([[lm[k].x * w, lm[k].y * h] for k in (11, 12)])

    def __call__(self, rgb: np.ndarray, lms: np.ndarray, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.ascontiguousarray(rgb)
        self.update_pose(rgb, index)
        prob = self.seg.process(rgb).segmentation_mask
        return offline_regions(prob > self.cfg.person_threshold, lms, self.oval, self.cfg, rgb,
                               self.shoulders)

    def close(self) -> None:  # frees MediaPipe's graphs
        self.seg.close()
        if self.pose is not None:
            self.pose.close()


def choose_parser(cfg: ParsingConfig, weights_dir=None) -> tuple[str, str, Path | None]:
    """(parser name, why, BiSeNet weights) for the configured ``parser``."""
    if cfg.parser not in ("auto", "bisenet", "offline"):
        raise StepError(STEP, f"parser must be auto, bisenet or offline, got {cfg.parser!r}")
    if cfg.parser == "offline":  # BiSeNet is not even probed
        return "offline", "requested", None
    weights, why_not = bisenet_status(cfg, weights_dir)
    if weights is not None:
        return "bisenet", f"{cfg.parser}: facexlib and {weights} available", weights
    if cfg.parser == "bisenet":
        raise StepError(STEP, f"parser 'bisenet' requested but unavailable: {why_not}")
    return "offline", f"auto: BiSeNet unavailable ({why_not})", None


def read_regions(path: Path) -> np.ndarray:
    """parsing/<i>.png -> region map (BG/HEAD/NECK/TORSO). Channels are read by their high
    bit (the PNG holds exact 0/255); colours other than the four count as BG."""
    import cv2

    bgr = cv2.imread(str(path))
    if bgr is None:
        raise StepError(STEP, "missing or unreadable", path)
    bits = (bgr[:, :, 2] >> 7) | ((bgr[:, :, 1] >> 7) << 1) | ((bgr[:, :, 0] >> 7) << 2)
    return _REGION_OF_BITS[bits]  # one table lookup per pixel (fast enough for check())


def overlay(bgr: np.ndarray, region: np.ndarray, face: np.ndarray, size: int = 256) -> np.ndarray:
    """Preview tile: region colours blended over the frame, the face mask's outline in yellow."""
    import cv2

    colours = REGION_RGB[region][:, :, ::-1]
    out = np.where((region != BG)[..., None], cv2.addWeighted(bgr, 0.6, colours, 0.4, 0), bgr)
    contours, _ = cv2.findContours((face > 127).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 255, 255), 2)
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)


def parse_frames(data_dir: str, cfg: ParsingConfig, name: str, weights: Path | None,
                 newest_input: int, a: int, b: int) -> int:
    """Parse frames a..b-1 (a work unit of ``run``, in order: pose tracks along them); returns
    how many were reused. A frame is reused when its outputs were written after its image, the
    landmarks and the settings stamp."""
    import cv2

    d = Path(data_dir)
    lms_all = np.load(d / "landmarks.npy", mmap_mode="r")
    todo = []
    for i in range(a, b):
        src, lab, fm = d / "ori_imgs" / f"{i}.jpg", d / "parsing" / f"{i}.png", d / "parsing" / f"{i}_face.png"
        todo.append(not (lab.is_file() and fm.is_file() and src.is_file() and min(
            lab.stat().st_mtime_ns, fm.stat().st_mtime_ns) >= max(src.stat().st_mtime_ns, newest_input)))
    if not any(todo):
        return b - a
    parser = BiSeNetParser(weights, cfg.device) if name == "bisenet" else OfflineParser(cfg)
    stride = max(1, cfg.pose_stride)
    try:
        for i, needed in zip(range(a, b), todo):
            if not needed and (name == "bisenet" or i % stride):
                continue
            src = d / "ori_imgs" / f"{i}.jpg"
            bgr = cv2.imread(str(src))
            if bgr is None:
                raise StepError(STEP, "frame missing or unreadable", src)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if not needed:  # a reused frame that carries a pose update: keep the pose in step
                parser.update_pose(rgb, i)
                continue
            region, face = parser(rgb, np.asarray(lms_all[i]), i)
            with atomic_path(d / "parsing" / f"{i}.png") as tmp:
                write_image(tmp, REGION_RGB[region][:, :, ::-1])
            with atomic_path(d / "parsing" / f"{i}_face.png") as tmp:
                write_image(tmp, soft_face(face, cfg.face_feather_px))
    finally:
        getattr(parser, "close", lambda: None)()  # the offline parser holds MediaPipe graphs
    return len(todo) - sum(todo)


def run(ctx: StepContext) -> dict:
    from preprocess.focal import section
    from preprocess.parallel import chunk_ranges, num_workers, run_chunks
    from preprocess.progress import step_progress

    cfg = section(ctx.cfg, STEP, ParsingConfig)
    n = ctx.num_frames()
    lm_path = ctx.path("landmarks.npy")
    lms_all = np.load(lm_path, mmap_mode="r") if lm_path.is_file() else None
    if lms_all is None or lms_all.shape[:2] != (n, 478):
        raise StepError(STEP, f"expected [{n}, 478, 3] landmarks (run the landmarks step first)",
                        lm_path)
    name, why, weights = choose_parser(cfg, getattr(ctx.cfg, "weights_dir", None))
    out_dir = ctx.path("parsing")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = settings_stamp(out_dir, {"parser": name, **asdict(cfg)})
    newest_input = max(lm_path.stat().st_mtime_ns, stamp)
    stride = max(1, cfg.pose_stride)
    chunk = -(-max(1, cfg.chunk_frames) // stride) * stride  # pose frames independent of workers
    with step_progress(STEP, n) as advance:
        reused = sum(run_chunks(parse_frames, chunk_ranges(n, chunk),
                                (str(ctx.data_dir), cfg, name, weights, newest_input),
                                num_workers(ctx.cfg), advance))
    write_preview(ctx, n)
    return {"parser": name, "parser_reason": why, "frames": n, "reused_frames": reused,
            "manifest": {"parsing": {"parser": name, "reason": why}}}


def write_preview(ctx: StepContext, n: int) -> None:
    import cv2

    tiles = [overlay(cv2.imread(str(ctx.path(f"ori_imgs/{i}.jpg"))),
                     read_regions(ctx.path(f"parsing/{i}.png")),
                     cv2.imread(str(ctx.path(f"parsing/{i}_face.png")), cv2.IMREAD_GRAYSCALE))
             for i in sorted(set(np.linspace(0, n - 1, 4).round().astype(int).tolist()))]
    with atomic_path(ctx.path("previews/parsing.png")) as tmp:
        write_image(tmp, np.concatenate(tiles, axis=1))


def settings_stamp(folder: Path, settings: dict) -> int:
    """mtime (ns) of ``folder/.settings.json``, rewritten only when ``settings`` changed: output
    frames older than it were made with other settings and must not be reused."""
    path, text = folder / ".settings.json", json.dumps(settings, sort_keys=True)
    if not (path.is_file() and path.read_text() == text):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return path.stat().st_mtime_ns


def sampled_frames(n: int, k: int = 24) -> list[int]:
    """Frames whose outputs a check decodes in full (all are checked for presence): ``k``
    spread over the clip, first and last included. Decoding every frame's PNGs took about a
    minute on a 5-minute clip, each time a step ran or was considered for skipping."""
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def check(ctx: StepContext) -> None:
    import cv2

    from preprocess.background import crop_size

    n, size = ctx.num_frames(), crop_size(ctx, STEP)
    for i in range(n):
        for rel in (f"parsing/{i}.png", f"parsing/{i}_face.png"):
            p = ctx.path(rel)
            if not p.is_file() or p.stat().st_size == 0:
                raise StepError(STEP, "missing or empty", p)
    for i in sampled_frames(n):
        region = read_regions(ctx.path(f"parsing/{i}.png"))
        fp = ctx.path(f"parsing/{i}_face.png")
        face = cv2.imread(str(fp), cv2.IMREAD_GRAYSCALE)
        if face is None or region.shape != size or face.shape != size:
            raise StepError(STEP, f"missing, unreadable or not {size}", fp)
        head, inner = region == HEAD, face > 127
        if not head.any() or not inner.any():
            raise StepError(STEP, "empty head or face mask", fp)
        if (inner & ~head).sum() > 0.01 * inner.sum():  # 1%: slack for a feathered rim
            raise StepError(STEP, "face mask is not inside the head region", fp)
    if not ctx.path("previews/parsing.png").is_file():
        raise StepError(STEP, "preview missing", ctx.path("previews/parsing.png"))


PARSING_STEP = Step(
    name=STEP, inputs=("ori_imgs/*.jpg", "landmarks.npy"),
    outputs=("parsing", "previews/parsing.png"), run=run, check=check,
    settings=lambda cfg: __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        __import__("preprocess.focal", fromlist=["section"]).section(cfg, STEP, ParsingConfig)),
    doc="head/neck/torso/background labels + soft face mask (BiSeNet, or offline: selfie "
        "segmentation, face mesh, pose shoulders, colour)",
    space=like_frames(0.5),  # two PNGs of flat colours / a smooth mask per frame
)
