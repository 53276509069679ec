"""data.preload: every training frame decoded once onto the training device and the rays'
colours gathered there, the same bits as the LRU cache's (so the same run), the cache kept on
the CPU and when the frames do not fit, and a bad frame file named at preload time."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

import nerfhead.data.preload as preload_module
from nerfhead.data.dataset import DataConfig, DatasetError, TalkingHeadDataset
from nerfhead.data.synthetic import make_dataset
from nerfhead.train.config import load_configs
from nerfhead.train.trainer import Trainer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn") / "data", num_frames=12, size=32)


def _configs(preload: str, **train):
    return load_configs("tiny", {
        "data": {"image_size": 32, "num_rays": 128, "patch_size": 8, "preload": preload},
        "train": {"iters": 6, "checkpoint_every": 0, "val_every": 0, "log_every": 2,
                  "grid_update_every": 2, "lipsync_check_frames": 0, **train}})


def _record_colours(trainer) -> list:
    """Every colour gather of the trainer's steps: (frames, u, v, bg_kind, rgb, bg)."""
    ds, calls = trainer.train_set, []
    real = ds.colours

    def colours(frames, u, v, bg_kind="head"):
        rgb, bg = real(frames, u, v, bg_kind)
        calls.append((torch.as_tensor(frames).clone(), u.clone(), v.clone(), bg_kind, rgb, bg))
        return rgb, bg

    ds.colours = colours
    return calls


def _assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for p, q in zip(x, y):
            if isinstance(p, torch.Tensor):
                assert p.dtype == q.dtype and torch.equal(p, q)  # bit for bit
            else:
                assert p == q


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The head stage (4 frames a step, mouth rays, latent dropout), then the lips and torso
    stages from its weights, each with the frames preloaded and from the cache."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for preload in ("never", "always"):
        for stage, train in (("head", {"latent_dropout": 0.3}), ("lips", {}), ("torso", {})):
            init = None if stage == "head" else root / "never_head"
            tr = Trainer(data, _configs(preload, stage=stage, **train), root / f"{preload}_{stage}",
                         init=init)
            calls = _record_colours(tr)
            tr.fit(progress=False)
            out[preload, stage] = tr, calls
    return out


@pytest.mark.parametrize("stage", ["head", "lips", "torso"])
def test_preloaded_batches_and_losses_are_the_caches(runs, stage):
    (cached, a), (loaded, b) = runs["never", stage], runs["always", stage]
    assert cached.train_set.preloaded is None and loaded.train_set.preloaded is not None
    assert cached.tcfg.frames_per_step == 4 and cached.tcfg.mouth_ray_fraction == 0.25
    _assert_same_batches(a, b)
    if stage == "head":  # one gather per step: all 4 frames' random and mouth rays
        assert len(b) == 6 and all(c[0].shape == (128,) and len(c[0].unique()) > 1 for c in b)
    if stage == "lips":  # the mouth patch (a row-major grid), then the frame rays
        assert len(b) == 12 and b[0][1].shape == (64,) and b[1][1].shape == (128,)
    if stage == "torso":
        assert {c[3] for c in b} == {"plate"} and loaded.train_set.preloaded.backgrounds is None
    # no step decoded a frame on the host: every colour came from the preloaded frames
    assert loaded.train_set._cache.misses == 0 < cached.train_set._cache.misses
    losses = [h["loss"] for h in cached.history]
    assert len(losses) == 6 and losses == [h["loss"] for h in loaded.history]
    assert [h["psnr"] for h in cached.history] == [h["psnr"] for h in loaded.history]
    # preloaded frames leave the frame prefetcher nothing to do: it is not started
    assert loaded.prefetcher is None and cached.prefetcher is not None


@pytest.mark.parametrize("torso_imgs", [True, False])
def test_preloaded_frames_are_the_decoded_ones(data, tmp_path, torso_imgs):
    root = data
    if not torso_imgs:  # every head background is the plate, held once
        root = tmp_path / "plain"
        shutil.copytree(data, root)
        shutil.rmtree(root / "torso_imgs")
    ds = TalkingHeadDataset(root, DataConfig(image_size=32, preload="always"))
    n = len(ds)  # the train split's frames
    p = ds.preload("cpu")
    assert p is ds.preloaded and p.images.dtype == torch.uint8 and p.images.shape == (n, 32, 32, 3)
    assert p.nbytes == (n * (2 if torso_imgs else 1) + 1) * 32 * 32 * 3
    for i in range(len(ds)):
        assert np.array_equal(p.images[i].numpy(), ds.image(i))
        assert np.array_equal(p.backgrounds[i].numpy(), ds.head_background(i))
    assert np.array_equal(p.plate.numpy(), ds.background())
    # the byte -> colour table gives what the cache's division gives, for every byte value
    assert torch.equal(p.unit, torch.arange(256, dtype=torch.uint8).float() / 255.0)
    # one index per ray, several frames, in any order: the cache's colours
    f = torch.tensor([3, 0, n - 1, 3, 7])
    u, v = torch.tensor([0, 5, 31, 17, 9]), torch.tensor([31, 2, 0, 16, 8])
    cached = TalkingHeadDataset(root, DataConfig(image_size=32, preload="never"))
    for kind in ("head", "plate"):
        for x, y in zip(ds.colours(f, u, v, kind), cached.colours(f, u, v, kind)):
            assert torch.equal(x, y)


