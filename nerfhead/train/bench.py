"""``nerfhead bench train``: training iterations per second and where a step's time goes.

Builds a ``Trainer`` in a temporary folder (nothing is written next to the data or the run):
on a dataset with a preset (``--config``, fresh weights), or on a run folder (its dataset,
its settings and its newest weights: the occupancy grid of a trained run, so the sample
counts of real training), and runs the steps ``Trainer.train_step`` runs, with the training
frames preloaded onto the device (``data.preload``, timed and reported on its own) or else
the frame prefetcher, as ``fit`` does.

Two passes over the same number of steps: the first counts iterations per second as
training sees them (nothing added); the second attributes each step's time to phases by
wrapping the trainer's own calls (on CUDA with a synchronisation at each phase boundary,
which removes the overlap of host and device that the first pass keeps):

- ``data``: ray sampling of the step's frame(s) (``TalkingHeadDataset.sample``, or its
  ``pixels`` and ``colours``, and the mouth / frame rays added): with preloaded frames the
  draws on the host and the gather on the device; from the cache, the gathers on the host,
  including the wait for a frame that the prefetcher has not decoded yet (the first time a
  frame is used: the decode itself);
- ``grid update``: the occupancy-grid update every ``train.grid_update_every`` steps;
- ``forward``: conditions (audio encoder, smoother), march, field and composite (head), torso;
- ``backward``: from ``zero_grad`` to ``optimizer.step`` (``loss.backward()``);
- ``optimizer``: Adam's step and the learning-rate schedule;
- ``other``: the rest (losses, the one read-back of loss and PSNR, Python).

``--profile FILE`` also writes torch.profiler's operator table of a few steps.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

PHASES = ("data", "grid update", "forward", "backward", "optimizer", "other")


class PhaseTimer:
    """Seconds per phase, from wrappers around a trainer's calls (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = {k: 0.0 for k in PHASES}
        self._depth = 0  # a wrapped call inside another (forward inside grid update) counts once
        self._backward_from: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str):
        if self._depth:
            yield
            return
        self._depth += 1
        t0 = self._now()
        try:
            yield
        finally:
            self.seconds[name] += self._now() - t0
            self._depth -= 1

    def wrap(self, obj, attr: str, name: str) -> None:
        """Replace ``obj.attr`` (a method) on the instance by a call timed as ``name``."""
        real = getattr(obj, attr)

        @functools.wraps(real)
        def timed(*a, **k):
            with self.phase(name):
                return real(*a, **k)

        setattr(obj, attr, timed)

    def instrument(self, trainer) -> None:
        """Wrap the trainer's data, forward, backward and optimiser calls (this instance only)."""
        ds, m, opt = trainer.train_set, trainer.model, trainer.optimizer
        for attr in ("sample", "pixels", "colours"):
            self.wrap(ds, attr, "data")
        for attr in ("_with_mouth_pixels", "_with_frame_rays"):
            self.wrap(trainer, attr, "data")
        self.wrap(m, "update_grid", "grid update")
        for attr in ("conditions", "render_head_rays", "torso_rgba"):
            self.wrap(m, attr, "forward")
        zero_grad, step = opt.zero_grad, opt.step

        @functools.wraps(zero_grad)
        def zero_grad_then_backward(*a, **k):
            zero_grad(*a, **k)
            self._backward_from = self._now()  # what follows until optimizer.step: backward

        @functools.wraps(step)  # keeps the scheduler's mark on optimizer.step (no warning)
        def timed_step(*a, **k):
            if self._backward_from is not None:
                self.seconds["backward"] += self._now() - self._backward_from
                self._backward_from = None
            with self.phase("optimizer"):
                return step(*a, **k)

        opt.zero_grad, opt.step = zero_grad_then_backward, timed_step
        self.wrap(trainer.scheduler, "step", "optimizer")


def build_trainer(target: str, preset: str | None, overrides: list[str], device: str, out: Path,
                  data: str | None = None):
    """A Trainer writing into ``out`` for a dataset folder (with ``preset``) or a run folder
    (its dataset, or ``data``; its configs and newest weights); returns (trainer, label)."""
    from nerfhead.data.dataset import check_dataset_dir
    from nerfhead.train.checkpoint import configs_from_checkpoint, list_checkpoints, read_checkpoint
    from nerfhead.train.config import load_configs
    from nerfhead.train.trainer import Trainer

    path = Path(target)
    if list_checkpoints(path):
        ckpt = read_checkpoint(path)
        configs = configs_from_checkpoint(ckpt)
        if overrides:
            from dataclasses import asdict

            configs = load_configs({k: asdict(v) for k, v in configs.items()}, overrides)
        recorded = data or (ckpt.get("dataset") or {}).get("path")
        if not recorded:
            raise SystemExit(f"nerfhead bench train: {path} records no dataset folder; pass --data")
        data = check_dataset_dir(recorded)
        trainer = Trainer(data, configs, out, device=device, init=ckpt["path"], resume=False)
        trainer.step = int(ckpt["step"])  # the schedule (uncertainty start, lr) of the run's step
        return trainer, f"run {path} step {ckpt['step']} (stage {trainer.stage})"
    configs = load_configs(preset or "tiny", overrides)
    trainer = Trainer(check_dataset_dir(path), configs, out, device=device, resume=False)
    return trainer, f"dataset {path}, preset {preset or 'tiny'} (fresh weights, stage {trainer.stage})"


