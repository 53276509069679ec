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
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from nerfhead.models.audio import AudioEncoder

log = logging.getLogger("nerfhead.train")


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

    def summary(self) -> str:
        return (f"audio encoder refitted for other voices ({self.voices} in the dataset, "
                f"{self.steps} steps, {self.seconds:.0f} s): code error in those voices "
                f"{np.mean(self.error_before):.2f} -> {np.mean(self.error_after):.2f} of the "
                f"codes' spread; in the speaker's own voice 0 -> {self.error_own:.3f} (on "
                f"{self.checked_on})")


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
                        check_frames: np.ndarray | None = None) -> tuple[AudioEncoder, VoiceFit]:
    """A copy of ``encoder`` refitted so that the windows of ``voices`` [V, N, T, C] give the
    codes ``encoder`` gives for ``own`` [N, T, C] at the same frame; ``frames``: the rows to
    learn from (the training frames); ``check_frames``: rows to measure the errors on (the
    validation frames; None: every 7th of ``frames``). ``own_fraction`` of each batch reads
    the own voice. Adam, ``lr`` decaying to lr / 10, seeded by ``seed``. ``encoder`` is not
    changed."""
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
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="it", desc="refit audio encoder for other voices",
                   dynamic_ncols=True)
    for _ in range(steps):
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
    student.eval()
    if check_frames is not None and len(check_frames):
        check = np.unique(np.asarray(check_frames, dtype=np.int64))
        checked_on = f"{len(check)} validation frames"
    else:
        check = frames[::7] if len(frames) >= 7 else frames
        checked_on = f"{len(check)} training frames"
    error_own, before, after = _errors(teacher, student, own, voices, check, var, device)
    return student, VoiceFit(steps=steps, seconds=round(time.perf_counter() - t0, 1), voices=V,
                             error_own=error_own, error_before=before, error_after=after,
                             checked_on=checked_on)
