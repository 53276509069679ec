"""The driver of a batch: every speaker's stages, submitted to an executor (Ray tasks with
declared resources, or one after another without Ray: ``executors``).

The driver keeps one chain per speaker: a stage is submitted when the previous one finished,
so the speakers move independently and Ray runs as many stages at once as the declared
resources allow (a preprocessing task declares ``preprocess_cpus`` cores; training, render,
evaluate and the driven render declare one GPU when the cluster has GPUs, else
``train_cpus`` cores). A stage that fails ends its speaker's chain with its error; the other
speakers go on. A stage whose worker or node was lost (a Ray system error, not an error of
ours) is submitted again, at most ``retries`` times; it resumes from what the lost attempt
left (checkpoints, finished preprocessing steps). Ctrl-C cancels the running tasks; rerunning
the same command resumes every speaker by ``nerfhead run``'s rules.

Per speaker, the driver (the only writer) keeps ``DIR/<name>/batch.json``: the video it
belongs to, each stage's status, attempts, seconds and log, the error, the accumulated
training time and the render speed. The summary table is built from it and the evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from nerfhead.batch.executors import BatchOptions
from nerfhead.batch.spec import SpeakerSpec
from nerfhead.batch.stages import StageJob, jobs_for

log = logging.getLogger("nerfhead.batch")


# ------------------------------------------------------------------------------ state

def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class SpeakerState:
    """``DIR/<name>/batch.json``, loaded at start (earlier sessions) and saved on each change."""

    def __init__(self, spec: SpeakerSpec, out: Path):
        self.spec, self.path = spec, out / "batch.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.recorded_video = old.get("video")
        self.data = {"name": spec.name, "video": str(spec.video), "status": "pending",
                     "stage": None, "error": None, "stages": {},
                     "train_seconds": float(old.get("train_seconds") or 0.0),
                     "render_fps": old.get("render_fps"), "render_frames": old.get("render_frames"),
                     "session_started": _now(), "updated": _now()}
        self.t_start = time.monotonic()
        self.t_end: float | None = None

    def __getitem__(self, key):
        return self.data[key]

    def stage(self, key: str) -> dict:
        return self.data["stages"].setdefault(key, {"status": "pending", "attempts": 0,
                                                    "seconds": 0.0, "log": None, "error": None})

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"], self.t_end = status, time.monotonic()
        if error:
            self.data["error"] = error

    @property
    def elapsed(self) -> float:
        return (self.t_end or time.monotonic()) - self.t_start

    def save(self) -> None:
        from nerfhead.fileio import atomic_path

        self.data["updated"] = _now()
        self.data["session_seconds"] = round(self.elapsed, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1))


# ------------------------------------------------------------------------------ driver

def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is gone: compare the names
        return os.path.abspath(a) == os.path.abspath(b)


class Batch:
    """The driver: one chain of stages per speaker, states, retries, Ctrl-C."""

    def __init__(self, specs: list[SpeakerSpec], opts: BatchOptions, executor):
        self.specs, self.opts, self.ex = specs, opts, executor
        self.lock = threading.RLock()
        self.states = {s.name: SpeakerState(s, opts.out / s.name) for s in specs}
        self.chains = {s.name: deque(jobs_for(s, opts.out / s.name, opts.out)) for s in specs}
        self.running: dict[str, StageJob] = {}
        self.interrupted = False

    # ---------------------------------------------------------------- bookkeeping
    def _fail(self, name: str, stage_key: str | None, error: str) -> None:
        st = self.states[name]
        if stage_key:
            self.states[name].stage(stage_key).update(status="failed", error=error)
        st.finish("failed", error)
        self.chains[name].clear()
        st.save()

    def _check(self, spec: SpeakerSpec) -> str | None:
        st = self.states[spec.name]
        if spec.input_error:
            return f"check: {spec.input_error}"
        if st.recorded_video and not _same_file(st.recorded_video, spec.video):
            return (f"check: {self.opts.out / spec.name} holds the work of another video "
                    f"({st.recorded_video}); this entry names {spec.video}. Give this speaker "
                    f"another name, or move that folder away to start it over")
        return None

    def _pose_ready(self, job: StageJob) -> bool | str:
        """The driven render waits for the speaker whose dataset gives its poses."""
        other = job.speaker.pose_speaker(set(self.states))
        if other is None:
            return True
        pre = self.states[other]["stages"].get("preprocess", {}).get("status")
        if pre in ("done", "up to date"):
            return True
        if self.states[other]["status"] in ("failed", "interrupted"):
            return f"drive: pose source speaker {other!r} has no dataset ({self.states[other]['error']})"
        return False

    def _submit_ready(self) -> None:
        for name, chain in self.chains.items():
            if name in self.running or not chain or self.states[name]["status"] == "failed":
                continue
            job = chain[0]
            if job.stage == "drive":
                ready = self._pose_ready(job)
                if ready is not True:
                    if ready is not False:
                        self._fail(name, job.key, ready)
                    continue
            chain.popleft()
            st = self.states[name]
            rec = st.stage(job.key)
            rec["attempts"] += 1
            job.attempt = rec["attempts"]
            self.ex.place(job)
            rec.update(status="queued", device=job.device, cpus=job.cpus)
            st.data.update(status="running", stage=job.label)
            st.save()
            self.ex.submit(job)
            self.running[name] = job

    def _fail_waiting(self) -> None:
        """Nothing runs and nothing can start: a stage still waiting (a driven render whose
        pose source never got a dataset in this session) will not run."""
        for name, chain in self.chains.items():
            if chain and self.states[name]["status"] != "failed":
                other = chain[0].speaker.pose_speaker(set(self.states))
                self._fail(name, chain[0].key, f"{chain[0].label}: waited for the dataset of "
                           f"{other!r}, which this batch did not produce")

    def _finished(self, job: StageJob, result) -> None:
        name, st = job.speaker.name, self.states[job.speaker.name]
        rec = st.stage(job.key)
        del self.running[name]
        if isinstance(result, Exception):
            if job.stage == "train":  # the lost attempt's checkpoints are kept: its time counts
                st.data["train_seconds"] += self._seconds_so_far(job)
            brief = str(result).strip().splitlines()[0] if str(result).strip() else type(result).__name__
            if getattr(self.ex, "transient", lambda e: False)(result) and rec["attempts"] <= self.opts.retries:
                rec.update(status="retrying", error=f"attempt {rec['attempts']}: worker lost ({brief})")
                log.warning("%s: %s: worker lost (%s); submitting attempt %d of %d", name,
                            job.label, brief, rec["attempts"] + 1, self.opts.retries + 1)
                self.chains[name].appendleft(job)
                st.save()
                return
            self._fail(name, job.key, f"{job.label}: {type(result).__name__} after "
                       f"{rec['attempts']} attempt(s): {brief}")
            return
        rec.update(seconds=round(rec["seconds"] + result.seconds, 2), log=result.log,
                   host=result.host, pid=result.pid, info=result.info)
        if not result.ok:
            self._fail(name, job.key, result.error)
            return
        rec.update(status="done" if result.ran else "up to date", error=None)
        if job.stage == "train" and result.ran:
            st.data["train_seconds"] += result.seconds
        if job.stage == "render" and result.info.get("fps"):
            st.data.update(render_fps=round(result.info["fps"], 3),
                           render_frames=result.info["frames"])
        if not self.chains[name]:
            st.finish("done")
            st.data["error"] = None
        st.save()

    # ---------------------------------------------------------------- main loop
    def run(self) -> dict[str, SpeakerState]:
        with self.lock:
            for spec in self.specs:
                problem = self._check(spec)
                if problem:
                    self._fail(spec.name, "check", problem)
        try:
            while True:
                with self.lock:
                    self._submit_ready()
                    if not self.running:
                        self._fail_waiting()
                        break
                for job, result in self.ex.wait(timeout=0.5):
                    with self.lock:
                        self._finished(job, result)
        except KeyboardInterrupt:
            self.interrupted = True
            with self.lock:
                self.ex.cancel_all()
                for name, job in list(self.running.items()):
                    st = self.states[name]
                    if job.stage == "train":
                        st.data["train_seconds"] += self._seconds_so_far(job)
                    st.stage(job.key).update(status="interrupted")
                    st.finish("interrupted", None)
                    st.save()
                self.running.clear()
                for name, st in self.states.items():
                    if st["status"] in ("pending", "running"):
                        st.finish("interrupted")
                        st.save()
        return self.states

    def _report(self, job: StageJob) -> dict | None:
        """The live report of ``job`` (None while queued: the board still shows an older
        stage or attempt of the speaker, or nothing)."""
        rep = self.ex.snapshot().get(job.speaker.name) or {}
        same = rep.get("stage") == job.label and rep.get("attempt") == job.attempt
        return rep if same else None

    def _seconds_so_far(self, job: StageJob) -> float:
        rep = self._report(job)
        return max(0.0, time.time() - rep["started"]) if rep and rep.get("started") else 0.0

    def rows(self) -> list[dict]:
        """One row per speaker for the status table (thread-safe)."""
        with self.lock:
            rows = []
            for spec in self.specs:
                st, job = self.states[spec.name], self.running.get(spec.name)
                progress, where = "", ""
                if job is not None:
                    rep = self._report(job)
                    progress = rep.get("progress", "") if rep else self.ex.waiting
                    where = f"{rep.get('host')}:{rep.get('pid')}" if rep else ""
                    if job.attempt > 1:
                        progress = f"attempt {job.attempt}: {progress}"
                rows.append({"speaker": spec.name, "stage": st["stage"] or "-",
                             "status": st["status"], "progress": progress,
                             "elapsed": st.elapsed, "error": st["error"] or "", "where": where})
            return rows
