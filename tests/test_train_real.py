"""End to end on a real clip: GRID speaker s1, 8 s preprocessed by ``nerfhead preprocess``,
then the ``tiny`` preset for a few hundred CPU steps; validation PSNR must rise.

Set NERFHEAD_GRID_DATASET to an already preprocessed folder to skip the preprocessing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def grid_dataset(grid_video, tmp_path_factory) -> Path:
    given = os.environ.get("NERFHEAD_GRID_DATASET")
    if given:
        return Path(given)
    if not grid_video.exists():
        pytest.skip(f"GRID clip not found at {grid_video}")
    out = tmp_path_factory.mktemp("grid8")
    proc = subprocess.run([sys.executable, "-m", "nerfhead", "preprocess", str(grid_video), "--out",
                           str(out), "--max-seconds", "8"], cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"nerfhead preprocess failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out


def test_tiny_training_on_grid_improves_validation_psnr(grid_dataset, tmp_path):
    import torch

    from nerfhead.train.checkpoint import load_run
    from nerfhead.train.config import load_configs
    from nerfhead.train.trainer import Trainer

    torch.set_num_threads(1)  # see TrainConfig.cpu_threads
    cfg = load_configs("tiny", {"data": {"image_size": 96},
                                "train": {"iters": 300, "val_every": 100, "checkpoint_every": 100}})
    tr = Trainer(grid_dataset, cfg, tmp_path / "run", device="cpu")
    assert tr.train_set.audio_kind in ("mel+ow", "mel", "ow")
    n = len(tr.train_set) + len(tr.val_set)
    assert n >= 50 and len(tr.val_set) == n // 11  # the last 1/11 of the clip is validation
    if not os.environ.get("NERFHEAD_GRID_DATASET"):
        assert n == 200  # 8 s at 25 fps
    result = tr.fit(progress=False)
    psnrs = [v["psnr"] for v in result["validations"]]
    assert len(psnrs) == 3
    assert psnrs[-1] > psnrs[0] + 0.3, psnrs
    run = load_run(tmp_path / "run")
    assert run.step == 300 and (tmp_path / "run" / "val" / "step_0000300.png").exists()
    # the stage ended with the lip-sync check on the validation frames (real faces)
    from nerfhead.eval.cli import load_detector

    if load_detector()[0] is not None:
        import json

        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        check = rows[-1]["lipsync_check"]
        assert check["frames"] == len(tr.val_set) and check["frames_used"] >= 8, check
        assert tr.lipsync is not None and tr.lipsync.amplitude_ratio is not None
