"""The focal estimate of a dataset, from its landmarks.npy alone (what the face_fit step decides,
without refitting every frame's pose).

    python3 scripts/focal_estimate.py DATA [DATA ...] [--weights DIR] [--set face_fit.FIELD=VALUE ...]

Prints per dataset the focal that face_fit would use, its source (estimated / default), the
error curve's minimum, the interval of focals that fit within the tolerance, the search grid,
the head-pose spread of the chosen frames and the seconds the estimate took. The figures for
issue 13 in docs/benchmarks.md came from this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

# this tree's preprocess, not the machine-wide editable install's (PYTHONPATH still comes first)
sys.path.append(str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="dataset folders (with landmarks.npy and manifest.json)")
    p.add_argument("--weights", default=os.environ.get("NERFHEAD_WEIGHTS"))
    p.add_argument("--set", action="append", default=[], metavar="face_fit.FIELD=VALUE")
    args = p.parse_args(argv)
    import json

    from nerfhead.config import parse_overrides
    from preprocess.config import load_preprocess_config
    from preprocess.focal import choose_focal

    cfg = load_preprocess_config(None, parse_overrides(args.set)).face_fit
    for d in map(Path, args.data):
        video = json.loads((d / "manifest.json").read_text())["video"]
        size = int(video["crop_size"])
        lms = np.load(d / "landmarks.npy")
        t0 = time.perf_counter()
        c = choose_focal(lms, size, size, cfg, args.weights)
        secs = time.perf_counter() - t0
        prof = c["profile"]
        if prof is None:
            print(f"{d}: focal {c['focal']:.0f} px ({c['source']})")
            continue
        print(f"{d}: {len(lms)} frames, focal {c['focal']:.0f} px ({c['source']}); curve minimum "
              f"{prof.best:.0f} px, interval {prof.interval[0]:.0f}-{prof.interval[1]:.0f} px "
              f"(grid {prof.focals[0]:.0f}-{prof.focals[-1]:.0f}), head pose spread "
              f"{prof.pose_spread_deg:.1f} deg, {secs:.1f} s\n  {c['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
