"""Audio decoded on the video's clock (issue 9).

Clips are built here from the shared GRID clip: white frames flashed at known video frames and
4 kHz tone bursts at the same presentation times, in audio streams whose timestamps carry the
faults real files have: gaps (pieces joined with ffmpeg's concat demuxer whose audio is
shorter than their video, as in grid_s1_300s.mp4), overlaps (audio longer), a constant offset
(the audio stream starting after the video, or the video after the audio, with and without
``--start-seconds``) and a slow drift (timestamps 1% slower than the sample count). After the
decode step each burst must start within one frame (40 ms) of its flash in the written frames;
decoding the same clips ignoring the timestamps (the old behaviour) misses by more.
"""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from preprocess import driver
from preprocess.decode import DECODE, DecodeConfig, _write_audio, place_on_clock

FPS, SRC_SR, TONE = 25, 44100, 4000.0
FRAME = 1.0 / FPS


def ffmpeg(*args) -> bytes:
    import imageio_ffmpeg

    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                           *map(str, args)], check=True, capture_output=True).stdout


def speech(grid: Path, start: float, seconds: float) -> np.ndarray:
    raw = ffmpeg("-ss", start, "-t", seconds, "-i", grid, "-map", "0:a:0", "-ac", "1", "-ar",
                 SRC_SR, "-f", "f32le", "-")
    return np.frombuffer(raw, "<f4").astype(np.float64)


def build_piece(grid: Path, dst: Path, seconds: float, flashes: list[int], *, start: float = 0.0,
                video_start: float = 0.0, audio_start: float = 0.0, audio_scale: float = 1.0,
                audio_seconds: float | None = None) -> None:
    """``seconds`` of the GRID clip from ``start``: frames ``flashes`` white, and an audio
    stream (speech x0.3 + 40 ms tone bursts) that a player puts in sync with them once its
    stream starts at ``audio_start`` and its timestamps run ``audio_scale`` x its samples;
    the video stream starts at ``video_start``; the audio lasts ``audio_seconds`` of its own
    samples (default: as long as the video)."""
    tmp = dst.with_suffix("")
    enable = "+".join(f"eq(n,{k})" for k in flashes)
    ffmpeg("-ss", start, "-t", seconds, "-i", grid, "-an", "-vf",
           f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='{enable}'",
           "-c:v", "libx264", "-preset", "ultrafast", "-g", FPS, f"{tmp}_v.mp4")
    n = int(round((audio_seconds or seconds) * SRC_SR))
    audio = np.zeros(n)
    sp = 0.3 * speech(grid, start, n / SRC_SR)
    audio[:sp.size] = sp[:n]
    burst = 0.5 * np.sin(2 * np.pi * TONE * np.arange(int(FRAME * SRC_SR)) / SRC_SR)
    for k in flashes:
        at = int(round((video_start + k * FRAME - audio_start) / audio_scale * SRC_SR))
        assert 0 <= at and at + burst.size <= n, "burst outside the audio"
        audio[at:at + burst.size] += burst
    with wave.open(f"{tmp}_a.wav", "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SRC_SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    ffmpeg("-i", f"{tmp}_a.wav", "-c:a", "aac", "-b:a", "96k", f"{tmp}_a.m4a")
    ffmpeg("-itsoffset", video_start, "-i", f"{tmp}_v.mp4", "-itsoffset", audio_start,
           "-itsscale", audio_scale, "-i", f"{tmp}_a.m4a", "-map", "0:v", "-map", "1:a",
           "-c", "copy", dst)


def concat(pieces: list[Path], dst: Path, duration: float | None = None) -> None:
    """Join with the concat demuxer (stream copy): each piece starts where the previous one's
    ``duration`` (default: its length) ends, whatever the length of its audio."""
    lst = dst.with_suffix(".txt")
    lst.write_text("".join(f"file '{p}'\n" + (f"duration {duration}\n" if duration else "")
                           for p in pieces))
    ffmpeg("-f", "concat", "-safe", "0", "-i", lst, "-c", "copy", dst)


def flash_frames(img_dir: Path) -> list[int]:
    n = len(list(img_dir.glob("*.jpg")))
    return [i for i in range(n) if cv2.imread(str(img_dir / f"{i}.jpg")).mean() > 200]


def burst_onsets(samples: np.ndarray, sr: int = 16000) -> list[float]:
    """Start times (s) of the tone bursts: where the 4 kHz band envelope first rises above
    half its peak, bursts at least 0.2 s apart."""
    from scipy.signal import butter, sosfiltfilt

    band = sosfiltfilt(butter(6, (TONE - 250, TONE + 250), btype="band", fs=sr, output="sos"), samples)
    env = np.sqrt(np.convolve(band ** 2, np.ones(40) / 40, mode="same"))  # 2.5 ms RMS
    above = np.flatnonzero(env > 0.5 * env.max())
    starts = above[np.concatenate([[True], np.diff(above) > 0.2 * sr])]
    return list(starts / sr)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0


def misses(onsets: list[float], flashes: list[int]) -> np.ndarray:
    """Per flash, burst start minus flash time (s); requires one burst per flash."""
    assert len(onsets) == len(flashes), (onsets, flashes)
    return np.asarray(onsets) - np.asarray(flashes) * FRAME


def decode(video: Path, out: Path, **decode_cfg) -> dict:
    cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, **decode_cfg),
                          weights_dir=None)
    driver.run_steps(video, out, cfg, steps=[DECODE])
    return json.loads((out / "manifest.json").read_text())


