"""Runs the preprocessing steps in order, skipping those already done, and keeps
``manifest.json`` up to date.

A step is skipped when its manifest record's fingerprint (hash of its input files, its
settings and its code) equals the current one AND its ``check`` passes on the files on disk.
Inputs are identified by content: the source video by ``source_fingerprint`` (size and
first and last MiB), dataset files by size and sha256. So copying the video anew, moving or
touching it, or copying the dataset folder to another disk redoes nothing (hours of work on
a CPU), while a rerun of an earlier step that writes other bytes makes every step that reads
its outputs run again. Records made when large files and the video were identified by size
and mtime are accepted when nothing changed since, or when the video's content fingerprint
in the manifest still matches, and upgraded (``_legacy_record``). A step's record is deleted from
the manifest before it runs and written back only after it finished and passed its check: an
error or an interrupt leaves no record, so the next run redoes that step.

A dataset folder belongs to one source video: the decode step records the video's content
fingerprint (``video.source_fingerprint``), and a run with a different video into the same
folder is refused before anything is written (``force_new`` moves the old folder aside to
``DATA.replaced-<time>`` instead). Before each step the driver checks that the disk can hold
what the step estimates it will write (``Step.space``), and a step that fails on a full disk
is reported as such (``nerfhead.fileio.DiskFullError``), whatever error the writer raised.
Temporaries left by a killed run are removed at the start.

Manifest layout::

    {"format": 1, "created": ..., "updated": ..., "versions": {"nerfhead": ..., "numpy": ...},
     "video": {...decode: source, sizes, fps, num_frames, crop_box [x0, y0, side], crop_size},
     ...other top-level sections steps return under their stats' "manifest" key,
     "steps": {"<name>": {"fingerprint", "inputs_hash", "settings", "code", "seconds",
                          "finished", "stats"}}}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import glob
import hashlib
import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nerfhead.fileio import (check_output_dir, clean_stale_temps, disk_full_cause, move_aside,
                             require_space)
from preprocess.progress import OverallProgress
from preprocess.steps import Step, StepContext, StepError, atomic_path

MANIFEST = "manifest.json"
SMALL_FILE = 64 << 10  #: before content hashing of every file: the size hashed by content
log = logging.getLogger("preprocess")


def default_steps() -> list[Step]:
    """Every preprocessing step, in the order they run."""
    from preprocess.audio import AUDIO, SPEECH
    from preprocess.av_sync import AV_SYNC
    from preprocess.background import BACKGROUND_STEP
    from preprocess.bundle import BUNDLE_STEP
    from preprocess.decode import DECODE
    from preprocess.focal import FACE_FIT_STEP
    from preprocess.landmarks import LANDMARKS
    from preprocess.parsing import PARSING_STEP
    from preprocess.previews import PREVIEWS
    from preprocess.scenes import SCENES_STEP
    from preprocess.tracking import TRACKING_STEP

    return [DECODE, SPEECH, LANDMARKS, AV_SYNC, PARSING_STEP, SCENES_STEP, BACKGROUND_STEP,
            FACE_FIT_STEP, TRACKING_STEP, BUNDLE_STEP, AUDIO, PREVIEWS]


# ----------------------------------------------------------------------------- fingerprints
def _json_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_entry(path: Path, rel: str) -> list:
    """A file as an input: its name, size and content hash (sha256, about 1.7 GB/s here), so
    a dataset copied to another disk or machine, which gives every file a new mtime, keeps
    its finished steps."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return [rel, path.stat().st_size, h.hexdigest()]


def _legacy_file_entry(path: Path, rel: str) -> list:
    """How ``_file_entry`` identified a file before large files were hashed by content: small
    ones as now, larger ones by size and mtime. Used only to recognise records written then
    (``_legacy_record``)."""
    st = path.stat()
    if st.st_size <= SMALL_FILE:
        return _file_entry(path, rel)
    return [rel, st.st_size, st.st_mtime_ns]


