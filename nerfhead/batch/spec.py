"""The speakers file of ``nerfhead batch``: one entry per speaker, validated up front.

::

    defaults:                 # optional: every speaker starts from these
      preset: head,lips
      max_seconds: 180
    speakers:                 # (or the file is just this list)
      - name: obama           # folder DIR/obama; letters, digits, . _ -
        video: clips/obama.mp4            # relative paths: from this file's folder
        preset: head,lips,torso           # nerfhead run --preset
        overrides: {train.iters: 40000}   # nerfhead run --set (a mapping or a list of
                                          # "section.field=value" strings)
        preprocess_overrides: [av_sync.on_fail=proceed]   # nerfhead preprocess --set
        words: clips/obama_words.json     # run --words: word timings, or auto (recognised)
        transcript: clips/obama.txt       # run --transcript: the words said, aligned
        audio_feature: hubert             # run --audio-feature: auto (mel+ow) or hubert
        drive_audio: speech/new.wav       # also render this audio: DIR/obama/drive.mp4
        pose_from: may                    # its poses: train, val, smooth, static, a dataset
                                          # folder, a transforms .json / .npy, or a speaker

Mistakes in the file itself (unknown keys, wrong types, bad or repeated names, presets or
overrides the configs reject) raise ``SpeakersFileError`` naming the file, the entry and the
field, before any work starts. Inputs that are missing on disk (a video, a driving audio, a
pose source) fail only that speaker, at its ``check`` stage, so the others still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POSE_KINDS = ("train", "val", "smooth", "static")  #: render --poses values
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: files ``nerfhead batch`` writes into DIR itself: no speaker's folder may take their name
RESERVED_NAMES = ("summary.md", "summary.csv")


class SpeakersFileError(ValueError):
    """The speakers file is malformed; the message names the file, the entry and the field."""


@dataclass
class SpeakerSpec:
    """One speaker: what ``nerfhead run`` is given for it, plus an optional driven render."""

    name: str  #: folder under --out (DIR/<name>); letters, digits, ``.``, ``_``, ``-``
    video: Path  #: the speaker's talking-head video, with audio
    preset: str = "tiny"  #: training preset or stages, e.g. ``head,lips,torso`` (run --preset)
    max_seconds: float | None = None  #: use only the first S seconds (run --max-seconds)
    crop_size: int | None = None  #: preprocess crop side in pixels (run --crop-size)
    iters: int | None = None  #: train.iters of every stage (run --iters)
    eval_frames: int | None = None  #: evaluate at most N validation frames (run --eval-frames)
    overrides: list[str] = field(default_factory=list)  #: training ``section.field=value``
    preprocess_overrides: list[str] = field(default_factory=list)  #: preprocess --set
    #: the video's word timings for synthetic training voices (run --words), or "auto"
    words: str | None = None
    transcript: Path | None = None  #: the words said in the video, plain text (run --transcript)
    audio_feature: str = "auto"  #: "auto" (mel+ow) or "hubert" (run --audio-feature)
    drive_audio: Path | None = None  #: extra render with this audio: DIR/<name>/drive.mp4
    pose_from: str | None = None  #: poses of that render (see module doc); None: ``train``
    entry: int = 0  #: position in the file (1-based), for messages
    input_error: str | None = None  #: a missing input found at load; fails only this speaker

    @property
    def stages(self) -> list[str]:
        from nerfhead.pipeline import stage_names

        return stage_names(self.preset)

    def run_args(self, out: Path, device: str) -> argparse.Namespace:
        """The arguments ``nerfhead run`` would parse for this speaker into ``out``."""
        from nerfhead.cli import build_parser

        argv = ["run", str(self.video), "--out", str(out), "--preset", self.preset,
                "--device", device]
        for flag, value in (("--max-seconds", self.max_seconds), ("--crop-size", self.crop_size),
                            ("--iters", self.iters), ("--eval-frames", self.eval_frames)):
            if value is not None:
                argv += [flag, str(value)]
        for flag, value in (("--words", self.words), ("--transcript", self.transcript)):
            if value is not None:
                argv += [flag, str(value)]
        if self.audio_feature != "auto":
            argv += ["--audio-feature", self.audio_feature]
        for o in self.overrides:
            argv += ["--set", o]
        return build_parser().parse_args(argv)

    def pose_arguments(self, batch_out: Path) -> list[str]:
        """``nerfhead render`` arguments choosing the driven render's poses."""
        src = self.pose_from or "train"
        if src in POSE_KINDS:
            return ["--poses", src]
        path = Path(src)
        if path.suffix in (".json", ".npy"):
            return ["--pose-file", str(path)]
        if path.is_dir():
            return ["--pose-from", str(path)]
        return ["--pose-from", str(batch_out / src / "data")]  # another speaker of the file

    def pose_speaker(self, names: set[str]) -> str | None:
        """The speaker of this file whose dataset gives the poses, if any."""
        if self.pose_from in names and not Path(self.pose_from).exists():
            return self.pose_from
        return None


