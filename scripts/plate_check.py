"""How far a dataset's background plate (bc.jpg) is from the clip's main-scene background.

    python3 scripts/plate_check.py DATA [DATA ...]

The reference is the per-pixel median, over every 50th frame of the main scene (scenes.json of
the first DATA; foreign shots left out), of the pixels its parsing labels background (eroded
by 4 px); only pixels that are background in at least 20 % of those frames are compared.
Prints, per dataset, the mean CIE76 Delta E of its plate against that reference and the share
of pixels off by more than 10 (a wedge of another scene shows up there).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

# this tree's preprocess, not the machine-wide editable install's (PYTHONPATH still comes first)
sys.path.append(str(Path(__file__).resolve().parent.parent))


def reference(d: Path, step: int = 50):
    from preprocess.parsing import BG, read_regions
    from preprocess.scenes import frame_mask

    doc = json.loads((d / "scenes.json").read_text())
    n = doc["num_frames"]
    foreign = frame_mask(doc["foreign_frames"], n)
    stack, masks = [], []
    for i in range(0, n, step):
        if foreign[i]:
            continue
        lab = cv2.cvtColor(cv2.imread(str(d / f"ori_imgs/{i}.jpg")), cv2.COLOR_BGR2LAB).astype(np.float32)
        bg = cv2.erode((read_regions(d / f"parsing/{i}.png") == BG).astype(np.uint8),
                       np.ones((9, 9), np.uint8)).astype(bool)
        lab[~bg] = np.nan
        stack.append(lab)
        masks.append(bg)
    region = np.mean(masks, 0) >= 0.2
    with warnings.catch_warnings():  # pixels never background: NaN, outside the region anyway
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.array(stack), 0), region


def main(argv) -> int:
    dirs = [Path(a) for a in argv]
    ref, region = reference(dirs[0])
    scale = np.array([100 / 255, 1, 1], np.float32)  # OpenCV 8-bit L to 0..100
    for d in dirs:
        plate = cv2.cvtColor(cv2.imread(str(d / "bc.jpg")), cv2.COLOR_BGR2LAB).astype(np.float32)
        de = np.linalg.norm((plate - ref)[region] * scale, axis=1)
        print(f"{d}: mean Delta E {de.mean():.2f}, pixels off by > 10: {100 * (de > 10).mean():.1f}% "
              f"(of {100 * region.mean():.0f}% of the frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
