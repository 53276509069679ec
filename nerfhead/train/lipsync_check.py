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

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from nerfhead.train.checkpoint import append_metrics, read_metrics

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


def report_lipsync_check(model, dataset, frames: int, run_dir, step: int, get_writer,
                         final: bool = True) -> LipSyncCheck | None:
    """The lip-sync check of ``model`` at ``step`` on ``frames`` frames of ``dataset``, as
    train.lipsync_check_frames runs it at the stage's end (``final``) or during it
    (train.lipsync_check_every): logged, written to RUN/metrics.jsonl and TensorBoard
    (``get_writer()``: the run's SummaryWriter, asked for only when there is a value to
    write). At the end a warning when the mouth hardly follows the footage; during the stage
    when it follows much less than at an earlier check of the run (early checks are low while
    the mouth is learned, so only a fall is news). None when the check could not be made."""
    with model.grid.floaters_pruned():  # as render and evaluate will load the run
        result = check_lipsync(model, dataset, frames)
    if isinstance(result, str):
        log.info("lip-sync check skipped: %s (`nerfhead evaluate RUN` measures lip sync)", result)
        return None
    best = max((r["lipsync_check"]["correlation"] for r in read_metrics(run_dir)
                if isinstance(r.get("lipsync_check"), dict) and r["step"] < step
                and r["lipsync_check"].get("correlation") is not None), default=None)
    # a frozen mouth has no correlation: as low as it gets
    now = result.correlation if result.correlation is not None else 0.0 if result.doubtful else None
    fell = best - now if best is not None and now is not None else 0.0
    if fell >= LIPSYNC_DROP:
        log.warning("%s at step %d, %.2f below the best earlier check (%.2f): the mouth "
                    "follows the audio less than it did, which validation PSNR may not "
                    "show. A loss weight or learning rate raised for this run is the usual "
                    "cause (docs/troubleshooting.md); `nerfhead evaluate %s` measures it on "
                    "every frame", result.summary(), step, fell, best, run_dir)
    elif result.doubtful and final:
        log.warning("%s: the rendered mouth hardly follows the footage (a trained head "
                    "reaches 0.8 on held-out speech). Too few steps, or a setting that cut "
                    "the audio path: see docs/troubleshooting.md; `nerfhead evaluate %s` "
                    "measures it on every frame", result.summary(), run_dir)
    else:
        log.info("step %d: %s", step, result.summary())
    for key in ("correlation", "amplitude_ratio"):
        value = getattr(result, key)
        if value is not None:
            get_writer().add_scalar(f"lipsync_check/{key}", value, step)
    append_metrics(run_dir, {"step": step, "lipsync_check": dataclasses.asdict(result)})
    return result
