"""TrainConfig (the ``train:`` section) and loading a preset's three sections together."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nerfhead.config import ConfigError, load_section, load_yaml, parse_override, resolve_preset
from nerfhead.data.dataset import DataConfig
from nerfhead.models.config import ModelConfig

SECTIONS = {"model": ModelConfig, "data": DataConfig}


@dataclass
class TrainConfig:
    """Optimisation, losses, logging and checkpointing of one training stage."""

    stage: Literal["head", "lips", "torso"] = "head"
    """head: full-frame rays; lips: mouth patches (+LPIPS) and full-frame rays fine-tuning a
    head run; torso: head frozen, the 2D torso field trained."""
    iters: int = 60000
    """Training steps of this stage (one frame per step)."""
    seed: int = 0
    """Seed of everything random: frame order, ray choice, march jitter, grid updates."""
    lr_grid: float = 1e-2
    """Adam learning rate of the hash-grid tables and the per-frame latents (ER-NeRF: 1e-2)."""
    lr_net: float = 1e-3
    """Adam learning rate of the MLPs and the audio networks (ER-NeRF: 1e-3)."""
    lr_decay: float = 0.1
    """Learning rates decay exponentially to lr * lr_decay at the last step."""
    grid_update_every: int = 16
    """Steps between occupancy-grid updates (density sampled with a random frame's audio)."""
    mark_unseen: bool = True
    """At the start, mark grid cells no training camera sees as empty."""
    uncertainty_start: float = 0.5
    """Fraction of the head stage after which the uncertainty-weighted loss replaces MSE
    (ER-NeRF's "unc_loss"; 1 disables). NLL: err / (2 beta^2) + log beta, beta = 0.1 + softplus(u)."""
    lambda_entropy: float = 1e-4
    """Weight of the binary entropy of each ray's head alpha (pushes alpha to 0 or 1)."""
    lambda_audio_att: float = 1e-5
    """Weight of the L1 norm of the audio region attention (keeps audio local to the mouth)."""
    lambda_lpips: float = 0.01
    """Lips stage: weight of LPIPS on the mouth patch (SyncTalk: 0.01)."""
    lambda_patch_ssim: float = 0.01
    """Lips stage when LPIPS weights are unavailable: weight of 1 - SSIM on the patch instead."""
    mouth_ray_fraction: float = 0.0
    """Head stage: fraction of each step's rays drawn uniformly inside the mouth box (the lip
    landmarks' box grown by data.mouth_margin) instead of the whole frame. The mouth is ~1-2%
    of the frame, so with uniform rays it gets a few rays per step and regresses to an
    average, half-open mouth."""
    latent_dropout: float = 0.0
    """Head and lips stages: probability per step that the frame's latent is replaced by the
    mean latent, the one every unseen frame gets at render time; keeps the per-frame latents
    from explaining what the audio should (the mouth)."""
    voice_augment: float = 0.0
    """Head and lips stages: probability that a frame's audio comes from the clip's speech in
    another voice (the dataset's ``aud_<kind>_voices.npy``, written by preprocessing's audio
    step: the shifts of ``audio.voice_shifts``, ``nerfhead.audio.voice``, and the clip's words
    said by synthetic voices with ``audio.respeak_words``, ``nerfhead.audio.respeak``) instead
    of its own, one of those voices at random. Same words and timing, another voice: the audio
    path learns what stays the same across speakers. Shifts help with this speaker in another
    voice, synthetic voices with other speakers (docs/benchmarks.md, "Lip sync driven by other
    voices", "Lip sync for other speakers"). A dataset without voices trains on its own
    voice, with a warning."""
    voice_encoder_steps: int = 0
    """Head and lips stages: at the end of the stage, refit the audio encoder for this many
    steps so that it reads the dataset's other voices (``aud_<kind>_voices.npy``: the shifts
    of ``audio.voice_shifts`` and the synthetic voices of ``audio.respeak_words``) as the
    speaker's own voice, the face field unchanged (``nerfhead.train.voice_encoder``: no
    rendering, about 2 minutes on one CPU core for 3000). The mouth then follows other
    speakers more closely without the smaller opening ``voice_augment`` costs
    (docs/benchmarks.md). 0: off; a dataset without other voices keeps its encoder, with a
    warning."""
    voice_encoder_own_fraction: float = 0.25
    """Share of each refit batch read in the speaker's own voice (which keeps its codes)."""
    voice_encoder_patience: int = 750
    """Stop the refit once its error on the validation frames (the other voices' plus the
    own voice's, measured every 250 steps) has not been the lowest yet for this many steps,
    and keep the encoder of the lowest. On a short clip the refit only learns its frames by
    heart and the error rises from the start (8 s and 60 s of GRID): it then stops after 750
    steps instead of running all of ``voice_encoder_steps`` to a refit not kept. 0: all
    steps. Without a validation split it runs all steps."""
    frames_per_step: int = 1
    """Head stage: frames each step draws its rays from (data.num_rays split evenly, each
    frame's rays rendered with that frame's audio, expression and latent). One frame per
    step gives the audio path one example per step; several give it as many at the same
    number of rays, which is what the mouth needs to follow new speech."""
    lips_frame_rays: int = -1
    """Lips stage: random rays of the whole frame drawn with each mouth patch, so the rest of
    the head stays supervised and grows no floaters (-1: data.num_rays; 0: the patch only)."""
    lips_frame_weight: float = 1.0
    """Lips stage: weight of the frame rays' MSE beside the patch's MSE (each is a mean)."""
    lipsync_check_frames: int = 125
    """Head and lips stages: at the stage's end, render this many consecutive validation
    frames and correlate the rendered mouth opening with the footage's
    (``nerfhead.train.lipsync_check``; MediaPipe landmarks): a warning when the mouth hardly
    follows (correlation or amplitude under 0.3), which validation PSNR cannot see. 0: off;
    skipped, with the reason in the log, without the landmark model or a face."""
    lipsync_check_every: int = 0
    """Head and lips stages: also run the lip-sync check every this many steps (0: only at
    the stage's end), so TensorBoard's ``lipsync_check/correlation`` shows the mouth learning
    to follow the audio. Early checks may be low (the mouth is not learned yet); a check
    that falls ``LIPSYNC_DROP`` (0.3) below the best earlier one warns: the mouth stopped
    following while validation PSNR may still rise."""
    collapse_db: float = 6.0
    """Stop the run when a validation PSNR falls this many dB below the best one so far (a
    run that collapsed: a learning rate or loss weight too high). The best validation's
    checkpoint is always kept; on a collapse the later ones are moved to ``RUN/collapsed/``,
    so the run's latest checkpoint, which render and evaluate read, is the best one.
    0 disables the check."""
    checkpoint_every: int = 2000
    """Steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept in the run folder (oldest deleted)."""
    val_every: int = 2000
    """Steps between validation renders (PSNR, GT | render | error PNG); 0 = only at the end."""
    val_frames: int = 2
    """Validation frames rendered each time (evenly spread over the val split)."""
    log_every: int = 50
    """Steps between TensorBoard scalars."""
    cpu_threads: int = 0
    """torch CPU threads when training on the CPU (0: chosen at start from the cores not busy
    with other processes, ``nerfhead.threads.choose_threads``; ``--threads 0``: torch's
    default). On a machine shared with other jobs 1 thread is far faster than oversubscribed
    cores (measured 6x on tiny). Exact resumption needs the same thread count (reductions
    change order): a chosen count follows the load, so set it for bit-exact resumes."""
    prefetch_frames: int = 2
    """Steps ahead whose frames a background thread decodes into the dataset cache while
    the current step runs (0: off; the results are the same either way)."""


def load_configs(preset: str | os.PathLike | Mapping | None,
                 overrides: list[str] | Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """``{"model": ModelConfig, "data": DataConfig, "train": TrainConfig}`` from a preset name,
    YAML path or dict, with ``section.field=value`` overrides (strings) or a nested mapping."""
    source = ""  # the preset file, named in its errors
    if isinstance(preset, (str, os.PathLike)):
        path = resolve_preset(preset)
        data, source = load_yaml(path), f"{path}: "
    else:
        data = dict(preset or {})
    unknown = set(data) - {"model", "data", "train"}
    if unknown:
        raise ConfigError(f"{source}unknown config section(s) {sorted(unknown)}; valid: model, "
                          "data, train")
    over: dict[str, dict] = {"model": {}, "data": {}, "train": {}}
    if isinstance(overrides, Mapping):
        for sec, vals in overrides.items():
            over.setdefault(sec, {}).update(vals)
    else:
        for text in overrides or []:
            sec, field, value = parse_override(text)
            over.setdefault(sec, {})[field] = value
    unknown = set(over) - {"model", "data", "train"}
    if unknown:
        raise ConfigError(f"override of unknown section(s) {sorted(unknown)}")
    classes = {**SECTIONS, "train": TrainConfig}
    out = {}
    for name, cls in classes.items():
        if source:  # the file's own mistakes name the file
            try:
                check_ranges(name, load_section(cls, data, name))
            except ConfigError as e:
                raise ConfigError(f"{source}{e}") from None
        out[name] = load_section(cls, data, name, over[name])
        check_ranges(name, out[name])
    return out


#: the values a field can take ``(low, high)``, either end None for none; checked when a
#: config is loaded (presets, --set), so that train.iters=-5 or data.num_rays=0 is refused
#: by name instead of training nothing, or failing deep in a step with a torch error
#: (0 where the field gives it a meaning: checkpoint_every 0 = only at the end, keep_checkpoints
#: 0 = all, val_every 0 = only at the end, cache_size 0 = none)
RANGES = {
    "train": {"iters": (1, None), "lr_grid": (0.0, None), "lr_net": (0.0, None),
              "lr_decay": (0.0, 1.0), "grid_update_every": (1, None),
              "uncertainty_start": (0.0, 1.0), "mouth_ray_fraction": (0.0, 1.0),
              "latent_dropout": (0.0, 1.0), "voice_augment": (0.0, 1.0),
              "voice_encoder_steps": (0, None), "voice_encoder_own_fraction": (0.0, 1.0),
              "voice_encoder_patience": (0, None),
              "frames_per_step": (1, None), "lips_frame_rays": (-1, None),
              "lips_frame_weight": (0.0, None), "lipsync_check_frames": (0, None),
              "lipsync_check_every": (0, None), "collapse_db": (0.0, None),
              "checkpoint_every": (0, None), "keep_checkpoints": (0, None),
              "val_every": (0, None), "val_frames": (0, None), "log_every": (1, None),
              "cpu_threads": (0, None), "prefetch_frames": (0, None),
              "lambda_entropy": (0.0, None), "lambda_audio_att": (0.0, None),
              "lambda_lpips": (0.0, None), "lambda_patch_ssim": (0.0, None)},
    "data": {"image_size": (0, None), "cache_size": (0, None), "num_rays": (1, None),
             "patch_size": (1, None), "mouth_margin": (0.0, None), "max_frames": (0, None)},
    "model": {name: (1, None) for name in (
        "grid_levels", "grid_features", "grid_base_resolution", "grid_finest_resolution",
        "hidden_dim", "geo_feat_dim", "sigma_layers", "color_layers", "audio_dim",
        "audio_window", "torso_levels", "torso_finest_resolution", "torso_hidden_dim",
        "occupancy_resolution", "max_steps")},
}


def check_ranges(section: str, cfg) -> None:
    """ConfigError naming ``section.field`` for a number outside ``RANGES`` (or NaN)."""
    import math

    for field, (low, high) in RANGES.get(section, {}).items():
        value = getattr(cfg, field, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if math.isnan(value) or (low is not None and value < low) or \
                (high is not None and value > high):
            allowed = (f"from {low} to {high}" if high is not None else
                       f"{low} or more" if isinstance(low, int) else f"{low} or more (a number)")
            raise ConfigError(f"{section}.{field}: {value!r} is out of range; it must be {allowed}")
    if section == "data" and 0 < cfg.image_size < 16:
        raise ConfigError(f"data.image_size: {cfg.image_size} px is too small to hold a face; use "
                          "0 (the dataset's own size) or at least 16")
