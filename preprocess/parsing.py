"""Step ``parsing``: head / neck / torso / background labels and a soft face mask per frame.

* **BiSeNet** (facexlib, CelebAMask-HQ classes, as SyncTalk): when facexlib imports and
  ``nerfhead.weights.resolve`` finds ``parsing_bisenet.pth``; ``map_bisenet_labels`` maps it.
* **offline**: MediaPipe selfie segmentation = person; the landmarks' face oval = face (no
  hair); head = face + person above the chin within the widened face width (hair, ears);
  neck = person in a box under the chin; torso = the rest of the person.

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
    hair_widen: float = 0.15  #: head = person above the chin within the face width widened by this
    neck_height: float = 0.35  #: neck box height below the chin, as a fraction of face height
    neck_width: float = 0.6  #: neck box width centred on the chin, as a fraction of face width
    device: str = "cpu"  #: torch device for BiSeNet


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


def offline_regions(person: np.ndarray, lms: np.ndarray, oval: list[int],
                    cfg: ParsingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Region map and hard face mask from a person mask [H, W] bool and 478 landmarks."""
    import cv2

    h, w = person.shape
    poly = np.round(lms[oval, :2]).astype(np.int32)
    face = cv2.fillPoly(np.zeros((h, w), np.uint8), [poly], 1).astype(bool)
    x0, x1 = poly[:, 0].min(), poly[:, 0].max()
    face_w, face_h = x1 - x0, poly[:, 1].max() - poly[:, 1].min()
    chin_x, chin_y = lms[152, 0], poly[:, 1].max()  # 152: chin tip; the oval's lowest point
    ys, xs = np.mgrid[0:h, 0:w]
    pad = cfg.hair_widen * face_w
    head = face | (person & (ys < chin_y) & (xs >= x0 - pad) & (xs <= x1 + pad))
    neck = (person & ~head & (ys >= chin_y) & (ys <= chin_y + cfg.neck_height * face_h)
            & (np.abs(xs - chin_x) <= cfg.neck_width * face_w / 2))
    region = np.where(head, HEAD, np.where(neck, NECK, np.where(person, TORSO, BG)))
    return region.astype(np.uint8), face


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

    def __call__(self, rgb: np.ndarray, lms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    """Selfie segmentation (person) + landmark face oval; see ``offline_regions``."""

    def __init__(self, cfg: ParsingConfig):
        import mediapipe as mp

        self.cfg, self.oval = cfg, face_oval_order()
        self.seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def __call__(self, rgb: np.ndarray, lms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prob = self.seg.process(np.ascontiguousarray(rgb)).segmentation_mask
        return offline_regions(prob > self.cfg.person_threshold, lms, self.oval, self.cfg)

    def close(self) -> None:  # frees MediaPipe's graph
        self.seg.close()


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


def run(ctx: StepContext) -> dict:
    import cv2
    from tqdm import tqdm

    from preprocess.focal import section

    cfg = section(ctx.cfg, STEP, ParsingConfig)
    n = ctx.num_frames()
    lm_path = ctx.path("landmarks.npy")
    lms_all = np.load(lm_path) if lm_path.is_file() else None
    if lms_all is None or lms_all.shape[:2] != (n, 478):
        raise StepError(STEP, f"expected [{n}, 478, 3] landmarks (run the landmarks step first)",
                        lm_path)
    name, why, weights = choose_parser(cfg, getattr(ctx.cfg, "weights_dir", None))
    parser = BiSeNetParser(weights, cfg.device) if name == "bisenet" else OfflineParser(cfg)
    out_dir = ctx.path("parsing")
    out_dir.mkdir(parents=True, exist_ok=True)
    # a frame is reused when written after its image, the landmarks and the settings stamp
    stamp = settings_stamp(out_dir, {"parser": name, **asdict(cfg)})
    newest_input = max(lm_path.stat().st_mtime_ns, stamp)
    reused = 0
    try:
        for i in tqdm(range(n), desc="parsing", unit="frame", leave=False):
            src, lab, fm = ctx.path(f"ori_imgs/{i}.jpg"), out_dir / f"{i}.png", out_dir / f"{i}_face.png"
            if lab.is_file() and fm.is_file() and src.is_file() and min(
                    lab.stat().st_mtime_ns, fm.stat().st_mtime_ns
            ) >= max(src.stat().st_mtime_ns, newest_input):
                reused += 1
                continue
            bgr = cv2.imread(str(src))
            if bgr is None:
                raise StepError(STEP, "frame missing or unreadable", src)
            region, face = parser(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), lms_all[i])
            with atomic_path(lab) as tmp:
                write_image(tmp, REGION_RGB[region][:, :, ::-1])
            with atomic_path(fm) as tmp:
                write_image(tmp, soft_face(face, cfg.face_feather_px))
    finally:
        getattr(parser, "close", lambda: None)()  # the offline parser holds a MediaPipe graph
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


def check(ctx: StepContext) -> None:
    import cv2

    from preprocess.background import crop_size

    n, size = ctx.num_frames(), crop_size(ctx, STEP)
    for i in range(n):
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
    doc="head/neck/torso/background labels + soft face mask (BiSeNet or selfie seg + face oval)",
    space=like_frames(0.5),  # two PNGs of flat colours / a smooth mask per frame
)
