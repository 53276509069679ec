"""Refit the audio encoder to read other voices as the speaker's own (``train.voice_encoder_steps``).

A head trained on one speaker's voice learns that voice: driven by another speaker the mouth
follows less (on the benchmark, opening correlation 0.87 in the speaker's own held-out voice,
0.68 in four synthetic voices saying the same words). Training the whole model on other
voices too (``train.voice_augment``) helps those voices but blurs the mouth: the face field
is then fitted to audio that says less about how wide this speaker opens, and it learns an
average, smaller opening.

Here the face field stays the one fitted to the speaker's own voice. Only the audio
encoder (each frame's 16-window of features to a code) is refitted, as a student of the
trained encoder: for a frame's speech in another voice (the dataset's
``aud_<kind>_voices.npy``: shifts of the clip's voice and its words said by speech
synthesisers, written by preprocessing) it learns to give the code the trained encoder gives
for the speaker's own voice at that frame; for a share of the batches the input is the own
voice itself, so that voice keeps its codes. No rendering is involved: a few thousand small
steps, about two minutes on one CPU core. The temporal smoother and the field are unchanged.

Measured in docs/benchmarks.md ("One face field, an audio encoder refitted for other voices").

Beside the refit, what the trainer does with it: ``refit_model_audio_encoder`` at a stage's
end (logged and recorded), ``kept_refit`` and ``init_trained_encoder`` when a stage resumes
or starts from a refitted run; and ``voices_for_augment``, the voices train.voice_augment
mixes into training instead.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from nerfhead.models.audio import AudioEncoder
from nerfhead.train.checkpoint import TRAINED_ENCODER, append_metrics

log = logging.getLogger("nerfhead.train")

#: refit steps between two measures of the validation frames' errors (``VoiceFit.curve``,
#: and where ``train.voice_encoder_patience`` may stop the refit)
CHECK_EVERY = 250


@dataclass
class VoiceFit:
    """What one refit did. Errors are mean squared code differences from the trained
    encoder's own-voice codes, over the variance of those codes (0: the same codes; 1: as far
    apart as two random frames' codes), on frames the refit did not learn from (the
    validation split's) where there are any, else on every 7th training frame (``checked_on``).
    On a short clip the refit learns its few training frames by heart: only the first says how
    it reads speech it has not seen."""

    steps: int
    seconds: float
    voices: int  #: other voices the dataset has
    error_own: float  #: the refitted encoder on the own voice (the trained one's is 0)
    error_before: list[float] = field(default_factory=list)  #: trained encoder, per voice
    error_after: list[float] = field(default_factory=list)  #: refitted encoder, per voice
    checked_on: str = "training frames"  #: the frames the errors are measured on
    #: whether the run renders with the refitted encoder: False when, on validation frames,
    #: it brought the codes no closer on the whole (``refit_is_worse``: a refit that learnt a
    #: short clip's few frames by heart), so the run kept the encoder as trained
    kept: bool = True
    #: [[refit step, other voices' error, own voice's error], ...] along the refit, on the same
    #: frames, every ``check_every`` steps: where it stops getting better, or never does
    curve: list = field(default_factory=list)
    #: the step of the encoder returned: ``steps`` unless ``patience`` kept an earlier one
    #: (``steps`` is then where the refit stopped)
    best_step: int | None = None

    def summary(self) -> str:
        stop = ("" if self.best_step in (None, self.steps) else
                ", stopped early: no step read the voices better than the encoder as trained"
                if self.best_step == 0 else
                f", stopped early: the error was lowest at step {self.best_step}, the encoder "
                "of that step is the refit")
        text = (f"audio encoder refitted for other voices ({self.voices} in the dataset, "
                f"{self.steps} steps{stop}, {self.seconds:.0f} s): code error in those voices "
                f"{np.mean(self.error_before):.2f} -> {np.mean(self.error_after):.2f} of the "
                f"codes' spread; in the speaker's own voice 0 -> {self.error_own:.3f} (on "
                f"{self.checked_on})")
        return text if self.kept else text + "; not kept: the run keeps the encoder as trained"


def refit_is_worse(fit: VoiceFit) -> bool:
    """True when the refit, measured on frames it did not learn from, does not bring the codes
    closer to the speaker's on the whole: the speaker's own voice counted as one voice beside
    the mean of the others (it reads its own voice with error 0 before the refit). On the GRID
    clip: 60 s of training frames, others 0.48 -> 0.46 but own 0 -> 0.26, and the refitted
    run followed every voice worse (own 0.785 against 0.831, flite slt 0.625 against 0.650);
    240 s, others 0.64 -> 0.29, own 0.07, and it followed the other voices better (0.77
    against 0.68-0.71)."""
    if "validation" not in fit.checked_on:
        return False
    return float(np.mean(fit.error_after)) + fit.error_own >= float(np.mean(fit.error_before))


def _windows(array, rows: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array[rows], dtype=np.float32)).to(device)


@torch.no_grad()
def _errors(teacher: AudioEncoder, student: AudioEncoder, own, voices, rows, var, device):
    target = teacher(_windows(own, rows, device))
    err = lambda enc, x: float(((enc(x) - target) ** 2).mean() / var)  # noqa: E731
    before = [err(teacher, _windows(voices[v], rows, device)) for v in range(voices.shape[0])]
    after = [err(student, _windows(voices[v], rows, device)) for v in range(voices.shape[0])]
    return err(student, _windows(own, rows, device)), before, after


def refit_audio_encoder(encoder: AudioEncoder, own, voices, frames: np.ndarray, steps: int,
                        own_fraction: float = 0.25, batch: int = 256, lr: float = 1e-3,
                        seed: int = 0, progress: bool = False,
                        check_frames: np.ndarray | None = None,
                        check_every: int = 500, patience: int = 0) -> tuple[AudioEncoder, VoiceFit]:
    """A copy of ``encoder`` refitted so that the windows of ``voices`` [V, N, T, C] give the
    codes ``encoder`` gives for ``own`` [N, T, C] at the same frame; ``frames``: the rows to
    learn from (the training frames); ``check_frames``: rows to measure the errors on (the
    validation frames; None: every 7th of ``frames``), also every ``check_every`` steps
    (``VoiceFit.curve``; 0: only at the end). ``own_fraction`` of each batch reads the own
    voice. Adam, ``lr`` decaying to lr / 10, seeded by ``seed``. ``encoder`` is not changed.

    ``patience`` (steps; used only with ``check_frames``, which the refit does not learn from,
    and ``check_every``): stop once the combined error (the other voices' mean plus the own
    voice's, as ``refit_is_worse`` weighs them) has not been the lowest yet for this many
    steps, and return the encoder of the lowest; its step is ``VoiceFit.best_step``."""
    if voices is None or voices.shape[0] == 0:
        raise ValueError("refit_audio_encoder needs the clip's speech in other voices")
    device = next(encoder.parameters()).device
    teacher = copy.deepcopy(encoder).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(encoder).train()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** min(s / max(steps, 1), 1.0))
    rng = np.random.default_rng(seed)
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    with torch.no_grad():  # the codes' spread: the unit of the loss, fixed for the fit
        var = teacher(_windows(own, rng.choice(frames, min(2048, len(frames)), replace=False),
                               device)).var(0).mean().clamp(min=1e-8)
    V = voices.shape[0]
    if check_frames is not None and len(check_frames):
        check = np.unique(np.asarray(check_frames, dtype=np.int64))
        checked_on = f"{len(check)} validation frames"
    else:
        check = frames[::7] if len(frames) >= 7 else frames
        checked_on = f"{len(check)} training frames"
    curve = []
    early = bool(patience and check_every and check_frames is not None and len(check_frames))
    best = {"combined": np.inf, "step": 0, "state": None, "errors": None}

    def measure(step: int) -> tuple[float, list, list]:
        student.eval()
        own_error, before, after = _errors(teacher, student, own, voices, check, var, device)
        student.train()
        curve.append([step, round(float(np.mean(after)), 4), round(own_error, 4)])
        combined = float(np.mean(after)) + own_error
        if early and combined < best["combined"]:
            best.update(combined=combined, step=step, errors=(own_error, before, after),
                        state={k: v.detach().clone() for k, v in student.state_dict().items()})
        return own_error, before, after

    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="it", desc="refit audio encoder for other voices",
                   dynamic_ncols=True)
    ran = steps
    for s in range(steps):
        if check_every and s % check_every == 0:
            measure(s)
            if early and s - best["step"] >= patience:  # no lower error for `patience` steps
                ran = s
                break
        rows = rng.choice(frames, batch)
        voice = rng.integers(0, V, batch)
        use_own = rng.random(batch) < own_fraction
        x = np.empty((batch, *own.shape[1:]), np.float32)
        x[use_own] = own[rows[use_own]]
        for v in np.unique(voice[~use_own]):
            pick = ~use_own & (voice == v)
            x[pick] = voices[v][rows[pick]]
        with torch.no_grad():
            target = teacher(_windows(own, rows, device))
        loss = ((student(torch.from_numpy(x).to(device)) - target) ** 2).mean() / var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(error=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    if ran == steps:  # (stopped early, the last check has just measured it)
        error_own, before, after = measure(steps)
    best_step = ran
    if early and best["step"] != ran:  # an earlier encoder read the voices better
        student.load_state_dict(best["state"])
        error_own, before, after = best["errors"]
        best_step = best["step"]
    student.eval()
    return student, VoiceFit(steps=ran, seconds=round(time.perf_counter() - t0, 1), voices=V,
                             error_own=error_own, error_before=before, error_after=after,
                             checked_on=checked_on, curve=curve, best_step=best_step)


def refit_model_audio_encoder(model, train_set, val_set, train, run_dir, step: int, get_writer,
                              progress: bool = False) -> tuple[VoiceFit, dict] | None:
    """Refit ``model``'s audio encoder in place for ``train_set``'s other voices, as a
    stage's end does (``train``: the TrainConfig, whose voice_encoder_steps,
    voice_encoder_own_fraction and seed it uses; the errors are measured on ``val_set``'s
    frames where there is one): logged, written to RUN/metrics.jsonl and TensorBoard
    (``get_writer()``: the run's SummaryWriter). Returns the fit and the encoder's state dict
    as the speaker's voice trained it (on the CPU: the checkpoint keeps it, and
    ``--audio-encoder trained`` renders with it), or None, with a warning, when the dataset
    has no other voices. A refit that reads the validation frames' other voices worse than the
    trained encoder (``refit_is_worse``) is not loaded: the fit, with ``kept`` False, is
    recorded all the same, with a warning, so a rerun does not refit again."""
    if train_set.audio_voices is None:
        log.warning("train.voice_encoder_steps %d: %s has no %s features in other voices "
                    "(aud_<kind>_voices.npy), so the audio encoder is not refitted and "
                    "other speakers' voices will move the mouth less. Rerun `nerfhead "
                    "preprocess` on the video (only its audio step runs again), then train "
                    "again", train.voice_encoder_steps, train_set.root, train_set.audio_kind)
        return None
    student, fit = refit_audio_encoder(
        model.audio_encoder, train_set.audio, train_set.audio_voices, train_set.aud_ids,
        steps=train.voice_encoder_steps, own_fraction=train.voice_encoder_own_fraction,
        seed=train.seed, progress=progress,
        check_frames=val_set.aud_ids if val_set is not None else None,
        check_every=CHECK_EVERY, patience=train.voice_encoder_patience)
    trained = {k: v.detach().cpu().clone() for k, v in model.audio_encoder.state_dict().items()}
    if refit_is_worse(fit):
        fit.kept = False
        log.warning("%s. On frames it did not learn from, the refit does not read the voices "
                    "closer to the speaker's codes than the encoder as trained (the other "
                    "voices' error plus what it costs the speaker's own voice): %d training "
                    "frames are too few to learn how other voices say the speaker's sounds "
                    "(on 240 s of GRID the refit cut the error from 0.64 to 0.29 at a cost of "
                    "0.07 in the own voice)", fit.summary(), len(np.unique(train_set.aud_ids)))
    else:
        model.audio_encoder.load_state_dict(student.state_dict())
        log.info("%s", fit.summary())
    w = get_writer()
    w.add_scalar("voice_encoder/error_before", float(np.mean(fit.error_before)), step)
    w.add_scalar("voice_encoder/error_after", float(np.mean(fit.error_after)), step)
    w.add_scalar("voice_encoder/error_own", fit.error_own, step)
    for refit_step, others, own_error in fit.curve:  # x: the refit's own steps
        w.add_scalar("voice_encoder/refit_error_others", others, refit_step)
        w.add_scalar("voice_encoder/refit_error_own", own_error, refit_step)
    append_metrics(run_dir, {"step": step, "voice_fit": dataclasses.asdict(fit)})
    return fit, trained


def kept_refit(resume_ckpt: dict | None, init_ckpt: dict | None, stage: str, step: int,
               iters: int) -> tuple[VoiceFit | None, dict | None]:
    """The record of the audio encoder's refit (train.voice_encoder_steps) a stage starts
    with, and the encoder as the speaker's voice trained it that goes with the record:
    (None, None) unless a run resumed at its last step keeps its checkpoint's, or the torso
    stage, whose encoder is frozen, carries its --init's on."""
    kept = resume_ckpt if resume_ckpt is not None and resume_ckpt.get("voice_fit") else {}
    if stage == "torso" and not kept:
        kept = init_ckpt or {}
    elif stage != "torso" and step < iters:
        kept = {}  # the encoder trains on: the record will be made again at the end
    fit = kept.get("voice_fit")
    return (VoiceFit(**fit) if fit else None), (kept.get(TRAINED_ENCODER) if fit else None)