def _expand(data_dir: Path, pattern: str) -> list[Path]:
    """Files matched by an input entry: a file, every file under a folder, or a glob."""
    if glob.has_magic(pattern):
        paths = sorted(data_dir.glob(pattern))
    else:
        paths = [data_dir / pattern]
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
    return files


BOOKKEEPING = ("steps", "updated", "created", "versions", "format")  #: manifest keys not hashed


def inputs_hash(step: Step, data_dir: Path, video: Path, manifest: dict | None = None,
                legacy: bool = False) -> str:
    """Hash of everything a step reads. ``manifest.json`` as an input stands for the
    manifest's data sections (``video``...), not its bookkeeping, which changes every step.
    ``legacy``: the hash as the driver computed it before files and the video were identified
    by content (large files and the video by size and mtime; the video also by path)."""
    entry = _legacy_file_entry if legacy else _file_entry
    entries = []
    for pattern in step.inputs:
        if pattern == MANIFEST:
            entries.append([MANIFEST, {k: v for k, v in (manifest or {}).items()
                                       if k not in BOOKKEEPING}])
            continue
        if pattern == "@video" and legacy:
            st = video.stat() if video.is_file() else None
            entries.append(["@video", str(video.resolve()), st and st.st_size, st and st.st_mtime_ns])
            continue
        if pattern == "@video":  # by content: a copied, moved or touched video is the same
            entries.append(["@video", source_fingerprint(video) if video.is_file() else None])
            continue
        files = _expand(data_dir, pattern)
        entries.append([pattern, [entry(f, str(f.relative_to(data_dir))) for f in files]]
                       if files else [pattern, "missing"])
    return _json_hash(entries)


def code_version(step: Step) -> str:
    """nerfhead's version + a hash of the source file that defines the step's ``run``."""
    import nerfhead

    try:
        src = Path(inspect.getsourcefile(step.run)).read_bytes()
    except (TypeError, OSError):
        src = b""
    return f"{nerfhead.__version__}+{hashlib.sha256(src).hexdigest()[:12]}"


def fingerprint(step: Step, ctx: StepContext) -> dict:
    settings = step.settings(ctx.cfg)
    rec = {"inputs_hash": inputs_hash(step, ctx.data_dir, ctx.video, ctx.manifest),
           "settings": settings, "code": code_version(step)}
    rec["fingerprint"] = _json_hash([rec["inputs_hash"], settings, rec["code"]])
    return rec


# --------------------------------------------------------------------------------- manifest
def versions() -> dict:
    import importlib

    out = {}
    for name in ("nerfhead", "numpy", "mediapipe", "cv2", "torch"):
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except Exception as e:  # a missing optional library is recorded, not fatal
            out[name] = f"unavailable ({type(e).__name__})"
    return out


def load_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StepError("driver", f"manifest is not valid JSON ({e}); delete it to start over", path) from e


