"""One live session: audio in, frames and audio out on one clock, whatever the transport.

**Clock.** Session time 0 is its creation. Input sample ``n`` (16 kHz mono) belongs to input
time ``n / 16000``; the session plays it, and shows the frame that says it, at output time
``delay + n / 16000``, where ``delay = jitter + look-ahead + expected render time + margin``.

**Input** (``push_audio``: a microphone track, an uploaded file, PCM over a WebSocket) is
appended to the input timeline. When the input is ``jitter`` seconds behind the clock (the
speaker stopped, the file ended, the network hiccupped), silence fills the gap, so there is
always audio to play and the face keeps listening: head motion and blinks go on. Audio pushed
faster than real time (a file, text-to-speech) queues and plays at real time; it is featurised
only a bounded horizon ahead of the clock. A live source (the microphone) that stalled and came
back late would keep the silence's length as extra latency; quiet chunks of it (silence, or
the quietest fifth of the last seconds: the gaps between words) are dropped until the latency
is back where it started.

**Pipeline.** ``step`` (called every few ms by the render loop) fills silence, feeds the
streaming features (``nerfhead.audio.stream``) and steps the live motion
(``nerfhead.motion.live``) for each frame whose features became ready; ``next_render`` hands the
render loop the frame the ``FrameScheduler`` picks (dropping the ones it skips); ``frame_at``
and ``audio_at`` give the transport what to send at an output time.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np

from nerfhead.audio.features import SAMPLE_RATE
from nerfhead.audio.level import LiveLevelMatch
from nerfhead.audio.stream import FrameAudio, streaming_features
from nerfhead.serve.schedule import FrameScheduler

FPS = 25.0
SAMPLES_PER_FRAME = int(SAMPLE_RATE / FPS)
QUIET_DBFS = -45.0  #: live chunks below this RMS may be dropped to win back latency


@dataclass
class SessionLimits:
    """The limits of one session (``ServeConfig`` sets them for the server)."""

    jitter: float = 0.1
    """Seconds the input may lag the clock before silence fills in."""
    margin: float = 0.05
    """Seconds of slack in the delay beyond look-ahead, jitter and render time."""
    horizon: float = 1.0
    """Seconds ahead of the render clock that queued audio is featurised."""
    max_seconds: float = 600.0
    """Session length limit (seconds of session time)."""
    max_queued_seconds: float = 300.0
    """Audio queued ahead of the clock beyond this is refused (pushes faster than playback)."""


class AudioTimeline:
    """The input samples on the session clock, kept from ``start`` (older ones are played)."""

    def __init__(self):
        self.chunks: deque[np.ndarray] = deque()
        self.start = 0  #: index of the first kept sample
        self.end = 0  #: one past the last sample
        self.filled = 0  #: samples of silence inserted

    def push(self, x: np.ndarray) -> None:
        if len(x):
            self.chunks.append(np.asarray(x, np.float32))
            self.end += len(x)

    def fill_to(self, n: int) -> None:
        if n > self.end:
            self.filled += n - self.end
            self.push(np.zeros(n - self.end, np.float32))

    def read(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) (zeros before ``start``, which were dropped)."""
        self.fill_to(b)
        out = np.zeros(b - a, np.float32)
        pos = self.start
        for c in self.chunks:  # a read touches the first few chunks: older ones are dropped
            lo, hi = max(a, pos), min(b, pos + len(c))
            if lo < hi:
                out[lo - a:hi - a] = c[lo - pos:hi - pos]
            pos += len(c)
            if pos >= b:
                break
        return out

    def drop_before(self, n: int) -> None:
        """Forget samples before ``n`` (played and featurised)."""
        while self.chunks and self.start + len(self.chunks[0]) <= n:
            self.start += len(self.chunks.popleft())
        if self.chunks and n > self.start:
            self.chunks[0] = self.chunks[0][n - self.start:]
            self.start = n


