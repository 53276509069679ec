"""Checkpoints (atomic, complete enough to resume exactly) and ``load_run`` for render/eval.

A run folder::

    RUN/config.yaml                 resolved model / data / train sections + stage, dataset
    RUN/checkpoints/step_0002000.pt model (incl. occupancy grid + background), optimiser,
                                    scheduler, RNG states, step, configs, model meta
    RUN/val/step_0002000.png        GT | render | error of validation frames
    RUN/tb/                         TensorBoard events
    RUN/metrics.jsonl               one line per validation

Checkpoints are written to a temporary name in the same folder and ``os.replace``d, so a
crash never leaves a truncated ``step_*.pt``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerfhead.config import from_dict, to_dict
from nerfhead.data.dataset import DataConfig
from nerfhead.fileio import atomic_path
from nerfhead.models.config import ModelConfig
from nerfhead.models.rays import Camera
from nerfhead.models.talking_head import ModelMeta, TalkingHead

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A run folder or checkpoint file is missing or unreadable (named in the message)."""


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files of a run, oldest step first."""
    d = checkpoint_dir(run_dir)
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(run_dir, step: int, model: TalkingHead, configs: dict, stage: str,
                    dataset_dir, optimizer=None, scheduler=None, keep: int = 3) -> Path:
    """Write ``checkpoints/step_<step>.pt`` atomically; delete all but the newest ``keep``."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION, "step": int(step), "stage": stage,
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "configs": {k: to_dict(v) for k, v in configs.items()},
        "meta": dataclasses.asdict(model.meta),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
    }
    final = d / f"step_{step:07d}.pt"
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def read_checkpoint(path_or_run, checkpoint=None) -> dict:
    """Load a checkpoint dict: a .pt path, or a run folder (its newest, or ``checkpoint`` =
    a step number or file name inside it)."""
    p = Path(path_or_run)
    if p.is_dir():
        if checkpoint is None:
            found = list_checkpoints(p)
            if not found:
                raise CheckpointError(f"run folder {p} has no checkpoints/step_*.pt")
            p = found[-1]
        elif isinstance(checkpoint, int) or str(checkpoint).isdigit():
            p = checkpoint_dir(p) / f"step_{int(checkpoint):07d}.pt"
        else:
            q = Path(checkpoint)
            p = q if q.is_absolute() or q.exists() else checkpoint_dir(p) / q
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{p} is not a nerfhead checkpoint (format {FORMAT_VERSION})")
    ckpt["path"] = str(p)
    return ckpt


def configs_from_checkpoint(ckpt: dict) -> dict:
    from nerfhead.train.config import TrainConfig

    classes = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
    return {k: from_dict(cls, ckpt["configs"][k], k) for k, cls in classes.items()}


def model_from_checkpoint(ckpt: dict, device="cpu") -> TalkingHead:
    cfg = from_dict(ModelConfig, ckpt["configs"]["model"], "model")
    model = TalkingHead(cfg, ModelMeta(**ckpt["meta"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


@dataclass
class LoadedRun:
    """A trained run ready to render.

    run_dir: the run folder; model: ``TalkingHead`` in eval mode on the requested device;
    configs: ``{"model": ModelConfig, "data": DataConfig, "train": TrainConfig}``;
    stage: "head" | "lips" | "torso" of the checkpoint; step: its step; dataset_dir: the
    dataset folder it was trained on; camera: the training ``Camera`` (training resolution).
    """

    run_dir: Path
    model: TalkingHead
    configs: dict
    stage: str
    step: int
    dataset_dir: Path
    camera: Camera


def load_run(run_dir, device="cpu", checkpoint=None) -> LoadedRun:
    """Load a run folder's newest checkpoint (or ``checkpoint``: step number or file name).

    ``run_dir`` may also be a checkpoint file; its run folder is then the file's grandparent.
    """
    ckpt = read_checkpoint(run_dir, checkpoint)
    path = Path(ckpt["path"])
    model = model_from_checkpoint(ckpt, device).eval()
    return LoadedRun(run_dir=path.parent.parent, model=model, configs=configs_from_checkpoint(ckpt),
                     stage=ckpt["stage"], step=int(ckpt["step"]), dataset_dir=Path(ckpt["dataset_dir"]),
                     camera=model.camera)