# --------------------------------------------------------------------------------- clips
GAP_FLASHES = [10, 40, 65]  # per 3-s piece
#: the gapped clip remuxed or re-encoded (ffmpeg keeps the audio frames' timestamps)
REENCODED = {"gaps_mkv": ("copy", "mkv"), "gaps_opus_mkv": ("libopus", "mkv"),
             "gaps_mp3_mp4": ("libmp3lame", "mp4")}


def clip(kind: str, grid: Path, d: Path) -> Path:
    dst = d / f"{kind}.mp4"
    if dst.exists():
        return dst
    if kind == "gaps":  # 3 pieces whose audio is 0.12 s short: 2 gaps of 3 frames
        pieces = [d / f"gap{i}.mp4" for i in range(3)]
        for i, p in enumerate(pieces):
            build_piece(grid, p, 3.0, GAP_FLASHES, start=3.0 * i, audio_seconds=2.88)
        concat(pieces, dst)
    elif kind in REENCODED:  # the same gaps in other containers and codecs
        codec, ext = REENCODED[kind]
        dst = d / f"{kind}.{ext}"
        ffmpeg("-i", clip("gaps", grid, d), "-c:v", "copy", "-c:a", codec, dst)
    elif kind == "overlaps":  # audio 0.2 s longer than the 3-s slot each piece is given
        pieces = [d / f"ovl{i}.mp4" for i in range(3)]
        for i, p in enumerate(pieces):
            build_piece(grid, p, 3.0, GAP_FLASHES, start=3.0 * i, audio_seconds=3.2)
        concat(pieces, dst, duration=3.0)
    elif kind == "audio_late":  # the audio stream starts 0.3 s after the video
        build_piece(grid, dst, 6.0, [20, 80, 140], audio_start=0.3, audio_seconds=5.6)
    elif kind == "video_late":  # the video stream starts 0.5 s after the audio
        build_piece(grid, dst, 6.0, [20, 80, 140], video_start=0.5, audio_seconds=6.5)
    elif kind == "drift":  # audio timestamps advance 1% faster than its samples
        build_piece(grid, dst, 9.0, [20, 100, 180, 215], audio_scale=1.01, audio_seconds=8.9)
    return dst


@pytest.fixture(scope="module")
def clips(grid_video, tmp_path_factory):
    d = tmp_path_factory.mktemp("clock")
    return lambda kind: clip(kind, grid_video, d)


@pytest.mark.parametrize("kind, start", [("gaps", 0.0), *[(k, 0.0) for k in REENCODED],
                                         ("overlaps", 0.0), ("audio_late", 0.0),
                                         ("audio_late", 1.0), ("video_late", 0.0),
                                         ("video_late", 0.3), ("drift", 0.0)])
