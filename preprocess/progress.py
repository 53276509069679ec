"""One progress line for the whole preprocessing run: the current step, its frames per second,
and an ETA for everything left.

The driver opens an ``OverallProgress`` around the run. Steps report frames as they finish
them through ``step_progress(name, total)``, which returns a callable ``advance(n)``; with no
overall line open (a step called from a library or a test) it draws a per-step tqdm bar, or
nothing when ``quiet``. The ETA weighs each step by its typical cost per frame
(``STEP_COST``, seconds per frame on 2 cores, measured on the GRID clip), scaled
by how fast this run has been so far against those costs, so it adapts to the machine.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence

#: typical seconds per frame of each step on 2 idle cores with 2 workers, 512-px crops: the CPU
#: seconds measured on the first 60 s of the GRID clip (docs/benchmarks.md, issue 13), halved
#: for the steps spread over workers; unknown steps count DEFAULT_COST
STEP_COST = {"decode": 0.0032, "speech": 0.0002, "landmarks": 0.0073, "av_sync": 0.0005,
             "parsing": 0.019, "scenes": 0.0014, "background": 0.0075, "face_fit": 0.0044,
             "tracking": 0.0094, "bundle_adjustment": 0.0055, "audio": 0.0007, "previews": 0.0003}
DEFAULT_COST = 0.005

_CURRENT: "OverallProgress | None" = None


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class OverallProgress:
    """The run's single line (tqdm). ``steps``: names in run order; ``num_frames()`` returns the
    frame count once known (after decode), else None; ``results``: the driver's list of
    StepResult, whose last entry tells whether the previous step ran or was skipped."""

    def __init__(self, steps: Sequence[str], num_frames: Callable[[], int | None],
                 results: list | None = None, enabled: bool = True, file=None):
        self.steps, self.num_frames, self.enabled = list(steps), num_frames, enabled
        self.file = file  #: where the line is drawn (None: stderr)
        self.results = results if results is not None else []
        self.done_steps: set[str] = set()
        self.current: str | None = None
        self.step_frames = self.step_total = 0
        self.step_unit = "frames"
        self.t_run = self.t_step = time.perf_counter()
        self.worked_cost = 0.0  # expected seconds of the steps done in this run
        self.worked_time = 0.0  # actual seconds they took
        self.bar = None
        self._redirect = None

    # -------------------------------------------------------------------------- driver side
    def open(self) -> "OverallProgress":
        """Draw the line; log records go above it (tqdm's logging redirect) until ``close``."""
        global _CURRENT
        if self.enabled:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=1000, bar_format="{desc} {bar:20} {postfix}", leave=True,
                            dynamic_ncols=True, disable=False, file=self.file)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        _CURRENT = self
        return self

    def close(self) -> None:
        global _CURRENT
        self._finish_current()
        _CURRENT = None
        if self.bar is not None:
            self._draw(final=True)
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    __enter__ = open

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, step: str) -> None:
        """``step`` begins (the previous one, if any, has ended)."""
        self._finish_current()
        self.current, self.step_frames, self.step_total = step, 0, 0
        self.t_step = time.perf_counter()
        self._draw()

    def _finish_current(self) -> None:
        step = self.current
        if step is None:
            return
        ran = bool(self.results) and self.results[-1].name == step and self.results[-1].status == "ran"
        if ran:  # a skipped step says nothing about this machine's speed
            self.worked_cost += STEP_COST.get(step, DEFAULT_COST) * (self._frames() or 0)
            self.worked_time += time.perf_counter() - self.t_step
        self.done_steps.add(step)
        self.current = None

    def _frames(self) -> int | None:
        """The clip's frame count: from the run once known, else the frames the running step
        (decode, before it records the count) said it will write."""
        return self.num_frames() or (self.step_total if self.step_unit == "frames" else None) or None

    # ---------------------------------------------------------------------------- step side
    def advance(self, frames: int) -> None:
        self.step_frames += frames
        self._draw()

    # ------------------------------------------------------------------------------ drawing
    def _speed(self) -> float:
        """Actual / expected seconds so far (1.0 before any step finished)."""
        return self.worked_time / self.worked_cost if self.worked_cost > 0.5 else 1.0

    def eta(self) -> float | None:
        n = self._frames()
        if not n:
            return None
        left = sum(STEP_COST.get(s, DEFAULT_COST) * n for s in self.steps
                   if s not in self.done_steps and s != self.current)
        if self.current is not None:
            cost = STEP_COST.get(self.current, DEFAULT_COST) * n
            frac = self.step_frames / self.step_total if self.step_total else 0.0
            left += cost * (1 - min(frac, 1.0))
        return left * self._speed()

    def _draw(self, final: bool = False) -> None:
        if self.bar is None:
            return
        k = len(self.done_steps) + (self.current is not None)
        name = self.current or ("done" if final else "")
        self.bar.set_description_str(f"preprocess [{k}/{len(self.steps)}] {name}", refresh=False)
        parts = []
        if self.current is not None and self.step_total:
            dt = time.perf_counter() - self.t_step
            parts.append(f"{self.step_frames}/{self.step_total} {self.step_unit}")
            if dt > 0 and self.step_frames:
                parts.append(f"{self.step_frames / dt:.1f} {self.step_unit}/s")
        eta = self.eta()
        parts.append(f"elapsed {_clock(time.perf_counter() - self.t_run)}")
        if eta is not None and not final:
            parts.append(f"ETA {_clock(eta)}")
        n = self._frames()
        if n:
            total = sum(STEP_COST.get(s, DEFAULT_COST) for s in self.steps) * n
            left = (eta / self._speed()) if eta is not None else total
            self.bar.n = int(round(1000 * (1 - left / total))) if total else 0
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.refresh()


@contextlib.contextmanager
def step_progress(step: str, total: int, quiet: bool = False,
                  unit: str = "frames") -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for a step that processes ``total`` frames (or other ``unit``s): feeds the
    overall line when one is open, else a per-step tqdm bar (none when ``quiet``)."""
    overall = _CURRENT
    if overall is not None and overall.current == step:
        overall.step_total, overall.step_frames, overall.step_unit = total, 0, unit
        overall.t_step = time.perf_counter()
        yield overall.advance
        return
    if quiet:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=step, unit=unit.rstrip("s"), leave=False) as bar:
        yield bar.update
