"""Live progress of the stage a speaker is in, as its own tqdm bars count it.

Every long loop in nerfhead already draws a tqdm bar (``from tqdm import tqdm`` at call time:
preprocessing steps, the training loop, render and evaluate frames). While a batch stage runs,
``report_bars_to(send)`` puts ``ReportingBar`` in place of ``tqdm.tqdm``: a bar that draws
nothing and instead sends ``{"progress": "train head 340/600 it", "fraction": 0.57}`` to
``send`` at most once a second (the same pattern as ``tqdm.contrib.telegram``, which sends a
bar elsewhere instead of drawing it). The components need no batch-specific hooks this way.

``StatusBoard`` collects those reports per speaker; with Ray it runs as an actor that the tasks
call and the driver reads, without Ray it is a plain object in the one process.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

import tqdm as tqdm_module
from tqdm.std import tqdm as StdTqdm

REPORT_EVERY_S = 1.0  #: reports per bar are at most this often (Ray actor calls are cheap)


class _Nowhere:
    def write(self, s):  # noqa: ARG002
        return 0

    def flush(self):
        pass


_NOWHERE = _Nowhere()


class ReportingBar(StdTqdm):
    """A tqdm that reports (``send``) instead of drawing; ``finished`` keeps the closed bars'
    final counts and elapsed seconds (the render stage's frames per second come from there)."""

    send: Callable[[dict], None] | None = None
    finished: list[dict] = []

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = False  # the components pass disable=not progress; count anyway
        kwargs["mininterval"] = REPORT_EVERY_S
        kwargs["file"] = _NOWHERE  # tqdm still writes a final newline / carriage return
        self._sent_at = 0.0
        super().__init__(*args, **kwargs)

    def _payload(self) -> dict:
        d = self.format_dict
        total, n = d.get("total"), d.get("n", 0)
        desc = (d.get("prefix") or "").rstrip(": ") or "working"
        unit = d.get("unit") or "it"
        text = (f"{desc} {n:.0f}/{total:.0f} {unit} {100 * n / total:.0f}%" if total
                else f"{desc} {n:.0f} {unit}")
        if d.get("postfix"):
            text += f" ({d['postfix']})"
        return {"progress": text, "fraction": (n / total) if total else None}

    def display(self, msg=None, pos=None):  # noqa: ARG002 - tqdm's signature
        now = time.monotonic()
        if self.send is not None and now - self._sent_at >= REPORT_EVERY_S:
            self._sent_at = now
            self.send(self._payload())
        return True

    def close(self):
        if not getattr(self, "_closed_once", False) and hasattr(self, "format_dict"):
            self._closed_once = True
            d = self.format_dict
            ReportingBar.finished.append({"desc": (d.get("prefix") or "").rstrip(": "),
                                          "n": d.get("n", 0), "total": d.get("total"),
                                          "elapsed": d.get("elapsed", 0.0)})
        super().close()


@contextlib.contextmanager
def report_bars_to(send: Callable[[dict], None]) -> Iterator[list[dict]]:
    """Within the block, ``from tqdm import tqdm`` gives ``ReportingBar`` reporting to ``send``;
    yields the list of finished bars ({desc, n, total, elapsed}) of the block."""
    previous = tqdm_module.tqdm
    ReportingBar.send, ReportingBar.finished = staticmethod(send), []
    tqdm_module.tqdm = ReportingBar
    try:
        yield ReportingBar.finished
    finally:
        tqdm_module.tqdm = previous
        ReportingBar.send = None


class StatusBoard:
    """Latest report per speaker: ``{name: {"progress", "fraction", "host", "pid", ...}}``."""

    def __init__(self):
        self._rows: dict[str, dict] = {}
        self._lock = threading.Lock()

    def update(self, name: str, fields: dict) -> None:
        with self._lock:
            self._rows.setdefault(name, {}).update(fields, reported_at=time.time())

    def clear(self, name: str) -> None:
        with self._lock:
            self._rows.pop(name, None)

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {k: dict(v) for k, v in self._rows.items()}