FIELDS = {f.name for f in dataclasses.fields(SpeakerSpec)} - {"entry", "input_error"}
PATH_FIELDS = ("video", "drive_audio", "transcript")
POSITIVE_INT = ("crop_size", "iters", "eval_frames")


def _overrides(value: Any, where: str) -> list[str]:
    """A list of ``section.field=value`` strings, or a mapping {section.field: value}."""
    from nerfhead.config import ConfigError, parse_override

    if value is None:
        return []
    if isinstance(value, dict):
        items = [f"{k}={json.dumps(v)}" for k, v in value.items()]  # JSON is YAML
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise SpeakersFileError(f"{where}: expected a list of 'section.field=value' strings or "
                                f"a mapping {{section.field: value}}, got {value!r}")
    for text in items:
        try:
            parse_override(text)
        except ConfigError as e:
            raise SpeakersFileError(f"{where}: {e}") from None
    return items


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _check_configs(spec: SpeakerSpec, where: str) -> None:
    """Load every training stage's config and the preprocess config with the overrides, so a
    misspelt preset or field fails now, not hours later in the training task."""
    from nerfhead.config import ConfigError, parse_overrides
    from nerfhead.train.config import load_configs
    from preprocess.config import load_preprocess_config

    if not spec.stages:
        raise SpeakersFileError(f"{where}: preset {spec.preset!r} names no stage")
    over = list(spec.overrides) + ([f"train.iters={spec.iters}"] if spec.iters else [])
    for stage in spec.stages:
        try:
            load_configs(stage, over)
        except (ConfigError, FileNotFoundError) as e:
            raise SpeakersFileError(f"{where}: training stage {stage!r}: {e}") from None
    try:
        load_preprocess_config("preprocess", parse_overrides(spec.preprocess_overrides))
    except (ConfigError, FileNotFoundError) as e:
        raise SpeakersFileError(f"{where}: preprocess_overrides: {e}") from None


def _speaker(raw: Any, defaults: dict, base: Path, where: str, entry: int) -> SpeakerSpec:
    if not isinstance(raw, dict):
        raise SpeakersFileError(f"{where}: expected a mapping with at least name and video, "
                                f"got {raw!r}")
    data = {**defaults, **raw}
    if isinstance(data.get("name"), str) and data["name"].strip():
        where = f"{where} ({data['name']})"
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise SpeakersFileError(f"{where}: unknown field(s) {unknown}; valid fields: "
                                f"{sorted(FIELDS)}")
    for key in ("name", "video"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise SpeakersFileError(f"{where}: '{key}' is required (a non-empty string)")
    name = data["name"]
    if not NAME_RE.match(name):
        raise SpeakersFileError(f"{where}: name must be letters, digits, '.', '_' or '-' "
                                f"(it becomes the folder DIR/{name})")
    if name.lower() in RESERVED_NAMES:
        raise SpeakersFileError(f"{where}: name {name!r} is the batch's own file DIR/{name} "
                                "(the results table); choose another name")
    kw: dict = {"name": name, "entry": entry}
    for key in PATH_FIELDS:
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                raise SpeakersFileError(f"{where}: '{key}' must be a path string, got {data[key]!r}")
            kw[key] = _resolve(base, data[key])
    for key in POSITIVE_INT:
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise SpeakersFileError(f"{where}: '{key}' must be a positive integer, got {v!r}")
        kw[key] = v
    words = data.get("words")
    if words is not None:
        if not isinstance(words, str) or not words.strip():
            raise SpeakersFileError(f"{where}: 'words' must be a path or 'auto', got {words!r}")
        kw["words"] = words if words == "auto" else str(_resolve(base, words))
        if data.get("transcript") is not None and words != "auto":
            raise SpeakersFileError(f"{where}: 'words' (timings) and 'transcript' both give the "
                                    "words: keep one")
    feature = data.get("audio_feature", "auto")
    if feature not in ("auto", "hubert"):
        raise SpeakersFileError(f"{where}: 'audio_feature' must be 'auto' or 'hubert', got "
                                f"{feature!r}")
    kw["audio_feature"] = feature
    v = data.get("max_seconds")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or
                          not 0 < v < float("inf")):
        raise SpeakersFileError(f"{where}: 'max_seconds' must be a positive number, got {v!r}")
    kw["max_seconds"] = None if v is None else float(v)
    preset = data.get("preset", "tiny")
    if not isinstance(preset, str):
        raise SpeakersFileError(f"{where}: 'preset' must be a string such as 'head,lips', "
                                f"got {preset!r}")
    # a preset given as a YAML path is relative to the speakers file, like every other path
    kw["preset"] = ",".join(str(_resolve(base, s)) if s.endswith((".yaml", ".yml")) else s
                            for s in (p.strip() for p in preset.split(",")) if s)
    kw["overrides"] = _overrides(data.get("overrides"), f"{where}: overrides")
    kw["preprocess_overrides"] = _overrides(data.get("preprocess_overrides"),
                                            f"{where}: preprocess_overrides")
    pose = data.get("pose_from")
    if pose is not None:
        if not isinstance(pose, str) or not pose.strip():
            raise SpeakersFileError(f"{where}: 'pose_from' must be a string, got {pose!r}")
        if pose not in POSE_KINDS and (base / pose).exists():
            pose = str(_resolve(base, pose))
        kw["pose_from"] = pose
        if data.get("drive_audio") is None:
            raise SpeakersFileError(f"{where}: 'pose_from' chooses the poses of the driven "
                                    f"render; it needs 'drive_audio'")
    spec = SpeakerSpec(**kw)
    _check_configs(spec, where)
    return spec


