"""aiortc media tracks: the session's video and audio out, paced on the session clock, and
the browser's microphone in.

Both outgoing tracks send what is due at the session's output time: video frame ``k`` at
``delay + k / 25`` s (RTP clock 90 kHz), audio in 20-ms frames at ``delay + m * 0.02`` s (16 kHz
mono, which aiortc's Opus encoder resamples). Their timestamps count from the same instant, so
the browser's lip sync (RTCP sender reports) lines them up. A late video ``recv`` skips to the
frame due now rather than falling behind; audio is never skipped, except that both tracks
start with the frame due when the connection is up.
"""

from __future__ import annotations

import asyncio
import fractions
import logging

import numpy as np

from nerfhead.audio.features import SAMPLE_RATE
from nerfhead.serve.session import FPS

log = logging.getLogger("nerfhead.serve")

VIDEO_CLOCK = 90000
AUDIO_PTIME = 0.02
AUDIO_SAMPLES = int(SAMPLE_RATE * AUDIO_PTIME)


def _tracks():
    from aiortc import MediaStreamTrack

    class SessionVideoTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self, session):
            super().__init__()
            self.session = session
            self.k = 0

        async def recv(self):
            import av

            s = self.session
            due = s.delay + self.k / FPS
            wait = due - s.now()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -1.0 / FPS:  # behind: skip to the frame due now
                self.k = int((s.now() - s.delay) * FPS)
            _, rgb = s.frame_at(self.k)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = int(round(self.k * VIDEO_CLOCK / FPS))
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            self.k += 1
            return frame

    class SessionAudioTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self, session):
            super().__init__()
            self.session = session
            self.m = None

        async def recv(self):
            import av

            s = self.session
            if self.m is None:
                # the first frame is the one due now: what fell due while the connection was
                # being set up (silence) is not sent in a burst, which would sit in the
                # browser's jitter buffer as extra audio delay (measured: 0.8 s at the start,
                # drained over seconds) and put the picture ahead of the sound
                self.m = max(0, int((s.now() - s.delay) / AUDIO_PTIME))
            wait = s.delay + self.m * AUDIO_PTIME - s.now()
            if wait > 0:
                await asyncio.sleep(wait)
            x = s.audio_at(self.m * AUDIO_SAMPLES, AUDIO_SAMPLES)
            pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)[None, :]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self.m * AUDIO_SAMPLES
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self.m += 1
            return frame

    return SessionVideoTrack, SessionAudioTrack


def video_track(session):
    return _tracks()[0](session)


def audio_track(session):
    return _tracks()[1](session)


async def consume_audio(track, session) -> None:
    """Push a remote audio track (any rate and layout) into ``session`` as 16 kHz mono."""
    import av
    from aiortc.mediastreams import MediaStreamError

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        while session.closed is None:
            frame = await track.recv()
            for out in resampler.resample(frame):
                x = out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                try:
                    session.push_audio(x, live=True)
                except ValueError as e:
                    session.error = str(e)
    except MediaStreamError:
        log.info("session %s: the microphone track ended", session.id)
