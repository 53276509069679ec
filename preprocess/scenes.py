"""Step ``scenes``: shot cuts and frames from another recording session.

Real footage is edited: the shared 300-s GRID clip joins 100 separately recorded sentences
(the head shifts at each join), two of them from another session (darker background, another
shirt, the head closer), and 12 of its frames are decoding garbage. Three things downstream
must know that:

* **Cuts** (``cuts``: the first frame of each new shot). A frame whose change from the previous
  one (mean absolute difference of 32x32 colour thumbnails) is ``cut_ratio`` times the
  clip's typical change around it (median over ``window`` frames) and at least
  ``cut_min_change`` grey levels starts a new shot. ``face_fit`` and ``bundle_adjustment`` do
  not smooth poses across a cut: each shot's poses are fitted on their own.
* **Foreign scenes** (``shots[i].scene == "foreign"``): each shot's signature is the median
  colour (CIELAB) of its background pixels and of its torso pixels (from ``parsing``) over up to
  ``signature_frames`` frames; the clip's reference is the frame-weighted median over shots
  (the main session). A shot whose background or torso differs by more than
  ``background_delta_e`` / ``torso_delta_e`` (CIE76 Delta E) is foreign. The head's scale
  change is recorded beside it. ``background`` leaves foreign frames out of the plate and
  warns; ``drop_foreign: true`` also leaves them out of ``transforms_*.json`` (training).
* ``previews/scenes.png``: the change curve with the cuts, each shot's Delta E, and a
  thumbnail of the main scene beside the first frame of every foreign shot.

Writes ``scenes.json``: {"num_frames", "cuts", "shots": [{"frames": [start, end), "scene",
"background_delta_e", "torso_delta_e", "scale"}], "foreign_frames": [[a, b), ...],
"excluded_frames": [[a, b), ...], "reference": {...}}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.steps import Step, StepContext, StepError, atomic_path

STEP = "scenes"
THUMB = 32  #: thumbnail side for the cut detector
FILE = "scenes.json"


@dataclass
class ScenesConfig:
    """Shot cuts and foreign-session frames (config section ``scenes``)."""

    cut_ratio: float = 5.0  #: a change this many times the local median starts a new shot
    #: ... and at least this large (mean absolute difference of 32x32 thumbnails, grey levels);
    #: on the GRID clip the joins change 4-9 levels, talking frames about 0.6
    cut_min_change: float = 2.0
    window: int = 25  #: frames over which the typical change is taken (odd)
    signature_frames: int = 8  #: frames per shot (spread over it) its colours are measured on
    background_delta_e: float = 12.0  #: background colour difference that makes a shot foreign
    #: (same-session GRID sentences differ by up to 7, the other session by 30)
    torso_delta_e: float = 20.0  #: torso (shirt) colour difference that makes a shot foreign
    drop_foreign: bool = False  #: also leave foreign frames out of transforms_*.json (training)
    chunk_frames: int = 500  #: frames per work unit when spread over workers


def _thumbs(data_dir: str, a: int, b: int) -> np.ndarray:
    """Thumbnails [b - a, 32, 32, 3] float32 (Lab) of frames a..b-1 (JPEG decoded at 1/4)."""
    import cv2

    out = np.zeros((b - a, THUMB, THUMB, 3), np.float32)
    for k, i in enumerate(range(a, b)):
        path = f"{data_dir}/ori_imgs/{i}.jpg"
        img = cv2.imread(path, cv2.IMREAD_REDUCED_COLOR_4)
        if img is None:
            raise StepError(STEP, "frame missing or unreadable", path)
        small = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        out[k] = cv2.cvtColor(small, cv2.COLOR_BGR2LAB)
    return out


def frame_changes(thumbs: np.ndarray) -> np.ndarray:
    """[N] mean absolute change of each frame's thumbnail from the previous one (0 for frame 0)."""
    d = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2, 3))
    return np.r_[0.0, d]


