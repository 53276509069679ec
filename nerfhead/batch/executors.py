"""Where the stages run: ``RayExecutor`` (Ray tasks with declared resources, on a local Ray
started for the batch or on an existing cluster) or ``SequentialExecutor`` (this process, one
stage after another: without Ray, or with ``--no-ray``). Both offer ``place`` (device and
cores of a stage), ``submit``, ``wait`` (finished stages), ``snapshot`` (live progress),
``cancel_all`` and ``close``; the driver (``scheduler.Batch``) does not know which it has.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from nerfhead.batch.progress import StatusBoard
from nerfhead.batch.stages import GPU_STAGES, StageJob, StageResult, run_stage

log = logging.getLogger("nerfhead.batch")


class ClusterUnavailable(RuntimeError):
    """``--address`` names a Ray cluster this process cannot join."""


RAY_MISSING = ("Ray is not installed, so the speakers run one after another in this process. "
               "To run them as parallel Ray tasks (here or on a cluster), install the batch "
               "extra: pip install -c constraints.txt -e \".[batch]\"")


@dataclass
class BatchOptions:
    """How ``nerfhead batch`` runs (the command-line options)."""

    out: Path  #: DIR: DIR/<name>/ per speaker, DIR/summary.{md,csv}
    use_ray: bool = True  #: False: one stage after another in this process (--no-ray)
    address: str | None = None  #: an existing Ray cluster (ray.init address); None: local
    cpus: int | None = None  #: local Ray: CPUs it may use (default: this machine's cores)
    preprocess_cpus: int = 2  #: cores a preprocessing task declares (capped by the largest node)
    train_cpus: int | None = None  #: cores of a CPU training/render task (Ray default 1)
    device: str = "auto"  #: auto: GPU tasks when the cluster has GPUs; cpu: never
    retries: int = 2  #: resubmissions of a stage whose worker or node was lost
    dashboard: bool = True  #: start the Ray dashboard with a local Ray (needs ray[default])


class SequentialExecutor:
    """No Ray: each submitted stage runs in this process when ``wait`` is called."""

    name = "sequential (no Ray)"
    dashboard = None
    waiting = "waiting (one stage at a time without Ray)"

    def __init__(self, opts: BatchOptions):
        import torch

        self.gpu = torch.cuda.is_available() and opts.device != "cpu"
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.preprocess_cpus = min(opts.preprocess_cpus, cores)
        self.train_cpus = opts.train_cpus or 0  # 0: the preset's train.cpu_threads
        self.queue: deque = deque()
        self.board = StatusBoard()

    def place(self, job: StageJob) -> None:
        if job.stage in GPU_STAGES:
            job.device, job.cpus = ("cuda", 0) if self.gpu else ("cpu", self.train_cpus)
        else:
            job.device, job.cpus = "cpu", self.preprocess_cpus

    def submit(self, job: StageJob):
        self.queue.append(job)
        return job

    def wait(self, timeout: float) -> list[tuple[StageJob, StageResult | Exception]]:  # noqa: ARG002
        if not self.queue:
            return []
        job = self.queue.popleft()
        send = lambda d, n=job.speaker.name: self.board.update(n, d)  # noqa: E731
        return [(job, run_stage(job, send))]

    def snapshot(self) -> dict:
        return self.board.snapshot()

    def cancel_all(self) -> None:
        self.queue.clear()

    def close(self) -> None:
        pass


def _task(job: StageJob, board) -> StageResult:
    """The Ray task: one stage, progress to the board actor (fire and forget)."""
    return run_stage(job, lambda d: board.update.remote(job.speaker.name, d))


class RayExecutor:
    """Stages as Ray tasks on a local Ray started here (bounded to this machine's cores) or on
    an existing cluster (``address``)."""

    waiting = "queued (waiting for resources)"

    def __init__(self, opts: BatchOptions):
        import ray

        self.ray, self.opts, self.started_here = ray, opts, opts.address is None
        # the tasks see this process's NERFHEAD_* settings (weights folder, offline mode)
        env = {k: v for k, v in os.environ.items() if k.startswith("NERFHEAD_")}
        kw: dict = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.started_here:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            # workers import the same nerfhead as this process (a source checkout need not be
            # the installed one); on a cluster every node has its own install
            env["PYTHONPATH"] = os.pathsep.join(
                [str(Path(__file__).resolve().parents[2])]
                + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
            # address="local": a new Ray for this run, even where RAY_ADDRESS is set or another
            # Ray runs on this machine (ray.init() would join those); the tasks exchange small
            # messages (paths, figures): a small object store suffices
            # include_dashboard None: Ray starts it where its packages (ray[default]) are installed
            kw.update(address="local", num_cpus=opts.cpus or cores,
                      include_dashboard=None if opts.dashboard else False,
                      object_store_memory=128 << 20)
        else:
            kw["address"] = opts.address
        kw["runtime_env"] = {"env_vars": env}
        try:
            ctx = ray.init(**kw)
        except ConnectionError as e:
            raise ClusterUnavailable(
                f"cannot join the Ray cluster at {opts.address}: {e}. Is it running (`ray "
                f"status` on the head)? Give the head's IP:port that `ray start --head` printed, "
                f"or `auto` on a node of the cluster. A cluster with token authentication also "
                f"needs its token here: RAY_AUTH_MODE=token with ~/.ray/auth_token or "
                f"RAY_AUTH_TOKEN (docs/batch.md)") from None
        url = getattr(ctx, "dashboard_url", None) or None
        self.dashboard = url if not url or "://" in url else f"http://{url}"
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.max_cpus = max(int(n["Resources"].get("CPU", 0)) for n in nodes)
        self.gpu = any(n["Resources"].get("GPU", 0) >= 1 for n in nodes) and opts.device != "cpu"
        total = ray.cluster_resources()
        self.name = (f"Ray {ray.__version__}, {'local' if self.started_here else opts.address}: "
                     f"{len(nodes)} node(s), {total.get('CPU', 0):.0f} CPU, "
                     f"{total.get('GPU', 0):.0f} GPU")
        self.board = ray.remote(num_cpus=0)(StatusBoard).remote()
        self.remote = ray.remote(_task)
        # a GPU task gets a fresh worker process, so that its CUDA context and cached memory
        # go with it (max_calls cannot be given per call in .options())
        self.remote_gpu = ray.remote(max_calls=1)(_task)
        self.refs: dict = {}  # ObjectRef -> StageJob
        self._snapshot: dict = {}

    def place(self, job: StageJob) -> None:
        if job.stage in GPU_STAGES:
            job.device, job.cpus = ("cuda", 1) if self.gpu else (
                "cpu", min(self.opts.train_cpus or 1, self.max_cpus))
        else:
            job.device, job.cpus = "cpu", min(self.opts.preprocess_cpus, self.max_cpus)

    def submit(self, job: StageJob):
        gpus = 1 if job.device == "cuda" else 0
        task = self.remote_gpu if gpus else self.remote
        # max_retries=0: the retries are ours, so that the table shows them
        ref = task.options(num_cpus=job.cpus, num_gpus=gpus, max_retries=0,
                           name=f"{job.speaker.name}:{job.key}").remote(job, self.board)
        self.refs[ref] = job
        return ref

    def wait(self, timeout: float) -> list[tuple[StageJob, StageResult | Exception]]:
        ray = self.ray
        done = []
        if self.refs:
            ready, _ = ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
            for ref in ready:
                job = self.refs.pop(ref)
                try:
                    done.append((job, ray.get(ref)))
                except ray.exceptions.RayError as e:  # worker or node lost, cancelled ...
                    done.append((job, e))
        else:
            time.sleep(timeout)
        try:
            self._snapshot = ray.get(self.board.snapshot.remote(), timeout=10)
        except ray.exceptions.RayError:
            pass
        return done

    def snapshot(self) -> dict:
        return self._snapshot

    def transient(self, e: Exception) -> bool:
        """A lost worker, node or object: worth another attempt (our own errors come back as
        a StageResult, an exception here is Ray's)."""
        exc = self.ray.exceptions
        return not isinstance(e, (exc.TaskCancelledError, exc.RayTaskError))

    def cancel_all(self) -> None:
        for ref in list(self.refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass
        self.refs.clear()

    def close(self) -> None:
        self.ray.shutdown()


def make_executor(opts: BatchOptions):
    """RayExecutor, or SequentialExecutor when Ray is not wanted or not installed (logged)."""
    if opts.use_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            if opts.address:
                raise ClusterUnavailable(f"--address {opts.address} needs Ray, which is not "
                                         f"installed: pip install -c constraints.txt -e \".[batch]\"")
            log.warning(RAY_MISSING)
            return SequentialExecutor(opts)
        return RayExecutor(opts)
    return SequentialExecutor(opts)
