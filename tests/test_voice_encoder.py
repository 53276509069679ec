"""The audio encoder refitted for other voices (nerfhead.train.voice_encoder,
train.voice_encoder_steps): the refit learns what it should, the trainer runs it at a stage's
end, records it, and leaves the face field alone."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from nerfhead.models.audio import AudioEncoder
from nerfhead.train.checkpoint import list_checkpoints, read_checkpoint
from nerfhead.train.config import load_configs
from nerfhead.train.trainer import Trainer
from nerfhead.train.voice_encoder import refit_audio_encoder

torch.set_num_threads(1)


def _speech(n=400, t=8, c=12, seed=0):
    """Own-voice windows and two 'voices' of them: each channel scaled and offset (what a
    different vocal tract and microphone do to a log spectrum), plus a little noise."""
    rng = np.random.default_rng(seed)
    own = rng.normal(size=(n, t, c)).astype(np.float32)
    voices = np.stack([own * rng.uniform(0.5, 1.5, c) + rng.normal(0, 1.5, c)
                       + rng.normal(0, 0.05, own.shape) for _ in range(2)]).astype(np.float16)
    return own, voices


def test_the_refit_maps_other_voices_onto_the_own_voice_codes_and_keeps_those():
    own, voices = _speech()
    torch.manual_seed(0)
    enc = AudioEncoder(12, 8, dim=6, hidden=16)
    enc.set_statistics(own)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    student, fit = refit_audio_encoder(enc, own, voices, np.arange(300), steps=400, batch=64,
                                       lr=3e-3, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())  # untouched
    assert student is not enc and fit.steps == 400 and fit.voices == 2
    assert min(fit.error_before) > 0.3, fit  # the trained encoder reads the voices otherwise
    assert max(fit.error_after) < 0.35 * min(fit.error_before), fit
    assert fit.error_own < 0.1, fit
    # held-out frames (300..399 were never drawn) follow as well
    with torch.no_grad():
        x = torch.from_numpy(voices[0, 300:].astype(np.float32))
        target = enc(torch.from_numpy(own[300:]))
        var = target.var(0).mean()
        err_teacher = float(((enc(x) - target) ** 2).mean() / var)
        err_student = float(((student(x) - target) ** 2).mean() / var)
    assert err_student < 0.5 * err_teacher, (err_student, err_teacher)
    assert fit.checked_on == "43 training frames"  # every 7th of the 300 learnt from
    # measured on the frames it never drew instead: the figure the record then carries
    _, held = refit_audio_encoder(enc, own, voices, np.arange(300), steps=400, batch=64,
                                  lr=3e-3, seed=0, check_frames=np.arange(300, 400))
    assert held.checked_on == "100 validation frames"
    # the curve along the refit: at step 0 the student is the trained encoder, at the end the
    # figures of the record; steps every check_every (500 > 400: the start and the end only)
    assert [c[0] for c in held.curve] == [0, 400]
    assert held.curve[0][1] == pytest.approx(np.mean(held.error_before), abs=1e-4)
    assert held.curve[0][2] == pytest.approx(0.0, abs=1e-6)
    assert held.curve[-1][1:] == [round(float(np.mean(held.error_after)), 4), round(held.error_own, 4)]
    _, every = refit_audio_encoder(enc, own, voices, np.arange(300), steps=400, batch=64,
                                   lr=3e-3, seed=0, check_frames=np.arange(300, 400), check_every=100)
    assert [c[0] for c in every.curve] == [0, 100, 200, 300, 400]
    assert every.error_after == held.error_after  # measuring along the way changes nothing
    # the same student, the same frames (the unit, the codes' spread, is the training frames')
    assert held.error_after[0] / held.error_before[0] == pytest.approx(err_student / err_teacher, rel=1e-4)


def test_patience_stops_a_refit_that_only_gets_worse_and_keeps_the_best():
    """On a short clip the refit learns its training frames by heart and reads the held-out
    frames worse from the start: with ``patience`` it stops and returns the lowest-error
    encoder (here the one it started from); where the refit helps it keeps the best too."""
    own, voices = _speech()
    voices = np.repeat(own[None].astype(np.float16), 2, axis=0)  # held out: the own voice itself
    rng = np.random.default_rng(1)
    voices[:, :100] = rng.normal(size=(2, 100, *own.shape[1:]))  # learnt from: unrelated sound
    torch.manual_seed(0)
    enc = AudioEncoder(12, 8, dim=6, hidden=16)
    enc.set_statistics(own)
    student, fit = refit_audio_encoder(enc, own, voices, np.arange(100), steps=1000, batch=64,
                                       lr=3e-3, seed=0, check_frames=np.arange(300, 400),
                                       check_every=50, patience=150)
    assert fit.steps == 150 and fit.best_step == 0, fit.curve  # three checks without a lower one
    assert [c[0] for c in fit.curve] == [0, 50, 100, 150]
    assert all(c[1] + c[2] > fit.curve[0][1] + fit.curve[0][2] for c in fit.curve[1:])
    a, b = enc.state_dict(), student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the encoder it started from
    assert fit.error_own == pytest.approx(0.0, abs=1e-6) and "stopped early" in fit.summary()
    from nerfhead.train.voice_encoder import refit_is_worse

    assert refit_is_worse(fit)  # the run keeps its encoder as trained, as it would have

    own, voices = _speech()  # a refit that helps: it runs on while the error falls
    _, fit = refit_audio_encoder(enc, own, voices, np.arange(300), steps=400, batch=64, lr=3e-3,
                                 seed=0, check_frames=np.arange(300, 400), check_every=50,
                                 patience=150)
    combined = [c[1] + c[2] for c in fit.curve]
    assert fit.curve[int(np.argmin(combined))][0] == fit.best_step
    assert round(float(np.mean(fit.error_after)), 4) + round(fit.error_own, 4) == \
        pytest.approx(min(combined), abs=2e-4)
    assert min(combined) < 0.5 * combined[0]


def test_the_refit_needs_voices():
    own, _ = _speech(n=20)
    with pytest.raises(ValueError, match="other voices"):
        refit_audio_encoder(AudioEncoder(12, 8, 6), own, None, np.arange(20), steps=2)


def _configs(**train):
    over = {"data": {"image_size": 32, "num_rays": 128, "audio": "mel"},
            "train": {"iters": 4, "checkpoint_every": 4, "val_every": 0, "log_every": 2, **train}}
    return load_configs("tiny", over)


@pytest.fixture(scope="module")
def voiced_data(tmp_path_factory):
    from nerfhead.data.synthetic import make_dataset

    data = make_dataset(tmp_path_factory.mktemp("voiced"), num_frames=23, size=32)
    mel = np.load(data / "aud_mel.npy")
    rng = np.random.default_rng(3)
    voices = np.stack([mel * 0.8 + rng.normal(0, 0.5, mel.shape[-1]) for _ in range(2)])
    np.save(data / "aud_mel_voices.npy", voices.astype(np.float16))
    return data


def test_a_stage_ends_with_the_refit_and_only_the_encoder_changes(voiced_data, tmp_path):
    plain = Trainer(voiced_data, _configs(), tmp_path / "plain")
    plain.fit(progress=False)
    refit = Trainer(voiced_data, _configs(voice_encoder_steps=30), tmp_path / "refit")
    refit.fit(progress=False)
    a, b = plain.model.state_dict(), refit.model.state_dict()
    changed = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert changed and all(k.startswith("audio_encoder.") for k in changed), changed
    ck = read_checkpoint(tmp_path / "refit")
    assert ck["voice_fit"]["steps"] == 30 and ck["voice_fit"]["voices"] == 2
    assert ck["voice_fit"]["checked_on"].endswith("validation frames")
    assert torch.equal(ck["model"]["audio_encoder.head.2.weight"], b["audio_encoder.head.2.weight"])
    rows = [json.loads(x) for x in (tmp_path / "refit" / "metrics.jsonl").read_text().splitlines()]
    assert [("voice_fit" in r, "psnr" in r) for r in rows] == [(True, False), (False, True)]
    assert "voice_fit" not in read_checkpoint(tmp_path / "plain")


def test_the_encoder_as_trained_is_kept_beside_the_refitted_one(voiced_data, tmp_path):
    """The refit keeps the encoder the speaker's voice trained: `--audio-encoder trained`
    (load_run, Renderer.load) gives back exactly the model trained without the refit (same
    seed), the default the refitted one; a run never refitted is the same either way; a
    checkpoint refitted before the encoder was kept says so."""
    from nerfhead.render.renderer import Renderer
    from nerfhead.train.checkpoint import TRAINED_ENCODER, CheckpointError, load_run

    Trainer(voiced_data, _configs(), tmp_path / "plain").fit(progress=False)
    Trainer(voiced_data, _configs(voice_encoder_steps=30), tmp_path / "refit").fit(progress=False)
    plain = read_checkpoint(tmp_path / "plain")["model"]
    ck = read_checkpoint(tmp_path / "refit")
    kept = {f"audio_encoder.{k}": v for k, v in ck[TRAINED_ENCODER].items()}
    assert kept and all(torch.equal(v, plain[k]) for k, v in kept.items())
    trained = load_run(tmp_path / "refit", audio_encoder="trained")
    assert all(torch.equal(v, plain[k]) for k, v in trained.model.state_dict().items())
    assert trained.audio_encoder == "trained" and "as chosen" in trained.audio_encoder_note()
    default = load_run(tmp_path / "refit")
    assert default.audio_encoder == "refitted"
    assert not torch.equal(default.model.state_dict()["audio_encoder.head.2.weight"],
                           plain["audio_encoder.head.2.weight"])
    r = Renderer.load(tmp_path / "refit", "cpu", audio_encoder="trained")
    assert torch.equal(r.model.state_dict()["audio_encoder.head.2.weight"],
                       plain["audio_encoder.head.2.weight"])
    same = load_run(tmp_path / "plain", audio_encoder="trained")
    assert same.audio_encoder == "trained" and "not refitted" in same.audio_encoder_note()
    with pytest.raises(ValueError, match="refitted, trained"):
        load_run(tmp_path / "plain", audio_encoder="own")

    del ck[TRAINED_ENCODER]  # as an older nerfhead wrote it
    old = tmp_path / "old" / "checkpoints"
    old.mkdir(parents=True)
    torch.save({k: v for k, v in ck.items() if k != "path"}, old / "step_0000004.pt")
    with pytest.raises(CheckpointError, match="older nerfhead.*refitted encoder"):
        load_run(tmp_path / "old", audio_encoder="trained")
    assert load_run(tmp_path / "old").audio_encoder == "refitted"


def test_a_finished_run_is_refitted_once_when_asked(voiced_data, tmp_path, capsys):
    from nerfhead.cli import main

    run = tmp_path / "run"
    Trainer(voiced_data, _configs(), run).fit(progress=False)
    ck = list_checkpoints(run)[-1]
    before = read_checkpoint(run)["model"]["audio_encoder.head.2.weight"].clone()
    args = ["train", str(voiced_data), "--config", "tiny", "--out", str(run), "--iters", "4",
            "--no-progress", "--set", "data.image_size=32", "--set", "data.num_rays=128",
            "--set", "data.audio=mel", "--set", "train.checkpoint_every=4",
            "--set", "train.val_every=0", "--set", "train.log_every=2"]
    assert main(args + ["--set", "train.voice_encoder_steps=20"]) == 0
    after = read_checkpoint(run)
    assert list_checkpoints(run) == [ck] and after["voice_fit"]["steps"] == 20
    assert not torch.equal(after["model"]["audio_encoder.head.2.weight"], before)
    assert torch.equal(after["audio_encoder_trained"]["head.2.weight"], before)
    stamp = ck.stat().st_mtime_ns
    assert main(args + ["--set", "train.voice_encoder_steps=20"]) == 0  # done: nothing to do
    assert ck.stat().st_mtime_ns == stamp and "nothing to do" in capsys.readouterr().out


def test_a_dataset_without_voices_keeps_its_encoder_and_says_why(tmp_path, caplog):
    from nerfhead.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "d", num_frames=23, size=32)
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        tr = Trainer(data, _configs(voice_encoder_steps=30), tmp_path / "run")
        tr.fit(progress=False)
    assert "not refitted" in caplog.text and "nerfhead preprocess" in caplog.text
    assert tr.voice_fit is None and "voice_fit" not in read_checkpoint(tmp_path / "run")


def test_the_record_reaches_the_torso_stage_and_the_evaluation(voiced_data, tmp_path):
    from nerfhead.train.checkpoint import load_run

    head = tmp_path / "head"
    Trainer(voiced_data, _configs(voice_encoder_steps=20), head).fit(progress=False)
    torso = tmp_path / "torso"
    Trainer(voiced_data, _configs(stage="torso", voice_encoder_steps=20), torso,
            init=head).fit(progress=False)
    run = load_run(torso)
    assert run.voice_fit == read_checkpoint(head)["voice_fit"]  # carried, not refitted again
    assert run.audio_encoder_note().startswith("refitted for other voices (2 in the dataset, 20 steps)")
    as_trained = read_checkpoint(head)["audio_encoder_trained"]  # carried too
    enc = load_run(torso, audio_encoder="trained").model.audio_encoder.state_dict()
    assert all(torch.equal(enc[k], v) for k, v in as_trained.items())
    plain = tmp_path / "plain"
    Trainer(voiced_data, _configs(), plain).fit(progress=False)
    assert "not refitted" in load_run(plain).audio_encoder_note()


def test_a_lips_stage_trains_on_from_the_encoder_as_trained(voiced_data, tmp_path, caplog):
    """--init from a refitted head: the lips stage starts from the encoder the speaker's voice
    trained (not the refit), says whether it will refit again, and the torso stage keeps the
    run's refitted encoder (it renders with it)."""
    head = tmp_path / "head"
    Trainer(voiced_data, _configs(voice_encoder_steps=20), head).fit(progress=False)
    ck = read_checkpoint(head)
    with caplog.at_level(logging.INFO, logger="nerfhead.train"):
        lips = Trainer(voiced_data, _configs(stage="lips", voice_encoder_steps=20), tmp_path / "l",
                       init=head)
    enc = lips.model.audio_encoder.state_dict()
    assert all(torch.equal(enc[k], v) for k, v in ck["audio_encoder_trained"].items())
    assert "refits it again at its end" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        Trainer(voiced_data, _configs(stage="lips"), tmp_path / "l0", init=head)
    assert "does not refit it" in caplog.text
    torso = Trainer(voiced_data, _configs(stage="torso"), tmp_path / "t", init=head)
    refitted = {k[len("audio_encoder."):]: v for k, v in ck["model"].items()
                if k.startswith("audio_encoder.")}
    enc = torso.model.audio_encoder.state_dict()
    assert all(torch.equal(enc[k], v) for k, v in refitted.items())


