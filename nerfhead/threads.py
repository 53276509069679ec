"""How many torch CPU threads a command uses when the user does not say (``--threads``).

torch's default is one thread per core of the machine, whoever else is running. On a
machine whose cores are already busy that oversubscribes them and every thread waits on the
others: two renders side by side on 2 cores took 3.3-5.5 s per frame with torch's default
and 0.33 s with one thread each (issue 12). So ``render``, ``evaluate`` and ``train`` pick
their thread count here from the cores this process may run on (``os.sched_getaffinity``)
minus the ones other processes keep busy (the 1-minute load average), and log the choice.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

log = logging.getLogger("nerfhead")
#: cores a caller declared for the commands this process runs (``declare_cores``), or None
_declared: int | None = None


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the reason for it (what the log says)."""

    threads: int  #: torch intra-op threads; 0 = leave torch's default
    reason: str  #: one line: where the number comes from


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where the
    platform has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def declare_cores(n: int) -> None:
    """Cores the caller gives the commands it runs in this process (``nerfhead batch``'s
    task cores; 0 forgets): ``choose_threads`` uses them instead of guessing."""
    global _declared
    _declared = int(n) if n and n > 0 else None


def choose_threads(cores: int | None = None, load1: float | None = None,
                   environ: dict | None = None) -> ThreadChoice:
    """The thread count for a command the user gave none: the cores a caller declared
    (``declare_cores``); else ``OMP_NUM_THREADS`` when set (the user's choice, which torch's
    default also follows); else the usable ``cores`` minus the busy ones (``load1``, the
    1-minute load average, rounded to the nearest whole process), at least 1.
    ``cores``/``load1``/``environ`` default to this machine's (tests pass their own)."""
    if _declared is not None:
        return ThreadChoice(_declared, f"{_declared} cores declared for this task")
    env = os.environ if environ is None else environ
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), f"OMP_NUM_THREADS={omp}")
    cores = usable_cores() if cores is None else int(cores)
    load1 = load_average() if load1 is None else float(load1)
    if load1 is None:
        return ThreadChoice(cores, f"{cores} usable cores (no load average on this platform)")
    busy = int(math.floor(load1 + 0.5))
    threads = max(1, min(cores, cores - busy))
    return ThreadChoice(threads, f"{cores} usable cores, 1-minute load average {load1:.1f}: "
                                 f"{max(0, cores - busy)} free")


def set_torch_threads(requested: int | None, device: str = "cpu", command: str = "nerfhead") -> int:
    """Set torch's CPU threads for ``command`` on ``device`` and log the choice once.

    ``requested``: the user's ``--threads`` (or a preset's value): N > 0 uses N, 0 leaves
    torch's default, None chooses with ``choose_threads``. Only CPU devices are touched (on
    CUDA the CPU threads do not render). Returns the thread count torch now uses.
    """
    import torch

    if not str(device).startswith("cpu"):
        return torch.get_num_threads()
    if requested is None:
        choice = choose_threads()
    elif requested > 0:
        choice = ThreadChoice(int(requested), "--threads")
    else:
        choice = ThreadChoice(0, "torch's default (--threads 0)")
    if choice.threads > 0:
        torch.set_num_threads(choice.threads)
    n = torch.get_num_threads()
    log.info("%s: %d torch CPU thread%s (%s)", command, n, "" if n == 1 else "s", choice.reason)
    return n


__all__ = ["ThreadChoice", "choose_threads", "declare_cores", "load_average", "set_torch_threads", "usable_cores"]
