"""Time the torso stage with the torso field on every pixel against only where the head
leaves it visible (``InferenceConfig.torso_alpha_eps``), frames interleaved.

    python3 scripts/torso_skip_bench.py RUN [--resolution 128] [--frames 10] [--data DATA]

A head-stage run has no trained torso: its torso field (untrained weights) is switched on,
since the torso's cost does not depend on its weights and which pixels are skipped depends on
the trained head. Prints ms per stage of both settings, the share of pixels the head hides
and the largest uint8 difference between the two settings' frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# this checkout's nerfhead, before an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--resolution", type=int, default=0, help="square frame size (0: the run's)")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    args = ap.parse_args()
    from nerfhead.data.dataset import load_audio_features
    from nerfhead.models.config import InferenceConfig
    from nerfhead.render.bench import time_variants
    from nerfhead.render.poses import dataset_poses
    from nerfhead.train.checkpoint import load_run, run_dataset

    run = load_run(args.run, device="cpu")
    m = run.model
    if m.torso is None:
        raise SystemExit(f"{args.run}: the model has no torso field (model.torso: false)")
    m.has_torso.fill_(True)
    data = run_dataset(run, args.data)
    cam = run.camera.scaled(args.resolution, args.resolution) if args.resolution else run.camera
    feats, _ = load_audio_features(Path(data), m.audio_kind)
    c2w = dataset_poses(data, "val")[0][0]
    eps = InferenceConfig().torso_alpha_eps
    variants = {"everywhere": InferenceConfig(torso_alpha_eps=0.0), "visible": InferenceConfig()}
    times, frames = time_variants(m, cam, variants, args.frames, 2, feats, c2w)
    for name in variants:
        print(f"{name:<11}", {s: round(1000 * v / args.frames, 2) for s, v in times[name].items()})
    m.inference = InferenceConfig()
    out = m.render_frame(c2w, feats, 2, np.zeros(52, np.float32), camera=cam)
    hidden = float((out["head_alpha"] >= 1 - eps).float().mean())
    print(f"pixels hidden by the head: {100 * hidden:.1f}% of {cam.width}x{cam.height}")
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max())
               for a, b in zip(frames["everywhere"], frames["visible"]))
    print(f"largest uint8 difference between the settings' frames: {diff}")


if __name__ == "__main__":
    main()
