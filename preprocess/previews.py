"""Step ``previews``: pictures a person checks before training.

``previews/landmarks_masks.png``: a contact sheet of frames spread over the clip with the 68
iBUG landmarks drawn (jaw, brows, nose, eyes, lips in different colours) and, when the parsing
step has run, its head/neck/torso labels tinted over the image and the soft face mask's outline
in yellow. Geometry previews (keypoints, pose curves) are written by the geometry steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.steps import Step, StepContext, StepError, atomic_path

STEP = "previews"
SHEET = "previews/landmarks_masks.png"

# iBUG-68 groups and their BGR colours
GROUPS = ((range(0, 17), (255, 200, 0)), (range(17, 27), (0, 200, 255)),
          (range(27, 36), (255, 0, 255)), (range(36, 48), (0, 255, 0)),
          (range(48, 68), (0, 0, 255)))


@dataclass
class PreviewsConfig:
    """Contact sheet of landmarks and masks."""

    num_frames: int = 8  #: frames on the sheet, spread evenly over the clip
    columns: int = 4  #: tiles per row
    tile_size: int = 320  #: tile side in pixels
    mask_alpha: float = 0.35  #: opacity of the parsing colours over the image


def draw_tile(img: np.ndarray, lms: np.ndarray | None, parsing: np.ndarray | None,
              face: np.ndarray | None, label: str, cfg: PreviewsConfig) -> np.ndarray:
    """One annotated tile (BGR uint8, ``tile_size`` square) of frame ``img``."""
    import cv2

    out = img.copy()
    if parsing is not None:  # parsing PNG read as BGR; white = background stays untouched
        labelled = np.any(parsing != 255, axis=2)
        blend = cv2.addWeighted(out, 1 - cfg.mask_alpha, parsing, cfg.mask_alpha, 0)
        out[labelled] = blend[labelled]
    if face is not None:
        contours, _ = cv2.findContours((face > 127).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 255), max(1, img.shape[0] // 256))
    scale = cfg.tile_size / img.shape[0]
    out = cv2.resize(out, (cfg.tile_size, cfg.tile_size), interpolation=cv2.INTER_AREA)
    if lms is not None:
        for idx, colour in GROUPS:
            for x, y in lms[list(idx)] * scale:
                cv2.circle(out, (int(round(x)), int(round(y))), 2, colour, -1, cv2.LINE_AA)
    cv2.putText(out, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(out, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def contact_sheet(data_dir: Path, num_frames: int, cfg: PreviewsConfig) -> tuple[np.ndarray, bool]:
    """The sheet image (BGR) and whether parsing masks were drawn on it."""
    import cv2

    picks = np.unique(np.linspace(0, num_frames - 1, min(cfg.num_frames, num_frames)).round().astype(int))
    tiles, with_parsing = [], False
    for i in picks:
        img = cv2.imread(str(data_dir / "ori_imgs" / f"{i}.jpg"))
        if img is None:
            raise StepError(STEP, "frame missing", data_dir / "ori_imgs" / f"{i}.jpg")
        lms_path = data_dir / "ori_imgs" / f"{i}.lms"
        lms = np.loadtxt(lms_path).reshape(68, 2) if lms_path.exists() else None
        parsing = cv2.imread(str(data_dir / "parsing" / f"{i}.png"), cv2.IMREAD_COLOR)
        face = cv2.imread(str(data_dir / "parsing" / f"{i}_face.png"), cv2.IMREAD_GRAYSCALE)
        if parsing is not None and parsing.shape[:2] != img.shape[:2]:
            parsing = None
        if face is not None and face.shape[:2] != img.shape[:2]:
            face = None
        with_parsing |= parsing is not None
        tiles.append(draw_tile(img, lms, parsing, face, f"frame {i}", cfg))
    cols = min(cfg.columns, len(tiles))
    rows = -(-len(tiles) // cols)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * cols - len(tiles))
    grid = [np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)]
    return np.concatenate(grid, axis=0), with_parsing


def run(ctx: StepContext) -> dict:
    import cv2

    cfg: PreviewsConfig = ctx.cfg.previews
    sheet, with_parsing = contact_sheet(ctx.data_dir, ctx.num_frames(), cfg)
    with atomic_path(ctx.path(SHEET)) as tmp:
        if not cv2.imwrite(str(tmp), sheet):
            raise StepError(STEP, "could not write the contact sheet", ctx.path(SHEET))
    if not with_parsing:
        ctx.log.warning("previews: no parsing masks found; the sheet shows landmarks only")
    return {"files": [SHEET], "parsing_drawn": with_parsing}


def check(ctx: StepContext) -> None:
    import cv2

    p = ctx.path(SHEET)
    if cv2.imread(str(p)) is None:
        raise StepError(STEP, "missing or unreadable", p)


def settings(cfg) -> dict:
    from nerfhead.config import to_dict

    return to_dict(cfg.previews)


PREVIEWS = Step(STEP, inputs=("ori_imgs/*.jpg", "ori_imgs/*.lms", "parsing"), outputs=(SHEET,),
                run=run, check=check, settings=settings,
                doc="contact sheet of landmarks and parsing masks")