def _input_error(spec: SpeakerSpec, names: set[str]) -> str | None:
    if not spec.video.is_file():
        return (f"video {spec.video} " + ("is a folder, not a video file" if spec.video.is_dir()
                                           else "not found"))
    if spec.drive_audio is not None and not spec.drive_audio.is_file():
        return f"drive_audio {spec.drive_audio} not found"
    if spec.words not in (None, "auto") and not Path(spec.words).is_file():
        return f"words {spec.words} not found"
    if spec.transcript is not None and not spec.transcript.is_file():
        return f"transcript {spec.transcript} not found"
    pose = spec.pose_from
    if pose and pose not in POSE_KINDS and not Path(pose).exists() and pose not in names:
        return (f"pose_from {pose!r} is none of {', '.join(POSE_KINDS)}, not an existing "
                f"dataset folder or transforms .json/.npy, and not a speaker of this file")
    if pose == spec.name:
        return "pose_from names the speaker itself; use 'train' for its own poses"
    return None


def load_speakers(path: str | Path) -> list[SpeakerSpec]:
    """Read and validate a speakers file (see the module doc). Raises SpeakersFileError."""
    from nerfhead.config import ConfigError, read_yaml_file

    path = Path(path)
    if not path.exists():
        raise SpeakersFileError(f"speakers file {path} not found")
    try:
        doc = read_yaml_file(path, "speakers file")
    except ConfigError as e:  # a folder, not UTF-8 text, bad YAML, a key given twice
        raise SpeakersFileError(str(e).replace(" is not valid YAML", ": not valid YAML")) from None
    if doc is None:
        raise SpeakersFileError(f"{path} is empty (or only comments): list the speakers under "
                                "'speakers:', each with at least name and video (docs/batch.md)")
    defaults: dict = {}
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"defaults", "speakers"})
        if unknown:
            raise SpeakersFileError(f"{path}: unknown top-level key(s) {unknown}; expected "
                                    f"'speakers' (a list) and optionally 'defaults'")
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise SpeakersFileError(f"{path}: 'defaults' must be a mapping of speaker fields")
        if "name" in defaults:
            raise SpeakersFileError(f"{path}: 'defaults' cannot set 'name'")
        doc = doc.get("speakers")
    if not isinstance(doc, list) or not doc:
        raise SpeakersFileError(f"{path}: expected a non-empty list of speakers (top level, or "
                                f"under 'speakers:'), each with at least name and video")
    base = path.resolve().parent
    specs, seen = [], {}
    for i, raw in enumerate(doc, 1):
        spec = _speaker(raw, defaults, base, f"{path}: speaker #{i}", i)
        key = spec.name.lower()  # DIR/Anna and DIR/anna are one folder on some file systems
        if key in seen:
            raise SpeakersFileError(f"{path}: speaker #{i} ({spec.name}): name already used by "
                                    f"speaker #{seen[key]}; every speaker needs its own folder")
        seen[key] = i
        specs.append(spec)
    names = {s.name for s in specs}
    for spec in specs:
        spec.input_error = _input_error(spec, names)
    return specs