def test_info_describes_a_run_folder(voiced_data, tmp_path, capsys):
    """`nerfhead info RUN`: stage and step, the encoder and whether the trained one is kept,
    floaters, validations and lip-sync checks from metrics.jsonl; --json the same as data;
    a folder without checkpoints is refused (exit 2)."""
    import json as _json

    from nerfhead.cli import main

    run = tmp_path / "refit"
    Trainer(voiced_data, _configs(voice_encoder_steps=20), run).fit(progress=False)
    with open(run / "metrics.jsonl", "a") as f:  # as a head stage's check writes it
        f.write(_json.dumps({"step": 4, "lipsync_check": {"correlation": 0.812, "amplitude_ratio": 0.9,
                                                           "frames_used": 100}}) + "\n")
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "stage        head, step 4 of 4\n" in out
    assert "refitted for other voices (2 in the dataset, 20 steps)" in out
    assert "the encoder as trained is kept: --audio-encoder trained renders with it" in out
    assert "lip sync     step 4: r 0.81, amplitude 0.90" in out and "floaters     on loading: " in out
    assert main(["info", str(run), "--json"]) == 0
    d = _json.loads(capsys.readouterr().out)
    assert d["finished"] and d["trained_encoder_kept"] is True and d["checkpoints"] == ["step_0000004.pt"]
    assert d["last_validation"]["step"] == 4 and d["lipsync_checks"][0]["correlation"] == 0.812
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2
    assert "no checkpoints" in capsys.readouterr().err