def write_manifest(data_dir: Path, manifest: dict) -> None:
    manifest["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with atomic_path(data_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, default=str))


# ----------------------------------------------------------------------------- ownership
def source_fingerprint(video: Path, chunk: int = 1 << 20) -> str:
    """Content fingerprint of a video file: its size and the hash of its first and last MiB
    (a renamed or moved copy matches; a re-export or another video does not)."""
    size = video.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(video, "rb") as f:
        h.update(f.read(chunk))
        if size > 2 * chunk:
            f.seek(size - chunk)
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def _legacy_record(step: Step, record: dict, fp: dict, ctx: StepContext) -> bool:
    """A record written before inputs were identified by content (large files and the video
    by size and mtime, the video also by path), still valid: its settings and code are this
    run's, and either its inputs hash is the legacy hash of the files as they are now (nothing
    was touched since), or the step reads only the video and the content fingerprint the
    manifest holds for it (written by decode) is this video's (a re-copied video)."""
    if (_json_hash(record.get("settings")) != _json_hash(fp["settings"])
            or record.get("code") != fp["code"]):
        return False
    if record.get("inputs_hash") == inputs_hash(step, ctx.data_dir, ctx.video, ctx.manifest,
                                                legacy=True):
        return True
    recorded = (ctx.manifest.get("video") or {}).get("source_fingerprint")
    return (tuple(step.inputs) == ("@video",) and recorded is not None and ctx.video.is_file()
            and recorded == source_fingerprint(ctx.video))


def check_owner(data_dir: Path, video: Path, manifest: dict) -> None:
    """Refuse to write the dataset of ``video`` into a folder made from another video."""
    recorded = manifest.get("video") or {}
    if not recorded.get("source") or not video.is_file():
        return  # a new folder, or the video is missing (decode reports that if it must run)
    had = recorded.get("source_fingerprint")
    if had is not None:
        same = had == source_fingerprint(video)
    else:  # manifests written before fingerprints: the resolved path is all there is
        same = Path(recorded["source"]) == video.resolve()
    if not same:
        raise StepError("driver", f"this folder holds the dataset of {recorded['source']} "
                                  f"(created {manifest.get('created', '?')}), and {video} is a "
                                  "different video (or a changed file). Refusing to overwrite "
                                  "it: write to another --out folder, or pass --force-new to move "
                                  "the old dataset aside and start over", data_dir)


# ----------------------------------------------------------------------------- dependencies
def _overlaps(a: str, b: str) -> bool:
    """Whether output entry ``a`` can produce something input entry ``b`` reads."""
    if a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/"):
        return True
    return fnmatch.fnmatch(a, b) or fnmatch.fnmatch(b, a)


def dependencies(step: Step, steps: Sequence[Step]) -> list[Step]:
    """Earlier steps whose outputs this step reads."""
    earlier = steps[: [s.name for s in steps].index(step.name)]
    return [d for d in earlier if any(_overlaps(o, i) for o in d.outputs for i in step.inputs)]


# ------------------------------------------------------------------------------------- run
@dataclass
class StepResult:
    name: str
    status: str  #: 'ran', 'skipped' or 'failed'
    seconds: float
    message: str = ""


def _is_done(step: Step, ctx: StepContext) -> bool:
    if step.name not in ctx.manifest.get("steps", {}):
        return False
    try:
        step.check(ctx)
        return True
    except (StepError, OSError, ValueError, KeyError):
        return False


def _failure(step: Step, e: Exception, data_dir: Path, needed: int | None) -> StepError:
    """The error to report for ``step`` failing with ``e``: a full disk is named as such."""
    full = disk_full_cause(e)
    if full is not None:
        if needed and not full.needed:
            full = full.with_need(needed, data_dir, f"the {step.name} step's outputs")
        err = StepError(step.name, str(full), data_dir)
        err.__cause__ = full
        return err
    if isinstance(e, StepError):
        return e
    err = StepError(step.name, f"{type(e).__name__}: {e}")
    err.__cause__ = e
    return err


def run_steps(video: str | os.PathLike, data_dir: str | os.PathLike, cfg: Any,
              only: Sequence[str] | None = None, force: bool = False,
              steps: Sequence[Step] | None = None, force_new: bool = False,
              progress: bool = True) -> list[StepResult]:
    """Run ``steps`` (default: all, in order) on ``video`` into ``data_dir``.

    ``only`` restricts to the named steps (their dependencies must already be done);
    ``force`` reruns them even when their records match; ``force_new`` moves an existing
    dataset folder aside and starts a new one (without it, a folder made from another video
    is refused). Raises StepError on the first failure after recording what ran, and
    ``nerfhead.fileio.OutputLocationError`` before any work when ``data_dir`` cannot be
    written; returns one StepResult per selected step. ``progress`` draws one line for the
    whole run (``preprocess.progress``).
    """
    steps = list(default_steps() if steps is None else steps)
    names = [s.name for s in steps]
    data_dir, video = Path(data_dir), Path(video)
    if force_new and (data_dir / MANIFEST).exists():
        moved = move_aside(data_dir)
        log.warning("--force-new: moved the previous dataset %s to %s (delete it when no longer "
                    "needed)", data_dir, moved)
    check_output_dir(data_dir, "preprocess --out")
    clean_stale_temps(data_dir, depth=1)
    manifest = load_manifest(data_dir)
    check_owner(data_dir, video, manifest)
    manifest.setdefault("format", 1)
    manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    manifest.setdefault("steps", {})
    manifest["versions"] = versions()
    ctx = StepContext(data_dir=data_dir, video=video, cfg=cfg, manifest=manifest)

    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise StepError("driver", f"unknown step(s) {unknown}; steps are {names}")
        selected = [s for s in steps if s.name in only]
        for s in selected:
            missing = [d.name for d in dependencies(s, steps)
                       if d.name not in only and not _is_done(d, ctx)]
            if missing:
                raise StepError("driver", f"step '{s.name}' needs {missing} done first; run "
                                          f"them too (--steps {','.join(missing + [s.name])}) "
                                          f"or run without --steps", data_dir / MANIFEST)
    else:
        selected = steps

    results: list[StepResult] = []
    overall = OverallProgress([s.name for s in selected], lambda: manifest.get("video", {}).get(
        "num_frames"), results, enabled=progress).open()
    try:  # the line is closed (and logging restored) however the run ends, Ctrl-C included
        for step in selected:
            overall.start(step.name)
            fp = fingerprint(step, ctx)
            record = manifest["steps"].get(step.name)
            fresh = bool(record) and record.get("fingerprint") == fp["fingerprint"]
            legacy = (not force and not fresh and bool(record)
                      and _legacy_record(step, record, fp, ctx))
            if not force and (fresh or legacy) and _is_done(step, ctx):
                if legacy:
                    record.update(inputs_hash=fp["inputs_hash"], fingerprint=fp["fingerprint"])
                    write_manifest(data_dir, manifest)
                    log.info("%s: its record identified its inputs by path and time; they are "
                             "unchanged, so the record now uses their content", step.name)
                log.info("%s: up to date, skipped", step.name)
                results.append(StepResult(step.name, "skipped", 0.0))
                continue
            manifest["steps"].pop(step.name, None)  # no record while the outputs are in flux
            needed = None
            try:
                write_manifest(data_dir, manifest)
                if step.space is not None:
                    needed = int(step.space(ctx))
                    require_space(data_dir, needed, f"the {step.name} step's outputs")
            except Exception as e:
                overall.close()
                raise _failure(step, e, data_dir, needed) from e
            log.info("%s: running (%s)", step.name, step.doc or "")
            t0 = time.perf_counter()
            try:
                stats = dict(step.run(ctx) or {})
                for key, value in (stats.pop("manifest", None) or {}).items():
                    manifest[key] = value  # top-level sections a step owns (e.g. decode's "video")
                step.check(ctx)
            except Exception as e:
                secs = time.perf_counter() - t0
                err = _failure(step, e, data_dir, needed)
                results.append(StepResult(step.name, "failed", secs, str(err)))
                with contextlib.suppress(OSError):  # on a full disk even this may fail
                    write_manifest(data_dir, manifest)
                overall.close()
                log.error("%s", summary(results))
                if err is e:
                    raise
                raise err from e
            secs = time.perf_counter() - t0
            # the fingerprint is taken again: outputs of this step may live beside its inputs
            fp = fingerprint(step, ctx)
            manifest["steps"][step.name] = {
                **fp, "seconds": round(secs, 3), "stats": stats,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            write_manifest(data_dir, manifest)
            results.append(StepResult(step.name, "ran", secs))
            log.info("%s: done in %.1f s", step.name, secs)
    finally:
        overall.close()
    return results


def summary(results: Sequence[StepResult]) -> str:
    """A plain-text table of step, status and seconds."""
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'step':<{width}}  {'status':<8}  {'seconds':>8}"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<8}  {r.seconds:8.1f}"
                     + (f"  {r.message[:120]}" if r.message else ""))
    lines.append(f"{'total':<{width}}  {'':<8}  {sum(r.seconds for r in results):8.1f}")
    return "\n".join(lines)
