"""The contract every preprocessing step follows.

A ``Step`` names its inputs and outputs (paths relative to the dataset folder; ``"@video"``
is the source video), the part of the config that affects it, a ``run`` function that does
the work and a ``check`` function that verifies the outputs afterwards. The driver hashes
inputs + settings; when they match the manifest's record and the outputs still pass
``check``, the step is skipped. Steps write files atomically (``atomic_path``) so an
interrupted run never leaves a half-written output that a rerun would trust.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nerfhead.fileio import atomic_path  # noqa: F401  (steps import it from here)


class StepError(RuntimeError):
    """A preprocessing step failed; the message names the step and the file involved."""

    def __init__(self, step: str, message: str, path: str | os.PathLike | None = None):
        where = f" ({path})" if path is not None else ""
        super().__init__(f"preprocess step '{step}'{where}: {message}")
        self.step = step
        self.path = None if path is None else str(path)


@dataclass
class StepContext:
    """What a step gets: where to read and write, the full config, the manifest so far."""

    data_dir: Path  #: the dataset folder being written
    video: Path  #: the source video
    cfg: Any  #: preprocess.config.PreprocessConfig (each step reads its own section)
    manifest: dict  #: manifest.json content so far (read-only for steps; the driver writes it)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("preprocess"))

    def path(self, rel: str) -> Path:
        return self.data_dir / rel

    def num_frames(self) -> int:
        """Number of decoded frames (recorded by the decode step)."""
        try:
            return int(self.manifest["video"]["num_frames"])
        except KeyError as e:
            raise StepError("decode", "manifest has no frame count; run the decode step first",
                            self.data_dir / "manifest.json") from e


def like_frames(factor: float) -> Callable[[StepContext], int]:
    """A ``Step.space`` estimate: ``factor`` x the bytes of the decoded frames (ori_imgs/*.jpg,
    averaged over a few), for steps that write images of the same size per frame."""
    def estimate(ctx: StepContext) -> int:
        n = ctx.num_frames()
        sizes = [p.stat().st_size for p in (ctx.path(f"ori_imgs/{i}.jpg") for i in
                                             sorted({0, n // 2, n - 1})) if p.is_file()]
        return int(factor * n * (sum(sizes) / len(sizes))) if sizes else 0
    return estimate


@dataclass(frozen=True)
class Step:
    name: str
    inputs: tuple[str, ...]  #: files/folders read (relative to data_dir; "@video" = source)
    outputs: tuple[str, ...]  #: files/folders written (relative to data_dir)
    #: does the work; returns stats for the manifest. A ``"manifest"`` entry in the returned
    #: dict (a mapping) is merged into the manifest's top level instead (decode's ``"video"``).
    run: Callable[[StepContext], dict | None]
    check: Callable[[StepContext], None]  #: raises StepError if the outputs are wrong/missing
    settings: Callable[[Any], dict]  #: the config values that affect this step (hashed)
    doc: str = ""
    #: bytes the step is about to write, estimated cheaply from what is on disk (None: not
    #: estimated); the driver refuses to start the step when the disk cannot hold them
    space: Callable[[StepContext], int] | None = None
