"""The live status table: speaker, stage, progress, elapsed, error (and where it runs).

On a terminal with ``rich`` installed (the ``batch`` extra) the table redraws in place twice a
second. Otherwise (a log file, CI, no rich) a line is printed whenever a speaker changes stage
or status, and the progress of the running stages every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

COLUMNS = ("speaker", "stage", "status", "progress", "elapsed", "where", "error")


def clock(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def _cells(row: dict, width: int | None = 70) -> list[str]:
    err = row["error"]
    if width and len(err) > width:
        err = err[: width - 1] + "…"
    return [row["speaker"], row["stage"], row["status"], row["progress"], clock(row["elapsed"]),
            row["where"], err]


def plain_table(rows: list[dict], error_width: int | None = None) -> str:
    """The table as aligned text (the final table, and the display without rich)."""
    cells = [list(COLUMNS)] + [_cells(r, error_width) for r in rows]
    keep = [j for j in range(len(COLUMNS)) if any(c[j] for c in cells[1:]) or j < 3]
    widths = [max(len(c[j]) for c in cells) for j in keep]
    return "\n".join("  ".join(c[j].ljust(w) for j, w in zip(keep, widths)).rstrip() for c in cells)


def rich_table(rows: list[dict], title: str | None = None):
    from rich.table import Table

    table = Table(title=title, expand=False)
    styles = {"done": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}
    for name in COLUMNS:
        table.add_column(name, overflow="fold" if name == "error" else "ellipsis",
                         no_wrap=name != "error")
    for r in rows:
        cells = _cells(r)
        cells[2] = f"[{styles.get(r['status'], 'white')}]{cells[2]}[/]"
        table.add_row(*cells)
    return table


class StatusDisplay:
    """Shows ``rows()`` until ``stop()``; ``live``: None = rich when stdout is a terminal."""

    def __init__(self, rows: Callable[[], list[dict]], live: bool | None = None,
                 interval: float = 60.0, stream=None):
        self.rows, self.interval = rows, interval
        self.stream = stream or sys.stdout
        if live is None:
            live = self.stream.isatty()
        self.live = None
        if live:
            try:
                from rich.console import Console
                from rich.live import Live

                self.live = Live(get_renderable=lambda: rich_table(self.rows()),
                                 console=Console(file=self.stream), refresh_per_second=2,
                                 redirect_stdout=False, redirect_stderr=False,
                                 transient=True)  # the final table is printed in full after
            except ImportError:
                self.live = None
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.live is not None:
            self.live.start()
        else:
            self._thread = threading.Thread(target=self._plain_loop, daemon=True,
                                            name="nerfhead-batch-status")
            self._thread.start()
        return self

    def _plain_loop(self) -> None:
        seen: dict[str, tuple] = {}
        waited = 0.0
        while not self._stop.wait(1.0):
            waited += 1.0
            self._print_changes(seen, periodic=waited >= self.interval)
            if waited >= self.interval:
                waited = 0.0
        self._print_changes(seen, periodic=False)

    def _print_changes(self, seen: dict, periodic: bool) -> None:
        for r in self.rows():
            key = (r["stage"], r["status"], r["error"])
            if seen.get(r["speaker"]) != key or (periodic and r["status"] == "running"):
                seen[r["speaker"]] = key
                line = f"[{clock(r['elapsed'])}] {r['speaker']}: {r['stage']} {r['status']}"
                if r["progress"]:
                    line += f", {r['progress']}"
                if r["error"]:
                    line += f": {r['error']}"
                print(line, file=self.stream, flush=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __exit__(self, *exc):
        self.stop()
        return False