def test_a_refit_worse_on_validation_frames_is_not_kept(voiced_data, tmp_path, caplog, monkeypatch):
    """A refit that reads the held-out frames' other voices worse than the trained encoder (on
    an 8-s clip: 0.43 -> 1.48) is recorded, warned about and not loaded: the run is the plain
    model, renders and reports say the encoder is the trained one, and a rerun does not refit
    again. A fit measured on training frames only cannot be judged so, and stays."""
    from nerfhead.train import voice_encoder as VE
    from nerfhead.train.checkpoint import load_run

    real = VE.refit_audio_encoder

    def worse(*args, **kwargs):  # the real refit, its held-out errors made worse
        student, fit = real(*args, **kwargs)
        fit.error_after = [b + 0.5 for b in fit.error_before]
        return student, fit

    monkeypatch.setattr(VE, "refit_audio_encoder", worse)
    plain = Trainer(voiced_data, _configs(), tmp_path / "plain")
    plain.fit(progress=False)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="nerfhead.train"):
        tr = Trainer(voiced_data, _configs(voice_encoder_steps=20), run)
        tr.fit(progress=False)
    assert tr.voice_fit.kept is False
    assert "not kept" in caplog.text and "training frames are too few" in caplog.text
    a, b = plain.model.state_dict(), tr.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the plain model, encoder included
    ck = read_checkpoint(run)
    assert ck["voice_fit"]["kept"] is False
    loaded = load_run(run)
    assert loaded.audio_encoder == "trained"
    assert "its refit for other voices (2 in the dataset) was not kept" in loaded.audio_encoder_note()
    assert loaded.trained_encoder_kept is None  # nothing beside it: `info` has no such line
    rows = (run / "metrics.jsonl").read_text().count('"voice_fit"')
    Trainer(voiced_data, _configs(voice_encoder_steps=20), run).fit(progress=False)
    assert (run / "metrics.jsonl").read_text().count('"voice_fit"') == rows  # not refitted again
    fit = VE.VoiceFit(steps=1, seconds=0.0, voices=1, error_own=0.0, error_before=[0.1],
                      error_after=[0.5], checked_on="43 training frames")
    assert not VE.refit_is_worse(fit)
    fit.checked_on = "18 validation frames"
    assert VE.refit_is_worse(fit)
    # closer in the other voices, but at a larger cost in the own voice (GRID, 60 s)
    fit.error_before, fit.error_after, fit.error_own = [0.48], [0.46], 0.255
    assert VE.refit_is_worse(fit)
    fit.error_before, fit.error_after, fit.error_own = [0.64], [0.29], 0.074  # GRID, 240 s
    assert not VE.refit_is_worse(fit)
