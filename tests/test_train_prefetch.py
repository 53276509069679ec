"""Training without host stalls: frames decoded ahead on a thread (same results as without),
a thread-safe frame cache, one read-back per step after the update."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from nerfhead.data.cache import LRUCache
from nerfhead.data.synthetic import make_dataset
from nerfhead.train.config import load_configs
from nerfhead.train.prefetch import FramePrefetcher
from nerfhead.train.trainer import Trainer

torch.set_num_threads(1)


def test_cache_loads_a_key_once_across_threads_and_retries_after_a_failure():
    cache, calls = LRUCache(4), []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return "v"

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get("k", slow))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out == ["v"] * 3 and len(calls) == 1 and cache.misses == 1

    def boom():
        raise OSError("unreadable")

    with pytest.raises(OSError):
        cache.get("x", boom)
    assert cache.get("x", lambda: 7) == 7  # a failed load leaves nothing behind


def test_prefetcher_queues_each_step_once():
    seen, done = [], threading.Event()

    def load(i):
        seen.append(i)
        if len(seen) == 4:
            done.set()

    p = FramePrefetcher(lambda s: 10 * s, load, depth=2)
    p.ahead_of(0)  # steps 1, 2
    p.ahead_of(1)  # step 3
    p.ahead_of(2)  # step 4
    assert done.wait(5)
    p.close()
    assert seen == [10, 20, 30, 40] and p.loaded == 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn"), num_frames=12, size=32)


def _configs(prefetch):
    # preload never: the prefetcher serves the cache (preloaded frames need none)
    return load_configs("tiny", {"data": {"image_size": 32, "num_rays": 128, "cache_size": 64,
                                          "preload": "never"},
                                 "train": {"iters": 8, "checkpoint_every": 0, "val_every": 0,
                                           "log_every": 4, "grid_update_every": 4,
                                           "prefetch_frames": prefetch}})


def test_training_with_prefetch_is_the_same_run(data, tmp_path):
    runs = {}
    for prefetch in (0, 2):
        tr = Trainer(data, _configs(prefetch), tmp_path / f"run{prefetch}")
        picked = []
        real = tr.train_set.pixels  # the draw of each frame's rays (sample's and the steps')
        tr.train_set.pixels = lambda i, *a, **k: (picked.append(i), real(i, *a, **k))[1]
        tr.fit(progress=False)
        runs[prefetch] = tr
        assert picked == [i for s in range(8) for i in tr.frames_of_step(s)]  # what it decodes
    a, b = runs[0].history, runs[2].history
    assert [h["loss"] for h in a] == [h["loss"] for h in b]  # bit for bit
    assert [h["psnr"] for h in a] == [h["psnr"] for h in b]
    assert runs[0].prefetcher is None and runs[2].prefetcher.loaded >= 8
    assert all(0 < h["psnr"] < 60 and h["loss"] > 0 for h in b)
