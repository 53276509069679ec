"""A lip-sync check at the end of a head or lips stage (``train.lipsync_check_frames``).

Validation PSNR cannot see a mouth that stopped following the audio: the mouth is 1-2% of
the frame, and a model whose audio path broke (on the benchmark, a loss that let the audio
codes grow without bound) still reached 33 dB while its mouth no longer moved (opening
correlation 0.18 with the footage). So a stage ends by rendering a run of consecutive
validation frames from their own audio and pose, finding the face landmarks in each render
and in the footage (MediaPipe, as ``nerfhead evaluate`` does), and correlating the two mouth
openings; far below what a trained head reaches (0.8 and more on held-out GRID speech) it
warns. ``nerfhead evaluate RUN`` measures the same on every frame, with LMD and images.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("nerfhead.train")

#: below these the check warns: a mouth that hardly follows the footage
MIN_CORRELATION = 0.3
MIN_AMPLITUDE = 0.3
#: a check during a stage this far below the best earlier one warns (train.lipsync_check_every)
LIPSYNC_DROP = 0.3
#: footage frames probed for a face before rendering anything (synthetic data has none)
PROBE_FRAMES = 3


@dataclass
class LipSyncCheck:
    frames: int  #: validation frames rendered
    frames_used: int  #: of those, with a face found in both the render and the footage
    correlation: float | None  #: Pearson r of the two mouth openings
    amplitude_ratio: float | None  #: spread of the rendered opening over the footage's
    seconds: float
    doubtful: bool  #: under MIN_CORRELATION or MIN_AMPLITUDE

    def summary(self) -> str:
        f = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
        return (f"lip-sync check on {self.frames} validation frames ({self.frames_used} with a "
                f"face): mouth opening correlation {f(self.correlation)} with the footage, "
                f"amplitude {f(self.amplitude_ratio)}")


def _frames(dataset, count: int) -> list[int]:
    """``count`` consecutive frames from the middle of ``dataset`` (all of a shorter one)."""
    n = len(dataset)
    start = max(0, (n - count) // 2)
    return list(range(start, min(n, start + count)))


@torch.no_grad()
def check_lipsync(model, dataset, count: int, detector=None) -> LipSyncCheck | str:
    """Render ``count`` consecutive frames of ``dataset`` (its own audio, pose and expression;
    the mean latent, as new audio gets) and correlate the rendered mouth opening with the
    footage's. Returns the check, or why it could not be made (no landmark detector, no face
    in the footage, too few frames)."""
    from nerfhead.eval.lipsync import mouth_opening, opening_agreement

    ids = _frames(dataset, count)
    if len(ids) < 8:
        return f"{len(ids)} validation frames, too few to correlate"
    if detector is None:
        from nerfhead.eval.cli import load_detector

        detector, reason = load_detector()
        if detector is None:
            return f"no face landmark detector ({reason})"
        try:  # a check during training runs many times: close the detector it opened
            return check_lipsync(model, dataset, count, detector)
        finally:
            detector.close()
    t0 = time.perf_counter()
    if all(detector(dataset.image(j)) is None for j in ids[:PROBE_FRAMES]):
        return f"no face found in the first {PROBE_FRAMES} footage frames checked"
    model.eval()
    rendered, footage = [], []
    for j in ids:
        bg = torch.from_numpy(dataset.head_background(j)).float().div(255)
        out = model.render_frame(dataset.poses_file[j], dataset.audio, int(dataset.aud_ids[j]),
                                 dataset.expression(j), None, bg=bg, with_torso=False)
        rgb = (out["rgb"].clamp(0, 1) * 255).round().byte().cpu().numpy()
        rendered.append(mouth_opening(detector(rgb)))
        footage.append(mouth_opening(detector(dataset.image(j))))
    agree = opening_agreement(rendered, footage)
    if agree["frames_used"] < 8:
        return (f"a face found in both the render and the footage in only "
                f"{agree['frames_used']} of {len(ids)} frames")
    r, amp = agree["correlation"], agree["amplitude_ratio"]
    # amplitude None: the footage's mouth does not move in these frames, nothing to follow; a
    # frozen rendered mouth has amplitude 0 and no correlation
    doubtful = amp is not None and (r is None or r < MIN_CORRELATION or amp < MIN_AMPLITUDE)
    return LipSyncCheck(frames=len(ids), frames_used=agree["frames_used"], correlation=r,
                        amplitude_ratio=amp, seconds=round(time.perf_counter() - t0, 1),
                        doubtful=doubtful)