def detect_cuts(change: np.ndarray, cfg: ScenesConfig) -> np.ndarray:
    """First frames of new shots (sorted, > 0) from per-frame changes [N]."""
    from scipy.ndimage import median_filter

    typical = median_filter(change, size=max(3, cfg.window | 1), mode="nearest")
    ratio = change / np.maximum(typical, 1e-6)
    cut = (ratio >= cfg.cut_ratio) & (change >= cfg.cut_min_change)
    cut[0] = False
    return np.flatnonzero(cut)


def _colours(data_dir: str, frames: list[int]) -> np.ndarray:
    """[len(frames), 2, 3] mean Lab of the background and the torso (NaN where absent)."""
    import cv2

    from preprocess.parsing import BG, TORSO, read_regions

    out = np.full((len(frames), 2, 3), np.nan, np.float32)
    for k, i in enumerate(frames):
        img = cv2.imread(f"{data_dir}/ori_imgs/{i}.jpg")
        region = read_regions(Path(f"{data_dir}/parsing/{i}.png"))
        if img is None or region.shape != img.shape[:2]:
            raise StepError(STEP, "frame or parsing missing or of another size",
                            f"{data_dir}/parsing/{i}.png")
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2LAB).astype(np.float32)
        lab[..., 0] *= 100 / 255  # OpenCV 8-bit Lab -> L in 0..100, a/b offset by 128
        lab[..., 1:] -= 128
        for j, label in enumerate((BG, TORSO)):
            m = region == label
            if m.sum() > 50:
                out[k, j] = lab[m].mean(0)
    return out


