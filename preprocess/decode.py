"""Step ``decode``: a video file -> ``ori_imgs/<i>.jpg`` (fixed square head crop at 25 fps)
and ``aud.wav`` (16 kHz mono PCM).

The NeRF assumes a fixed camera, so the whole clip gets ONE crop box: the face is found on a
few frames sampled across the clip (MediaPipe Face Landmarker, with MediaPipe's full-range
face detector as a fallback for small faces), and the box is centred a little below the
median face centre (room for neck and shoulders), ``crop_scale`` x the face size on a side,
shrunk/shifted to lie inside the frame. ffmpeg (bundled with imageio-ffmpeg) resamples to
25 fps (``fps`` filter: variable-frame-rate sources are retimed by dropping/duplicating
frames; the manifest notes when the source was VFR), crops and scales in one pass.

The audio is laid out by presentation time on the clock of the written frames (gaps in its
timestamps become silence, overlaps are dropped), so that sample ``t`` of ``aud.wav`` is heard
while frame ``t * fps / sample_rate`` is shown even when the source was joined or cut; what
was found is recorded in the manifest's ``audio`` section (docs/audio_sync.md).

What is refused before anything is written, with the reason: a folder or a still image given
as the video, no audio track, a face found in fewer than ``min_face_fraction`` of the probe
frames, and a picture that is upside down or on its side (MediaPipe's face detector scores
each probe frame as it is and turned by 90/180/270 degrees; the landmarker itself fits an
upright mesh to an upside-down face, eyes on the nostrils, so its success proves nothing).
The container's rotation metadata is honoured (ffmpeg turns the frames as players do), and
``rotate`` turns a picture whose metadata is wrong. A crop that would be scaled up more than
``max_upscale`` times is warned about.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfhead.audio import clock
from nerfhead.fileio import DiskFullError, make_temp_dir, require_space, write_image
from preprocess.steps import Step, StepContext, StepError, atomic_path


@dataclass
class DecodeConfig:
    """How the source video becomes frames and audio."""

    fps: float = 25.0  #: output frame rate (the dataset contract is 25)
    crop_size: int = 512  #: output square side in pixels (smaller crops are scaled up)
    crop_scale: float = 2.0  #: crop side / face size (face size = larger side of the landmark box)
    crop_shift_down: float = 0.2  #: crop centre below the face centre, in face sizes (neck room)
    probe_frames: int = 8  #: frames sampled across the clip to place the crop
    #: turn the picture clockwise by this many degrees (0, 90, 180, 270) after the
    #: container's own rotation metadata: for a video whose metadata is missing or wrong
    rotate: int = 0
    check_orientation: bool = True  #: refuse a picture whose face is upside down or on its side
    min_face_fraction: float = 0.5  #: refuse when fewer probe frames than this show a face
    max_upscale: float = 2.0  #: warn when the crop is scaled up more than this (blurry data)
    start_seconds: float = 0.0  #: skip this much of the source
    max_seconds: float | None = None  #: use at most this much (None: to the end)
    min_seconds: float = 1.0  #: shorter inputs are rejected
    jpeg_quality: int = 95  #: quality of ori_imgs/*.jpg
    sample_rate: int = 16000  #: aud.wav sample rate (the contract is 16 kHz)
    #: where audio samples go in time: 'timestamps' places each decoded audio frame at its
    #: presentation time on the clock of the written frames (gaps in the timestamps become
    #: silence, overlaps are dropped), as players do; 'ignore_timestamps' concatenates the
    #: samples from the first one, the behaviour before issue 9, kept only to diagnose a
    #: drift (it slides the audio against the video wherever the timestamps jump)
    audio_timing: str = "timestamps"
    #: timestamp steps up to this many milliseconds are rounding jitter, not gaps; the
    #: audio is never further than this from its timestamps (a drifting clock is corrected
    #: in steps of this size)
    audio_jitter_ms: float = 2.0
    #: delay added to the audio against the frames, seconds (positive: heard later); for a
    #: source recorded out of sync, e.g. the offset the av_sync step measured. 0 for sources
    #: whose timestamps are right
    audio_offset: float = 0.0


STEP = "decode"
ROTATIONS = {0: None, 90: "transpose=clock", 180: "hflip,vflip", 270: "transpose=cclock"}
MIN_CROP, MAX_CROP = 64, 4096


def validate(cfg: DecodeConfig, path: Path | None = None) -> None:
    """StepError for settings that cannot work (checked before the video is read)."""
    if not isinstance(cfg.crop_size, int) or cfg.crop_size % 2 or not MIN_CROP <= cfg.crop_size <= MAX_CROP:
        raise StepError(STEP, f"decode.crop_size (--crop-size) is {cfg.crop_size!r}: it must be an "
                              f"even number of pixels from {MIN_CROP} to {MAX_CROP} (default 512)", path)
    if cfg.rotate not in ROTATIONS:
        raise StepError(STEP, f"decode.rotate (--rotate) is {cfg.rotate!r}: use 0, 90, 180 or 270 "
                              "(degrees clockwise)", path)
    if not cfg.fps > 0 or not cfg.crop_scale > 0 or cfg.probe_frames < 1:
        raise StepError(STEP, f"decode.fps ({cfg.fps}), decode.crop_scale ({cfg.crop_scale}) and "
                              f"decode.probe_frames ({cfg.probe_frames}) must be positive", path)
    if cfg.start_seconds < 0 or (cfg.max_seconds is not None and cfg.max_seconds <= 0):
        raise StepError(STEP, f"--start-seconds ({cfg.start_seconds:g}) must be >= 0 and "
                              f"--max-seconds ({cfg.max_seconds}) > 0", path)


def _rotation_filter(rotate: int) -> list[str]:
    return [ROTATIONS[rotate]] if ROTATIONS.get(rotate) else []


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ------------------------------------------------------------------------------------ probe
@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    duration: float
    codec: str
    has_audio: bool
    rotation: int
    tbr: float  #: ffmpeg's guess of the base frame rate; differs from ``fps`` (average) when VFR


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")


def _not_a_file(path: Path) -> StepError:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        return StepError(STEP, f"this is a folder, not a video file{hint}; give the path of the "
                               "video itself", path)
    return StepError(STEP, "video file not found (check the path and its spelling)", path)


def probe(path: Path, rotate: int = 0) -> VideoInfo:
    """Read the container header with ffmpeg; StepError when it is not a readable video.
    Sizes are those of the frames as decoded: after the container's rotation and ``rotate``."""
    if not path.is_file():
        raise _not_a_file(path)
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True, errors="replace")
    err = proc.stderr
    demuxer = re.search(r"Input #0, ([\w,]+), from", err)
    if demuxer and (demuxer.group(1) == "image2" or demuxer.group(1).endswith("_pipe")):
        codec = re.search(r"Video: (\w+)", err)
        raise StepError(STEP, f"this is a still image ({codec.group(1) if codec else demuxer.group(1)}),"
                              " not a video: nerfhead needs a video of the speaker talking, with "
                              "its sound", path)
    video = re.search(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})", err)
    if video is None:
        last = [ln for ln in err.strip().splitlines() if ln.strip()]
        reason = last[-1].strip() if last else "ffmpeg could not read it"
        way = "Check that it plays, then copy or export it again"
        if "Output file" in reason or "At least one output" in reason:
            reason = "no video stream"
            if re.search(r"Stream #\S+.*?: Audio:", err):
                reason += " (this is a sound file)"
                way = "Give the video of the speaker talking, with its sound"
        elif path.stat().st_size == 0:
            reason = "the file is empty (0 bytes)"
        elif "moov atom not found" in err:
            # an MP4/MOV writes its index last: a file cut short has none
            reason = ("its index (the MP4 'moov' atom) is missing: the file is cut short (a copy "
                      "or download that did not finish, or a recording that was not stopped "
                      "properly)")
        raise StepError(STEP, f"not a readable video: {reason}. {way}", path)
    fps_m = re.search(r"Video:.*?([\d.]+) fps", err)
    dur_m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err)
    tbr_m = re.search(r"Video:.*?([\d.]+) tbr", err)
    rot_m = re.search(r"rotation of (-?[\d.]+) degrees", err)
    rotation = int(round(float(rot_m.group(1)))) % 360 if rot_m else 0
    w, h = int(video.group(2)), int(video.group(3))
    if rotation in (90, 270):  # ffmpeg auto-rotates on decode: frames come out transposed
        w, h = h, w
    if rotate in (90, 270):
        w, h = h, w
    duration = (int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3))
                if dur_m else 0.0)
    return VideoInfo(w, h, float(fps_m.group(1)) if fps_m else 0.0, duration, video.group(1),
                     bool(re.search(r"Stream #\S+.*?: Audio:", err)), rotation,
                     float(tbr_m.group(1)) if tbr_m else 0.0)