def _steps(trainer, count: int, prefetcher) -> float:
    """Run ``count`` steps from ``trainer.step``; seconds of wall time."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    t0 = time.perf_counter()
    for _ in range(count):
        if prefetcher is not None:
            prefetcher.ahead_of(trainer.step)
        trainer.train_step(trainer.step)
        trainer.step += 1
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return time.perf_counter() - t0


def run_train_bench(trainer, steps: int = 20, warmup: int = 3, profile: str | None = None) -> dict:
    """The preload of the training frames (data.preload, as ``fit`` does it first), warm-up,
    then ``steps`` plain steps (iterations per second), then ``steps`` steps timed per phase;
    ``profile``: also write torch.profiler's table of 5 steps there."""
    from nerfhead.train.prefetch import FramePrefetcher

    t = trainer.tcfg
    # as a training of the whole stage would decide (a finished run has no steps left)
    frames = trainer.preload_frames(steps=t.iters)
    preload = (None if frames is None else
               {"frames": int(frames.images.shape[0]), "bytes": frames.nbytes,
                "seconds": frames.seconds, "device": str(frames.images.device)})
    prefetcher = (FramePrefetcher(trainer.frames_of_step, trainer._prefetch_frames, t.prefetch_frames)  # noqa: SLF001
                  if t.prefetch_frames > 0 and frames is None else None)
    try:
        _steps(trainer, warmup, prefetcher)
        plain = _steps(trainer, steps, prefetcher)
        timer = PhaseTimer(trainer.device)
        timer.instrument(trainer)
        timed = _steps(trainer, steps, prefetcher)
        phases = dict(timer.seconds)  # before the profiled steps (still wrapped) add to it
        phases["other"] = max(0.0, timed - sum(v for k, v in phases.items() if k != "other"))
        table = None
        if profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
            with torch_profile(activities=acts) as prof:
                _steps(trainer, 5, prefetcher)
            key = "self_cuda_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
            table = (f"torch.profiler, 5 training steps on {trainer.device}, sorted by {key}\n"
                     + prof.key_averages().table(sort_by=key, row_limit=40))
            Path(profile).write_text(table)
    finally:
        if prefetcher is not None:
            prefetcher.close()
    ms = {k: 1000.0 * v / steps for k, v in phases.items()}
    return {"device": str(trainer.device), "stage": trainer.stage, "steps": steps, "warmup": warmup,
            "iters_per_s": steps / plain, "ms_per_step": 1000.0 * plain / steps,
            "ms_per_step_timed": 1000.0 * timed / steps, "ms_per_phase": ms,
            "rays_per_step": trainer.dcfg.num_rays, "torch_threads": torch.get_num_threads(),
            "prefetch_frames": t.prefetch_frames if prefetcher is not None else 0,
            "preload": preload, "profile": profile}


def format_train_table(r: dict) -> str:
    lines = [f"train benchmark: {r.get('model', '')}",
             f"on {r['device']} ({r['torch_threads']} torch threads), stage {r['stage']}, "
             f"{r['rays_per_step']} rays per step, {r['steps']} steps after {r['warmup']} warm-up",
             f"{'iterations per second':<24}{r['iters_per_s']:>10.2f}   ({r['ms_per_step']:.1f} ms per step)",
             f"{'phase (timed pass)':<24}{'ms/step':>10}{'share':>8}"]
    p = r.get("preload")
    lines.append(f"frames preloaded (data.preload): {p['frames']} frames, {p['bytes'] / 1e6:.0f} MB "
                 f"onto {p['device']} in {p['seconds']:.2f} s, before the steps" if p else
                 "frames decoded on use into the cache (data.preload), " +
                 (f"prefetched {r['prefetch_frames']} steps ahead" if r["prefetch_frames"] else
                  "not prefetched"))
    total = r["ms_per_step_timed"] or 1.0
    for k, v in r["ms_per_phase"].items():
        lines.append(f"{k:<24}{v:>10.2f}{100.0 * v / total:>7.0f}%")
    lines.append(f"{'step (timed pass)':<24}{r['ms_per_step_timed']:>10.2f}")
    return "\n".join(lines)


def main(args) -> dict:
    """``nerfhead bench train TARGET``: TARGET a run folder or a dataset folder."""
    from nerfhead.render.renderer import pick_device
    from nerfhead.threads import set_torch_threads

    device = pick_device(args.device)
    set_torch_threads(args.threads, device, "nerfhead bench train")
    with tempfile.TemporaryDirectory(prefix="nerfhead-bench-train-") as tmp:
        trainer, label = build_trainer(args.run_or_data, args.config, list(args.overrides or []),
                                       device, Path(tmp) / "run", getattr(args, "data", None))
        result = run_train_bench(trainer, args.steps, args.warmup, args.profile)
    result["model"] = label
    print(format_train_table(result))
    if args.profile:
        print(f"profile of 5 steps written to {args.profile}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


__all__ = ["PHASES", "PhaseTimer", "build_trainer", "format_train_table", "main", "run_train_bench"]
