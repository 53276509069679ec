"""One stage of one speaker: the body of every batch task, Ray or not.

Stages, in order, each through ``nerfhead.pipeline`` (so the resume rules are ``nerfhead
run``'s: preprocessing skips finished steps, training continues from its newest checkpoint,
render and evaluate are skipped when their outputs exist):

``preprocess`` -> ``train`` (one per preset stage, each started from the previous) ->
``render`` (held-out audio, held-out poses) -> ``evaluate`` -> ``drive`` (only with
``drive_audio``: that audio with the chosen poses, DIR/<name>/drive.mp4).

A stage's output (prints, log records, bar messages) goes to ``DIR/<name>/logs/<stage>.log``,
each attempt appended under a header line, so parallel speakers do not interleave on the
terminal. Failures come back as a ``StageResult`` carrying the real cause (the failing step's
own error line), never as an exception; Ctrl-C (KeyboardInterrupt) is left to propagate.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from nerfhead.batch.spec import SpeakerSpec

STAGES = ("preprocess", "train", "render", "evaluate", "drive")
GPU_STAGES = ("train", "render", "evaluate", "drive")  #: these render the model: a GPU if any


@dataclass
class StageJob:
    """What a task needs: the speaker, which stage, where, and the resources it was given."""

    speaker: SpeakerSpec
    stage: str  #: one of STAGES
    index: int  #: train: which preset stage (0-based); else 0
    out: Path  #: DIR/<name>
    batch_out: Path  #: DIR (another speaker's dataset may give the driven render's poses)
    device: str  #: "cpu" or "cuda" (inside a Ray GPU task, the GPU Ray assigned)
    cpus: int  #: cores declared for the task: torch threads, preprocessing workers (0: defaults)
    attempt: int = 1

    @property
    def key(self) -> str:
        """``train_head``, ``train_lips`` ... or the stage name: log file and state key."""
        if self.stage == "train":
            return f"train_{Path(self.speaker.stages[self.index]).stem}"
        return self.stage

    @property
    def label(self) -> str:
        if self.stage == "train":
            n = len(self.speaker.stages)
            return f"train {Path(self.speaker.stages[self.index]).stem}" + (
                f" ({self.index + 1}/{n})" if n > 1 else "")
        return self.stage


@dataclass
class StageResult:
    """What a task returns (small and picklable)."""

    ok: bool
    ran: bool = True  #: False: nothing to do (outputs up to date)
    seconds: float = 0.0
    error: str | None = None
    log: str = ""
    host: str = ""
    pid: int = 0
    info: dict = field(default_factory=dict)  #: train: steps; render: frames, fps


def jobs_for(speaker: SpeakerSpec, out: Path, batch_out: Path) -> list[StageJob]:
    """The stages of a speaker in order (device and cores are filled in when scheduled)."""
    jobs = [StageJob(speaker, "preprocess", 0, out, batch_out, "cpu", 1)]
    jobs += [StageJob(speaker, "train", k, out, batch_out, "cpu", 1)
             for k in range(len(speaker.stages))]
    jobs += [StageJob(speaker, s, 0, out, batch_out, "cpu", 1) for s in ("render", "evaluate")]
    if speaker.drive_audio is not None:
        jobs.append(StageJob(speaker, "drive", 0, out, batch_out, "cpu", 1))
    return jobs


# ------------------------------------------------------------------------------ capture

class _Tail(io.TextIOBase):
    """Writes through to the log file and keeps the last lines (for the error message)."""

    def __init__(self, f, keep: int = 80):
        self.f, self.lines, self._part = f, collections.deque(maxlen=keep), ""

    def write(self, s: str) -> int:
        self.f.write(s)
        self.f.flush()
        text = (self._part + s).replace("\r", "\n")
        *done, self._part = text.split("\n")
        self.lines.extend(x for x in done if x.strip())
        return len(s)

    def flush(self) -> None:
        self.f.flush()


@contextlib.contextmanager
def _stderr_fd_to(f) -> Iterator[None]:
    """File descriptor 2 into ``f`` too: native libraries (MediaPipe, TensorFlow Lite) write
    their warnings there, past Python's sys.stderr. stdout's descriptor is left alone: the
    live table may be drawn on it."""
    try:
        sys.__stderr__.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable descriptor 2 (embedded, closed)
        yield
        return
    try:
        os.dup2(f.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def captured_output(log_path: Path, header: str) -> Iterator[_Tail]:
    """stdout, stderr and log records of the block into ``log_path`` (appended)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"\n===== {header} =====\n")
        f.flush()
        tail = _Tail(f)
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        handler = logging.StreamHandler(tail)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        try:
            with _stderr_fd_to(f), contextlib.redirect_stdout(tail), contextlib.redirect_stderr(tail):
                yield tail
        finally:
            root.handlers, root.level = handlers, level


_OWN_ERROR = re.compile(r"^nerfhead (\w+)( failed)?: ")


def failure_cause(exc: BaseException, lines) -> str:
    """The message that says what went wrong. ``nerfhead.pipeline._subcommand`` ends a failed
    step with a generic SystemExit; the step's own error line (``nerfhead <step>...: cause``,
    printed just before) is the real cause (returned without that prefix: the stage's label
    goes in front of it)."""
    msg = str(exc) if not isinstance(exc, SystemExit) else str(exc.code or "")
    if isinstance(exc, SystemExit) and msg.startswith("nerfhead run: step"):
        own = [x.strip() for x in lines if _OWN_ERROR.match(x.strip())
               and not x.strip().startswith("nerfhead run:")]
        if own:
            return _OWN_ERROR.sub("", own[-1])
        rest = [x.strip() for x in lines if x.strip()]
        return rest[-1] if rest else msg
    if isinstance(exc, SystemExit):
        return msg or f"exit {exc.code}"
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------ stages

