"""Agreement (IoU per class) of the offline parser with the hand-drawn labels in
tests/data/parsing (see labels.json there).

    python3 scripts/parsing_iou.py [--weights DIR] [--set parsing.FIELD=VALUE ...]

Runs MediaPipe's Face Landmarker (image mode) on each labelled frame, then the parser, and
prints head / neck / torso / background IoU per frame and their mean. It measures the parser of
the code tree it sits in; put another tree first on PYTHONPATH to measure that tree's parser
(the "before" figures in docs/benchmarks.md came from commit 97e570b that way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "parsing"
# this tree's preprocess, not the machine-wide editable install's (PYTHONPATH still comes first)
sys.path.append(str(ROOT))
CLASSES = ("head", "neck", "torso", "background")


def truth_regions(polys: dict, shape) -> np.ndarray:
    """Region map (parsing.BG/HEAD/NECK/TORSO) from the label polygons of one frame."""
    import cv2

    from preprocess.parsing import BG, HEAD, NECK, TORSO

    region = np.full(shape, BG, np.uint8)
    for cls, rid in (("head", HEAD), ("neck", NECK), ("torso", TORSO)):
        for p in polys[cls]:
            cv2.fillPoly(region, [np.asarray(p, np.int32)], int(rid))
    return region


def ious(pred: np.ndarray, truth: np.ndarray) -> dict:
    from preprocess.parsing import BG, HEAD, NECK, TORSO

    out = {}
    for cls, rid in zip(CLASSES, (HEAD, NECK, TORSO, BG)):
        a, b = pred == rid, truth == rid
        union = (a | b).sum()
        out[cls] = float((a & b).sum() / union) if union else 1.0
    return out


def landmarks478(rgb: np.ndarray, weights_dir) -> np.ndarray:
    import mediapipe as mp

    from preprocess.landmarks import make_landmarker

    h, w = rgb.shape[:2]
    with make_landmarker(weights_dir, video_mode=False, blendshapes=False) as lm:
        res = lm.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    if not res.face_landmarks:
        raise RuntimeError("no face found")
    return np.array([(p.x * w, p.y * h, p.z * w) for p in res.face_landmarks[0][:478]], np.float32)


def evaluate(cfg, weights_dir=None) -> dict:
    """{frame: {class: IoU}} plus "mean" for the offline parser with ParsingConfig ``cfg``."""
    import cv2

    from preprocess.parsing import OfflineParser

    labels = json.loads((DATA / "labels.json").read_text())["frames"]
    out = {}
    for name, polys in labels.items():
        bgr = cv2.imread(str(DATA / f"{name}.jpg"))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        parser = OfflineParser(cfg)  # a fresh parser: each labelled frame stands alone
        try:
            region, _ = parser(rgb, landmarks478(rgb, weights_dir))
        finally:
            parser.close()
        out[name] = ious(region, truth_regions(polys, bgr.shape[:2]))
    out["mean"] = {c: float(np.mean([out[n][c] for n in labels])) for c in CLASSES}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=os.environ.get("NERFHEAD_WEIGHTS"))
    p.add_argument("--set", action="append", default=[], metavar="parsing.FIELD=VALUE")
    args = p.parse_args(argv)
    from nerfhead.config import parse_overrides
    from preprocess.config import load_preprocess_config

    cfg = load_preprocess_config(None, parse_overrides(args.set)).parsing
    res = evaluate(cfg, args.weights)
    print(f"{'frame':<12}" + "".join(f"{c:>12}" for c in CLASSES))
    for name, row in res.items():
        print(f"{name:<12}" + "".join(f"{row[c]:12.3f}" for c in CLASSES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
