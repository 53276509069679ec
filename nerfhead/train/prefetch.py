"""Decode the frames of the next training steps on a background thread.

Which frame step ``k`` trains on is known in advance: it is the first draw of the step's
generator (``step_generator(seed, k)``, see ``trainer.py``). So while step ``k`` runs, a
thread decodes the JPEG / PNG of steps ``k+1 .. k+depth`` into the dataset's LRU cache
(OpenCV's decoders release the GIL, so the decode runs beside the step's Python and device
work) and the step that needs the frame finds it there. Nothing the step computes changes:
the cache returns the same arrays whichever thread decoded them, so a run is bit-for-bit the
same with and without prefetching (tests/test_train_prefetch.py).

A frame that fails to load in the thread is left alone: the step that needs it loads it
itself and raises the dataset's own clear error there.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger("nerfhead.train")


class FramePrefetcher:
    """``ahead_of(step)`` at the start of each step; ``close()`` at the end of training."""

    def __init__(self, frame_of_step: Callable[[int], object], load: Callable[[int], object],
                 depth: int = 2):
        if depth < 1:
            raise ValueError(f"FramePrefetcher: depth must be >= 1, got {depth}")
        self.frame_of_step, self.load, self.depth = frame_of_step, load, depth
        self._queue: queue.Queue = queue.Queue()
        self._next = None  # first step not queued yet
        self.loaded = 0  # frames the thread loaded (cache hits included)
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="nerfhead-frame-prefetch",
                                        daemon=True)
        self._thread.start()

    def ahead_of(self, step: int) -> None:
        """Queue the frames of steps ``step+1 .. step+depth`` not queued before."""
        first = step + 1 if self._next is None else max(self._next, step + 1)
        for s in range(first, step + 1 + self.depth):
            self._queue.put(s)
        self._next = max(first, step + 1 + self.depth)

    def _run(self) -> None:
        while True:
            s = self._queue.get()
            if s is None:
                return
            try:
                self.load(self.frame_of_step(s))
                self.loaded += 1
            except Exception as e:  # noqa: BLE001 - the step itself reports it clearly
                self.failed += 1
                log.debug("frame prefetch of step %d failed (%s); the step loads it itself", s, e)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
