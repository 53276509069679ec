"""Video in and out through the ffmpeg bundled with imageio-ffmpeg.

``VideoWriter`` writes H.264 (yuv420p, 25 fps) frames to a temporary file in the target folder
and, on ``close``, muxes the audio (AAC, trimmed to the video's length) and renames the result
into place, so an interrupted render never leaves a half-written mp4 under the final name.
Temporaries carry ``nerfhead.fileio``'s marker (a killed render's are removed by the next
one); a write that fails on a full disk raises ``DiskFullError``.
``probe`` reads duration, size, fps and streams from ffmpeg's own report (no ffprobe here).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from nerfhead.fileio import raise_if_disk_full, temp_prefix


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_wav(path, samples: np.ndarray, sr: int = 16000) -> None:
    """16-bit mono PCM wav from float samples in [-1, 1]."""
    pcm = np.clip(np.asarray(samples, np.float64).reshape(-1), -1, 1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())


class VideoWriter:
    """``with VideoWriter(out, fps=25, audio=samples, sr=16000) as vw: vw.write(rgb_uint8)``.

    yuv420p needs even sizes: an odd width/height is padded by repeating the last column/row.
    ``audio`` is a float array of mono samples or None for a silent video.
    """

    def __init__(self, path, fps: int = 25, audio: np.ndarray | None = None, sr: int = 16000,
                 crf: int = 18):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.audio, self.sr, self.crf = fps, audio, sr, crf
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=temp_prefix(self.path.stem),
                                   suffix=".video.mp4")
        os.close(fd)
        self._video_tmp = Path(tmp)
        self._gen = None
        self._size = None
        self.frames = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        import imageio_ffmpeg

        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{self.path}: frames must be uint8 [H, W, 3], got "
                             f"{frame.dtype} {frame.shape}")
        if frame.shape[0] % 2 or frame.shape[1] % 2:
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)),
                           mode="edge")
        h, w = frame.shape[:2]
        if self._gen is None:
            self._size = (w, h)
            self._gen = imageio_ffmpeg.write_frames(
                str(self._video_tmp), (w, h), fps=self.fps, codec="libx264", quality=None,
                pix_fmt_out="yuv420p", macro_block_size=2,
                output_params=["-crf", str(self.crf), "-preset", "veryfast"])
            self._gen.send(None)
        elif (w, h) != self._size:
            raise ValueError(f"{self.path}: frame {self.frames} is {w}x{h}, earlier frames "
                             f"{self._size[0]}x{self._size[1]}")
        try:
            self._gen.send(frame)
        except Exception as e:  # the encoder died: most often the disk is full
            raise_if_disk_full(self.path.parent, e, what=self.path.name)
            raise
        self.frames += 1

    def abort(self) -> None:
        if self._gen is not None:
            try:
                self._gen.close()
            except Exception:
                pass
            self._gen = None
        self._video_tmp.unlink(missing_ok=True)

    def close(self) -> Path:
        if self._gen is None:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written")
        try:
            self._gen.close()
        except Exception as e:
            self.abort()
            raise_if_disk_full(self.path.parent, e, what=self.path.name)
            raise
        self._gen = None
        final_tmp = self.path.with_name(f"{temp_prefix(self.path.stem)}mux.mp4")
        try:
            if self.audio is not None and len(self.audio):
                n = int(round(self.frames / self.fps * self.sr))
                samples = np.asarray(self.audio).reshape(-1)[:n]
                if samples.size < n:  # pad short audio with silence to the video's length
                    samples = np.concatenate([samples, np.zeros(n - samples.size)])
                wav_tmp = self.path.with_name(f"{temp_prefix(self.path.stem)}audio.wav")
                try:
                    write_wav(wav_tmp, samples, self.sr)
                    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(self._video_tmp),
                           "-i", str(wav_tmp), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                           "-c:a", "aac", "-b:a", "128k", "-shortest", "-movflags", "+faststart",
                           str(final_tmp)]
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    if res.returncode != 0:
                        raise RuntimeError(f"{self.path}: muxing audio failed: {res.stderr[-800:]}")
                except Exception as e:  # checked before the temporaries free the space again
                    raise_if_disk_full(self.path.parent, e, what=self.path.name)
                    raise
                finally:
                    wav_tmp.unlink(missing_ok=True)
                os.replace(final_tmp, self.path)
            else:
                os.replace(self._video_tmp, self.path)
        finally:
            final_tmp.unlink(missing_ok=True)
            self._video_tmp.unlink(missing_ok=True)
        return self.path


def probe(path) -> dict:
    """{"duration": s, "width", "height", "fps", "has_video", "has_audio", "audio_codec",
    "video_codec"} from ``ffmpeg -i``'s report."""
    res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True)
    text = res.stderr
    if "No such file" in text or "Invalid data" in text:
        raise FileNotFoundError(f"cannot read video {path}: {text.strip()[-300:]}")
    info = {"duration": None, "width": None, "height": None, "fps": None, "has_video": False,
            "has_audio": False, "video_codec": None, "audio_codec": None}
    m = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", text)
    if m:
        info["duration"] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    m = re.search(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})", text)
    if m:
        info.update(has_video=True, video_codec=m[1], width=int(m[2]), height=int(m[3]))
        f = re.search(r"Stream #\S+.*?: Video:.*?([\d.]+) fps", text)
        info["fps"] = float(f[1]) if f else None
    m = re.search(r"Stream #\S+.*?: Audio: (\w+)", text)
    if m:
        info.update(has_audio=True, audio_codec=m[1])
    return info


