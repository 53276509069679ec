"""Lip-sync measures of ``nerfhead evaluate``: hand-computed cases, synthetic sequences with a
known answer, and the shared real clips (the GT proxy must peak near offset 0 when the audio
is on the video's clock, and move when it is not)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from nerfhead.eval import lipsync

FPS, SR = 25, 16000


# ------------------------------------------------------------------ synthetic, hand-computed
def test_offset_search_flags_a_best_offset_at_its_edge():
    rng = np.random.default_rng(0)
    energy = np.convolve(rng.random(300), np.ones(3) / 3, mode="same")
    inside = np.concatenate([np.full(4, np.nan), energy[:-4]])  # mouth lags 4 frames
    res = lipsync.offset_correlation(inside, energy, max_offset=8)
    assert res["best_offset"] == 4 and res["best_at_edge"] is False
    beyond = np.concatenate([np.full(12, np.nan), energy[:-12]])  # lags 12 > the search
    res = lipsync.offset_correlation(beyond, energy, max_offset=8)
    assert res["best_offset"] == 8 and res["best_at_edge"] is True


def test_opening_agreement_hand_values():
    t = np.arange(100)
    gt = 0.05 + 0.02 * np.sin(t / 3.0)
    half = 0.06 + 0.5 * (gt - 0.05)  # opens half as far, exactly in time
    res = lipsync.opening_agreement(half, gt)
    assert res["correlation"] == pytest.approx(1.0, abs=1e-12)
    assert res["amplitude_ratio"] == pytest.approx(0.5, abs=1e-12)
    assert res["range_ratio"] == pytest.approx(0.5, abs=1e-12)
    assert res["frames_used"] == 100
    # missing faces are left out pairwise; a frozen mouth has no correlation and ratio 0
    frozen = np.full(100, 0.04)
    frozen[::10] = np.nan
    res = lipsync.opening_agreement(frozen, gt)
    assert res["frames_used"] == 90 and res["correlation"] is None
    assert res["amplitude_ratio"] == pytest.approx(0.0, abs=1e-9)
    # anti-phase: r = -1 whatever the amplitude
    assert lipsync.opening_agreement(0.1 - gt, gt)["correlation"] == pytest.approx(-1.0)
    assert lipsync.opening_agreement(gt[:5], gt[:5])["correlation"] is None  # too few frames


def _smooth_noise(n, seed):
    """Frame series with a mouth's time scale: white noise smoothed over ~5 frames."""
    x = np.random.default_rng(seed).normal(size=n + 8)
    return np.convolve(x, np.ones(9) / 9, mode="valid")[:n]


def test_correlation_interval_brackets_r_and_narrows_with_more_frames():
    """Block-bootstrap interval of the opening correlation: exact for a perfect match,
    around the point estimate otherwise, covering 0 for unrelated series, and about
    sqrt(10) times narrower for 10x the frames."""
    g = _smooth_noise(1500, 0)
    assert lipsync.correlation_interval(g, 2 * g + 1) == pytest.approx([1.0, 1.0])
    assert lipsync.correlation_interval(g[:5], g[:5]) is None
    assert lipsync.correlation_interval(g, np.zeros_like(g)) is None
    noisy = g + 0.8 * _smooth_noise(1500, 1)
    r = lipsync._pearson(g, noisy)
    lo, hi = lipsync.correlation_interval(g, noisy)
    assert lo < r < hi and hi - lo < 0.1
    assert lipsync.correlation_interval(g, noisy) == [lo, hi]  # deterministic
    widths = {}
    for n in (200, 2000):
        a, b = _smooth_noise(n, 2), _smooth_noise(n, 3)
        lo, hi = lipsync.correlation_interval(a, b)
        assert lo < 0 < hi
        widths[n] = hi - lo
    assert 2.0 < widths[200] / widths[2000] < 5.0
    res = lipsync.opening_agreement(noisy, g)
    assert res["correlation_interval"] == lipsync.correlation_interval(noisy, g)
    assert lipsync.format_interval([0.812, 0.9]) == " (90% interval 0.81 to 0.90)"
    assert lipsync.format_interval(None) == ""


