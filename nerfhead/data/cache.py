"""A bounded least-recently-used cache for decoded frames.

Unless training preloads the clip onto its device (``DataConfig.preload``), each image is
decoded on first use and kept here until ``capacity`` newer entries push it out, so host
memory stays at about ``capacity * H * W * 3`` bytes whatever the clip length.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

V = TypeVar("V")


class LRUCache:
    """Maps keys to values, evicting the least recently used beyond ``capacity`` entries.

    Thread-safe: a training step and the frame prefetcher (``nerfhead.train.prefetch``) share
    one. ``load()`` runs outside the lock (decodes overlap), and a key being loaded by one
    thread is waited for, not loaded twice, by another."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"LRUCache capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict = {}  # key -> Event set when its load finished (or failed)
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value for ``key``, calling ``load()`` (and caching it) on a miss."""
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
                pending = self._loading.get(key)
                if pending is None:
                    self.misses += 1
                    done = self._loading[key] = threading.Event()
                    break
            pending.wait()  # another thread is loading it; then look again (it may have failed)
        try:
            value = load()
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            done.set()

    def __len__(self) -> int:
        return len(self._items)

    def nbytes(self) -> int:
        """Bytes held by cached numpy arrays (other values count 0)."""
        with self._lock:
            return sum(getattr(v, "nbytes", 0) for v in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
