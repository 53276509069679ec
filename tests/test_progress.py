"""The overall progress line: step, frames per second, ETA for the whole run."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

from preprocess import progress
from preprocess.progress import STEP_COST, OverallProgress, step_progress


def test_line_shows_step_rate_and_eta_and_adapts_to_speed(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    out, results = io.StringIO(), []
    steps = ["landmarks", "parsing"]
    line = OverallProgress(steps, lambda: 1000, results, file=out).open()
    try:
        line.start("landmarks")
        expected = sum(STEP_COST[s] for s in steps) * 1000
        assert abs(line.eta() - expected) < 1e-6  # nothing done: the table's costs
        with step_progress("landmarks", 1000) as advance:
            clock[0] += 5.0
            advance(500)
        text = out.getvalue()
        assert "[1/2] landmarks" in text and "500/1000 frames" in text and "100.0 frames/s" in text
        assert "ETA" in text
        clock[0] += 5.0
        results.append(SimpleNamespace(name="landmarks", status="ran"))
        line.start("parsing")  # landmarks took 10 s for 15 s of table cost: this run is faster
        speed = 10.0 / (STEP_COST["landmarks"] * 1000)
        assert abs(line.eta() - STEP_COST["parsing"] * 1000 * speed) < 1e-6
    finally:
        line.close()
    assert progress._CURRENT is None
    assert "[2/2]" in out.getvalue() and "done" in out.getvalue()


def test_eta_during_decode_from_the_frames_it_will_write(monkeypatch):
    """Before decode records the clip's length the line already has an ETA: decode's total."""
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    line = OverallProgress(["decode", "landmarks"], lambda: None, [], file=out).open()
    try:
        line.start("decode")
        assert line.eta() is None  # nothing known yet
        with step_progress("decode", 200) as advance:
            advance(100)
            expected = STEP_COST["decode"] * 200 / 2 + STEP_COST["landmarks"] * 200
            assert abs(line.eta() - expected) < 1e-9
        assert "ETA" in out.getvalue()
    finally:
        line.close()


def test_step_progress_without_a_line_is_a_plain_bar_or_silent():
    calls = []
    with step_progress("x", 3, quiet=True) as advance:
        advance(3)
        calls.append(1)
    assert calls == [1]
