"""preprocess.parallel: fixed chunks, results in order, errors raised, single-threaded workers
that do not pay for torch unless the work needs it."""

from __future__ import annotations

import sys

import pytest

from preprocess.parallel import chunk_ranges, run_chunks


def _describe(tag: str, a: int, b: int) -> dict:
    """A chunk's report: its range, whether the worker has torch loaded, its OpenCV threads."""
    import cv2

    return {"tag": tag, "range": (a, b), "has_torch": "torch" in sys.modules,
            "cv2_threads": cv2.getNumThreads()}


def _torch_threads(a: int, b: int) -> int:
    import torch

    return torch.get_num_threads()


def _fail_on(bad: int, a: int, b: int) -> int:
    if a <= bad < b:
        raise ValueError(f"frame {bad} is bad")
    return b - a


def test_chunk_ranges_cover_the_clip_in_fixed_pieces():
    assert chunk_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_ranges(0, 3) == []
    assert chunk_ranges(2, 0) == [(0, 1), (1, 2)]  # a size below 1 counts as 1


def test_workers_return_in_order_single_threaded_without_torch_preloaded():
    done: list[int] = []
    out = run_chunks(_describe, chunk_ranges(10, 3), ("x",), workers=2, progress=done.append)
    assert [r["range"] for r in out] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert sorted(done) == [1, 3, 3, 3]
    for r in out:
        assert r["tag"] == "x"
        assert not r["has_torch"]  # the initializer must not import torch (seconds per worker)
        assert r["cv2_threads"] == 1
    # ... and a step that needs torch (tracking) still gets one thread per worker
    assert run_chunks(_torch_threads, chunk_ranges(4, 2), workers=2) == [1, 1]


def test_an_error_in_a_chunk_is_raised_in_the_caller():
    with pytest.raises(ValueError, match="frame 4 is bad"):
        run_chunks(_fail_on, chunk_ranges(9, 2), (4,), workers=2)
    assert run_chunks(_fail_on, chunk_ranges(9, 2), (100,), workers=1) == [2, 2, 2, 2, 1]
