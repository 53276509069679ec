"""Which frame to render next, and which to show, when rendering may be slower than real time.

All times are seconds on the session clock (0 = the session's start). Video frame ``i`` shows
the face saying the audio at input time ``i / fps``; the session plays that audio, and shows
that frame, at ``delay + i / fps`` (``delay`` covers the features' look-ahead, the expected
render time and network jitter; see ``nerfhead.serve.session``).

**Render (drop).** The renderer never works through a backlog: each time it is free it takes
the first frame that can still be on time, ``ceil((now + expected_render - delay) * fps)``,
and skips (drops) the frames before it. A renderer slower than real time thus renders every
2nd, 3rd, ... frame, each finished about when it is due.

When the delay was set for a faster renderer than the one running (the render time grew past
``delay`` minus the look-ahead), no frame that could be on time has its audio yet; then the
newest frame that has it is rendered, late, and the offset is that lateness plus the render
time (the server sets the next session's delay from the render times it measured).

A renderer faster than real time (or audio queued ahead) renders each frame no more than two
frames before it must start.

**Show (repeat).** At its due time, output frame ``k`` shows the newest rendered frame ``j <=
k`` (never a frame ahead of its audio); until a newer one is rendered the same picture is
repeated. The A/V offset is ``(k - j) / fps``: the picture lags the sound by how old the shown
frame is. It stays below one render time plus a frame (plus the misestimate of the render
time), and it does not grow with the session's length: the next render always aims at the
present, so lateness never accumulates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


KEEP_RENDERED = 8  #: rendered frames kept for showing
AHEAD_FRAMES = 2  #: a frame is rendered at most this many frames before it must start


@dataclass
class SchedulerStats:
    rendered: int = 0
    dropped: int = 0  #: frames skipped by the renderer
    shown: int = 0  #: output frames
    repeated: int = 0  #: output frames that showed the same render as the previous one
    late: int = 0  #: renders finished after their due time
    offset_frames: int = 0  #: A/V offset of the last output frame
    max_offset_frames: int = 0
    offset_sum: float = 0.0


@dataclass
class FrameScheduler:
    fps: float
    delay: float  #: seconds from a frame's input time to its output time
    expected_render: float  #: seconds; updated from measured render times
    smoothing: float = 0.2  #: weight of a new render time in the running estimate
    stats: SchedulerStats = field(default_factory=SchedulerStats)

    def __post_init__(self):
        self.last_rendered = -1
        self.rendered: dict[int, object] = {}  #: index -> frame, the newest few
        self._last_shown: int | None = None

    def due(self, i: int) -> float:
        return self.delay + i / self.fps

    def pick(self, now: float, first_ready: int, last_ready: int) -> int | None:
        """The frame to render now, given that frames ``first_ready..last_ready`` have their
        inputs; None when the one to render has no input yet (wait)."""
        target = math.ceil((now + self.expected_render - self.delay) * self.fps - 1e-9)
        i = max(target, self.last_rendered + 1, first_ready)
        if i <= last_ready:
            # not too early either (audio queued ahead, a fast renderer): a frame rendered
            # long before it is due only waits, and pushes the frames being shown out
            return i if self.due(i) <= now + self.expected_render + AHEAD_FRAMES / self.fps else None
        # no frame that can be on time has its audio yet. With rendering slower than the
        # delay allows (render time > delay - look-ahead - jitter) that stays so: then the
        # newest frame that has its audio goes, late, rather than none at all
        if target > last_ready and now + self.expected_render > self.due(last_ready) \
                and last_ready > self.last_rendered:
            return last_ready
        return None

    def done(self, i: int, frame, seconds: float, finished_at: float) -> None:
        """Frame ``i`` was rendered in ``seconds``, finishing at ``finished_at``."""
        self.stats.dropped += max(0, i - self.last_rendered - 1)
        self.stats.rendered += 1
        self.stats.late += finished_at > self.due(i)
        self.last_rendered = i
        self.rendered[i] = frame
        if len(self.rendered) > KEEP_RENDERED:  # nobody is watching (or they fell behind)
            del self.rendered[min(self.rendered)]
        self.expected_render += self.smoothing * (seconds - self.expected_render)

    def show(self, k: int):
        """(rendered index, frame) to show as output frame ``k``; (None, None) before any."""
        older = [j for j in self.rendered if j <= k]
        if not older:
            return None, None
        j = max(older)
        for old in [i for i in self.rendered if i < j]:  # no longer needed
            del self.rendered[old]
        s = self.stats
        s.shown += 1
        s.repeated += j == self._last_shown
        self._last_shown = j
        s.offset_frames = k - j
        s.max_offset_frames = max(s.max_offset_frames, k - j)
        s.offset_sum += k - j
        return j, self.rendered[j]