@dataclass
class StreamTiming:
    """The first video stream's packets (read by stream copy: demux only, fast)."""

    frames: int  #: packets = frames
    end: float  #: seconds from the container's start to the end of the last frame
    avg_fps: float | None  #: (frames - 1) / (last - first timestamp)
    irregular: float  #: fraction of frame intervals more than 10% away from the median one
    #: the demuxer's word when the file ends before the data its index lists (cut short), else None
    cut_short: str | None = None


#: what ffmpeg's demuxers log for a file that ends before the data its header lists (mov/mp4
#: "stream 0, offset 0x..: partial file"; matroska "File ended prematurely")
_CUT_SHORT = re.compile(r"partial file|ended prematurely", re.I)


def stream_timing(path: Path) -> StreamTiming | None:
    """Timestamps of every video packet (ffmpeg's framecrc muxer); None if unreadable."""
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i",
                           str(path), "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"],
                          capture_output=True, text=True, errors="replace")
    tb = re.search(r"#tb 0: (\d+)/(\d+)", proc.stdout)
    rows = re.findall(r"^0,\s*(-?\d+),\s*(-?\d+),\s*(\d+),", proc.stdout, re.M)
    if tb is None or not rows:
        return None
    unit = int(tb.group(1)) / int(tb.group(2))
    pts = np.array(sorted(int(r[1]) for r in rows), np.int64)
    dur = max(int(r[1]) + int(r[2]) for r in rows)
    start = re.search(r"Duration:.*?start: (-?[\d.]+)",
                      subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(path)],
                                     capture_output=True, text=True, errors="replace").stderr)
    t0 = float(start.group(1)) if start else 0.0
    steps = np.diff(pts)
    if steps.size:
        med = float(np.median(steps))
        # a tick of rounding (e.g. 33/34 ms at 30 fps in a 1/1000 timebase) is not VFR
        irregular = float(np.mean(np.abs(steps - med) > max(0.1 * med, 1.5)))
        avg = (len(pts) - 1) / ((pts[-1] - pts[0]) * unit) if pts[-1] > pts[0] else None
    else:
        irregular, avg = 0.0, None
    cut = next((ln.split("] ", 1)[-1].strip() for ln in proc.stderr.splitlines()
                if _CUT_SHORT.search(ln)), None)
    return StreamTiming(len(pts), dur * unit - t0, avg, irregular, cut)