def test_bursts_land_on_their_flash_frames(clips, tmp_path, kind, start):
    video = clips(kind)
    # the overlapping clip's last audio runs past its video: decode the video's length only
    m = decode(video, tmp_path / "out", start_seconds=start,
               max_seconds=8.96 if kind == "overlaps" else None)
    flashes = flash_frames(tmp_path / "out" / "ori_imgs")
    assert flashes, "no flash in the written frames"
    miss = misses(burst_onsets(read_wav(tmp_path / "out" / "aud.wav")), flashes)
    assert np.abs(miss).max() < FRAME, f"bursts off their flashes by {np.round(miss, 3)} s"
    audio = m["audio"]
    assert audio["timing"] == "timestamps" and audio["num_samples"] == m["video"]["num_frames"] * 640
    if kind.startswith("gaps"):
        assert audio["num_gaps"] == 2 and audio["num_overlaps"] == 0
        # each gap runs from the end of a piece's audio (2.88 s + the AAC encoder's padding
        # of its last frame) to the start of the next piece; re-encoding regroups the samples
        # into the new codec's frames, which moves a gap by up to one of them (20-26 ms)
        tol = 0.002 if kind in ("gaps", "gaps_mkv") else 0.03
        for g, piece_end in zip(audio["gaps"], (3.0, 6.0)):
            assert piece_end - 0.12 - tol <= g["at"] <= piece_end - 0.05 + tol
            assert g["at"] + g["seconds"] == pytest.approx(piece_end, abs=tol)
    if kind == "overlaps":
        assert audio["num_overlaps"] == 2 and audio["num_gaps"] == 0
        # each piece's last 0.2 s (+ AAC padding) repeats the next piece's first: dropped
        assert all(0.2 <= o["seconds"] <= 0.25 for o in audio["overlaps"])
    if kind == "audio_late":
        # muxed with a delay, the AAC priming frame (1024 samples, decoded to near silence)
        # is kept and timed just before the delayed start
        expected = 0.3 - 1024 / SRC_SR if start == 0 else 0.0
        assert audio["start_offset"] == pytest.approx(expected, abs=0.002)
    if kind == "drift":  # corrected in small steps: about 1% of 8.9 s in all
        assert audio["gap_seconds"] == pytest.approx(0.089, abs=0.01)
        assert max(g["seconds"] for g in audio["gaps"]) <= 0.0025

    # the old decode (samples end to end from the first one) misses these by frames
    if kind in ("gaps", "overlaps", "audio_late", "drift") and start == 0.0:
        old = tmp_path / "old.wav"
        rec = _write_audio(video, old, start, m["video"]["num_frames"] / FPS,
                           DecodeConfig(audio_timing="ignore_timestamps"))
        onsets = burst_onsets(read_wav(old))
        if len(onsets) == len(flashes):  # (else the slide pushed a burst out of the clip)
            old_miss = misses(onsets, flashes)
            assert np.abs(old_miss).max() > 1.5 * FRAME
            assert abs(old_miss[-1] + rec["ahead_at_end_without_timestamps"]) < 2 * FRAME


@pytest.mark.parametrize("start", [0.0, 1.28])
def test_audio_offset_delays_the_audio(clips, tmp_path, start):
    video = clips("gaps")
    m = decode(video, tmp_path / "out", audio_offset=0.2, start_seconds=start)
    flashes = flash_frames(tmp_path / "out" / "ori_imgs")
    audio = read_wav(tmp_path / "out" / "aud.wav")
    miss = misses(burst_onsets(audio), flashes)
    assert np.abs(miss - 0.2).max() < FRAME / 2
    assert m["audio"]["applied_offset"] == 0.2 and m["audio"]["start_offset"] == pytest.approx(0, abs=1e-3)
    # after a cut, the delayed audio begins with the sound from before the cut, not silence
    head = np.abs(audio[:int(0.2 * 16000)]).max()
    assert head > 0.01 if start else head == 0, head
    old = _write_audio(video, tmp_path / "old.wav", start, m["video"]["num_frames"] / FPS,
                       DecodeConfig(audio_timing="ignore_timestamps", audio_offset=0.2))
    first = misses(burst_onsets(read_wav(tmp_path / "old.wav")), flashes)[0]
    assert first == pytest.approx(miss[0], abs=0.002)  # no gap before the first flash
    assert old["applied_offset"] == 0.2


# ------------------------------------------------------------------------- hand-computed
def test_place_on_clock_fills_gaps_drops_overlaps_and_cuts_the_ends():
    x = np.arange(1, 13, dtype=np.float32)
    frames = np.array([[0, 3], [3, 3], [8, 3], [10, 3]])  # contiguous, gap of 2, overlap of 1
    out, found = place_on_clock(x, frames, 16, jitter=0)
    assert out.tolist() == [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 11, 12, 0, 0, 0]
    assert found == {"start": 0, "gaps": [(6, 2)], "overlaps": [(10, 1)]}
    out, found = place_on_clock(x, frames, 8, jitter=0, shift=-2)  # starts before frame 0
    assert out.tolist() == [3, 4, 5, 6, 0, 0, 7, 8] and found["start"] == -2
    # steps within the jitter continue seamlessly until the error passes it
    out, found = place_on_clock(x, np.array([[2, 3], [6, 3], [9, 3], [12, 3]]), 16, jitter=1)
    assert out.tolist() == [0, 0, *range(1, 13), 0, 0] and found["gaps"] == []
    out, found = place_on_clock(x, np.array([[0, 3], [4, 3], [8, 3], [12, 3]]), 16, jitter=1)
    assert found["gaps"] == [(6, 2)]  # 1 sample late, then 2: corrected there
    assert out.tolist() == [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0]
    # an overlap of several frames is one overlap, recorded where the repeat starts
    out, found = place_on_clock(x, np.array([[0, 3], [3, 3], [2, 2], [4, 2], [6, 2]]), 10, jitter=0)
    assert found == {"start": 0, "gaps": [], "overlaps": [(2, 4)]}
    assert out.tolist() == [1, 2, 3, 4, 5, 6, 11, 12, 0, 0]


