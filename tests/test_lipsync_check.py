"""The end-of-stage lip-sync check (nerfhead.train.lipsync_check): it correlates the rendered
mouth with the footage's, flags a mouth that does not follow, and says why it cannot check."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nerfhead.eval import lipsync as L
from nerfhead.train.lipsync_check import LipSyncCheck, check_lipsync


def _landmarks_with_opening(opening: float) -> np.ndarray:
    lm = np.zeros((478, 2))
    lm[L.EYE_OUTER_RIGHT] = (0.0, 0.0)
    lm[L.EYE_OUTER_LEFT] = (1.0, 0.0)
    lm[L.UPPER_LIP_TOP] = (0.5, 1.0)
    lm[L.LOWER_LIP_BOTTOM] = (0.5, 1.0 + opening)
    return lm


def fake_detector(rgb):
    """A 'face' whose mouth opens with the image's brightness (None for a black image)."""
    level = float(np.asarray(rgb, np.float64).mean()) / 255.0
    return None if level == 0 else _landmarks_with_opening(level)


class FakeFootage:
    """Frames whose brightness (the fake detector's mouth opening) moves like speech."""

    def __init__(self, n=40, faces=True):
        t = np.arange(n)
        self.levels = 0.3 + 0.25 * np.sin(t / 2.0) * (t % 10 < 7)
        self.faces, self.n = faces, n
        self.poses_file = np.zeros((n, 4, 4))
        self.audio = np.zeros((n, 16, 4), np.float32)
        self.aud_ids = np.arange(n)

    def __len__(self):
        return self.n

    def image(self, j):
        v = int(round(self.levels[j] * 255)) if self.faces else 0
        return np.full((8, 8, 3), v, np.uint8)

    def head_background(self, j):
        return np.zeros((8, 8, 3), np.uint8)

    def expression(self, j):
        return np.zeros(52, np.float32)


class FakeModel:
    def __init__(self, footage, mode):
        self.footage, self.mode = footage, mode

    def eval(self):
        return self

    def render_frame(self, c2w, audio, index, expression, latent, bg=None, with_torso=True):
        level = {"follows": self.footage.levels[index], "frozen": 0.4,
                 "late": self.footage.levels[(index + 9) % len(self.footage)]}[self.mode]
        return {"rgb": torch.full((8, 8, 3), float(level))}


@pytest.mark.parametrize("mode, doubtful", [("follows", False), ("frozen", True), ("late", True)])
def test_the_check_tells_a_following_mouth_from_a_frozen_or_unrelated_one(mode, doubtful):
    footage = FakeFootage()
    res = check_lipsync(FakeModel(footage, mode), footage, 30, detector=fake_detector)
    assert res.frames == 30 and res.frames_used == 30
    assert res.doubtful is doubtful, res
    if mode == "follows":
        assert res.correlation > 0.99 and res.amplitude_ratio == pytest.approx(1.0, abs=0.02)
    if mode == "frozen":
        assert res.correlation is None and res.amplitude_ratio == pytest.approx(0.0, abs=1e-9)
    assert "mouth opening correlation" in res.summary()


def test_the_check_says_why_it_cannot_check():
    footage = FakeFootage(faces=False)
    res = check_lipsync(FakeModel(footage, "follows"), footage, 30, detector=fake_detector)
    assert isinstance(res, str) and "no face found" in res
    short = FakeFootage(n=5)
    assert "too few" in check_lipsync(FakeModel(short, "follows"), short, 30, detector=fake_detector)


def test_a_stage_ends_with_the_check_and_records_it(tmp_path, monkeypatch, caplog):
    """The trainer runs it at the stage's end: a mouth that does not follow is a warning and
    a metrics.jsonl row; a synthetic dataset (no face) skips it with the reason."""
    import json

    from nerfhead.data.synthetic import make_dataset
    from nerfhead.train import lipsync_check as L
    from nerfhead.train import trainer as T
    from nerfhead.train.config import load_configs

    data = make_dataset(tmp_path / "d", num_frames=23, size=32)
    cfg = load_configs("tiny", {"data": {"image_size": 32, "num_rays": 128, "audio": "mel"},
                                "train": {"iters": 2, "checkpoint_every": 2, "val_every": 0}})
    with caplog.at_level(logging.INFO, logger="nerfhead.train"):
        T.Trainer(data, cfg, tmp_path / "a").fit(progress=False)
    assert "lip-sync check skipped" in caplog.text
    caplog.clear()
    frozen = T.LipSyncCheck(frames=20, frames_used=20, correlation=None, amplitude_ratio=0.0,
                            seconds=1.0, doubtful=True)
    # the trainer reports the check through nerfhead.train.lipsync_check.report_lipsync_check
    monkeypatch.setattr(L, "check_lipsync", lambda model, ds, n: frozen)
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        tr = T.Trainer(data, cfg, tmp_path / "b")
        tr.fit(progress=False)
    assert "hardly follows the footage" in caplog.text and tr.lipsync is frozen
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lipsync_check"]["doubtful"] is True


def _check(r):
    return LipSyncCheck(frames=20, frames_used=20, correlation=r, amplitude_ratio=1.0,
                        seconds=1.0, doubtful=r < 0.3)


def test_checks_during_a_stage_warn_only_when_the_mouth_falls(tmp_path, monkeypatch, caplog):
    """train.lipsync_check_every: checks at its multiples before the end, each a metrics.jsonl
    row; a low early check is not news (the mouth is still being learned), a check that falls
    0.3 below the best earlier one is a warning, and the stage's own end check still runs."""
    import json

    from nerfhead.data.synthetic import make_dataset
    from nerfhead.train import lipsync_check as L
    from nerfhead.train import trainer as T
    from nerfhead.train.config import load_configs

    data = make_dataset(tmp_path / "d", num_frames=23, size=32)
    cfg = load_configs("tiny", {"data": {"image_size": 32, "num_rays": 128, "audio": "mel"},
                                "train": {"iters": 6, "checkpoint_every": 6, "val_every": 0,
                                          "lipsync_check_every": 2}})
    for name, series, warns in [("learns", [0.1, 0.5, 0.85], False),
                                ("falls", [0.5, 0.9, 0.4], True)]:
        results = iter(series)
        monkeypatch.setattr(L, "check_lipsync", lambda model, ds, n, it=results: _check(next(it)))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nerfhead.train"):
            tr = T.Trainer(data, cfg, tmp_path / name)
            tr.fit(progress=False)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        checks = [(r["step"], r["lipsync_check"]["correlation"]) for r in rows if "lipsync_check" in r]
        assert checks == list(zip([2, 4, 6], series))
        assert tr.lipsync.correlation == series[-1]
        assert ("below the best earlier check (0.90)" in caplog.text) is warns
        assert "hardly follows" not in caplog.text