def shot_ranges(cuts, n: int) -> list[tuple[int, int]]:
    bounds = [0, *[int(c) for c in cuts], n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def classify_shots(shots: list[tuple[int, int]], colours: list[np.ndarray], scales: list[float],
                   cfg: ScenesConfig) -> tuple[list[dict], dict]:
    """Per-shot records and the reference (main-session) signature; see the module docstring."""
    sig = np.array([np.nanmedian(c, axis=0) if np.isfinite(c).any() else np.full((2, 3), np.nan)
                    for c in colours])  # [S, 2, 3]
    length = np.array([b - a for a, b in shots], float)

    def weighted_median(values):
        ok = np.isfinite(values)
        if not ok.any():
            return np.nan
        v, w = values[ok], length[ok]
        order = np.argsort(v)
        cum = np.cumsum(w[order])
        return float(v[order][np.searchsorted(cum, cum[-1] / 2)])

    ref = np.array([[weighted_median(sig[:, j, c]) for c in range(3)] for j in range(2)])
    ref_scale = weighted_median(np.log(np.asarray(scales, float)))
    records = []
    for (a, b), s, sc in zip(shots, sig, scales):
        d_bg, d_torso = (float(np.linalg.norm(s[j] - ref[j])) for j in range(2))
        foreign = (np.isfinite(d_bg) and d_bg > cfg.background_delta_e) or \
                  (np.isfinite(d_torso) and d_torso > cfg.torso_delta_e)
        records.append({"frames": [a, b], "scene": "foreign" if foreign else "main",
                        "background_delta_e": None if not np.isfinite(d_bg) else round(d_bg, 2),
                        "torso_delta_e": None if not np.isfinite(d_torso) else round(d_torso, 2),
                        "scale": round(float(np.exp(np.log(sc) - ref_scale)), 4)})
    reference = {"background_lab": ref[0].round(2).tolist(), "torso_lab": ref[1].round(2).tolist()}
    return records, reference


def _merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def run(ctx: StepContext) -> dict:
    from preprocess.focal import section
    from preprocess.parallel import chunk_ranges, num_workers, run_chunks
    from preprocess.progress import step_progress

    cfg = section(ctx.cfg, STEP, ScenesConfig)
    n = ctx.num_frames()
    lm_path = ctx.path("landmarks.npy")
    try:
        lms = np.load(lm_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise StepError(STEP, f"cannot read landmarks ({e}); run the landmarks step first",
                        lm_path) from e
    with step_progress(STEP, n) as advance:
        parts = run_chunks(_thumbs, chunk_ranges(n, cfg.chunk_frames), (str(ctx.data_dir),),
                           num_workers(ctx.cfg), advance)
    thumbs = np.concatenate(parts)
    change = frame_changes(thumbs)
    cuts = detect_cuts(change, cfg)
    shots = shot_ranges(cuts, n)
    eye = np.linalg.norm(np.asarray(lms[:, 33, :2]) - np.asarray(lms[:, 263, :2]), axis=-1)
    colours, scales = [], []
    for a, b in shots:
        picks = sorted(set(np.linspace(a, b - 1, min(cfg.signature_frames, b - a)).round().astype(int).tolist()))
        colours.append(_colours(str(ctx.data_dir), picks))
        scales.append(float(np.median(eye[a:b])))
    records, reference = classify_shots(shots, colours, scales, cfg)
    foreign = _merge_ranges([r["frames"] for r in records if r["scene"] == "foreign"])
    doc = {"num_frames": n, "cuts": [int(c) for c in cuts], "shots": records,
           "foreign_frames": foreign, "excluded_frames": foreign if cfg.drop_foreign else [],
           "reference": reference}
    with atomic_path(ctx.path(FILE)) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    n_foreign = sum(b - a for a, b in foreign)
    if foreign:
        ctx.log.warning(
            "scenes: %d frames in %d shot(s) do not match the rest of the clip (background or "
            "clothing): %s; they are left out of the background plate%s",
            n_foreign, len(foreign), ", ".join(f"{a}-{b - 1}" for a, b in foreign[:8]),
            " and of training (scenes.drop_foreign)" if cfg.drop_foreign else
            "; --set scenes.drop_foreign=true also leaves them out of training")
    from preprocess.geometry_previews import scenes_preview

    scenes_preview(ctx.data_dir, change, cuts, records, reference)
    return {"shots": len(records), "cuts": len(cuts), "foreign_shots": len(
        [r for r in records if r["scene"] == "foreign"]), "foreign_frames": n_foreign,
            "foreign_ranges": foreign[:20], "dropped_frames": n_foreign if cfg.drop_foreign else 0}


def read_scenes(ctx: StepContext) -> dict | None:
    """``scenes.json`` (checked against the frame count), or None when the step has not run."""
    path = ctx.path(FILE)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StepError(STEP, f"unreadable: {e}", path) from e
    if doc.get("num_frames") != ctx.num_frames():
        raise StepError(STEP, f"made for {doc.get('num_frames')} frames, the clip has "
                              f"{ctx.num_frames()}; rerun the scenes step", path)
    return doc


def read_shots(ctx: StepContext) -> list[dict] | None:
    doc = read_scenes(ctx)
    return None if doc is None else doc["shots"]


def frame_mask(ranges: list, n: int) -> np.ndarray:
    """[n] bool, True inside the [a, b) ``ranges``."""
    m = np.zeros(n, bool)
    for a, b in ranges:
        m[a:b] = True
    return m


def check(ctx: StepContext) -> None:
    doc = read_scenes(ctx)
    if doc is None:
        raise StepError(STEP, "missing", ctx.path(FILE))
    frames = [s["frames"] for s in doc["shots"]]
    if not frames or frames[0][0] != 0 or frames[-1][1] != ctx.num_frames() or any(
            f[1] != g[0] for f, g in zip(frames[:-1], frames[1:])):
        raise StepError(STEP, "shots do not tile the clip", ctx.path(FILE))
    if not ctx.path("previews/scenes.png").is_file():
        raise StepError(STEP, "preview missing", ctx.path("previews/scenes.png"))


SCENES_STEP = Step(
    name=STEP, inputs=("ori_imgs/*.jpg", "parsing/*.png", "landmarks.npy"),
    outputs=(FILE, "previews/scenes.png"), run=run, check=check,
    settings=lambda cfg: {k: v for k, v in __import__("nerfhead.config", fromlist=["to_dict"]).to_dict(
        __import__("preprocess.focal", fromlist=["section"]).section(cfg, STEP, ScenesConfig)).items()
                          if k != "chunk_frames"},
    doc="shot cuts (no pose smoothing across them) and foreign-session frames (kept out of the plate)",
)