class LiveSession:
    """One stream: ``renderer`` (a ``Renderer``), ``motion`` (a ``LiveMotion``)."""

    def __init__(self, renderer, motion, expected_render: float, limits: SessionLimits | None = None,
                 clock=time.monotonic, session_id: str | None = None, idle_frame=None,
                 level_target: float | None = None):
        self.id = session_id or uuid.uuid4().hex[:12]
        self.renderer, self.motion = renderer, motion
        self.limits = limits or SessionLimits()
        self.clock = clock
        self.t0 = clock()
        self.features = streaming_features(renderer.audio_kind, FPS,
                                           smoother_window=renderer.audio_window)
        self.lookahead = self.features.lookahead_seconds
        lim = self.limits
        self.delay = lim.jitter + self.lookahead + expected_render + lim.margin
        self.scheduler = FrameScheduler(FPS, self.delay, expected_render)
        self.timeline = AudioTimeline()
        self.fed = 0  #: samples given to the features
        self.ready: deque[tuple[FrameAudio, np.ndarray, np.ndarray]] = deque()
        self.idle_frame = idle_frame  #: shown before the first render
        self.pushed_seconds = 0.0
        self.error: str | None = None  #: last input error (told to the client that caused it)
        self.closed: str | None = None  #: why the session ended
        self.render_seconds: list[float] = []
        self.latency: float | None = None  #: last pushed chunk's end: arrival to output (s)
        self.live_origin: float | None = None  #: input time minus arrival of live audio, at first
        self.dropped_live = 0.0  #: seconds of quiet live audio dropped to win latency back
        self.live_levels: deque[float] = deque(maxlen=250)  #: dBFS of recent live chunks
        #: the features hear the audio brought to the training clip's speech level (None: as given)
        self.level = None if level_target is None else LiveLevelMatch(level_target)

    # ------------------------------------------------------------------ input
    def now(self) -> float:
        return self.clock() - self.t0

    def push_audio(self, samples: np.ndarray, live: bool = False) -> float:
        """Queue 16 kHz mono float samples; returns the seconds queued ahead of the clock.

        ``live``: a real-time source (a microphone). A stall that made silence fill in leaves
        a live source's later audio that much further from the clock, so the latency would
        grow with every stall; quiet live chunks are dropped until it is back."""
        x = np.asarray(samples, np.float32).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise ValueError("audio has NaN or infinite samples")
        now = self.now()
        ahead = (self.timeline.end - now * SAMPLE_RATE) / SAMPLE_RATE
        if ahead + len(x) / SAMPLE_RATE > self.limits.max_queued_seconds:
            raise ValueError(f"too much audio queued: {ahead:.0f} s already wait to play and the "
                             f"limit is {self.limits.max_queued_seconds:.0f} s; push it as it plays")
        self.timeline.fill_to(int((now - self.limits.jitter) * SAMPLE_RATE))
        if live and self.live_origin is None:
            self.live_origin = self.timeline.end / SAMPLE_RATE - now
        if live and len(x):
            surplus = self.timeline.end / SAMPLE_RATE - now - self.live_origin
            db = 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9)
            self.live_levels.append(db)
            # quiet: silence, or among the quietest fifth of the last seconds (the gaps
            # between words of a noisy or constant-level source)
            quiet = db < QUIET_DBFS or (len(self.live_levels) >= 50
                                        and db <= np.percentile(self.live_levels, 20))
            if surplus > self.limits.jitter and quiet:
                self.dropped_live += len(x) / SAMPLE_RATE
                return ahead
        # latency of this audio: from its arrival (now) to when it plays and its frame shows
        self.latency = self.delay + (self.timeline.end + len(x)) / SAMPLE_RATE - now
        self.timeline.push(np.clip(x, -1.0, 1.0))
        self.pushed_seconds += len(x) / SAMPLE_RATE
        return (self.timeline.end - now * SAMPLE_RATE) / SAMPLE_RATE

    # ------------------------------------------------------------------ pipeline
    def step(self) -> None:
        """Fill silence up to the clock, featurise up to the horizon, step the motion."""
        now = self.now()
        lim = self.limits
        self.timeline.fill_to(int((now - lim.jitter) * SAMPLE_RATE))
        # frames rendered from now on are due from now + expected render time; their audio
        # reaches up to the look-ahead past them, and a bounded horizon more
        horizon = now - self.delay + self.scheduler.expected_render + self.lookahead + lim.horizon
        upto = min(self.timeline.end, max(self.fed, int(horizon * SAMPLE_RATE)))
        if upto > self.fed:
            x = self.timeline.read(self.fed, upto)
            self.fed = upto
            if self.level is not None:  # the features' copy only: what plays is as given
                x = self.level.apply(x)
            for fa in self.features.push(x):
                a = fa.index * SAMPLES_PER_FRAME
                c2w, expr = self.motion.frame(fa.index, self.timeline.read(a, a + SAMPLES_PER_FRAME))
                self.ready.append((fa, c2w, expr))
        played = int((now - self.delay) * SAMPLE_RATE)
        next_motion = self.features.next_frame * SAMPLES_PER_FRAME  # the next frame's 40 ms
        self.timeline.drop_before(max(0, min(played, next_motion, self.fed) - SAMPLE_RATE))

    def next_render(self):
        """(FrameAudio, c2w, expression) of the frame to render now, or None (wait)."""
        if not self.ready:
            return None
        i = self.scheduler.pick(self.now(), self.ready[0][0].index, self.ready[-1][0].index)
        if i is None:
            return None
        while self.ready[0][0].index < i:
            self.ready.popleft()
        return self.ready.popleft()

    def render(self, item) -> tuple[int, np.ndarray, float]:
        """Render one picked frame (blocking; the server runs it in its render thread)."""
        fa, c2w, expr = item
        t = time.perf_counter()
        rgb = self.renderer.render(c2w, fa.windows, fa.centre, expr, mean_latent=True)
        return fa.index, rgb, time.perf_counter() - t

    def rendered(self, index: int, rgb: np.ndarray, seconds: float,
                 waited: float | None = None) -> None:
        """Frame ``index`` took ``seconds`` to render, ``waited`` from asking to having it
        (more than ``seconds`` when sessions share the render thread)."""
        self.scheduler.done(index, rgb, seconds if waited is None else waited, self.now())
        self.render_seconds.append(seconds)
        del self.render_seconds[:-100]

    # ------------------------------------------------------------------ output
    def frame_at(self, k: int):
        """(rendered index or None, uint8 frame) for output frame ``k``."""
        j, rgb = self.scheduler.show(k)
        return j, (rgb if rgb is not None else self.idle_frame)

    def audio_at(self, a: int, n: int) -> np.ndarray:
        """Output samples [a, a + n) (output sample m plays input sample m)."""
        return self.timeline.read(a, a + n)

    # ------------------------------------------------------------------ state
    @property
    def expired(self) -> bool:
        return self.now() > self.limits.max_seconds

    def stats(self) -> dict:
        s = self.scheduler.stats
        rs = self.render_seconds
        return {
            "session": self.id, "seconds": round(self.now(), 2),
            "delay_ms": round(1000 * self.delay, 1),
            "latency_ms": None if self.latency is None else round(1000 * self.latency, 1),
            "lookahead_ms": round(1000 * self.lookahead, 1),
            "render_ms": round(1000 * float(np.mean(rs)), 1) if rs else None,
            # the slowest of the last 100: what bounds how far a shown frame lags its sound
            "render_ms_max": round(1000 * float(np.max(rs)), 1) if rs else None,
            "render_fps": round(len(rs) / sum(rs), 2) if rs and sum(rs) > 0 else None,
            "rendered": s.rendered, "dropped": s.dropped, "shown": s.shown,
            "repeated": s.repeated, "late": s.late,
            "av_offset_ms": round(1000 * s.offset_frames / FPS, 1),
            "av_offset_max_ms": round(1000 * s.max_offset_frames / FPS, 1),
            "av_offset_mean_ms": round(1000 * s.offset_sum / max(s.shown, 1) / FPS, 1),
            "audio_pushed_s": round(self.pushed_seconds, 2),
            "silence_filled_s": round(self.timeline.filled / SAMPLE_RATE, 2),
            "quiet_dropped_s": round(self.dropped_live, 2),
            "audio_gain_db": None if self.level is None else round(self.level.gain_db, 1),
            "queued_s": round(max(0.0, self.timeline.end / SAMPLE_RATE - self.now() + self.delay), 2),
            "error": self.error, "closed": self.closed,
        }
