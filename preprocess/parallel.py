"""Per-frame work spread over processes (``workers`` in the preprocess config, ``--workers``).

Frames are cut into fixed chunks (``chunk_ranges``) that do not depend on the number of
workers, and every chunk is processed the same way whether it runs in this process or in a
worker, so one worker and sixteen write the same files. Workers are spawned (not forked: torch
and MediaPipe hold threads a fork would copy mid-state) and run one thread each, so the
machine's cores are used once, not once per library. Memory is bounded by the chunks in flight
(one per worker).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Callable, Sequence


def num_workers(cfg: Any) -> int:
    """``cfg.workers`` (the preprocess config's top-level field); None or 0 = all cores."""
    n = getattr(cfg, "workers", None)
    if not n:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, int(n))


def chunk_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most ``size`` frames covering 0..n."""
    size = max(1, int(size))
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _single_thread() -> None:
    """Worker initializer: one thread per library (the pool provides the parallelism), and
    MediaPipe's C++ info/warning lines kept off the progress line."""
    # torch reads these when it is first imported (only the tracking step's workers need it:
    # importing it here cost every worker of every step seconds on a loaded machine)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Torch intra-op threads for a block (restored after). The geometry steps' tensors are
    small: on the 2-core machine shared with other jobs, 2 threads made bundle adjustment of an
    8-s clip take 116 s instead of 15 s (38 s of CPU instead of 4, spent spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_chunks(fn: Callable[..., Any], ranges: Sequence[tuple[int, int]], args: tuple = (),
               workers: int = 1, progress: Callable[[int], None] | None = None) -> list[Any]:
    """``[fn(*args, a, b) for a, b in ranges]``, in order, over ``workers`` processes.

    ``fn`` must be a module-level function (it is pickled by name). ``progress(frames)`` is
    called as chunks finish. An exception in a chunk cancels the rest and is raised here."""
    ranges = list(ranges)
    if workers <= 1 or len(ranges) <= 1:
        out = []
        for a, b in ranges:
            out.append(fn(*args, a, b))
            if progress is not None:
                progress(b - a)
        return out
    results: dict[int, Any] = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(ranges)), mp_context=get_context("spawn"),
                             initializer=_single_thread) as pool:
        pending = {pool.submit(fn, *args, a, b): k for k, (a, b) in enumerate(ranges)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    k = pending.pop(fut)
                    results[k] = fut.result()
                    if progress is not None:
                        progress(ranges[k][1] - ranges[k][0])
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [results[k] for k in range(len(ranges))]
