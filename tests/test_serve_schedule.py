"""The live session on a simulated clock with a simulated slow renderer: frames dropped and
repeated, A/V offset bounded and not drifting, audio continuous, head never frozen."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nerfhead.serve.schedule import FrameScheduler
from nerfhead.serve.session import FPS, LiveSession, SessionLimits


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class SlowRenderer:
    """Stands in for ``Renderer``: the picture encodes the pose it was given (so a frozen head
    would show), the render time is set by the simulation."""

    audio_kind = "mel"
    audio_window = 4

    def render(self, c2w, windows, centre, expression, mean_latent=False):
        assert windows.shape == (4, 16, 80) and centre == 2
        img = np.zeros((8, 8, 3), np.uint8)
        img[..., 0] = int(abs(c2w[0, 3]) * 1e4) % 256
        return img


@pytest.fixture(scope="module")
def motion_data(tmp_path_factory):
    from nerfhead.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("live") / "data", num_frames=22, size=32)


@pytest.fixture(scope="module")
def speech(shared_dir):
    from nerfhead.audio.features import load_audio

    return load_audio(shared_dir / "data" / "audio" / "radio31_8s.wav")


def simulate(motion_data, speech, seconds, render_time, seed=0, estimate=None):
    """A microphone pushing 20 ms every 20 ms, one render thread taking ``render_time(i)`` s,
    the transport asking for a video frame every 40 ms and 20 ms of audio every 20 ms."""
    from nerfhead.motion.live import LiveMotion

    clock = Clock()
    motion = LiveMotion(motion_data, None, use_model=False, seed=seed)
    s = LiveSession(SlowRenderer(), motion, estimate or render_time(0), SessionLimits(),
                    clock=clock)
    dt = 0.005
    busy_until, job = None, None
    pushed, audio_out, shown = 0, [], []
    k = m = 0
    for step in range(int(seconds / dt)):
        clock.t = step * dt
        while (pushed + 320) / 16000 <= clock.t:  # the microphone
            s.push_audio(speech[pushed % len(speech):][:320])
            pushed += 320
        if job is not None and clock.t >= busy_until:
            idx, rgb = job
            s.rendered(idx, rgb, render_time(idx))
            job = None
        if job is None:
            s.step()
            item = s.next_render()
            if item is not None:
                idx, rgb, _ = s.render(item)
                job, busy_until = (idx, rgb), clock.t + render_time(idx)
        while s.delay + k / FPS <= clock.t:  # the video track
            j, rgb = s.frame_at(k)
            shown.append((k, j, -1 if rgb is None else int(rgb[0, 0, 0])))
            k += 1
        while s.delay + m * 0.02 <= clock.t:  # the audio track
            audio_out.append(s.audio_at(m * 320, 320))
            m += 1
    return s, shown, np.concatenate(audio_out), pushed


def test_scheduler_picks_the_first_frame_that_can_be_on_time():
    sch = FrameScheduler(fps=25, delay=0.5, expected_render=0.1)
    assert sch.pick(0.0, 0, 100) is None  # frame 0 is due at 0.5 s: too early to start
    assert sch.pick(0.35, 0, 100) == 0
    # at 1.0 s frames due before 1.1 s cannot make it: first on time is ceil((1.1-0.5)*25)=15
    assert sch.pick(1.0, 0, 100) == 15
    # its audio has not arrived, and cannot in time: the newest frame that has it goes, late
    assert sch.pick(1.0, 0, 10) == 10
    # a fast renderer with audio queued ahead does not run ahead of the clock
    ahead = FrameScheduler(fps=25, delay=0.5, expected_render=0.1)
    ahead.done(0, "f0", 0.1, 0.1)
    assert ahead.pick(0.1, 1, 100) is None  # frame 1 is due at 0.54 s: too early to start
    assert ahead.pick(0.4, 1, 100) == 1
    early = FrameScheduler(fps=25, delay=0.5, expected_render=0.1)
    early.done(0, "f0", 0.1, 0.1)
    assert early.pick(0.1, 0, 0) is None  # frame 1's audio is still on time to come: wait
    sch.done(15, "f15", 0.1, 1.1)
    assert sch.stats.dropped == 15 and sch.pick(1.0, 0, 100) == 16
    assert sch.show(14) == (None, None)  # never a frame ahead of its audio
    assert sch.show(15) == (15, "f15") and sch.show(17) == (15, "f15")
    assert sch.stats.repeated == 1 and sch.stats.offset_frames == 2


@pytest.mark.parametrize("render_time", [0.013, 0.13, 0.41])
def test_slow_renderer_drops_and_repeats_with_bounded_offset(motion_data, speech, render_time):
    s, shown, audio, pushed = simulate(motion_data, speech, 40.0, lambda i: render_time)
    st = s.stats()
    frames_per_render = render_time * FPS
    shown = [x for x in shown if x[1] is not None]
    offsets = np.array([k - j for k, j, _ in shown])
    assert offsets.min() >= 0  # never ahead of the sound
    # bounded: one render time plus a frame
    assert offsets.max() <= math.ceil(frames_per_render) + 1
    # no drift: the last 10 s are no worse than the first 10 s after the start
    n10 = int(10 * FPS)
    assert offsets[-n10:].mean() <= offsets[n10:2 * n10].mean() + 0.5
    if render_time > 1 / FPS:
        assert st["dropped"] > 0 and st["repeated"] > 0
        # the renderer is kept busy rendering frames that are on time
        assert st["rendered"] >= 0.9 * 40.0 / render_time * (1 - s.delay / 40.0)
    else:
        assert st["dropped"] == 0 and offsets.max() == 0
    # audio continuous: the output is the microphone's samples, delayed, without a gap
    n = len(audio)
    assert n > 0.9 * (40 - s.delay) * 16000
    ref = np.concatenate([speech] * 6)[:pushed]
    assert np.array_equal(audio, ref[:n])
    assert st["silence_filled_s"] == 0.0


def test_render_time_misestimated_and_variable(motion_data, speech):
    """Render times between 0.05 and 0.35 s while the delay was set for 0.05 s: frames are
    late (their audio arrives only delay - look-ahead before they are due), yet the offset
    stays within two slowest renders less that slack, does not drift, and the estimate
    catches up."""
    rng = np.random.default_rng(0)
    times = rng.uniform(0.05, 0.35, 10000)
    s, shown, _, _ = simulate(motion_data, speech, 30.0, lambda i: times[i], estimate=0.05)
    offsets = np.array([k - j for k, j, _ in shown if j is not None])
    slack = s.delay - s.lookahead
    assert offsets.max() <= math.ceil((2 * 0.35 - slack) * FPS) + 1
    n10 = int(10 * FPS)
    assert offsets[-n10:].mean() <= offsets[:n10].mean() + 1.0
    assert s.stats()["rendered"] > 100
    assert 0.1 < s.scheduler.expected_render < 0.3


def test_input_gap_is_filled_with_silence_and_the_head_keeps_moving(motion_data, speech):
    """Nothing pushed for 6 s (the speaker is silent): audio still plays (silence), frames
    are still rendered, and the pictures (which encode the pose) keep changing."""
    from nerfhead.motion.live import LiveMotion

    clock = Clock()
    s = LiveSession(SlowRenderer(), LiveMotion(motion_data, None, use_model=False), 0.02,
                    clock=clock)
    s.push_audio(speech[:16000])
    seen = []
    for step in range(int(7.0 / 0.01)):
        clock.t = step * 0.01
        s.step()
        item = s.next_render()
        if item is not None:
            idx, rgb, _ = s.render(item)
            s.rendered(idx, rgb, 0.02)
            seen.append(int(rgb[0, 0, 0]))
    st = s.stats()
    assert st["silence_filled_s"] > 4.0
    assert st["rendered"] > 100
    later = seen[-50:]  # the last 2 s, all silence
    assert len(set(later)) > 10  # head motion goes on while listening


def test_a_stalled_microphone_does_not_leave_its_latency_behind(motion_data):
    """The microphone stalls 0.6 s, then its backlog arrives at once: silence filled the gap,
    so its audio now plays 0.6 s later than before; quiet chunks are dropped until the latency
    is back (speech chunks never are)."""
    from nerfhead.motion.live import LiveMotion

    clock = Clock()
    s = LiveSession(SlowRenderer(), LiveMotion(motion_data, None, use_model=False), 0.05,
                    clock=clock)
    t = np.arange(12 * 16000) / 16000
    mic = (0.3 * np.sin(2 * np.pi * 200 * t) * (t % 1.0 < 0.5)).astype(np.float32)
    pushed, lat = 0, []
    for step in range(int(10.0 / 0.005)):
        clock.t = step * 0.005
        stalled = 3.0 <= clock.t < 3.6
        while not stalled and (pushed + 320) / 16000 <= clock.t:
            s.push_audio(mic[pushed:pushed + 320], live=True)
            pushed += 320
        s.step()
        lat.append((clock.t, s.latency))
    before = np.median([v for t_, v in lat if 1.0 < t_ < 3.0])
    right_after = max(v for t_, v in lat if 3.6 <= t_ < 3.7)
    end = np.median([v for t_, v in lat if t_ > 8.0])
    assert right_after > before + 0.4  # the stall's silence would stay as latency...
    assert end < before + s.limits.jitter + 0.03  # ...but is won back in quiet moments
    assert s.dropped_live > 0.3
    # what was dropped was quiet: every tone burst after the stall is complete in the output
    out = s.audio_at(int((9.2 - s.delay) * 16000), 16000)  # one period, kept and arrived
    assert np.isclose(np.mean(np.abs(out) > 0.01), 0.5, atol=0.05)


def test_a_quiet_microphone_is_heard_at_the_training_level(motion_data):
    """A session with the training clip's speech level (``nerfhead serve``'s default): speech
    20 dB under it gives the features of speech at it (after the first words), and the stats
    say the gain; what plays is the audio as pushed."""
    from nerfhead.motion.live import LiveMotion

    t = np.arange(6 * 16000) / 16000
    loud = (0.2 * np.sin(2 * np.pi * 200 * t) * (t % 1.0 < 0.5)
            + np.random.default_rng(0).normal(0, 2e-3, t.size)).astype(np.float32)
    from nerfhead.audio.level import speech_level_db

    windows = {}
    for name, x, target in (("loud", loud, None), ("quiet", 0.1 * loud, speech_level_db(loud))):
        clock = Clock()
        s = LiveSession(SlowRenderer(), LiveMotion(motion_data, None, use_model=False), 0.02,
                        clock=clock, level_target=target)
        s.push_audio(x)
        for step in range(int(5.0 / 0.01)):
            clock.t = step * 0.01
            s.step()
        windows[name] = {fa.index: fa.windows for fa, _, _ in s.ready}
        if name == "quiet":
            assert s.stats()["audio_gain_db"] == pytest.approx(20.0, abs=0.1)
            a = int(4.5 * 16000)  # played as pushed
            assert np.array_equal(s.audio_at(a, 1600), x[a:a + 1600])
    late = [i for i in windows["quiet"] if i >= 50 and i in windows["loud"]]
    assert late
    diff = np.mean([np.abs(windows["quiet"][i] - windows["loud"][i]).mean() for i in late])
    assert diff < 0.05