def count_source_frames(path: Path) -> int | None:
    """Frames in the first video stream (stream copy: demux only, fast); None if unknown."""
    timing = stream_timing(path)
    return timing.frames if timing else None


def read_frame_at(path: Path, t: float, w: int, h: int, rotate: int = 0) -> np.ndarray | None:
    """One RGB frame at time ``t`` seconds at decoded size (after ``rotate``), or None past the end."""
    vf = ["-vf", ",".join(_rotation_filter(rotate))] if _rotation_filter(rotate) else []
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-loglevel", "error", "-ss", f"{t:.3f}", "-i",
                           str(path), *vf, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          capture_output=True)
    if len(proc.stdout) < w * h * 3:
        return None
    return np.frombuffer(proc.stdout[: w * h * 3], np.uint8).reshape(h, w, 3)


# ------------------------------------------------------------------------------------- crop
def face_box(rgb: np.ndarray, landmarker) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) pixel box of the face in ``rgb``: landmark extent, else detector box."""
    import mediapipe as mp

    h, w = rgb.shape[:2]
    res = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    if res.face_landmarks:
        pts = np.array([(p.x * w, p.y * h) for p in res.face_landmarks[0]])
        return (*pts.min(0), *pts.max(0))
    # the landmarker's own detector is short-range; a small face in a wide shot needs the
    # full-range model (shipped inside mediapipe 0.10.x, no weights file needed)
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError:
        return None
    with face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        out = det.process(rgb)
    if not out.detections:
        return None
    b = out.detections[0].location_data.relative_bounding_box
    # the detector box spans brows to mouth; grow it to roughly the landmark extent
    x0, y0, bw, bh = b.xmin * w, b.ymin * h, b.width * w, b.height * h
    return x0, y0 - 0.3 * bh, x0 + bw, y0 + 1.1 * bh


def choose_crop(boxes: list[tuple[float, float, float, float]], width: int, height: int,
                cfg: DecodeConfig) -> tuple[int, int, int]:
    """One square crop ``(x0, y0, side)`` inside the frame for all the sampled face boxes."""
    b = np.asarray(boxes, dtype=np.float64)
    sizes = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    size = float(np.median(sizes))
    cx = float(np.median((b[:, 0] + b[:, 2]) / 2))
    cy = float(np.median((b[:, 1] + b[:, 3]) / 2)) + cfg.crop_shift_down * size
    # big enough for the face at every sampled position (head motion), with a margin
    extent = max(b[:, 2].max() - b[:, 0].min(), b[:, 3].max() - b[:, 1].min()) * 1.2
    side = int(round(max(cfg.crop_scale * size, extent)))
    side = min(side, width, height)
    side -= side % 2  # even sizes keep chroma-subsampled filters exact
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side


@dataclass
class FaceProbe:
    """What the probe frames showed."""

    boxes: list  #: face boxes (x0, y0, x1, y1) of the frames with a face
    times: list  #: probe times (s, from the start of the source)
    missing: list  #: probe times without a face
    #: median face-detector score per clockwise turn (0, 90, 180, 270) over the probe frames;
    #: empty when MediaPipe's face detector is not available
    orientation: dict


def orientation_scores(frames: list[np.ndarray]) -> dict[int, float]:
    """Median MediaPipe face-detector (full range) score of ``frames`` as they are and turned
    clockwise by 90, 180 and 270 degrees. The detector is trained on upright faces: the
    orientation in which it is confident is the one in which the faces are upright."""
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError:
        return {}
    scores: dict[int, list[float]] = {r: [] for r in ROTATIONS}
    with face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.3) as det:
        for frame in frames:
            for r in ROTATIONS:
                out = det.process(np.ascontiguousarray(np.rot90(frame, k=-(r // 90))))
                scores[r].append(max((d.score[0] for d in out.detections), default=0.0)
                                 if out.detections else 0.0)
    return {r: float(np.median(v)) for r, v in scores.items()}


def probe_faces(path: Path, info: VideoInfo, start: float, dur: float, n: int, weights_dir,
                rotate: int = 0, orientation: bool = True) -> FaceProbe:
    from preprocess.landmarks import make_landmarker

    boxes, times, missing, frames = [], [], [], []
    with make_landmarker(weights_dir, video_mode=False) as lm:
        for k in range(n):
            t = start + (k + 0.5) * dur / n
            frame = read_frame_at(path, t, info.width, info.height, rotate)
            times.append(t)
            if frame is None:
                missing.append(t)
                continue
            frames.append(frame)
            if (box := face_box(frame, lm)) is not None:
                boxes.append(box)
            else:
                missing.append(t)
    return FaceProbe(boxes, times, missing, orientation_scores(frames) if orientation else {})


TURNS = {90: "turned on its side (a quarter turn anticlockwise)", 180: "upside down",
         270: "turned on its side (a quarter turn clockwise)"}


def check_faces(found: FaceProbe, path: Path, cfg: DecodeConfig, dur: float) -> None:
    """StepError when the probe frames show no plausible upright face (module docstring)."""
    n = len(found.times)
    scores = found.orientation
    if cfg.check_orientation and scores:
        best = max(scores, key=scores.get)
        if best != 0 and scores[best] >= 0.5 and scores[best] - scores[0] >= 0.3:
            fix = (cfg.rotate + best) % 360
            raise StepError(STEP, f"the picture is {TURNS[best]}: MediaPipe's face detector scores "
                                  f"the probe frames {scores[0]:.2f} as they are and "
                                  f"{scores[best]:.2f} turned {best} degrees clockwise, and "
                                  "landmarks on a turned face land on the wrong features. Rerun "
                                  f"with --rotate {fix} (degrees clockwise) to turn it upright, "
                                  "or --set decode.check_orientation=false if it is upright", path)
    if not found.boxes:
        raise StepError(STEP, f"no face found in any of {n} frames sampled across {dur:.1f} s "
                              "(is the face visible, upright and at least ~40 px wide?)", path)
    if len(found.boxes) < cfg.min_face_fraction * n:
        where = ", ".join(f"{t:.1f}" for t in found.missing)
        raise StepError(STEP, f"a face was found in only {len(found.boxes)} of {n} frames sampled "
                              f"across the clip (none at {where} s): the speaker must be in view "
                              "all along. Cut the clip (--start-seconds/--max-seconds) to a part "
                              "where the face is visible, or lower decode.min_face_fraction", path)


# ----------------------------------------------------------------------------------- decode
def _seek(start: float) -> list[str]:
    # only seek when asked: an input seek to 0 still drops the AAC priming samples
    return ["-ss", f"{start:.3f}"] if start > 0 else []


def _write_frames(path: Path, out_dir: Path, start: float, n_frames: int, crop, cfg: DecodeConfig):
    import cv2

    from preprocess.progress import step_progress

    x0, y0, side = crop
    s = cfg.crop_size
    vf = ",".join([f"fps={cfg.fps:g}", *_rotation_filter(cfg.rotate),
                   f"crop={side}:{side}:{x0}:{y0}", f"scale={s}:{s}:flags=lanczos"])
    cmd = [_ffmpeg(), "-nostdin", "-loglevel", "error", *_seek(start), "-i", str(path),
           "-map", "0:v:0", "-vf", vf, "-frames:v", str(n_frames), "-f", "rawvideo",
           "-pix_fmt", "bgr24", "-"]
    frame_bytes = s * s * 3
    count = 0
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        try:
            with step_progress(STEP, n_frames) as advance:
                while (buf := proc.stdout.read(frame_bytes)) and len(buf) == frame_bytes:
                    img = np.frombuffer(buf, np.uint8).reshape(s, s, 3)
                    write_image(out_dir / f"{count}.jpg", img,
                                [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
                    count += 1
                    advance(1)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
    if rc != 0 or count == 0:
        raise StepError(STEP, f"video is corrupt or unreadable after {count} frames: "
                              f"{err.splitlines()[-1] if err else f'ffmpeg exit {rc}'}", path)
    return count, err


# ------------------------------------------------------------------------------------ audio
AUDIO_TIMINGS = ("timestamps", "ignore_timestamps")
MAX_LISTED = 1000  #: gaps/overlaps listed one by one in the manifest (all are counted)


def decode_audio_frames(path: Path, start: float, seconds: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """The first audio stream from ``start`` as mono float32 at ``sr``, and per decoded audio
    frame its presentation time and length ``[K, 2]`` in samples, on the clock of the written
    frames (0 = ``ori_imgs/0.jpg``: the frame writer's constant-rate output starts at the same
    zero as ffmpeg's shifted input, a late video stream being led in by repeats of its first
    picture). See ``nerfhead.audio.clock``."""
    try:
        # read a little past the end: the frames' length is set by the video, timestamps may jump
        samples, frames, _ = clock.decode_audio_frames(path, start, seconds + 1.0, sr)
    except clock.ClockError as e:
        raise StepError(STEP, f"{e} (rerun with --set decode.audio_timing=ignore_timestamps to "
                              "decode it without timestamps)", path) from e
    return samples, frames


place_on_clock = clock.place_on_clock


def _check_audio_settings(cfg: DecodeConfig) -> None:
    if cfg.audio_timing not in AUDIO_TIMINGS:
        raise StepError(STEP, f"decode.audio_timing must be one of {AUDIO_TIMINGS}, "
                              f"got {cfg.audio_timing!r}")


def _listing(events: list[tuple[int, int]], sr: int) -> list[dict]:
    return [{"at": round(t / sr, 4), "seconds": round(n / sr, 4)} for t, n in events[:MAX_LISTED]]


def _write_audio(path: Path, dest: Path, start: float, seconds: float, cfg: DecodeConfig) -> dict:
    """Write ``aud.wav`` (16-bit mono, exactly ``seconds`` long) with sample ``t`` at frame
    time ``t``; returns the manifest's ``audio`` record (timing found in the source)."""
    _check_audio_settings(cfg)
    sr = cfg.sample_rate
    n = int(round(seconds * sr))
    # a delayed audio starts with what precedes the cut: decode from that much earlier
    early = min(start, max(0.0, cfg.audio_offset))
    samples, frames = decode_audio_frames(path, start - early,
                                          seconds + early + max(0.0, -cfg.audio_offset), sr)
    frames[:, 0] -= int(round(early * sr))  # back on the clock of the frames written
    shift = int(round(cfg.audio_offset * sr))
    jitter = int(round(cfg.audio_jitter_ms * sr / 1000))
    placed, found = place_on_clock(samples, frames, n, jitter, shift)
    if cfg.audio_timing == "ignore_timestamps":  # one run of samples from the first one on
        placed = np.zeros(n, np.float32)
        base = shift - int(round(early * sr))  # where the first decoded sample goes
        a, b = max(base, 0), max(0, min(n, base + samples.size))
        placed[a:b] = samples[a - base:b - base]
    if not np.isfinite(placed).all():  # float PCM passes through as it is; NaN would become 0
        bad = np.flatnonzero(~np.isfinite(placed))
        raise StepError(STEP, f"the audio track is damaged: {bad.size} of its samples are not "
                              f"numbers (NaN) or infinite, from {start + bad[0] / sr:.2f} s to "
                              f"{start + bad[-1] / sr:.2f} s; export the video again from its "
                              "source (its sound included)", path)
    gaps, overlaps = found["gaps"], found["overlaps"]
    start_offset = found["start"] - shift  # the source's own, before the requested shift
    if early and start_offset <= jitter - int(round(early * sr)):
        start_offset = 0  # the audio was already running at the cut, as a plain cut reports
    # how far samples concatenated from the first one run ahead of their timestamps at the
    # last frame: the source's start offset plus every timestamp jump before it
    ahead = (start_offset + sum(k for t, k in gaps if t < n) - sum(k for t, k in overlaps if t < n))
    with atomic_path(dest) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes((np.clip(placed, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
    return {"timing": cfg.audio_timing, "sample_rate": sr, "num_samples": n,
            "source_samples": int(samples.size),
            # where the source's first audio sample sits against frame 0 (+: audio starts later)
            "start_offset": round(start_offset / sr, 4),
            "applied_offset": cfg.audio_offset,
            "num_gaps": len(gaps), "gap_seconds": round(sum(k for _, k in gaps) / sr, 4),
            "num_overlaps": len(overlaps),
            "overlap_seconds": round(sum(k for _, k in overlaps) / sr, 4),
            "gaps": _listing(gaps, sr), "overlaps": _listing(overlaps, sr),
            "listed_at_most": MAX_LISTED,
            # by how much decoding without timestamps puts the last frame's audio early
            "ahead_at_end_without_timestamps": round(ahead / sr, 4)}


def _replace_dir(tmp_dir: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp_dir, final)
    if old.exists():
        shutil.rmtree(old)


def run(ctx: StepContext) -> dict:
    cfg: DecodeConfig = ctx.cfg.decode
    _check_audio_settings(cfg)  # before the long part
    path = Path(ctx.video)
    validate(cfg, path)
    info = probe(path, cfg.rotate)
    if not info.has_audio:
        raise StepError(STEP, "the video has no audio track (a talking head needs its speech)", path)
    timing = stream_timing(path)
    src_frames = timing.frames if timing else None
    if timing and timing.cut_short and timing.end > 0:
        # a faststart MP4 (index first) cut short demuxes cleanly up to the cut: its frames
        # stop early, which alone reads like a container that outlasts its video stream
        first = max(0.0, cfg.start_seconds)
        wanted = info.duration if cfg.max_seconds is None else min(info.duration,
                                                                   first + cfg.max_seconds)
        if timing.end < wanted - 1.0 / max(info.fps or cfg.fps, 1.0):
            intact = max(0.0, timing.end - first - 0.1)
            raise StepError(STEP, f"corrupt or truncated: the file is cut short "
                                  f"({timing.cut_short}): its header promises {info.duration:.2f} s "
                                  f"but the video stops at {timing.end:.2f} s (a copy or download "
                                  "that did not finish?). Copy or export it again; or use the "
                                  f"intact part with --max-seconds {intact:.1f}", path)
    if timing and timing.end > 0:
        # the video stream's own end: the container (e.g. a longer audio track) may outlast it
        info.duration = min(info.duration, timing.end) if info.duration else timing.end
    elif not info.duration and src_frames and info.fps:  # raw streams carry no duration
        info.duration = src_frames / info.fps
    start = max(0.0, cfg.start_seconds)
    avail = info.duration - start
    dur = avail if cfg.max_seconds is None else min(avail, cfg.max_seconds)
    if dur < cfg.min_seconds:
        raise StepError(STEP, f"too short: {dur:.2f} s usable (after start {start:g} s), "
                              f"need at least {cfg.min_seconds:g} s", path)
    expected = int(np.floor(dur * cfg.fps + 1e-6))

    avg_fps = timing.avg_fps if timing else None
    # variable frame rate: the frame intervals are irregular, or their average disagrees with
    # the nominal rate (measured on the video packets' own timestamps, not the container's)
    vfr = bool(timing and (timing.irregular > 0.01 or (
        avg_fps and info.fps and abs(avg_fps - info.fps) / info.fps > 0.01)))
    if vfr:
        ctx.log.warning("%s: variable frame rate (nominal %.3f fps, average %.3f fps, %.0f%% of "
                        "frame intervals irregular); resampled to %g fps by timestamp", path,
                        info.fps, avg_fps or 0.0, 100 * timing.irregular, cfg.fps)

    faces = probe_faces(path, info, start, dur, cfg.probe_frames,
                        getattr(ctx.cfg, "weights_dir", None), cfg.rotate, cfg.check_orientation)
    check_faces(faces, path, cfg, dur)
    if cfg.check_orientation and not faces.orientation:
        ctx.log.warning("%s: orientation not checked: MediaPipe's face detector (mediapipe "
                        "0.10.x solutions) is not available; an upside-down video would not be "
                        "noticed", path)
    boxes = faces.boxes
    if len(boxes) < cfg.probe_frames:
        ctx.log.warning("%s: no face in %d of %d probe frames (at %s s)", path,
                        cfg.probe_frames - len(boxes), cfg.probe_frames,
                        ", ".join(f"{t:.1f}" for t in faces.missing))
    crop = choose_crop(boxes, info.width, info.height, cfg)
    upscale = cfg.crop_size / crop[2]
    if upscale > cfg.max_upscale:
        honest = max(MIN_CROP, int(crop[2] * cfg.max_upscale) // 2 * 2)
        ctx.log.warning("%s: the head crop is only %dx%d pixels of the source; scaling it up "
                        "%.1fx to %d px gives blurry frames (the model cannot be sharper than "
                        "its data). Use a higher-resolution video, or --crop-size %d", path,
                        crop[2], crop[2], upscale, cfg.crop_size, honest)
    # frames (JPEG at quality 95: up to about 0.6 bytes per pixel, plus a filesystem block
    # each) and 16-bit audio
    needed = expected * (int(0.6 * cfg.crop_size ** 2) + 4096 + 2 * int(cfg.sample_rate / cfg.fps))
    what = f"{expected} frames and aud.wav"
    require_space(ctx.data_dir, needed, what)

    out_dir = ctx.path("ori_imgs")
    tmp_dir = make_temp_dir(ctx.data_dir, "ori_imgs")
    try:
        n, ff_err = _write_frames(path, tmp_dir, start, expected, crop, cfg)
        if n < max(1, expected - 2):
            raise StepError(STEP, f"corrupt or truncated: the header promises {dur:.2f} s "
                                  f"({expected} frames) but only {n} decoded"
                                  + (f" ({ff_err.splitlines()[-1]})" if ff_err else ""), path)
        if n < cfg.min_seconds * cfg.fps:
            raise StepError(STEP, f"too short: {n} frames decoded, need {cfg.min_seconds:g} s", path)
        audio = _write_audio(path, ctx.path("aud.wav"), start, n / cfg.fps, cfg)
        _replace_dir(tmp_dir, out_dir)
    except DiskFullError as e:  # worded with the whole step's need, before the frames go
        raise e.with_need(needed, ctx.data_dir, what) from e
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    from preprocess.driver import source_fingerprint

    video = {"source": str(path.resolve()), "source_fingerprint": source_fingerprint(path),
             "source_size": [info.width, info.height], "rotate": cfg.rotate, "upscale": round(upscale, 3),
             # string keys: the manifest must read back exactly as written (it is hashed)
             "face_detector_scores_by_turn": {str(k): round(v, 3) for k, v in faces.orientation.items()},
             "source_fps": info.fps, "source_avg_fps": avg_fps, "variable_frame_rate": vfr,
             "source_duration": info.duration, "codec": info.codec, "rotation": info.rotation,
             "start_seconds": start, "fps": cfg.fps, "num_frames": n, "duration": n / cfg.fps,
             "crop_box": list(crop), "crop_size": cfg.crop_size,
             "faces_found_in_probe": f"{len(boxes)}/{cfg.probe_frames}"}
    _log_audio_timing(ctx, path, audio, cfg.fps)
    return {"num_frames": n, "crop_box": list(crop), "audio_gaps": audio["num_gaps"],
            "audio_start_offset": audio["start_offset"],
            "manifest": {"video": video, "audio": audio}}


def _log_audio_timing(ctx: StepContext, path: Path, audio: dict, fps: float) -> None:
    ahead = audio["ahead_at_end_without_timestamps"]
    if audio["timing"] == "ignore_timestamps":
        if abs(ahead) * fps >= 0.5:
            ctx.log.warning("%s: audio decoded ignoring its timestamps (decode.audio_timing="
                            "ignore_timestamps): it runs %.3f s (%.1f frames) %s of the video by "
                            "the end", path, abs(ahead), abs(ahead) * fps,
                            "ahead" if ahead > 0 else "behind")
        return
    if audio["num_gaps"] or audio["num_overlaps"]:
        ctx.log.warning("%s: the audio timestamps jump (%d gaps, %.3f s in all, filled with "
                        "silence; %d overlaps, %.3f s, dropped): placed on the video's clock "
                        "(ignoring them would put the audio %.3f s early by the end)",
                        path, audio["num_gaps"], audio["gap_seconds"], audio["num_overlaps"],
                        audio["overlap_seconds"], ahead)
    if abs(audio["start_offset"]) * fps >= 0.5:
        ctx.log.warning("%s: the audio starts %.3f s %s the first frame; placed there",
                        path, abs(audio["start_offset"]),
                        "after" if audio["start_offset"] > 0 else "before")


def check(ctx: StepContext) -> None:
    import cv2

    n = ctx.num_frames()
    d = ctx.path("ori_imgs")
    size = ctx.cfg.decode.crop_size
    for i in (0, n - 1):
        img = cv2.imread(str(d / f"{i}.jpg"))
        if img is None or img.shape[:2] != (size, size):
            raise StepError(STEP, f"frame {i} missing or not {size}x{size}", d / f"{i}.jpg")
    if (d / f"{n}.jpg").exists():
        raise StepError(STEP, f"more frames on disk than the {n} recorded", d)
    wav = ctx.path("aud.wav")
    try:
        with wave.open(str(wav)) as w:
            ok = (w.getframerate() == ctx.cfg.decode.sample_rate and w.getnchannels() == 1
                  and abs(w.getnframes() / w.getframerate() - n / ctx.cfg.decode.fps) < 0.05)
            length = w.getnframes()
    except (OSError, wave.Error, EOFError) as e:
        raise StepError(STEP, f"unreadable: {e}", wav) from e
    if not ok:
        raise StepError(STEP, "not 16 kHz mono or its length does not match the frames", wav)
    audio = ctx.manifest.get("audio") or {}
    if audio.get("timing") != ctx.cfg.decode.audio_timing or audio.get("num_samples") != length:
        raise StepError(STEP, f"no record that it was decoded with audio_timing="
                              f"{ctx.cfg.decode.audio_timing!r} (written by an older version, or "
                              "by hand); rerun the decode step", wav)


def settings(cfg) -> dict:
    from nerfhead.config import to_dict

    return to_dict(cfg.decode)


DECODE = Step(STEP, inputs=("@video",), outputs=("ori_imgs", "aud.wav"), run=run, check=check,
              settings=settings, doc="frames (fixed head crop, 25 fps) and 16 kHz mono audio")