def test_unknown_audio_timing_is_refused(grid_video, tmp_path):
    from preprocess.steps import StepError

    with pytest.raises(StepError, match="audio_timing"):
        _write_audio(grid_video, tmp_path / "a.wav", 0.0, 1.0, DecodeConfig(audio_timing="pts"))
    assert not (tmp_path / "a.wav").exists()


def test_features_follow_a_redecoded_audio(grid_video, tmp_path):
    """A dataset decoded the old way and featurised: decoding it again on the timestamps
    makes the audio step run again on the new aud.wav (its input changed), nothing stale."""
    from preprocess.audio import AUDIO, AudioConfig

    out = tmp_path / "data"

    def run(timing):
        cfg = SimpleNamespace(decode=DecodeConfig(crop_size=64, probe_frames=2, max_seconds=8.0,
                                                  start_seconds=1.0, audio_timing=timing),
                              audio=AudioConfig(kinds=["mel"]), weights_dir=None)
        res = driver.run_steps(grid_video, out, cfg, steps=[DECODE, AUDIO])
        return {r.name: r.status for r in res}, np.load(out / "aud_mel.npy")

    assert run("ignore_timestamps")[0] == {"decode": "ran", "audio": "ran"}
    status, old = run("ignore_timestamps")
    assert status == {"decode": "skipped", "audio": "skipped"}
    status, new = run("timestamps")
    assert status == {"decode": "ran", "audio": "ran"}
    # the 3-s join at 3 s (2 s in): the old audio runs 22 ms early after it, the new does not
    assert np.abs(new[:40] - old[:40]).max() < 1e-4 and np.abs(new[60:] - old[60:]).max() > 0.1


@pytest.mark.parametrize("kind", ["gaps", "overlaps", "audio_late", "drift"])
def test_driving_audio_from_a_video_is_read_on_its_clock(clips, kind):
    """`nerfhead render/evaluate --drive` read a video's audio as a player plays it: the
    bursts land on the flashes of the frames the renderer's reader decodes (before, read end
    to end, they slid by every timestamp jump, as aud.wav did)."""
    from nerfhead.audio.features import load_audio
    from nerfhead.render.video import read_frames

    video = clips(kind)
    flashes = [i for i, f in enumerate(read_frames(video)) if f.mean() > 200]
    assert flashes, "no flash in the decoded frames"
    miss = misses(burst_onsets(load_audio(video)), flashes)
    assert np.abs(miss).max() < FRAME, f"bursts off their flashes by {np.round(miss, 3)} s"


def test_an_audio_file_with_a_gap_in_its_timestamps(tmp_path):
    """An audio-only file joined from two pieces whose first piece is shorter than its slot:
    the second piece is heard where its timestamps put it (silence between), and the sound
    starts at the file's first sample."""
    from nerfhead.audio.clock import load_on_clock

    sr = 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
    raw = tmp_path / "a.wav"
    with wave.open(str(raw), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((tone * 32767).astype("<i2").tobytes())
    piece = tmp_path / "a.m4a"
    ffmpeg("-i", raw, "-c:a", "aac", piece)
    (tmp_path / "list.txt").write_text(f"file '{piece}'\nduration 1.5\nfile '{piece}'\n")
    joined = tmp_path / "joined.m4a"
    ffmpeg("-f", "concat", "-safe", "0", "-i", tmp_path / "list.txt", "-c", "copy", joined)
    samples, found = load_on_clock(joined, sr)
    assert not found["has_video"]
    # the gap runs from the end of the first piece (1 s + the AAC padding) to 1.5 s
    assert found["num_gaps"] == 1 and 0.35 <= found["gap_seconds"] <= 0.5
    loud = np.abs(samples) > 0.1
    # each piece keeps its AAC priming frame (1024 samples of near silence) through the
    # concat demuxer: the tones start 64 ms into their slots
    priming = 1024 / sr
    assert np.flatnonzero(loud)[0] / sr == pytest.approx(priming, abs=0.01)  # no other lead-in
    assert not loud[int(1.1 * sr):int(1.5 * sr)].any()  # the gap is silent
    second = np.flatnonzero(loud[int(1.2 * sr):])[0] / sr + 1.2
    assert second == pytest.approx(1.5 + priming, abs=0.01)