def init_trained_encoder(model, init_ckpt: dict, stage: str, voice_encoder_steps: int) -> None:
    """A head or lips stage started from a run whose encoder was refitted for other voices
    trains on from the encoder as the speaker's voice trained it (kept beside the refit),
    so that the training chain stays the speaker's own voice and each stage's refit is a
    student of what that stage trained (``--audio-encoder trained`` then means that)."""
    trained = init_ckpt.get(TRAINED_ENCODER)
    if stage == "torso" or not init_ckpt.get("voice_fit") or trained is None:
        return
    model.audio_encoder.load_state_dict(trained)
    if voice_encoder_steps > 0:
        log.info("init: the audio encoder trains on from --init's as the speaker's voice "
                 "trained it (not its refit for other voices); this stage refits it again "
                 "at its end (train.voice_encoder_steps %d)", voice_encoder_steps)
    else:
        log.warning("init: --init's audio encoder was refitted for other voices; this stage "
                    "trains on from the encoder as the speaker's voice trained it and, with "
                    "train.voice_encoder_steps 0, does not refit it: other voices will move "
                    "the mouth less. Set train.voice_encoder_steps (3000, as `nerfhead run` "
                    "does) to refit it at this stage's end")


def voices_for_augment(train, stage: str, train_set):
    """``train_set``'s other voices when train.voice_augment mixes them into training (the
    alternative to the refit, see the module doc), else None: for the torso stage, whose head
    is frozen, and, with a warning, for a dataset without them."""
    if train.voice_augment <= 0 or stage == "torso":
        return None
    if train_set.audio_voices is None:
        log.warning("train.voice_augment %.2f: %s has no voice-shifted %s features "
                    "(aud_<kind>_voices.npy); training on the clip's own voice only, so "
                    "other speakers' voices will move the mouth less. Rerun `nerfhead "
                    "preprocess` on the video (only its audio step runs again) to add them",
                    train.voice_augment, train_set.root, train_set.audio_kind)
        return None
    log.info("voice augmentation: %d other voices of the clip's speech, each frame's audio "
             "from one of them with probability %.2f", train_set.audio_voices.shape[0],
             train.voice_augment)
    return train_set.audio_voices
