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

from preprocess.steps import Step, StepContext, StepError, atomic_path


@dataclass
class DecodeConfig:
    """How the source video becomes frames and audio."""

    fps: float = 25.0  #: output frame rate (the dataset contract is 25)
    crop_size: int = 512  #: output square side in pixels (smaller crops are scaled up)
    crop_scale: float = 2.0  #: crop side / face size (face size = larger side of the landmark box)
    crop_shift_down: float = 0.2  #: crop centre below the face centre, in face sizes (neck room)
    probe_frames: int = 8  #: frames sampled across the clip to place the crop
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


def probe(path: Path) -> VideoInfo:
    """Read the container header with ffmpeg; StepError when it is not a readable video."""
    if not path.is_file():
        raise StepError(STEP, "video file not found", path)
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True, errors="replace")
    err = proc.stderr
    video = re.search(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})", err)
    if video is None:
        last = [ln for ln in err.strip().splitlines() if ln.strip()]
        reason = last[-1].strip() if last else "ffmpeg could not read it"
        if "Output file" in reason or "At least one output" in reason:
            reason = "no video stream"
        raise StepError(STEP, f"not a readable video: {reason}", path)
    fps_m = re.search(r"Video:.*?([\d.]+) fps", err)
    dur_m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", err)
    tbr_m = re.search(r"Video:.*?([\d.]+) tbr", err)
    rot_m = re.search(r"rotation of (-?[\d.]+) degrees", err)
    rotation = int(round(float(rot_m.group(1)))) % 360 if rot_m else 0
    w, h = int(video.group(2)), int(video.group(3))
    if rotation in (90, 270):  # ffmpeg auto-rotates on decode: frames come out transposed
        w, h = h, w
    duration = (int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3))
                if dur_m else 0.0)
    return VideoInfo(w, h, float(fps_m.group(1)) if fps_m else 0.0, duration, video.group(1),
                     bool(re.search(r"Stream #\S+.*?: Audio:", err)), rotation,
                     float(tbr_m.group(1)) if tbr_m else 0.0)


def count_source_frames(path: Path) -> int | None:
    """Frames in the first video stream (stream copy: demux only, fast); None if unknown."""
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", str(path), "-map",
                           "0:v:0", "-c", "copy", "-f", "null", "-"],
                          capture_output=True, text=True, errors="replace")
    found = re.findall(r"frame=\s*(\d+)", proc.stderr)
    return int(found[-1]) if found else None


