"""Training on a synthetic clip: loss falls, checkpoints round-trip, exact resume, NaN guard,
stages (lips with its LPIPS substitute, torso with a frozen head), the CLI."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import yaml

from nerfhead.data.synthetic import make_dataset
from nerfhead.train.checkpoint import list_checkpoints, load_run, read_checkpoint
from nerfhead.train.config import load_configs
from nerfhead.train.trainer import Trainer, TrainingCollapsed, TrainingDiverged

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn"), num_frames=34, size=48)


def configs(**train):
    over = {"data": {"image_size": 48, "num_rays": 256, "patch_size": 8},
            "train": {"iters": 40, "checkpoint_every": 10, "val_every": 0, "log_every": 5,
                      "grid_update_every": 8, **train}}
    return load_configs("tiny", over)


@pytest.fixture(scope="module")
def head_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("head")
    tr = Trainer(data, configs(iters=60, checkpoint_every=20), run)
    result = tr.fit(progress=False)
    return run, tr, result


def test_loss_falls(head_run):
    _, tr, result = head_run
    losses = [h["loss"] for h in tr.history]
    assert len(losses) == 60
    assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:5])
    assert result["step"] == 60 and len(result["validations"]) == 1  # the final validation


def test_run_folder_contents(head_run):
    run, _, _ = head_run
    # every 20 steps, the newest keep_checkpoints (2 in tiny) kept
    assert [p.name for p in list_checkpoints(run)] == ["step_0000040.pt", "step_0000060.pt"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["iters"] == 60 and cfg["data"]["image_size"] == 48
    assert cfg["dataset"]["layout"] == "nerfhead"
    assert (run / "val" / "step_0000060.png").exists() and any((run / "tb").iterdir())
    assert not list((run / "checkpoints").glob(".tmp_*"))


def test_checkpoint_round_trip(head_run, data):
    run, tr, _ = head_run
    loaded = load_run(run)
    assert loaded.step == 60 and loaded.stage == "head" and loaded.dataset_dir == data.resolve()
    assert (loaded.camera.height, loaded.camera.width) == (48, 48)
    assert loaded.model.audio_kind == "mel" and not loaded.model.training
    own = tr.model.state_dict()
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, own[k]), k
    ds = tr.train_set
    a = loaded.model.render_frame(ds.poses_file[3], ds.audio, 3, ds.expression(3), latent_index=3)
    b = tr.model.eval().render_frame(ds.poses_file[3], ds.audio, 3, ds.expression(3), latent_index=3)
    assert torch.equal(a["rgb"], b["rgb"])
    assert load_run(run, checkpoint=40).step == 40
    assert load_run(run / "checkpoints" / "step_0000040.pt").run_dir == run
    ckpt = read_checkpoint(run)
    assert {"optimizer", "scheduler", "rng", "model", "configs"} <= set(ckpt)


def test_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    full = Trainer(data, configs(iters=14, checkpoint_every=7), tmp_path / "full")
    full.fit(progress=False)
    part = Trainer(data, configs(iters=14, checkpoint_every=7), tmp_path / "part")
    part.fit(progress=False, until=7)  # as if killed after the step-7 checkpoint
    resumed = Trainer(data, configs(iters=14, checkpoint_every=7), tmp_path / "part")
    assert resumed.step == 7
    resumed.fit(progress=False)
    want = [h["loss"] for h in full.history[7:]]
    got = [h["loss"] for h in resumed.history]
    assert len(got) == 7
    assert got == want  # bitwise: same data, jitter, grid updates, optimiser state
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    tr = Trainer(data, configs(iters=4, checkpoint_every=4), tmp_path)
    tr.fit(progress=False)
    good = list_checkpoints(tmp_path)
    tr.tcfg.iters = 12
    with torch.no_grad():
        tr.model.field.color_net[0].weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step 4.*step_0000004.pt"):
        tr.fit(progress=False)
    assert list_checkpoints(tmp_path) == good
    state = read_checkpoint(tmp_path)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_lips_stage_uses_patches_and_a_documented_substitute(head_run, data, tmp_path, caplog):
    run, _, _ = head_run
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        tr = Trainer(data, configs(stage="lips", iters=6), tmp_path, init=run)
    if tr.perceptual.kind == "ssim":
        assert "SSIM" in caplog.text
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit(progress=False)
    assert all(np.isfinite(h["loss"]) for h in tr.history)
    changed = [k for k, v in tr.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("field.planes") for k in changed)
    assert load_run(tmp_path).stage == "lips"


def test_torso_stage_freezes_the_head(head_run, data, tmp_path):
    run, _, _ = head_run
    tr = Trainer(data, configs(stage="torso", iters=12), tmp_path, init=run)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit(progress=False)
    after = tr.model.state_dict()
    head_keys = [k for k in after if k.startswith(("field.", "audio_encoder.", "smoother.", "grid."))
                 or k == "latents"]
    assert head_keys and all(torch.equal(after[k], before[k]) for k in head_keys)
    assert not torch.equal(after["torso.grid.table"], before["torso.grid.table"])
    assert bool(after["has_torso"])
    losses = [h["loss"] for h in tr.history]
    assert np.mean(losses[-4:]) < np.mean(losses[:2])
    loaded = load_run(tmp_path)
    ds = tr.train_set
    out = loaded.model.render_frame(ds.poses_file[0], ds.audio, 0, ds.expression(0))
    assert float(out["torso_alpha"].max()) > 0


def test_cli_trains_saves_and_rejects_bad_config(data, tmp_path, capsys):
    from nerfhead.cli import main

    out = tmp_path / "run"
    args = ["train", str(data), "--config", "tiny", "--out", str(out), "--iters", "3", "--device", "cpu",
            "--no-progress", "--set", "data.image_size=32", "--set", "data.num_rays=64"]
    assert main(args) == 0
    assert "trained head to step 3" in capsys.readouterr().out
    assert load_run(out).step == 3
    # the same command again: nothing to train, and it says so with the run's last validation
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "already trained to step 3" in said and "nothing to do" in said
    assert "last val PSNR" in said and "nan" not in said
    assert main(args[:-4] + ["--set", "train.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(args + ["--no-resume"]) == 2


def test_trains_on_a_synctalk_layout_folder(tmp_path):
    data = make_dataset(tmp_path / "st", num_frames=23, size=32, layout="synctalk")
    tr = Trainer(data, configs(stage="lips", iters=3, checkpoint_every=0), tmp_path / "run")
    assert tr.train_set.audio_kind == "precomputed" and tr.model.audio_encoder.in_channels == 29
    tr.fit(progress=False)  # mouth patches from ori_imgs/<i>.lms
    assert all(np.isfinite(h["loss"]) for h in tr.history)
    assert load_run(tmp_path / "run").model.audio_kind == "precomputed"


def test_loss_terms_hand_computed():
    from nerfhead.train import losses

    pred, target = torch.zeros(2, 3), torch.ones(2, 3)
    raw = torch.zeros(2)  # beta = 0.1 + ln 2
    beta = 0.1 + np.log(2.0)
    assert float(losses.uncertainty_nll(pred, target, raw)) == pytest.approx(1 / (2 * beta ** 2) + np.log(beta), rel=1e-6)
    assert float(losses.alpha_entropy(torch.tensor([0.5]))) == pytest.approx(1.0, rel=1e-6)
    assert float(losses.alpha_entropy(torch.tensor([0.0, 1.0]))) < 1e-3
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(losses.ssim(img, img)) == pytest.approx(1.0, abs=1e-5)
    assert float(losses.ssim(img, 1 - img)) < 0.5
    assert losses.psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0)


def test_lips_lpips_branch_matches_the_metric_and_has_gradients():
    """With LPIPS weights present the patch loss is weight * LPIPS (checked with a random
    AlexNet backbone, since the real one cannot be downloaded here) and is differentiable."""
    lp = pytest.importorskip("nerfhead.eval.lpips")
    heads = lp.default_linear_heads_path()
    if heads is None:
        pytest.skip("lpips linear heads not installed")
    from nerfhead.train.losses import PatchPerceptualLoss

    net = lp.LPIPS(lp.random_alexnet_state(0), torch.load(heads, map_location="cpu", weights_only=True))
    loss = PatchPerceptualLoss("cpu", lambda_lpips=0.5, lambda_ssim=0.01, net=net)
    assert loss.kind == "lpips"
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 32, 32, generator=g, requires_grad=True)
    b = torch.rand(1, 3, 32, 32, generator=g)
    value = loss(a, b)
    assert float(value.detach()) == pytest.approx(0.5 * float(loss.net(a, b)[0].detach()), rel=1e-5)
    value.backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0


def test_init_from_a_run_trained_on_other_audio_features_is_refused(head_run, tmp_path):
    from nerfhead.config import ConfigError

    run, _, _ = head_run
    st = make_dataset(tmp_path / "st", num_frames=23, size=32, layout="synctalk")
    with pytest.raises(ConfigError, match="mel audio features.*precomputed"):
        Trainer(st, configs(stage="lips"), tmp_path / "run", init=run)


def test_auto_audio_keeps_the_kind_of_the_run_it_resumes_or_starts_from(tmp_path, monkeypatch):
    """data.audio = auto picks mel+ow where a dataset has both files, but a run trained when
    auto picked mel keeps mel: resumed (twice: the saved settings then name mel), and as the
    --init of the next stage; a new run takes mel+ow."""
    from nerfhead.data import dataset

    data = make_dataset(tmp_path / "d", num_frames=23, size=32)
    n = len(np.load(data / "aud_mel.npy"))
    np.save(data / "aud_ow.npy", np.random.default_rng(0).normal(size=(n, 16, 96)).astype(np.float32))
    with monkeypatch.context() as m:  # auto before mel+ow existed
        m.setattr(dataset, "AUTO_AUDIO_ORDER", ("mel", "ow", "precomputed"))
        first = Trainer(data, configs(iters=2, checkpoint_every=2), tmp_path / "run")
        assert first.train_set.audio_kind == "mel"
        first.fit(progress=False)
    for iters in (4, 6):
        tr = Trainer(data, configs(iters=iters, checkpoint_every=2), tmp_path / "run")
        assert tr.step == iters - 2 and tr.train_set.audio_kind == "mel"
        tr.fit(progress=False)
    lips = Trainer(data, configs(stage="lips", iters=1), tmp_path / "lips", init=tmp_path / "run")
    assert lips.train_set.audio_kind == "mel"
    new = Trainer(data, configs(iters=1), tmp_path / "new")
    assert new.train_set.audio_kind == "mel+ow" and new.model.audio_encoder.in_channels == 176


def _saturate_colours(tr):
    """Colours inverted and saturated (sigmoid far from 0, where training cannot move them
    back in a few steps): what a collapsed run renders, in one step."""
    with torch.no_grad():
        last = [m for m in tr.model.field.color_net.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(-200.0)


def test_a_collapse_stops_the_run_and_gives_back_the_best_checkpoint(data, tmp_path):
    """Validation PSNR falling train.collapse_db below the best stops the run with the
    best validation's checkpoint as the run's latest again (kept though keep_checkpoints
    is 1), the later ones moved to RUN/collapsed/, and says how to go on."""
    tr = Trainer(data, configs(iters=8, checkpoint_every=4, val_every=4, keep_checkpoints=1,
                               collapse_db=3.0), tmp_path)
    tr.fit(progress=False)
    best = max(tr.validations, key=lambda r: r["psnr"])
    assert best["psnr"] > 10.0
    _saturate_colours(tr)
    tr.tcfg.iters = 12
    with pytest.raises(TrainingCollapsed, match=rf"step 12.*best.*step {best['step']}.*--init") as e:
        tr.fit(progress=False)
    assert tr.validations[-1]["psnr"] < best["psnr"] - 3.0, tr.validations
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step_{best['step']:07d}.pt"]
    assert (tmp_path / "collapsed" / "step_0000012.pt").is_file()
    assert read_checkpoint(tmp_path)["step"] == best["step"]
    assert str(tmp_path / "collapsed") in str(e.value)


def test_a_resumed_run_remembers_its_best_validation_and_a_fresh_one_does_not(data, tmp_path):
    first = Trainer(data, configs(iters=4, checkpoint_every=4, val_every=4), tmp_path / "run")
    first.fit(progress=False)
    resumed = Trainer(data, configs(iters=8, checkpoint_every=4, val_every=4), tmp_path / "run")
    assert resumed.best_validation() == first.validations[-1]
    # a new run in a folder that still holds an old run's metrics.jsonl (checkpoints deleted)
    for p in list_checkpoints(tmp_path / "run"):
        p.unlink()
    assert Trainer(data, configs(iters=4), tmp_path / "run").best_validation() is None


def test_collapse_check_off(data, tmp_path):
    tr = Trainer(data, configs(iters=4, checkpoint_every=4, val_every=4, collapse_db=0.0), tmp_path)
    tr.fit(progress=False)
    _saturate_colours(tr)
    tr.tcfg.iters = 8
    tr.fit(progress=False)  # trains on: the check is off
    assert tr.step == 8 and not (tmp_path / "collapsed").exists()


def test_a_short_clip_is_warned_about_once_at_the_start(data, tmp_path, caplog, monkeypatch):
    """A head stage on seconds of video warns that the mouth will follow new speech poorly
    (not on resume, not for the torso stage); enough frames train without it."""
    import nerfhead.train.trainer as T

    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        Trainer(data, configs(iters=2), run).fit(progress=False)
    assert "head stage on 31 training frames (1 s at 25 fps): few sounds" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        Trainer(data, configs(iters=4), run).fit(progress=False)  # resumed
        Trainer(data, configs(iters=2, stage="torso"), tmp_path / "torso", init=run)
    assert "training frames" not in caplog.text
    monkeypatch.setattr(T, "SHORT_CLIP_SECONDS", 1)
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        Trainer(data, configs(iters=2), tmp_path / "enough")
    assert "training frames" not in caplog.text