def _latest_step(run_dir: Path) -> int:
    from nerfhead.train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    return int(ckpts[-1].stem.split("_")[-1]) if ckpts else 0


def _preprocess_extra(job: StageJob) -> list[str]:
    extra = [a for o in job.speaker.preprocess_overrides for a in ("--set", o)]
    if job.cpus > 0 and _preprocess_accepts("--workers"):
        extra += ["--workers", str(job.cpus)]  # per-frame workers = the cores declared
    return extra


def _preprocess_accepts(flag: str) -> bool:
    """Whether this nerfhead's ``preprocess`` command takes ``flag`` with a number (newer ones
    spread frames over worker processes, one per core of the machine unless told)."""
    import argparse

    from preprocess import cli

    parser = argparse.ArgumentParser(add_help=False)
    cli.add_arguments(parser)
    _, unknown = parser.parse_known_args(["video", "--out", "data", flag, "1"])
    return not unknown


def _threads(n: int) -> None:
    """Torch and OpenCV threads = the cores declared for the task (a shared machine stalls
    when every library takes every core)."""
    from nerfhead.threads import declare_cores

    declare_cores(n)  # render / evaluate / train keep these instead of choosing their own
    if n <= 0:  # not declared: leave the libraries' defaults
        return
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(n)


def execute(job: StageJob, args, bars: list[dict]) -> tuple[bool, dict]:
    """Run the stage through nerfhead.pipeline; (did it do work?, info)."""
    from nerfhead import pipeline

    out, spec = job.out, job.speaker
    stages = spec.stages
    last_run = pipeline.run_dir_of(out, len(stages) - 1, stages[-1])
    if job.stage == "preprocess":
        manifest = out / "data" / "manifest.json"
        before = manifest.stat().st_mtime_ns if manifest.is_file() else None
        pipeline.preprocess(args, _preprocess_extra(job))
        return (before is None or manifest.stat().st_mtime_ns != before), {}
    if job.stage == "train":
        k = job.index
        run_dir = pipeline.run_dir_of(out, k, stages[k])
        init = pipeline.run_dir_of(out, k - 1, stages[k - 1]) if k else None
        step0 = _latest_step(run_dir)
        overrides = list(args.overrides)
        if job.device == "cpu" and job.cpus > 0 and not any(o.startswith("train.cpu_threads=") for o in overrides):
            args.overrides = overrides + [f"train.cpu_threads={job.cpus}"]
        pipeline.train(args, k, stages[k], init)
        step1 = _latest_step(run_dir)
        return step1 != step0, {"step_before": step0, "step": step1}
    if job.stage == "render":
        ran = pipeline.render(args, last_run)
        info = {}
        done = [b for b in bars if b["desc"] == "render" and b["elapsed"] > 0]
        if ran and done:
            info = {"frames": int(done[-1]["n"]), "render_seconds": float(done[-1]["elapsed"]),
                    "fps": done[-1]["n"] / done[-1]["elapsed"]}
        return ran, info
    if job.stage == "evaluate":
        ran = pipeline.evaluate(args, last_run)
        return pipeline.evaluate_other_voice(args, last_run) or ran, {}
    if job.stage == "drive":
        video = out / "drive.mp4"
        if video.is_file():
            return False, {}
        pipeline._subcommand(["render", str(last_run), "--audio", str(spec.drive_audio),  # noqa: SLF001
                              *spec.pose_arguments(job.batch_out), "--out", str(video),
                              "--device", job.device])
        return True, {}
    raise ValueError(f"unknown stage {job.stage!r}")


def run_stage(job: StageJob, send: Callable[[dict], None] | None = None) -> StageResult:
    """Run one stage, its output captured in DIR/<name>/logs/<key>.log; never raises except
    on KeyboardInterrupt. ``send`` receives live progress ({progress, fraction, ...})."""
    from nerfhead.batch.progress import report_bars_to

    send = send or (lambda d: None)
    host, pid = socket.gethostname(), os.getpid()
    log = job.out / "logs" / f"{job.key}.log"
    send({"stage": job.label, "progress": "starting", "fraction": None, "host": host,
          "pid": pid, "attempt": job.attempt, "started": time.time()})
    t0 = time.perf_counter()
    cores = f"{job.cpus} core(s)" if job.cpus else "threads: the preset's / library defaults"
    header = (f"{job.label}, attempt {job.attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
              f"host {host}, pid {pid}, device {job.device}, {cores}")
    with captured_output(log, header) as tail, report_bars_to(send) as bars:
        try:
            _threads(job.cpus)
            args = job.speaker.run_args(job.out, job.device)
            ran, info = execute(job, args, bars)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit from a failed step, or a bug
            if not isinstance(e, SystemExit):
                traceback.print_exc(file=sys.stderr)  # into the log
            cause = failure_cause(e, tail.lines)
            print(f"stage failed: {cause}", file=sys.stderr)
            return StageResult(False, True, time.perf_counter() - t0, f"{job.label}: {cause}",
                               str(log), host, pid)
    return StageResult(True, ran, time.perf_counter() - t0, None, str(log), host, pid, info)