def test_speech_frames_on_bursts_ignores_clicks_and_short_gaps():
    rng = np.random.default_rng(1)
    loud = np.zeros(120, bool)
    loud[20:50] = loud[70:100] = True
    loud[35] = False  # a one-frame stop consonant inside a word
    loud[60] = True  # a one-frame click in silence
    samples = np.concatenate([rng.normal(0, 0.2 if v else 0.002, SR // FPS) for v in loud])
    speech = lipsync.speech_frames(lipsync.audio_energy_per_frame(samples, len(loud)))
    want = np.zeros(120, bool)
    want[20:50] = want[70:100] = True
    # the 80 ms energy window blurs each edge by at most one frame
    assert (speech != want).sum() <= 4 and speech[35] and not speech[60]
    # constant loud audio is all speech, digital silence is none
    assert lipsync.speech_frames(np.full(50, np.log(0.1))).all()
    assert not lipsync.speech_frames(np.full(50, np.log(1e-4))).any()


def test_speech_window_prefers_varying_speech():
    energy = np.full(200, -9.0)
    speech = np.zeros(200, bool)
    energy[100:150] = -2 + np.sin(np.arange(50))  # syllables
    speech[100:150] = True
    start = lipsync.speech_window(energy, speech, 25)
    assert 100 <= start <= 125
    assert lipsync.speech_window(energy[:10], speech[:10], 25) is None


# ------------------------------------------------------------------------ real clips
def _decode_on_timestamps(video, seconds: float) -> np.ndarray:
    """Audio of ``video``'s first ``seconds`` placed by presentation time (ffmpeg's
    aresample async), as preprocessing must decode it."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(video),
           "-vn", "-af", "aresample=async=1:first_pts=0", "-ac", "1", "-ar", str(SR),
           "-t", str(seconds), "-f", "s16le", "-acodec", "pcm_s16le", "-"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(out, "<i2").astype(np.float32) / 32768.0


def _gt_openings(video, num_frames: int) -> np.ndarray:
    from nerfhead.render.video import read_frames

    det = lipsync.FaceLandmarks()
    try:
        return np.array([lipsync.mouth_opening(det(f)) for f in read_frames(video, max_frames=num_frames)])
    finally:
        det.close()


def test_gt_proxy_peaks_near_zero_and_follows_a_shift(grid_video):
    """GRID's first two sentences (150 frames) with their audio on the video's clock: the proxy
    of the real mouth peaks within two frames of offset 0 and is judged meaningful; the same
    audio 6 frames late moves the peak by 6 (+-1) and the reference check notices."""
    opening = _gt_openings(grid_video, 150)
    assert np.isfinite(opening).all()
    samples = _decode_on_timestamps(grid_video, 6.0)
    res = lipsync.offset_correlation(opening, lipsync.audio_energy_per_frame(samples, 150), 10)
    assert abs(res["best_offset"]) <= 2 and not res["best_at_edge"]
    assert res["zero_offset_correlation"] > 0.45
    assert lipsync.proxy_reference(res)["meaningful"]
    late = np.concatenate([np.zeros(6 * SR // FPS, np.float32), samples])
    moved = lipsync.offset_correlation(opening, lipsync.audio_energy_per_frame(late, 150), 10)
    assert abs(moved["best_offset"] - (res["best_offset"] - 6)) <= 1
    assert not lipsync.proxy_reference(moved)["meaningful"]


def test_gt_proxy_on_fluent_speech_is_reported_as_unable_to_judge(hdtf_video):
    """The 8-s HDTF clip (fluent speech, the mouth also opens in pauses): the energy proxy of
    the real footage is flat within +-10 frames, so the report must say the proxy cannot
    judge this clip rather than quote a lag."""
    opening = _gt_openings(hdtf_video, 200)
    samples = _decode_on_timestamps(hdtf_video, 8.0)
    res = lipsync.offset_correlation(opening, lipsync.audio_energy_per_frame(samples, 200), 10)
    assert max(abs(c) for c in res["correlations"] if c is not None) < 0.4
    ref = lipsync.proxy_reference(res)
    assert not ref["meaningful"] and "GT" in ref["reason"]


def test_speech_frames_agree_with_grid_word_alignments(grid_video, shared_dir):
    """Speech / silence from audio energy against the corpus' word timings (first 4
    sentences, 12 s): at least 90% of the frames agree."""
    align = shared_dir / "data" / "video" / "grid_s1_align"
    names = [line.split()[1].removesuffix(".mpg") for line in
             (shared_dir / "data" / "video" / "grid_s1_300s.clips.txt").read_text().splitlines()
             if line.strip()]
    truth = np.zeros(4 * 75, bool)
    for k, name in enumerate(names[:4]):
        for line in (align / f"{name}.align").read_text().splitlines():
            a, b, word = line.split()
            if word not in ("sil", "sp"):  # units of 1/25000 s; frame centres at (i + 0.5) / 25
                t = (np.arange(75) + 0.5) / FPS
                truth[75 * k:75 * (k + 1)] |= (t >= int(a) / 25000) & (t < int(b) / 25000)
    samples = _decode_on_timestamps(grid_video, 12.0)
    speech = lipsync.speech_frames(lipsync.audio_energy_per_frame(samples, len(truth)))
    assert (speech == truth).mean() >= 0.9
    assert 0.3 < speech.mean() < 0.6


# ------------------------------------------------------------------ the evaluation report
@pytest.fixture(scope="module")
def hdtf_frames(hdtf_video):
    import cv2

    from nerfhead.render.video import read_frames

    frames = [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA)
              for f in read_frames(hdtf_video, max_frames=50)]
    return frames, _decode_on_timestamps(hdtf_video, 2.0)


def _evaluate(frames, renders, samples, out_dir, delivered=None):
    from nerfhead.eval.report import SequenceEvaluator, write_report

    det = lipsync.FaceLandmarks()
    mask = np.zeros((256, 256), np.uint8)
    mask[60:230, 50:210] = 255
    energy = lipsync.audio_energy_per_frame(samples, len(frames))
    start = lipsync.speech_window(energy, lipsync.speech_frames(energy))
    ev = SequenceEvaluator(det, None, "no LPIPS in this test", preview_frames=(0,),
                           strip_frames=tuple(range(start, start + 25)))
    for i, (gt, render) in enumerate(zip(frames, renders)):
        ev.add(i, render, gt, gt, mask, delivered=None if delivered is None else delivered[i])
    result = write_report(ev.finish(samples, {"run": "test", "split": "val", "composite": "c",
                                              "delivered_composite": "d"}),
                          ev.previews, out_dir, ev.strip)
    det.close()
    return result


def test_report_puts_lip_sync_first_and_sees_a_frozen_mouth(hdtf_frames, tmp_path):
    """Real frames: a render equal to the GT scores correlation 1 and amplitude ratio 1; a
    render frozen on one frame (the mouth never moves) scores no correlation and amplitude 0,
    while its PSNR alone would not say so. The report leads with lip sync, writes the mouth
    strip (GT above render) and the opening curves, and scores the delivered frames."""
    import cv2

    frames, samples = hdtf_frames
    same = _evaluate(frames, frames, samples, tmp_path / "same")
    mo = same["mouth_opening"]
    assert mo["correlation"] == pytest.approx(1.0) and mo["amplitude_ratio"] == pytest.approx(1.0)
    assert mo["frames_used"] == 50
    sp = same["speech_frames"]["count"]
    assert 0 < sp < 50  # the clip has a pause around frames 20-30
    full = same["modes"]["full"]
    assert full["lmd_speech"]["count"] == sp and full["lmd_silence"]["count"] == 50 - sp

    frozen = [frames[0]] * 50
    plate = [np.zeros_like(f) for f in frames]
    res = _evaluate(frames, frozen, samples, tmp_path / "frozen", delivered=plate)
    assert res["mouth_opening"]["correlation"] is None
    assert res["mouth_opening"]["amplitude_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert res["modes"]["full"]["lmd_speech"]["mean"] > 0.5
    assert res["delivered"]["psnr"]["mean"] < res["modes"]["full"]["psnr"]["mean"]

    report = (tmp_path / "frozen" / "report.md").read_text()
    assert report.index("## Lip sync") < report.index("## Image quality") < report.index("| PSNR")
    assert "composite measured below: c" in report and "delivers it: d" in report
    strip = cv2.imread(str(tmp_path / "frozen" / "mouth_strip.png"))
    assert strip.shape[0] == 2 * 64 + 2 and strip.shape[1] == 25 * 64 + 24 * 2
    same_strip = cv2.imread(str(tmp_path / "same" / "mouth_strip.png")).astype(int)
    # GT above render: identical rows when the render is the GT, not when it is frozen
    assert np.array_equal(same_strip[:64], same_strip[66:])
    assert np.array_equal(strip[:64], same_strip[:64])
    assert np.abs(strip[66:].astype(int) - strip[:64]).mean() > 5
    assert (tmp_path / "frozen" / "mouth_opening.png").stat().st_size > 10_000
    assert res["mouth_strip"]["frame_ids"] == sorted(res["mouth_strip"]["frame_ids"])


def test_driving_footage_is_a_reference_for_its_audio(hdtf_video, hdtf_frames, tmp_path, caplog):
    """`evaluate --drive VIDEO`: the driving speaker's mouth opening is measured on the frames
    the reader decodes (the same series as on the clip's frames at another size), and a file
    without a face or without a picture is no reference (None; a warning for the faceless
    video). The report then carries the rows against that footage."""
    import imageio_ffmpeg

    from nerfhead.eval.drive import drive_markdown, footage_opening
    from nerfhead.render.video import write_wav

    det = lipsync.FaceLandmarks()
    opening = footage_opening(hdtf_video, 50, det)
    assert opening.shape == (50,) and np.isfinite(opening).all()
    ref = np.array([lipsync.mouth_opening(det(f)) for f in hdtf_frames[0]])
    assert np.corrcoef(opening, ref)[0, 1] > 0.95
    assert 0.05 < np.median(opening) < 0.6

    faceless = tmp_path / "testsrc.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=128x128:rate=25", "-t", "1", str(faceless)], check=True)
    assert footage_opening(faceless, 25, det) is None
    assert "not used as a reference" in caplog.text
    wav = tmp_path / "speech.wav"
    write_wav(wav, np.zeros(SR, np.float32))
    assert footage_opening(wav, 25, det) is None

    report = {"run": "RUN", "audio": str(hdtf_video), "step": 1, "stage": "head",
              "audio_kind": "mel", "poses": "val", "data": "DATA", "frames": 50,
              "speech_frames": 30, "faces_missing": 0, "speaker_opening_std": 0.04,
              "amplitude_vs_speaker": 0.5, "lipsync_proxy": {"zero_offset_correlation": 0.5},
              "render_opening": {"std": 0.02, "mean_speech": 0.3, "mean_silence": 0.2},
              "footage": {"frames_with_face": 50, "opening_correlation": 0.612,
                          "amplitude_vs_footage": 0.8,
                          "footage_proxy": {"zero_offset_correlation": 0.1}}}
    text = drive_markdown(report)
    assert "correlation with the driving footage's speaker (50 frames) ↑ | 0.612" in text
    del report["footage"]
    assert "driving footage" not in drive_markdown(report)


def test_driving_footage_offset_is_found_and_explained():
    """A rendered mouth that trails the driving footage's by 3 frames (as every model does
    driven by the 8-s HDTF clip) is reported at offset +3 with the note on the video's own
    sync; one in step gets the best-offset row and no note."""
    from nerfhead.eval.drive import FOOTAGE_MAX_OFFSET, footage_offset_rows

    rng = np.random.default_rng(0)
    footage = np.convolve(rng.standard_normal(230), np.ones(4) / 4, mode="same")[:200]
    late = np.r_[np.full(3, footage[0]), footage[:-3]] + 0.05 * rng.standard_normal(200)
    late[[10, 50]] = np.nan  # frames without a face are left out pairwise
    o = lipsync.offset_correlation(late, footage, FOOTAGE_MAX_OFFSET)
    assert o["best_offset"] == 3 and not o["best_at_edge"]
    assert o["best_correlation"] > 0.95 > o["zero_offset_correlation"]
    speech = np.arange(200) % 50 < 40  # the last 10 of every 50 frames a pause
    sp = lipsync.offset_correlation(np.where(speech, late, np.nan), footage, FOOTAGE_MAX_OFFSET)
    text = "\n".join(footage_offset_rows({"opening_by_offset": o, "speech_opening_by_offset": sp}))
    assert "at its best offset" in text and "at +3 |" in text
    assert f"speech frames only (articulation, without the pauses) | {sp['correlations'][11]:.3f} at +3" in text
    assert sp["frames_used"] == 158 and sp["correlations"][11] > 0.9
    assert "3 frames after that speaker's own mouth" in text and "av_sync" in text

    in_step = lipsync.offset_correlation(footage, footage, FOOTAGE_MAX_OFFSET)
    text = "\n".join(footage_offset_rows({"opening_by_offset": in_step}))
    assert "1.000 at +0 |" in text and "out of step" not in text
    assert footage_offset_rows({}) == []


def test_evaluate_report_finds_a_lagging_mouth():
    """The held-out report: the opening correlation at every offset within 5 frames, and a
    note when the render follows the real mouth best 2+ frames off (a clip out of step with
    the training clip); none for a render in step."""
    from nerfhead.eval.report import OPENING_MAX_OFFSET, _opening_offset_note

    rng = np.random.default_rng(1)
    gt = np.convolve(rng.standard_normal(330), np.ones(5) / 5, mode="same")[:300]
    late = np.r_[np.full(2, gt[0]), gt[:-2]]
    o = lipsync.offset_correlation(late, gt, OPENING_MAX_OFFSET)
    assert o["best_offset"] == 2
    note = " ".join(_opening_offset_note({"by_offset": o}))
    assert "best 2 frames after it" in note and "av_sync" in note
    early = lipsync.offset_correlation(gt[2:], gt[:-2], OPENING_MAX_OFFSET)
    assert early["best_offset"] == -2 and "before it" in " ".join(_opening_offset_note({"by_offset": early}))
    assert _opening_offset_note({"by_offset": lipsync.offset_correlation(gt, gt, 5)}) == []
    assert _opening_offset_note({}) == []
