"""Checkpoints (atomic, complete enough to resume exactly) and ``load_run`` for render/eval.

A run folder::

    RUN/config.yaml                 resolved model / data / train sections + stage, dataset
    RUN/checkpoints/step_0002000.pt model (incl. occupancy grid + background), optimiser,
                                    scheduler, RNG states, step, configs, model meta
    RUN/val/step_0002000.png        GT | render | error of validation frames
    RUN/tb/                         TensorBoard events
    RUN/metrics.jsonl               one line per validation (and one per audio-encoder refit)

Checkpoints are written to a temporary name in the same folder and ``os.replace``d, so a
crash never leaves a truncated ``step_*.pt``; the disk space a checkpoint needs is checked
before it is written. A checkpoint that is unreadable all the same (copied in part, damaged
on disk) is skipped with a warning naming the intact one used instead.

Each checkpoint records the dataset it was trained on (``nerfhead.data.dataset.
dataset_fingerprint``: path, frame counts, content hash), so a run is never resumed on, or
rendered from, other data without saying so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerfhead.config import from_dict, to_dict
from nerfhead.data.dataset import DataConfig, DatasetError, dataset_fingerprint
from nerfhead.fileio import atomic_path, require_space
from nerfhead.models.config import ModelConfig
from nerfhead.models.rays import Camera
from nerfhead.models.talking_head import ModelMeta, TalkingHead

FORMAT_VERSION = 1
log = logging.getLogger("nerfhead.train")


#: checkpoint entry: the audio encoder as the speaker's own voice trained it, kept when
#: train.voice_encoder_steps refits it for other voices (``load_run(audio_encoder="trained")``)
TRAINED_ENCODER = "audio_encoder_trained"
#: which audio encoder ``load_run`` puts in the model
AUDIO_ENCODERS = ("refitted", "trained")


class CheckpointError(RuntimeError):
    """A run folder or checkpoint file is missing or unreadable (named in the message)."""


class RunMismatchError(CheckpointError):
    """A run folder holds a run of other data or settings than the ones asked for."""


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested dict/list (the size of a checkpoint, about)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files of a run, oldest step first."""
    d = checkpoint_dir(run_dir)
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def read_metrics(run_dir) -> list[dict]:
    """The rows of RUN/metrics.jsonl (validations: ``psnr``; refits: ``voice_fit``; lip-sync
    checks: ``lipsync_check``), oldest first; a line cut short by a kill is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def append_metrics(run_dir, row: dict) -> None:
    """One row more in RUN/metrics.jsonl."""
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def set_aside_after(run_dir, step: int) -> tuple[Path | None, list[Path]]:
    """Move the checkpoints after ``step`` to RUN/collapsed/, so that the newest one at or
    before it is the run's latest again. Returns (that checkpoint, the files moved); nothing
    moves when no checkpoint at or before ``step`` is left to fall back to."""
    kept = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) <= step]
    later = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    if not kept:
        return None, []
    aside = Path(run_dir) / "collapsed"
    aside.mkdir(exist_ok=True)
    moved = []
    for p in later:
        p.replace(aside / p.name)
        moved.append(aside / p.name)
    return kept[-1], moved


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(run_dir, step: int, model: TalkingHead, configs: dict, stage: str,
                    dataset_dir, optimizer=None, scheduler=None, keep: int = 3,
                    dataset: dict | None = None, protect: frozenset[int] = frozenset(),
                    extra: dict | None = None) -> Path:
    """Write ``checkpoints/step_<step>.pt`` atomically; delete all but the newest ``keep``
    and those of the steps in ``protect`` (the best validation's, which a collapse falls back
    to). ``dataset``: the dataset's fingerprint (computed when not given); ``extra``: more
    entries of the payload (e.g. ``voice_fit``, what refitted the audio encoder)."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT_VERSION, "step": int(step), "stage": stage,
        "dataset_dir": str(Path(dataset_dir).resolve()),
        "dataset": dataset if dataset is not None else dataset_fingerprint(dataset_dir),
        "configs": {k: to_dict(v) for k, v in configs.items()},
        "meta": dataclasses.asdict(model.meta),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        **(extra or {}),
    }
    final = d / f"step_{step:07d}.pt"
    # the new file is written before the oldest is deleted: room for one more checkpoint
    require_space(d, tensor_bytes(payload) + (1 << 20), final.name)
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if checkpoint_step(old) not in protect:
            old.unlink(missing_ok=True)
    return final


def checkpoint_step(path) -> int:
    """The step of a ``step_<step>.pt`` checkpoint file, from its name."""
    return int(Path(path).stem.split("_", 1)[1])


def _load(p: Path) -> dict:
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {p} ({type(e).__name__}: {e}); it is "
                              "truncated or damaged") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{p} is not a nerfhead checkpoint (format {FORMAT_VERSION})")
    ckpt["path"] = str(p)
    return ckpt


