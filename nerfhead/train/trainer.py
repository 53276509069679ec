"""The training loop of one stage (head, lips or torso).

Determinism: everything random in step ``k`` (which frame, which pixels, the march jitter,
the occupancy update's samples) comes from generators seeded with ``(seed, k)``, and the
checkpoint holds the model (with its occupancy grid), optimiser, scheduler and RNG states,
so a run resumed from step ``k`` computes the same losses as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from nerfhead.config import ConfigError, to_dict
from nerfhead.data.dataset import (RayBatch, TalkingHeadDataset, audio_files, check_dataset_dir,
                                   dataset_fingerprint)
from nerfhead.fileio import atomic_path, clean_stale_temps, move_aside, write_image
from nerfhead.models.rays import pixel_rays
from nerfhead.models.field import Conditions
from nerfhead.models.talking_head import ModelMeta, TalkingHead
from nerfhead.train import collapse, losses
from nerfhead.train.checkpoint import (
    TRAINED_ENCODER,
    RunMismatchError,
    append_metrics,
    configs_from_checkpoint,
    list_checkpoints,
    read_checkpoint,
    read_metrics,
    save_checkpoint,
    set_rng_state,
)
# beside the collapse check; exported here too (__all__), where `nerfhead train` imports them
from nerfhead.train.collapse import TrainingCollapsed, TrainingDiverged
from nerfhead.train.lipsync_check import LipSyncCheck, report_lipsync_check
from nerfhead.train.voice_encoder import (VoiceFit, init_trained_encoder, kept_refit,
                                         refit_model_audio_encoder, voices_for_augment)

log = logging.getLogger("nerfhead.train")


#: (section, field) that may change when a run resumes: how long it runs, what it logs and
#: keeps, where its frames are held, and the audio encoder's refit at its last step; not what
#: the steps learn. Any other difference refuses the resume (``RunMismatchError``).
RESUMABLE_CHANGES = {("train", "iters"), ("train", "checkpoint_every"), ("train", "keep_checkpoints"),
                     ("train", "val_every"), ("train", "val_frames"), ("train", "log_every"),
                     ("train", "cpu_threads"), ("train", "prefetch_frames"), ("train", "collapse_db"),
                     ("train", "voice_encoder_steps"), ("train", "voice_encoder_own_fraction"),
                     ("train", "voice_encoder_patience"),
                     ("train", "lipsync_check_frames"), ("train", "lipsync_check_every"),
                     ("data", "cache_size"), ("data", "preload")}


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """``section.field: saved -> wanted`` for every field that differs outside RESUMABLE_CHANGES."""
    out = []
    for section in ("model", "data", "train"):
        a, b = to_dict(saved[section]), to_dict(wanted[section])
        for key in sorted(set(a) | set(b)):
            if (section, key) not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                out.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def step_generator(seed: int, step: int, stream: int = 0, device="cpu") -> torch.Generator:
    """Generator for the randomness of one step (stream 0: data + jitter, 1: the grid
    update's frame, 2: the grid update's cells, on the model's device)."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step) * 8 + stream) % (2 ** 63))
    return g


#: a head or lips stage on fewer seconds of training frames than this is warned about
SHORT_CLIP_SECONDS = 60


class Trainer:
    """Trains ``configs["train"].stage`` on ``data_dir`` into ``run_dir``.

    configs: ``{"model", "data", "train"}`` dataclasses. When ``run_dir`` already holds a
    checkpoint the run resumes from it, but only when it was trained on the same dataset
    content and the same settings (``RESUMABLE_CHANGES`` aside); otherwise RunMismatchError,
    unless ``force_new``, which moves the old run folder aside and starts a new run.
    ``init``: a run folder or checkpoint whose weights start this stage (lips / torso start
    from a head run); its model config replaces ``configs["model"]``.
    """

    def __init__(self, data_dir, configs: dict, run_dir, device: str = "cpu", init=None,
                 resume: bool = True, force_new: bool = False):
        self.run_dir = Path(run_dir)
        self.data_dir = check_dataset_dir(data_dir)
        self.device = torch.device(device)
        self.dataset = dataset_fingerprint(self.data_dir)
        if force_new and self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            moved = move_aside(self.run_dir)
            log.warning("--force-new: moved the previous run %s to %s (delete it when no longer "
                        "needed)", self.run_dir, moved)
        clean_stale_temps(self.run_dir, depth=1)
        resume_ckpt = (read_checkpoint(self.run_dir, set_aside_unreadable=True)
                       if resume and list_checkpoints(self.run_dir) else None)
        init_ckpt = read_checkpoint(init) if init is not None else None
        if init_ckpt is not None:
            configs = dict(configs, model=configs_from_checkpoint(init_ckpt)["model"])
        if resume_ckpt is not None:
            if configs["data"].audio == "auto":  # auto resumes whatever kind the run has
                had = configs_from_checkpoint(resume_ckpt)["data"].audio
                configs = dict(configs, data=replace(configs["data"], audio=had))
            self._check_resumable(resume_ckpt, configs)
            wanted = configs
            configs = configs_from_checkpoint(resume_ckpt)
            for section, name in RESUMABLE_CHANGES:
                setattr(configs[section], name, getattr(wanted[section], name))
            init_ckpt = None  # the run's own weights continue
            log.info("resuming %s from step %d", resume_ckpt["path"], resume_ckpt["step"])
        elif init_ckpt is not None:
            log.info("initialising from %s (stage %s, step %d)", init_ckpt["path"],
                     init_ckpt["stage"], init_ckpt["step"])
            had = (init_ckpt.get("dataset") or {}).get("content")
            if had and had != self.dataset["content"]:
                log.warning("--init %s was trained on another dataset (%s), not %s: this stage "
                            "starts from a model of other frames", init_ckpt["path"],
                            init_ckpt["dataset"].get("path"), self.data_dir)
        pinned = resume_ckpt or init_ckpt
        if pinned is not None and configs["data"].audio == "auto":
            # auto's choice may have changed since (mel -> mel+ow): the weights fix the kind,
            # where this dataset has it (else auto's pick meets the mismatch error below)
            kind = pinned["meta"]["audio_kind"]
            if all((self.data_dir / f).is_file() for f in audio_files(kind)):
                configs = dict(configs, data=replace(configs["data"], audio=kind))
        self.configs = configs
        self.mcfg, self.dcfg, self.tcfg = configs["model"], configs["data"], configs["train"]
        self.stage = self.tcfg.stage
        self.train_set = TalkingHeadDataset(self.data_dir, self.dcfg, "train")
        self.val_set = (TalkingHeadDataset(self.data_dir, self.dcfg, "val")
                        if (self.data_dir / "transforms_val.json").exists() else None)
        ds = self.train_set
        if resume_ckpt is None and self.stage != "torso" and len(ds) < SHORT_CLIP_SECONDS * 25:
            log.warning("%s stage on %d training frames (%.0f s at 25 fps)%s: few sounds and "
                        "mouth shapes to learn from, so the mouth will follow new speech "
                        "poorly (SyncTalk and ER-NeRF train on 3-5 minutes; the lip-sync "
                        "figures of docs/benchmarks.md are from 240 s). Fine for a first look; "
                        "for a model to use, preprocess a longer clip of the speaker",
                        self.stage, len(ds), len(ds) / 25,
                        f" (data.max_frames {self.dcfg.max_frames})" if self.dcfg.max_frames else "")
        meta = ModelMeta(audio_len=int(ds.audio.shape[1]), audio_channels=int(ds.audio.shape[2]),
                         audio_kind=ds.audio_kind, num_latents=len(ds),
                         camera=dict(vars(ds.camera)))
        if init_ckpt is not None:
            had = init_ckpt["meta"]
            if (had["audio_kind"], had["audio_len"], had["audio_channels"]) != \
                    (meta.audio_kind, meta.audio_len, meta.audio_channels):
                raise ConfigError(
                    f"--init {init_ckpt['path']} was trained on {had['audio_kind']} audio features "
                    f"[T={had['audio_len']}, C={had['audio_channels']}] but {self.data_dir} provides "
                    f"{meta.audio_kind} [T={meta.audio_len}, C={meta.audio_channels}] "
                    "(set data.audio to the same kind)")
        torch.manual_seed(self.tcfg.seed)  # weight initialisation is a function of the seed
        np.random.seed(self.tcfg.seed % 2 ** 32)
        self.model = TalkingHead(self.mcfg, meta).to(self.device)
        self.step = 0
        if resume_ckpt is not None:
            self.model.load_state_dict(resume_ckpt["model"])
        else:
            self._fresh_start(init_ckpt)
        self._setup_optimiser()
        if resume_ckpt is not None:
            self.optimizer.load_state_dict(resume_ckpt["optimizer"])
            self.scheduler.load_state_dict(resume_ckpt["scheduler"])
            set_rng_state(resume_ckpt["rng"])
            self.step = int(resume_ckpt["step"])
        self.voices = voices_for_augment(self.tcfg, self.stage, self.train_set)
        self.perceptual = (losses.PatchPerceptualLoss(self.device, self.tcfg.lambda_lpips,
                                                      self.tcfg.lambda_patch_ssim)
                           if self.stage == "lips" else None)
        self._writer = None
        self.history: list[dict] = []  # per-step {"step", "loss", "psnr"} of this process
        self.prefetcher = None  # the frame prefetcher of the running fit() (train.prefetch_frames)
        self._preload_applied = False  # data.preload is applied once, before the first step
        self.validations: list[dict] = []
        self.lipsync: LipSyncCheck | None = None  # the end-of-stage lip-sync check
        # the audio encoder's refit at the stage's end (train.voice_encoder_steps), and the
        # encoder as the speaker's voice trained it, which the refit keeps in the checkpoint
        self.voice_fit: VoiceFit | None
        self.trained_encoder: dict | None
        self.voice_fit, self.trained_encoder = kept_refit(resume_ckpt, init_ckpt, self.stage,
                                                          self.step, self.tcfg.iters)
        # a fresh run ignores a metrics.jsonl left in its folder: only a resumed run's count
        self._earlier_validations = ([r for r in read_metrics(self.run_dir) if "psnr" in r
                                      and 0 < r["step"] <= self.step] if resume_ckpt is not None else [])

    # ------------------------------------------------------------------ setup
    def _check_resumable(self, ckpt: dict, wanted: dict) -> None:
        """RunMismatchError unless ``ckpt`` was trained on this dataset with these settings."""
        how = (f"Train into a new --out folder, or pass --force-new to move {self.run_dir} aside "
               "and start over")
        had = ckpt.get("dataset") or {}
        if had.get("content"):
            if had["content"] != self.dataset["content"]:
                raise RunMismatchError(
                    f"{self.run_dir} holds a run trained on another dataset: {had.get('path')} "
                    f"({had.get('train_frames', '?')} train frames"
                    + (f", from {had['source']}" if had.get("source") else "")
                    + f"), while {self.data_dir} ({self.dataset.get('train_frames', '?')} train "
                    "frames" + (f", from {self.dataset['source']}" if self.dataset.get("source") else "")
                    + f") has different content. Refusing to resume it. {how}")
            if had.get("path") != self.dataset["path"]:
                log.info("dataset moved: %s -> %s (same content)", had.get("path"), self.dataset["path"])
        elif Path(ckpt["dataset_dir"]) != self.data_dir.resolve():  # written before fingerprints
            raise RunMismatchError(f"{self.run_dir} holds a run trained on {ckpt['dataset_dir']}, not "
                                   f"{self.data_dir}. Refusing to resume it. {how}")
        diffs = config_differences(configs_from_checkpoint(ckpt), wanted)
        if diffs:
            raise RunMismatchError(f"{self.run_dir} holds a run trained with other settings "
                                   f"({'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}). "
                                   f"Refusing to resume it with the new ones. Rerun with the "
                                   f"settings it was started with, or: {how}")

    def _fresh_start(self, init_ckpt: dict | None) -> None:
        ds, model = self.train_set, self.model
        if init_ckpt is not None:
            state = init_ckpt["model"]
            own = model.state_dict()
            # latents are per training frame: kept only when the frame count matches
            skip = {k for k, v in state.items() if k in own and own[k].shape != v.shape}
            skip.add("background")
            missing = model.load_state_dict({k: v for k, v in state.items() if k not in skip},
                                            strict=False)
            if skip - {"background"}:
                log.warning("init: not loaded (shape differs): %s", sorted(skip - {"background"}))
            if missing.unexpected_keys:
                log.warning("init: unexpected keys ignored: %s", missing.unexpected_keys)
            init_trained_encoder(model, init_ckpt, self.stage, self.tcfg.voice_encoder_steps)
        else:
            rows = np.linspace(0, ds.audio.shape[0] - 1, min(ds.audio.shape[0], 2048)).astype(int)
            model.audio_encoder.set_statistics(np.asarray(ds.audio[rows], np.float32))
            if self.tcfg.mark_unseen:
                picks = np.linspace(0, len(ds) - 1, min(len(ds), 16)).astype(int)
                cam = ds.camera
                model.grid.mark_unseen(ds.poses[picks].to(self.device), cam.focal, cam.cx, cam.cy,
                                       cam.width, cam.height)
        with torch.no_grad():
            model.background.copy_(torch.from_numpy(ds.background()).float().div(255).to(self.device))
        if self.stage == "torso":
            if init_ckpt is None:
                log.warning("torso stage without --init: the head is untrained")
            model.has_torso.fill_(True)
        if self.stage == "lips" and init_ckpt is None:
            log.warning("lips stage without --init: fine-tuning an untrained head")

    def _setup_optimiser(self) -> None:
        t, m = self.tcfg, self.model
        if self.stage == "torso":
            if m.torso is None:
                raise ConfigError("train.stage torso needs a model with a torso field "
                                  "(model.torso: true in the head run)")
            for p in m.head_parameters():
                p.requires_grad_(False)
            grid_params = list(m.torso.grid.parameters()) + [m.torso_latents]
            net_params = list(m.torso.deform_net.parameters()) + list(m.torso.rgba_net.parameters())
        else:
            grid_params = list(m.field.planes.parameters()) + [m.latents]
            ids = {id(p) for p in grid_params}
            net_params = [p for p in m.head_parameters() if id(p) not in ids]
        self.optimizer = torch.optim.Adam([{"params": grid_params, "lr": t.lr_grid},
                                           {"params": net_params, "lr": t.lr_net}],
                                          betas=(0.9, 0.99), eps=1e-15)
        iters, decay = max(t.iters, 1), t.lr_decay
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: decay ** min(s / iters, 1.0))

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"))
        return self._writer

    def save_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        doc = {k: to_dict(v) for k, v in self.configs.items()}
        doc["dataset"] = self.dataset
        path = self.run_dir / "config.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(doc, sort_keys=False))

    def save(self) -> Path:
        best = self.best_validation()
        extra = None
        if self.voice_fit:
            extra = {"voice_fit": dataclasses.asdict(self.voice_fit)}
            if self.trained_encoder is not None:
                extra[TRAINED_ENCODER] = self.trained_encoder
        return save_checkpoint(self.run_dir, self.step, self.model, self.configs, self.stage,
                               self.data_dir, self.optimizer, self.scheduler,
                               keep=self.tcfg.keep_checkpoints, dataset=self.dataset,
                               protect=frozenset({best["step"]} if best else ()), extra=extra)

    def refit_voice_encoder(self, progress: bool = False) -> VoiceFit | None:
        """Refit the audio encoder for the dataset's other voices (train.voice_encoder_steps;
        ``nerfhead.train.voice_encoder``); None, with a warning, when the dataset has none."""
        # the writer is passed lazily: a refit skipped for want of voices opens no event file
        refit = refit_model_audio_encoder(self.model, self.train_set, self.val_set, self.tcfg,
                                          self.run_dir, self.step, lambda: self.writer, progress)
        if refit is None:
            return None
        # the encoder as trained is kept in the checkpoint: `--audio-encoder trained` renders with it
        self.voice_fit, self.trained_encoder = refit
        return self.voice_fit

    def lipsync_check(self, final: bool = True) -> LipSyncCheck | None:
        """The lip-sync check (train.lipsync_check_frames) at the stage's end (``final``) or
        during it (train.lipsync_check_every), logged and recorded
        (``nerfhead.train.lipsync_check.report_lipsync_check``)."""
        vs = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        # the writer is passed lazily, as to the refit: a skipped check opens no event file
        result = report_lipsync_check(self.model, vs, self.tcfg.lipsync_check_frames, self.run_dir,
                                      self.step, lambda: self.writer, final)
        if final and result is not None:
            self.lipsync = result
        return result

    def best_validation(self) -> dict | None:
        """The highest-PSNR validation of this run so far (a resumed run's earlier ones
        included, from its metrics.jsonl), or None."""
        return collapse.best_validation(self._earlier_validations + self.validations)

    def check_collapse(self, result: dict) -> None:
        """Stop with TrainingCollapsed when validation ``result`` is train.collapse_db below
        the best so far: the checkpoints after the best one go to RUN/collapsed/."""
        collapse.check_collapse(result, self.best_validation(), self.tcfg.collapse_db,
                                self.run_dir, self.step)

    def _frame_audio(self, g: torch.Generator):
        """The features a training frame's audio code is taken from: the clip's own, or with
        probability train.voice_augment one of its other voices (``nerfhead.audio.voice``).
        Draws from ``g`` only when voices are mixed in, so runs without them are unchanged."""
        if self.voices is None:
            return self.train_set.audio
        if float(torch.rand(1, generator=g)) >= self.tcfg.voice_augment:
            return self.train_set.audio
        return self.voices[int(torch.randint(0, self.voices.shape[0], (1,), generator=g))]

    # ------------------------------------------------------------------ one step
    def _random_conditions(self, g: torch.Generator):
        ds = self.train_set
        j = int(torch.randint(0, len(ds), (1,), generator=g))
        return self.model.conditions(ds.audio, int(ds.aud_ids[j]), ds.expression(j), j)

    def _with_frame_rays(self, patch, i: int, g: torch.Generator):
        """Lips stage: the mouth patch followed by ``train.lips_frame_rays`` random rays of
        the whole frame, so density and colour away from the mouth stay supervised (a stage
        trained on mouth patches alone grows floaters beside the jaw and above the hair:
        nothing there is constrained while the shared hash tables and MLPs move)."""
        n = self.tcfg.lips_frame_rays
        n = self.dcfg.num_rays if n < 0 else n
        if n == 0:
            return patch
        full = self.train_set.sample(i, "random", g, num_rays=n, bg_kind="head")
        return RayBatch(u=torch.cat([patch.u, full.u]), v=torch.cat([patch.v, full.v]),
                        rgb=torch.cat([patch.rgb, full.rgb]), bg=torch.cat([patch.bg, full.bg]),
                        patch=patch.patch)

    def _with_mouth_pixels(self, i: int, u: torch.Tensor, v: torch.Tensor,
                           g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Head stage: the last ``mouth_ray_fraction`` of the pixels (u, v) replaced by pixels
        drawn uniformly inside the mouth box of frame ``i`` (nothing drawn when that share
        rounds to 0)."""
        n = round(self.tcfg.mouth_ray_fraction * u.shape[0])
        if n <= 0:
            return u, v
        x0, y0, x1, y1 = self.train_set.mouth_box(i)
        H, W = self.train_set.size
        mu = torch.randint(x0, max(x1, x0 + 1), (n,), generator=g).clamp(0, W - 1)
        mv = torch.randint(y0, max(y1, y0 + 1), (n,), generator=g).clamp(0, H - 1)
        k = u.shape[0] - n
        return torch.cat([u[:k], mu]), torch.cat([v[:k], mv])

    def _lips_loss(self, pred, target, head, n_patch: int, patch) -> torch.Tensor:
        """MSE of the mouth patch + MSE of the frame rays (each a mean, so the mouth weighs as
        much as the whole frame) + the patch's perceptual term + the regularisers."""
        t = self.tcfg
        loss = ((pred[:n_patch] - target[:n_patch]) ** 2).mean()
        if pred.shape[0] > n_patch:
            loss = loss + t.lips_frame_weight * ((pred[n_patch:] - target[n_patch:]) ** 2).mean()
        loss = loss + t.lambda_entropy * losses.alpha_entropy(head["alpha"])
        if head["audio_att"].numel():
            loss = loss + t.lambda_audio_att * head["audio_att"].abs().mean()
        to_img = lambda x: x.T.reshape(1, 3, patch[0], patch[1])  # noqa: E731
        return loss + self.perceptual(to_img(pred[:n_patch]), to_img(target[:n_patch]))

    def train_step(self, step: int) -> dict:
        """One optimisation step at ``step``; returns {"loss", "psnr", "samples_per_ray"}."""
        t, ds, m, dev = self.tcfg, self.train_set, self.model, self.device
        self.preload_frames()  # fit() has done it (with its progress bar); a bare call too
        m.train()
        if self.stage != "torso" and step > 0 and step % t.grid_update_every == 0:
            g_pick = step_generator(t.seed, step, 1)
            g_cells = step_generator(t.seed, step, 2, dev)
            m.update_grid(lambda: self._random_conditions(g_pick), generator=g_cells)
        g = step_generator(t.seed, step)
        if self.stage == "head" and t.frames_per_step > 1:
            return self._multi_frame_step(step, g)
        i = int(torch.randint(0, len(ds), (1,), generator=g))
        u, v, patch = ds.pixels(i, "mouth" if self.stage == "lips" else "random", g)
        if self.stage == "head":
            u, v = self._with_mouth_pixels(i, u, v, g)
        rgb, bg = ds.colours(i, u, v, "plate" if self.stage == "torso" else "head")
        batch = RayBatch(u=u, v=v, rgb=rgb, bg=bg, patch=patch)
        n_patch = batch.u.shape[0]
        if self.stage == "lips":
            batch = self._with_frame_rays(batch, i, g)
        pose = ds.poses[i].to(dev)
        rays_o, rays_d = pixel_rays(pose, ds.camera, batch.u, batch.v)
        noise = torch.rand(batch.u.shape[0], generator=g).to(dev)
        target, bg = batch.rgb.to(dev), batch.bg.to(dev)
        drop = (self.stage != "torso" and t.latent_dropout > 0
                and float(torch.rand(1, generator=g)) < t.latent_dropout)
        audio = ds.audio if self.stage == "torso" else self._frame_audio(g)
        cond = m.conditions(audio, int(ds.aud_ids[i]), ds.expression(i), None if drop else i)
        if self.stage == "torso":
            with torch.no_grad():
                head = m.render_head_rays(rays_o, rays_d, cond, noise)
            rgba = m.torso_rgba(batch.u, batch.v, pose, m.torso_latents[i], ds.camera)
            a = rgba[:, 3:]
            pred = head["rgb"] + (1 - head["alpha"][:, None]) * (rgba[:, :3] * a + (1 - a) * bg)
            loss = ((pred - target) ** 2).mean() + t.lambda_entropy * losses.alpha_entropy(a)
        else:
            head = m.render_head_rays(rays_o, rays_d, cond, noise)
            pred = head["rgb"] + (1 - head["alpha"][:, None]) * bg
            if self.stage == "lips":
                loss = self._lips_loss(pred, target, head, n_patch, batch.patch)
            else:
                loss = self._head_loss(step, pred, target, head)
        return self._optimise(step, loss, pred, target, head)

    def _head_loss(self, step: int, pred, target, head) -> torch.Tensor:
        """Head stage: MSE (uncertainty-weighted from ``uncertainty_start``) + regularisers."""
        t = self.tcfg
        use_unc = self.mcfg.uncertainty and step >= t.uncertainty_start * t.iters
        loss = (losses.uncertainty_nll(pred, target, head["uncertainty"]) if use_unc
                else ((pred - target) ** 2).mean())
        loss = loss + t.lambda_entropy * losses.alpha_entropy(head["alpha"])
        if head["audio_att"].numel():
            loss = loss + t.lambda_audio_att * head["audio_att"].abs().mean()
        return loss

    def _multi_frame_step(self, step: int, g: torch.Generator) -> dict:
        """Head-stage step over ``frames_per_step`` frames: each frame's rays (random, plus
        its mouth rays) are rendered under that frame's conditions, in one march."""
        t, ds, m, dev = self.tcfg, self.train_set, self.model, self.device
        k = min(t.frames_per_step, self.dcfg.num_rays)
        frames = torch.randint(0, len(ds), (k,), generator=g).tolist()
        per_frame = [self.dcfg.num_rays // k + (j < self.dcfg.num_rays % k) for j in range(k)]
        us, vs, origins, dirs, conds, owner = [], [], [], [], [], []
        for j, (i, n) in enumerate(zip(frames, per_frame)):
            u, v, _ = ds.pixels(i, "random", g, num_rays=n)
            u, v = self._with_mouth_pixels(i, u, v, g)
            o, d = pixel_rays(ds.poses[i].to(dev), ds.camera, u, v)
            drop = t.latent_dropout > 0 and float(torch.rand(1, generator=g)) < t.latent_dropout
            conds.append(m.conditions(self._frame_audio(g), int(ds.aud_ids[i]), ds.expression(i),
                                      None if drop else i))
            us.append(u), vs.append(v), origins.append(o), dirs.append(d)
            owner.append(torch.full((u.shape[0],), j, dtype=torch.long))
        owner = torch.cat(owner)
        # every frame's colours at once: from preloaded frames one gather per image on the device
        target, bg = ds.colours(torch.tensor(frames)[owner], torch.cat(us), torch.cat(vs), "head")
        target, bg, owner = target.to(dev), bg.to(dev), owner.to(dev)
        cond = Conditions(audio=torch.stack([c.audio for c in conds]),
                          expression=torch.stack([c.expression for c in conds]),
                          latent=torch.stack([c.latent for c in conds])).rows(owner)
        rays_o, rays_d = torch.cat(origins), torch.cat(dirs)
        noise = torch.rand(rays_o.shape[0], generator=g).to(dev)
        head = m.render_head_rays(rays_o, rays_d, cond, noise)
        pred = head["rgb"] + (1 - head["alpha"][:, None]) * bg
        return self._optimise(step, self._head_loss(step, pred, target, head), pred, target, head)

    def _optimise(self, step: int, loss, pred, target, head) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mse = ((pred.detach() - target) ** 2).mean()
        self.optimizer.step()
        self.scheduler.step()
        # One read-back per step, after backward and the update are queued (a GPU never waits
        # for the host between forward and backward). A non-finite loss has then already
        # reached the weights in memory, but nothing is saved: the run stops right here.
        value, mse_value = torch.stack([loss.detach().float(), mse.float()]).tolist()
        if not math.isfinite(value):
            last = list_checkpoints(self.run_dir)
            raise TrainingDiverged(
                f"training loss became {value} at step {step} (stage {self.stage}); stopped "
                f"without saving. Last good checkpoint: {last[-1] if last else 'none'}. "
                "Try a lower train.lr_grid / train.lr_net or check the dataset.")
        return {"loss": value,
                "psnr": float("inf") if mse_value == 0 else -10.0 * math.log10(mse_value),
                "samples_per_ray": head["weights"].shape[0] / max(1, target.shape[0])}

    def frames_of_step(self, step: int) -> list[int]:
        """The training frames of ``step``: the first draw of the step's generator, exactly
        what :meth:`train_step` draws (the prefetcher decodes them ahead of time)."""
        g = step_generator(self.tcfg.seed, step)
        return torch.randint(0, len(self.train_set), (self.frames_per_step(),), generator=g).tolist()

    def frames_per_step(self) -> int:
        """Training frames one step draws (the head stage's frames_per_step, else one)."""
        t = self.tcfg
        k = t.frames_per_step if self.stage == "head" and t.frames_per_step > 1 else 1
        return min(k, self.dcfg.num_rays)

    def preload_frames(self, progress: bool = False, steps: int | None = None):
        """Apply data.preload once (``TalkingHeadDataset.preload``: the training frames decoded
        onto the training device, or the cache kept); returns the preloaded frames or None.
        ``steps``: the steps that will run (default: those left to train.iters)."""
        if not self._preload_applied:
            steps = max(0, self.tcfg.iters - self.step) if steps is None else steps
            # the torso stage composites over the plate, never over a head background
            self.train_set.preload(self.device, head_backgrounds=self.stage != "torso",
                                   progress=progress, draws=steps * self.frames_per_step())
            self._preload_applied = True
        return self.train_set.preloaded

    def _prefetch_frames(self, frames: list[int]) -> None:
        for i in frames:
            self.train_set.image(i)
            if self.stage != "torso":
                self.train_set.head_background(i)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict:
        """Render ``val_frames`` validation frames: PSNR, PNG (GT | render | error), TB image."""
        vs = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        m = self.model.eval()
        picks = np.linspace(0, len(vs) - 1, min(len(vs), max(1, self.tcfg.val_frames))).astype(int)
        rows, psnrs = [], []
        with m.grid.floaters_pruned():  # as render and evaluate will load the run
            for j in picks:
                gt = torch.from_numpy(vs.image(j)).float().div(255).to(self.device)
                torso = self.stage == "torso"
                bg = None if torso else torch.from_numpy(vs.head_background(j)).float().div(255)
                out = m.render_frame(vs.poses_file[j], vs.audio, int(vs.aud_ids[j]),
                                     vs.expression(j), None, bg=bg, with_torso=torso)
                psnrs.append(losses.psnr(out["rgb"], gt))
                err = (out["rgb"] - gt).abs().mean(-1, keepdim=True).expand(-1, -1, 3).mul(4).clamp(0, 1)
                rows.append(torch.cat([gt, out["rgb"], err], 1).cpu().numpy())
        strip = (np.concatenate(rows, 0) * 255).round().astype(np.uint8)
        out_dir = self.run_dir / "val"
        out_dir.mkdir(parents=True, exist_ok=True)
        png = out_dir / f"step_{self.step:07d}.png"
        with atomic_path(png) as tmp:
            write_image(tmp, cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        result = {"step": self.step, "psnr": float(np.mean(psnrs)), "image": str(png),
                  # wall seconds of this fit() call so far and peak GPU memory: the figures a
                  # GPU benchmark reads back from metrics.jsonl
                  "fit_wall_s": round(time.perf_counter() - getattr(self, "_fit_t0", time.perf_counter()), 1)}
        if self.device.type == "cuda":
            result["cuda_max_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        self.writer.add_scalar("val/psnr", result["psnr"], self.step)
        self.writer.add_image("val/gt_render_error", strip, self.step, dataformats="HWC")
        append_metrics(self.run_dir, result)
        self.validations.append(result)
        return result

    # ------------------------------------------------------------------ loop
    def fit(self, progress: bool = True, until: int | None = None,
            max_seconds: float | None = None) -> dict:
        """Train from ``self.step`` to ``train.iters`` (or stop early at step ``until``, as an
        interrupted run would, or once ``max_seconds`` of wall time have passed); checkpoints,
        validation, logging. Ends with a checkpoint and a validation, so a time-limited run
        leaves a resumable checkpoint and its PSNR."""
        from tqdm import tqdm

        t = self.tcfg
        stop = t.iters if until is None else min(until, t.iters)
        self.save_config()
        self._fit_t0 = time.perf_counter()
        # before the step bar (the preload draws its own); preloaded frames leave the
        # prefetcher nothing to decode
        preloaded = (self.preload_frames(progress, steps=stop - self.step) if self.step < stop
                     else self.train_set.preloaded)
        bar = tqdm(total=t.iters, initial=self.step, disable=not progress, unit="it",
                   desc=f"train {self.stage}", dynamic_ncols=True)
        window_t, window_n, saved_at, validated_at = time.perf_counter(), 0, -1, -1
        start_step = self.step
        prefetcher = None
        if t.prefetch_frames > 0 and preloaded is None:
            from nerfhead.train.prefetch import FramePrefetcher

            prefetcher = FramePrefetcher(self.frames_of_step, self._prefetch_frames, t.prefetch_frames)
        self.prefetcher = prefetcher
        try:
            while self.step < stop:
                if max_seconds is not None and time.perf_counter() - self._fit_t0 >= max_seconds:
                    bar.write(f"stopping at step {self.step}: {max_seconds:.0f} s time limit "
                              f"reached (rerun the same command to continue)")
                    break
                if prefetcher is not None:
                    prefetcher.ahead_of(self.step)
                stats = self.train_step(self.step)
                self.step += 1
                window_n += 1
                self.history.append({"step": self.step - 1, **stats})
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == t.iters:
                    now = time.perf_counter()
                    ips = window_n / max(now - window_t, 1e-9)
                    window_t, window_n = now, 0
                    w = self.writer
                    w.add_scalar("train/loss", stats["loss"], self.step)
                    w.add_scalar("train/psnr", stats["psnr"], self.step)
                    w.add_scalar("train/lr_grid", self.optimizer.param_groups[0]["lr"], self.step)
                    w.add_scalar("train/iters_per_s", ips, self.step)
                    w.add_scalar("train/samples_per_ray", stats["samples_per_ray"], self.step)
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", psnr=f"{stats['psnr']:.2f}")
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save()
                    saved_at = self.step
                if t.val_every and self.step % t.val_every == 0:
                    res = self.validate()
                    validated_at = self.step
                    bar.write(f"step {self.step}: val PSNR {res['psnr']:.2f} dB -> {res['image']}")
                    self.check_collapse(res)
                if (t.lipsync_check_every and self.step % t.lipsync_check_every == 0
                        and self.step < t.iters and t.lipsync_check_frames > 0
                        and self.stage in ("head", "lips")):
                    self.lipsync_check(final=False)  # logged, in metrics.jsonl and TensorBoard
            # a run already at its last step trains nothing: leave its checkpoint (and so its
            # time stamp, which tells `nerfhead run` whether renders are stale) as it is,
            # unless its audio encoder is yet to be refitted for other voices
            trained = self.step != start_step
            refitted = False
            if (self.step >= t.iters and t.voice_encoder_steps > 0 and self.stage in ("head", "lips")
                    and (trained or self.voice_fit is None)):
                refitted = self.refit_voice_encoder(progress) is not None
                if refitted:
                    saved_at = validated_at = -1  # the weights changed: save and validate them
            if (trained or refitted or not list_checkpoints(self.run_dir)) and saved_at != self.step:
                self.save()
            if (trained or refitted) and validated_at != self.step:
                res = self.validate()
                bar.write(f"step {self.step}: val PSNR {res['psnr']:.2f} dB -> {res['image']}")
                self.check_collapse(res)
            if (trained or refitted) and self.step >= t.iters and t.lipsync_check_frames > 0 \
                    and self.stage in ("head", "lips"):
                self.lipsync_check()
        finally:
            if prefetcher is not None:
                prefetcher.close()
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        return {"step": self.step, "validations": self.validations,
                "checkpoint": str(list_checkpoints(self.run_dir)[-1])}


__all__ = ["RESUMABLE_CHANGES", "Trainer", "TrainingCollapsed", "TrainingDiverged",
           "config_differences", "step_generator"]