def test_auto_preloads_when_frames_fit_and_the_run_draws_them(data, monkeypatch, caplog):
    cfg = DataConfig(image_size=32, preload="auto")
    assert TalkingHeadDataset(data, DataConfig(image_size=32, preload="never")).preload("cpu") is None
    # the CPU: a run drawing fewer frames than the clip's 11 keeps the cache
    ds = TalkingHeadDataset(data, cfg)
    with caplog.at_level(logging.INFO, logger="nerfhead.data"):
        assert ds.preload("cpu", draws=10) is None
    assert "the run's steps draw 10 frames, fewer than the clip's 11" in caplog.text
    # a device with 100 kB free: the 11 training frames (68 kB) are more than its share
    monkeypatch.setattr(preload_module, "free_device_memory", lambda device: 100_000)
    ds = TalkingHeadDataset(data, cfg)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nerfhead.data"):
        assert ds.preload("cpu", draws=100) is None
    assert ds.preloaded is None and len(ds) == 11
    assert ("the 11 training frames need 0.07 MB, more than 10% of the 0.10 MB free on cpu: "
            "frames are decoded on use into the cache") in caplog.text
    # room enough and frames enough drawn: auto preloads
    monkeypatch.setattr(preload_module, "free_device_memory", lambda device: 10**9)
    ds = TalkingHeadDataset(data, cfg)
    with caplog.at_level(logging.INFO, logger="nerfhead.data"):
        assert ds.preload("cpu", draws=11) is not None
    assert "data.preload: 11 training frames (target + head background) decoded onto cpu" in caplog.text
    # memory unknown: the cache
    monkeypatch.setattr(preload_module, "free_device_memory", lambda device: None)
    assert TalkingHeadDataset(data, cfg).preload("cpu", draws=100) is None


def test_free_memory_of_the_cpu_is_the_available_ram():
    free = preload_module.free_device_memory(torch.device("cpu"))
    assert free is not None and 10 << 20 < free < 1 << 50


def test_auto_training_on_the_cpu_preloads_a_run_that_draws_every_frame(data, tmp_path):
    # 2 steps x 4 frames draw 8 of the 11 frames: the cache and its prefetcher
    tr = Trainer(data, _configs("auto", iters=2), tmp_path / "short")
    tr.fit(progress=False)
    assert tr.train_set.preloaded is None and tr.prefetcher is not None
    # 6 steps x 4 frames: preloaded, no prefetcher
    tr = Trainer(data, _configs("auto", iters=6), tmp_path / "long")
    tr.fit(progress=False)
    assert tr.train_set.preloaded is not None and tr.prefetcher is None


@pytest.mark.parametrize("broken", ["gt_imgs/5.jpg", "torso_imgs/7.png"])
def test_a_missing_or_corrupt_frame_is_named_at_preload(data, tmp_path, broken):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    if broken.endswith(".jpg"):
        (root / broken).unlink()
    else:
        (root / broken).write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    tr = Trainer(root, _configs("always"), tmp_path / "run")
    with pytest.raises(DatasetError, match=broken):
        tr.fit(progress=False)
    assert tr.step == 0 and not tr.history and tr.train_set.preloaded is None


def test_a_run_resumes_with_another_preload(data, tmp_path):
    """data.preload changes where the frames are held, not what a step learns: a run may resume
    with another setting, and goes on as the uninterrupted run."""
    full = Trainer(data, _configs("never", iters=4), tmp_path / "full")
    full.fit(progress=False)
    part = Trainer(data, _configs("never", iters=4), tmp_path / "part")
    part.fit(progress=False, until=2)
    part.save()
    resumed = Trainer(data, _configs("always", iters=4), tmp_path / "part")
    assert resumed.step == 2 and resumed.dcfg.preload == "always"
    resumed.fit(progress=False)
    assert resumed.train_set.preloaded is not None
    assert [h["loss"] for h in part.history + resumed.history] == [h["loss"] for h in full.history]


def test_bench_train_times_the_preload_and_its_data_phase(data, tmp_path):
    from nerfhead.train.bench import build_trainer, format_train_table, run_train_bench

    over = ["data.image_size=32", "data.num_rays=128", "model.max_steps=16", "data.preload=always"]
    trainer, _ = build_trainer(str(data), "tiny", over, "cpu", tmp_path / "run")
    r = run_train_bench(trainer, steps=2, warmup=1)
    assert r["preload"]["frames"] == 11 and r["preload"]["device"] == "cpu"
    assert r["preload"]["seconds"] > 0 and r["prefetch_frames"] == 0 and r["ms_per_phase"]["data"] > 0
    assert trainer.train_set._cache.misses == 0  # the timed steps gathered from the preload
    assert "frames preloaded (data.preload): 11 frames" in format_train_table(r)


@pytest.mark.cuda
def test_cuda_preloaded_colours_are_the_caches():
    """On a GPU, x / 255.0 multiplies by the reciprocal (one ulp off the CPU's division for
    about half the byte values): the preload's table keeps the colours the cache's bits."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ds = TalkingHeadDataset.__new__(TalkingHeadDataset)  # only the colour lookup is used
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    f = torch.from_numpy(rng.integers(0, 3, 4096))
    u, v = torch.from_numpy(rng.integers(0, 16, 4096)), torch.from_numpy(rng.integers(0, 16, 4096))
    want = torch.from_numpy(images)[f, v, u].float() / 255.0
    p = preload_module.PreloadedFrames(torch.from_numpy(images).cuda(), None,
                                       torch.from_numpy(images[0]).cuda(),
                                       preload_module._UNIT.cuda(), 0, 0.0)
    ds.preloaded = p
    rgb, bg = ds.colours(f, u, v, "plate")
    assert rgb.is_cuda and torch.equal(rgb.cpu(), want)
    assert torch.equal(bg.cpu(), torch.from_numpy(images[0])[v, u].float() / 255.0)