def read_frames(path, fps: int = 25, max_frames: int | None = None):
    """Yield RGB uint8 frames of a video resampled to ``fps`` (ffmpeg's fps filter)."""
    import imageio_ffmpeg

    if not Path(path).is_file():
        raise FileNotFoundError(f"source video not found: {path}")
    gen = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={fps}"])
    meta = next(gen)
    w, h = meta["size"]
    count = 0
    try:
        for raw in gen:
            if max_frames is not None and count >= max_frames:
                break
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
            count += 1
    finally:
        gen.close()


class SourceFrames:
    """Random access to frames of a source video resampled to ``fps`` from ``start`` seconds,
    indexed like the dataset's frames (the same ``-ss start -vf fps=25`` decode preprocess
    uses). Frames are decoded in chunks and kept in a small cache; a pose sequence that runs
    backwards (mirror mode) decodes the chunk ending at the requested frame."""

    def __init__(self, path, fps: float = 25.0, start: float = 0.0, chunk: int = 32):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"paste-back source video not found: {self.path}")
        info = probe(self.path)
        if not info["has_video"]:
            raise ValueError(f"paste-back source {self.path} has no video stream")
        self.width, self.height = info["width"], info["height"]
        self.fps, self.start, self.chunk = fps, start, chunk
        self._cache: dict[int, np.ndarray] = {}
        self._last = None

    def _decode(self, first: int, count: int) -> None:
        t = self.start + first / self.fps
        cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-ss", f"{t:.4f}", "-i",
               str(self.path), "-map", "0:v:0", "-vf", f"fps={self.fps:g}", "-frames:v",
               str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        res = subprocess.run(cmd, capture_output=True)
        size = self.width * self.height * 3
        n = len(res.stdout) // size
        if res.returncode != 0 and n == 0:
            raise RuntimeError(f"decoding {self.path} at {t:.2f} s failed: "
                               f"{res.stderr.decode(errors='replace')[-300:]}")
        self._cache = {first + k: np.frombuffer(res.stdout[k * size:(k + 1) * size], np.uint8)
                       .reshape(self.height, self.width, 3) for k in range(n)}

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if i not in self._cache:
            backwards = self._last is not None and i < self._last
            first = max(0, i - self.chunk + 1) if backwards else i
            self._decode(first, self.chunk)
            if i not in self._cache:
                raise IndexError(f"{self.path} has no frame {i} at {self.fps:g} fps "
                                 f"from {self.start:g} s")
        self._last = i
        return self._cache[i]