def read_checkpoint(path_or_run, checkpoint=None, set_aside_unreadable: bool = False) -> dict:
    """Load a checkpoint dict: a .pt path, or a run folder (its newest, or ``checkpoint`` =
    a step number or file name inside it).

    For a run folder's newest checkpoint, an unreadable file is skipped with a warning and the
    newest intact one is used (``ckpt["skipped"]`` lists what was skipped); with
    ``set_aside_unreadable`` the bad files are renamed ``*.pt.unreadable`` so later runs do
    not trip on them (training does this; render and evaluate only read). A checkpoint named
    explicitly is never replaced: its error lists the intact ones to choose from.
    """
    p = Path(path_or_run)
    if p.is_dir():
        if checkpoint is None:
            found = list_checkpoints(p)
            if not found:
                if (p / "transforms_train.json").is_file() or (p / "manifest.json").is_file():
                    raise CheckpointError(f"{p} is a dataset folder, not a run folder: train a run "
                                          f"on it first (`nerfhead train {p} --out RUN`) and "
                                          "give RUN")
                raise CheckpointError(f"run folder {p} has no checkpoints/step_*.pt (not trained "
                                      "yet, or not a run folder)")
            skipped = []
            for candidate in reversed(found):
                try:
                    ckpt = _load(candidate)
                except CheckpointError as e:
                    skipped.append((candidate, e))
                    continue
                for bad, err in skipped:
                    where = bad
                    if set_aside_unreadable:
                        where = bad.with_name(bad.name + ".unreadable")
                        bad.replace(where)
                    log.warning("%s; using the previous checkpoint %s, which is intact%s", err,
                                candidate.name, f" (the bad file is kept as {where.name})"
                                if set_aside_unreadable else
                                f" (delete {bad.name} or pass --checkpoint to choose)")
                ckpt["skipped"] = [str(b) for b, _ in skipped]
                return ckpt
            raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(p)}: "
                                  + "; ".join(str(e) for _, e in skipped)
                                  + f". Copy the run folder again from where it was trained, or "
                                  f"train anew (`nerfhead train DATA --out {p} --force-new` "
                                  "moves this one aside)")
        elif isinstance(checkpoint, int) or str(checkpoint).isdigit():
            p = checkpoint_dir(p) / f"step_{int(checkpoint):07d}.pt"
        else:
            q = Path(checkpoint)
            p = q if q.is_absolute() or q.exists() else checkpoint_dir(p) / q
    if checkpoint is None and not p.exists():
        raise CheckpointError(f"run folder {p} not found (check the path; a run folder is what "
                              "`nerfhead train --out` made)")
    if checkpoint is None and p.suffix != ".pt" and not _is_torch_file(p):
        raise CheckpointError(f"{p} is neither a run folder nor a checkpoint (.pt): give the run "
                              "folder that `nerfhead train --out` made")
    if not p.is_file():
        others = [c.name for c in list_checkpoints(p.parent.parent)] if p.parent.name == "checkpoints" else []
        raise CheckpointError(f"checkpoint {p} not found"
                              + (f" (the run has {', '.join(others)})" if others else ""))
    try:
        return _load(p)
    except CheckpointError as e:
        intact = []
        if p.parent.name == "checkpoints":
            for c in reversed(list_checkpoints(p.parent.parent)):
                if c != p:
                    try:
                        _load(c)
                        intact.append(c.name)
                    except CheckpointError:
                        pass
        if intact:
            raise CheckpointError(f"{e}. Intact checkpoints of this run: {', '.join(intact)} "
                                  f"(choose one with --checkpoint)") from e
        raise


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` starts as torch.save writes (a zip archive, or a legacy pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


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
    dataset: dict = dataclasses.field(default_factory=dict)  #: fingerprint at training time
    #: how the audio encoder was refitted for other voices (train.voice_encoder_steps), or None
    voice_fit: dict | None = None
    #: the encoder in ``model``: "refitted" (the run's, as saved) or "trained" (the one the
    #: speaker's own voice trained, kept beside a refitted one)
    audio_encoder: str = "refitted"
    #: what ``OccupancyGrid.prune_floaters`` cleared on loading ({"cells", "pieces", "kept"}),
    #: or None when the run was loaded with its floaters kept
    floaters: dict | None = None
    #: a refitted run's checkpoint also holds the encoder as trained (``--audio-encoder
    #: trained``); None for a run never refitted, or whose refit was not kept
    trained_encoder_kept: bool | None = None
    checkpoint: Path | None = None  #: the file loaded

    def audio_encoder_note(self) -> str:
        """One line on the audio encoder: refitted for other voices, or the speaker's own."""
        f = self.voice_fit
        if not f:
            return "trained on the speaker's voice (not refitted for other voices)"
        if f.get("kept") is False:
            return (f"trained on the speaker's voice: its refit for other voices ({f['voices']} "
                    "in the dataset) was not kept, it read them worse on validation frames "
                    f"(code error {sum(f['error_before']) / len(f['error_before']):.2f} -> "
                    f"{sum(f['error_after']) / len(f['error_after']):.2f})")
        if self.audio_encoder == "trained":
            return ("trained on the speaker's voice, as chosen (--audio-encoder trained); the "
                    f"run's default is refitted for other voices ({f['voices']} in the dataset)")
        return (f"refitted for other voices ({f['voices']} in the dataset, {f['steps']} steps): "
                f"code error in them {sum(f['error_before']) / len(f['error_before']):.2f} -> "
                f"{sum(f['error_after']) / len(f['error_after']):.2f}, in the speaker's own "
                f"voice {f['error_own']:.3f}")

    def floaters_note(self) -> str:
        """One line on the occupancy cells cleared as floaters when the run was loaded."""
        f = self.floaters
        if f is None:
            return "kept as trained (--keep-floaters)"
        if not f["cells"]:
            return "none found apart from the head"
        s = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
        return (f"{s(f['cells'], 'occupancy cell')} in {s(f['pieces'], 'piece')} apart from the "
                f"head cleared ({f['kept']} kept)")


def run_dataset(run: LoadedRun, data=None) -> Path:
    """The dataset folder to read for ``run``: ``data`` when given (a warning when its content
    differs from what the run was trained on), else the folder the run was trained on, which
    must still be there (a moved dataset is named, with the way to point at its new place)."""
    from nerfhead.data.dataset import check_dataset_dir, content_hash

    if data is None and not run.dataset_dir.exists():
        raise DatasetError(f"{run.run_dir} was trained on the dataset {run.dataset_dir}, which "
                           "is no longer there (moved or deleted?); pass --data with its new "
                           "location")
    data = check_dataset_dir(run.dataset_dir if data is None else data)
    had = run.dataset.get("content")
    if had and content_hash(data) != had:
        log.warning("%s is not the data %s was trained on (%s; changed or re-preprocessed "
                    "since?): frames, poses or audio features differ from the ones it learned",
                    data, run.run_dir, run.dataset.get("path", run.dataset_dir))
    return data


def load_run(run_dir, device="cpu", checkpoint=None, audio_encoder: str = "refitted",
             prune_floaters: bool = True) -> LoadedRun:
    """Load a run folder's newest checkpoint (or ``checkpoint``: step number or file name).

    ``run_dir`` may also be a checkpoint file; its run folder is then the file's grandparent.
    ``audio_encoder``: "refitted" (the run's encoder, as saved) or "trained": for a run whose
    encoder was refitted for other voices (train.voice_encoder_steps), the encoder as the
    speaker's own voice trained it, which the refit keeps in the checkpoint (for a run never
    refitted the two are the same). ``prune_floaters``: clear the occupancy cells apart from
    the head (``OccupancyGrid.prune_floaters``) so renders show no specks in empty space.
    """
    if audio_encoder not in AUDIO_ENCODERS:
        raise ValueError(f"audio_encoder {audio_encoder!r}: use one of {', '.join(AUDIO_ENCODERS)}")
    ckpt = read_checkpoint(run_dir, checkpoint)
    path = Path(ckpt["path"])
    model = model_from_checkpoint(ckpt, device).eval()
    if audio_encoder == "trained" and ckpt.get("voice_fit"):
        state = ckpt.get(TRAINED_ENCODER)
        if state is None:
            raise CheckpointError(
                f"{path}: its audio encoder was refitted for other voices by an older nerfhead, "
                "which did not keep the encoder as the speaker's voice trained it, so "
                "--audio-encoder trained cannot be had from this run: use its refitted encoder "
                "(the default), or train the stage again into a new --out")
        model.audio_encoder.load_state_dict(state)
    fit = ckpt.get("voice_fit")
    run = LoadedRun(run_dir=path.parent.parent, model=model, configs=configs_from_checkpoint(ckpt),
                    stage=ckpt["stage"], step=int(ckpt["step"]), dataset_dir=Path(ckpt["dataset_dir"]),
                    camera=model.camera, dataset=dict(ckpt.get("dataset") or {}), voice_fit=fit,
                    audio_encoder="trained" if fit is None or fit.get("kept") is False
                    else audio_encoder,
                    floaters=model.grid.prune_floaters() if prune_floaters else None,
                    # a refit not kept left the trained encoder in place: nothing beside it
                    trained_encoder_kept=((TRAINED_ENCODER in ckpt)
                                          if fit and fit.get("kept", True) else None),
                    checkpoint=path)
    if run.floaters and run.floaters["cells"]:
        log.info("%s: floaters: %s (--keep-floaters keeps them)", path, run.floaters_note())
    return run
