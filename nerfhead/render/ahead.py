"""Render frames ahead of their consumer: the device renders frame i+1 while the host blends,
pastes back and encodes frame i.

``render_ahead(produce, depth)`` runs the ``produce`` iterator in a background thread and
hands its items over through a queue of ``depth`` items (bounded: rendering never runs more
than ``depth`` frames ahead of the video, so memory stays flat). The consumer, the caller's
loop, does the host work (Portrait-Sync, paste-back, writing to ffmpeg's pipe), while the
thread renders: torch, OpenCV and the pipe all release the GIL, so the two overlap on a CPU
with a core to spare, and on CUDA the device never idles while the host encodes.

Frames cross as uint8 (``to_uint8_device`` converts on the device: a quarter of the bytes of
float32 to copy). On CUDA ``HostFrame`` copies them into pinned host memory asynchronously
and records an event; the consumer waits on that event only, not on the device's later work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor


def to_uint8_device(t: Tensor) -> Tensor:
    """Colours in [0, 1] -> uint8 on their device: ``rint(x * 255)`` clipped to [0, 255], the
    same bytes as ``nerfhead.render.renderer.to_uint8`` on the host (round half to even)."""
    return (t.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)


class HostFrame:
    """A device uint8 frame on its way to the host: on CUDA an asynchronous copy into pinned
    memory and an event recorded after it; ``numpy()`` waits for that copy only."""

    def __init__(self, frame: Tensor):
        if frame.device.type == "cuda":
            self._host = torch.empty(frame.shape, dtype=frame.dtype, pin_memory=True)
            self._host.copy_(frame, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(frame.device))
        else:
            self._host, self._event = frame, None

    def numpy(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def render_ahead(produce: Callable[[], Iterator[Any]], depth: int = 2) -> Iterator[Any]:
    """Yield the items of ``produce()``, which runs in a background thread at most ``depth``
    items ahead (``depth`` 0: in the caller's thread, nothing ahead). An exception in the
    thread is raised here; closing this generator (the consumer stopped, Ctrl-C) stops the
    thread after its current item."""
    if depth <= 0:
        yield from produce()
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    # a new thread starts on CUDA device 0: it renders on the caller's current device
    cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            # no_grad is per thread: the renders below must not record autograd graphs
            with torch.no_grad():
                for item in produce():
                    if not put(item):
                        return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failure(e))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="nerfhead-render-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


__all__ = ["HostFrame", "render_ahead", "to_uint8_device"]