def read_frame_at(path: Path, t: float, w: int, h: int) -> np.ndarray | None:
    """One RGB frame at time ``t`` seconds at source size, or None past the end."""
    proc = subprocess.run([_ffmpeg(), "-nostdin", "-loglevel", "error", "-ss", f"{t:.3f}", "-i",
                           str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
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


def probe_faces(path: Path, info: VideoInfo, start: float, dur: float, n: int, weights_dir):
    from preprocess.landmarks import make_landmarker

    boxes = []
    with make_landmarker(weights_dir, video_mode=False) as lm:
        for k in range(n):
            frame = read_frame_at(path, start + (k + 0.5) * dur / n, info.width, info.height)
            if frame is not None and (box := face_box(frame, lm)) is not None:
                boxes.append(box)
    return boxes


# ----------------------------------------------------------------------------------- decode
def _seek(start: float) -> list[str]:
    # only seek when asked: an input seek to 0 still drops the AAC priming samples
    return ["-ss", f"{start:.3f}"] if start > 0 else []


def _write_frames(path: Path, out_dir: Path, start: float, n_frames: int, crop, cfg: DecodeConfig):
    import cv2
    from tqdm import tqdm

    x0, y0, side = crop
    s = cfg.crop_size
    vf = f"fps={cfg.fps:g},crop={side}:{side}:{x0}:{y0},scale={s}:{s}:flags=lanczos"
    cmd = [_ffmpeg(), "-nostdin", "-loglevel", "error", *_seek(start), "-i", str(path),
           "-map", "0:v:0", "-vf", vf, "-frames:v", str(n_frames), "-f", "rawvideo",
           "-pix_fmt", "bgr24", "-"]
    frame_bytes = s * s * 3
    count = 0
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        try:
            with tqdm(total=n_frames, desc="decode", unit="frame", leave=False) as bar:
                while (buf := proc.stdout.read(frame_bytes)) and len(buf) == frame_bytes:
                    img = np.frombuffer(buf, np.uint8).reshape(s, s, 3)
                    cv2.imwrite(str(out_dir / f"{count}.jpg"), img,
                                [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
                    count += 1
                    bar.update(1)
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
_FRAME_LOG = re.compile(r"\bn:\s*\d+\s+pts:\s*(-?\d+)\s.*?\bnb_samples:\s*(\d+)")


def decode_audio_frames(path: Path, start: float, seconds: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """The first audio stream as mono float32 at ``sr``, and per decoded audio frame its
    presentation time and length ``[K, 2]`` (int64, in samples at ``sr``).

    Times are on the clock of the written frames (0 = ``ori_imgs/0.jpg``): ffmpeg shifts all
    streams of an input by one amount (the container's start, plus ``-ss``), and the frame
    writer's constant-rate output starts at that zero too (a video stream that starts late is
    led in by repeats of its first picture), so no stream's own start needs correcting here.
    ``ashowinfo`` logs each frame after resampling, i.e. exactly the frames whose samples
    reach the pipe, so the log and the samples can be checked against each other.
    """
    af = f"aresample={sr},aformat=sample_fmts=flt:channel_layouts=mono,ashowinfo"
    # read a little past the end: the frames' length is set by the video, timestamps may jump
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "info", *_seek(start),
           "-t", f"{seconds + 1.0:.3f}", "-i", str(path), "-map", "0:a:0", "-vn", "-af", af,
           "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if "ashowinfo" not in ln]
        raise StepError(STEP, f"cannot decode the audio track: {' | '.join(lines[-3:])[-300:]}", path)
    samples = np.frombuffer(proc.stdout, "<f4")
    frames = np.array([(int(m.group(1)), int(m.group(2))) for m in _FRAME_LOG.finditer(err)],
                      np.int64).reshape(-1, 2)
    if samples.size == 0:
        raise StepError(STEP, "the audio track decodes to no samples", path)
    if int(frames[:, 1].sum()) != samples.size:
        raise StepError(STEP, f"ffmpeg's frame log covers {int(frames[:, 1].sum())} samples but "
                              f"{samples.size} were decoded; cannot place the audio on the video's "
                              "clock (rerun with --set decode.audio_timing=ignore_timestamps to "
                              "decode it without timestamps)", path)
    return samples, frames


def place_on_clock(samples: np.ndarray, frames: np.ndarray, n_out: int, jitter: int,
                   shift: int = 0) -> tuple[np.ndarray, dict]:
    """Samples laid out by presentation time: ``out[t]`` is the sound at sample time ``t``.

    ``frames`` [K, 2] = (pts, length) per decoded frame in samples, in decode order;
    ``shift`` is added to every pts. A frame that starts within ``jitter`` samples of where
    the previous one ended continues it seamlessly (timestamp rounding); a later start is a
    gap, left silent; an earlier one an overlap, whose repeated samples are dropped (the
    audio already placed is kept). Audio before time 0 or past ``n_out`` is cut. Returns the
    waveform [n_out] and what was found, in samples: the first frame's start, the gaps
    ``(where, length)`` and the overlaps ``(where, samples dropped)``; consecutive frames
    that all repeat placed audio (a muxer that squeezed an overlap into rising timestamps)
    count as one overlap.
    """
    out = np.zeros(n_out, np.float32)
    gaps: list[list[int]] = []
    overlaps: list[list[int]] = []
    end = written = None  # where the previous frame ended; the furthest sample placed
    src, repeating = 0, False
    for pts, length in frames.tolist():
        pts += shift
        jump = end is not None and abs(pts - end) > jitter
        target = pts if end is None or jump else end
        if jump and pts > end:
            gaps.append([end, pts - end])
        dropped = 0 if written is None else max(0, min(written, target + length) - target)
        if dropped and (jump or repeating):
            if repeating:
                overlaps[-1][1] += dropped
            else:
                overlaps.append([target, dropped])
        repeating = dropped > 0 and (jump or repeating)
        first = target + dropped
        lo, hi = max(first, 0), min(target + length, n_out)
        if hi > lo:
            out[lo:hi] = samples[src + lo - target:src + hi - target]
        src += length
        end = target + length
        written = end if written is None else max(written, end)
    return out, {"start": int(frames[0, 0]) + shift if len(frames) else 0,
                 "gaps": [tuple(g) for g in gaps], "overlaps": [tuple(o) for o in overlaps]}


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
    info = probe(path)
    if not info.has_audio:
        raise StepError(STEP, "the video has no audio track (a talking head needs its speech)", path)
    src_frames = count_source_frames(path)
    if not info.duration and src_frames and info.fps:  # raw streams carry no duration
        info.duration = src_frames / info.fps
    start = max(0.0, cfg.start_seconds)
    avail = info.duration - start
    dur = avail if cfg.max_seconds is None else min(avail, cfg.max_seconds)
    if dur < cfg.min_seconds:
        raise StepError(STEP, f"too short: {dur:.2f} s usable (after start {start:g} s), "
                              f"need at least {cfg.min_seconds:g} s", path)
    expected = int(np.floor(dur * cfg.fps + 1e-6))

    avg_fps = src_frames / info.duration if src_frames and info.duration else None
    # variable frame rate: the average rate disagrees with the stream's base rate, or the
    # demuxed frame count disagrees with the average rate x duration
    vfr = bool((info.tbr and info.fps and abs(info.tbr - info.fps) / info.fps > 0.01)
               or (avg_fps and info.fps and abs(avg_fps - info.fps) / info.fps > 0.01))
    if vfr:
        ctx.log.warning("%s: variable frame rate (nominal %.3f fps, average %.3f fps); "
                        "resampled to %g fps by timestamp", path, info.fps, avg_fps, cfg.fps)

    boxes = probe_faces(path, info, start, dur, cfg.probe_frames, getattr(ctx.cfg, "weights_dir", None))
    if not boxes:
        raise StepError(STEP, f"no face found in any of {cfg.probe_frames} frames sampled "
                              f"across {dur:.1f} s", path)
    crop = choose_crop(boxes, info.width, info.height, cfg)

    out_dir = ctx.path("ori_imgs")
    tmp_dir = Path(tempfile.mkdtemp(dir=ctx.data_dir, prefix=".ori_imgs."))
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
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    video = {"source": str(path.resolve()), "source_size": [info.width, info.height],
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
