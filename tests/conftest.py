"""Shared test fixtures: where ../shared lives, the weights directory, the CUDA marker."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NERFHEAD_SHARED", REPO.parent / "shared"))

# Tests never download: model files come from ../shared/weights (or NERFHEAD_WEIGHTS).
os.environ.setdefault("NERFHEAD_WEIGHTS", str(SHARED / "weights"))
os.environ.setdefault("NERFHEAD_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set NERFHEAD_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def weights_dir(shared_dir) -> Path:
    return shared_dir / "weights"


@pytest.fixture(scope="session")
def grid_video(shared_dir) -> Path:
    return shared_dir / "data" / "video" / "grid_s1_300s.mp4"


@pytest.fixture(scope="session")
def hdtf_video(shared_dir) -> Path:
    return shared_dir / "data" / "video" / "hdtf_katiehill_8s.mp4"
