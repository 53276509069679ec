"""``nerfhead run VIDEO --preset P --out DIR``: preprocess -> train -> render -> evaluate.

Layout written::

    DIR/data/        dataset folder (nerfhead preprocess)
    DIR/run/         training run (one stage per preset; ``--preset head,lips,torso`` chains
                     stages, each started from the previous: DIR/run, DIR/run_lips, ...)
    DIR/val_audio.wav  the audio of the validation frames (never trained on)
    DIR/render.mp4   the last stage rendered with that audio and the validation poses
    DIR/eval/        metrics.json, report.md, per-frame plot, GT|render|error images
    DIR/eval_other_voice/  the same frames driven by their words said by another voice
                     (flite's slt; where the clip has word timings and flite is installed)

Every step resumes: preprocess skips finished steps, training continues from its newest
checkpoint, and render/evaluate are skipped when their outputs are newer than the last
checkpoint (``--force`` redoes them). Each step runs through the same code as its own
subcommand.

An output folder belongs to one video and one set of preprocessing options, recorded in
``DIR/run.json``: a rerun with another video or other options is refused before anything is
written (the dataset and the runs trained on it would be overwritten); ``--force-new`` moves
the old folder aside (``DIR.replaced-<time>``) and starts over. Errors and what to do:
docs/troubleshooting.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("nerfhead.run")
ON_INTERRUPT = ("interrupted; finished steps (preprocessing steps, training checkpoints) are kept "
                "and rerunning the same command resumes from them; a render or evaluation in "
                "progress starts again")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="talking-head video with audio")
    p.add_argument("--preset", default="tiny",
                   help="training preset, or comma-separated stages (e.g. head,lips,torso) [tiny]")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-seconds", type=float, default=None, help="use only the first S seconds")
    p.add_argument("--crop-size", type=int, default=None, help="preprocess crop size (default 512)")
    p.add_argument("--rotate", type=int, default=None, choices=[0, 90, 180, 270],
                   help="turn the picture clockwise by this many degrees (preprocess --rotate)")
    p.add_argument("--allow-silence", action="store_true",
                   help="preprocess even when the audio has too little speech (preprocess "
                        "--allow-silence)")
    p.add_argument("--words", default=None, metavar="FILE|auto|none",
                   help="the video's word timings (whisper/whisperX JSON, 'start end word' text in "
                        "seconds, GRID .align; 'auto': recognised from its audio, US English): "
                        "preprocessing adds its words said by synthetic voices "
                        "(audio.respeak_words; flite/espeak-ng installed) and training refits the "
                        "audio encoder to read them as the speaker's voice "
                        "(train.voice_encoder_steps): the mouth follows other speakers better "
                        "(docs/benchmarks.md). Default: auto where PocketSphinx, flite and "
                        "espeak-ng are installed (else a warning says what is missing); "
                        "'none': without")
    p.add_argument("--transcript", default=None, metavar="TEXT",
                   help="the words said in the clip (plain text, of the clip as cut by "
                        "--max-seconds): aligned to its audio for the synthetic voices, as "
                        "--words does with timings")
    p.add_argument("--audio-feature", default="auto", choices=["auto", "hubert"],
                   help="auto: the log-mel spectrum and speech embedding (mel+ow); hubert: "
                        "HuBERT-large's features, as ER-NeRF (needs transformers and the "
                        "model's weights: a hubert-large-ls960-ft/ folder under --weights / "
                        "NERFHEAD_WEIGHTS, or a 1.26 GB download; docs/lipsync.md). The audio "
                        "encoder is then not refitted for other voices")
    p.add_argument("--iters", type=int, default=None, help="override train.iters for every stage")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="training config override (repeatable)")
    p.add_argument("--eval-frames", type=int, default=None, help="evaluate at most N val frames")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--force", action="store_true", help="redo render and evaluate")
    p.add_argument("--force-new", action="store_true",
                   help="start over: move an existing --out folder aside (OUT.replaced-<time>)")


def _subcommand(argv: list[str]) -> None:
    """Run ``nerfhead <argv>`` in this process; a non-zero exit stops the pipeline."""
    from nerfhead.cli import build_parser

    args = build_parser().parse_args(argv)
    if getattr(args, "_unavailable", None):
        raise SystemExit(args._unavailable)
    log.info("nerfhead %s", " ".join(argv))
    rc = int(args._run(args) or 0)
    if rc != 0:
        raise SystemExit(f"nerfhead run: step `nerfhead {argv[0]}` failed (exit {rc}); fix it "
                         f"and rerun the same command to resume")


def write_val_audio(data_dir: Path, dest: Path) -> Path:
    """The validation frames' stretch of aud.wav (frames are 640 samples at 16 kHz/25 fps)."""
    from nerfhead.audio.features import load_audio
    from nerfhead.render.poses import dataset_poses
    from nerfhead.render.video import write_wav

    from nerfhead.fileio import atomic_path

    _, ids = dataset_poses(data_dir, "val")
    samples = load_audio(data_dir / "aud.wav")
    seg = samples[int(ids[0]) * 640:(int(ids[-1]) + 1) * 640]
    with atomic_path(dest) as tmp:
        write_wav(tmp, seg, 16000)
    return dest


def _newer_than(path: Path, run_dir: Path) -> bool:
    """Whether ``path`` exists and was written after ``run_dir``'s newest checkpoint."""
    from nerfhead.train.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    return path.is_file() and (not ckpts or path.stat().st_mtime_ns >= ckpts[-1].stat().st_mtime_ns)


def check_same_job(out: Path, video: Path, pre_options: list[str]) -> None:
    """Refuse (SystemExit) a rerun into ``out`` with another video or preprocessing options;
    record them on the first run (``out/run.json``)."""
    from nerfhead.fileio import atomic_path
    from preprocess.driver import source_fingerprint

    record = {"video": str(video.resolve()), "video_fingerprint": source_fingerprint(video),
              "preprocess_options": pre_options}
    path = out / "run.json"
    if path.is_file():
        had = json.loads(path.read_text())
        if had.get("video_fingerprint") != record["video_fingerprint"]:
            raise SystemExit(f"nerfhead run: {out} holds the work of another video "
                             f"({had.get('video')}); {video} would overwrite its dataset and "
                             "runs. Use another --out folder, or --force-new to move the old "
                             "one aside")
        if had.get("preprocess_options") != pre_options:
            raise SystemExit(f"nerfhead run: {out} was made with preprocessing options "
                             f"{had.get('preprocess_options') or 'none'}, not {pre_options or 'none'}; "
                             "rerunning with other options would rebuild the dataset under the "
                             "runs trained on it. Rerun with the same options, use another "
                             "--out folder, or --force-new to move the old one aside")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


# ---------------------------------------------------------------------------- library API
# ``run`` below and ``nerfhead batch`` (nerfhead/batch/) call these one stage at a time.

def stage_names(preset: str) -> list[str]:
    """``"head,lips"`` -> ``["head", "lips"]``: the training stages of a preset string."""
    return [s.strip() for s in preset.split(",") if s.strip()]


def run_dir_of(out: Path, k: int, stage: str) -> Path:
    """Folder of the k-th training stage: OUT/run, then OUT/run_<stage>."""
    return Path(out) / ("run" if k == 0 else f"run_{Path(stage).stem}")


AUTO_WORDS = "audio.respeak_words=auto"


def synthetic_voices_missing(voices: list[str] | None = None) -> str | None:
    """Why the synthetic voices of recognised words (``voices``, default preprocessing's
    ``audio.respeak_voices``) cannot be made here, or None."""
    from nerfhead.audio.respeak import AudioError, parse_voice, voice_unavailable
    from nerfhead.audio.words import unavailable_reason
    from preprocess.audio import AudioConfig

    reasons = [unavailable_reason()]
    try:
        reasons += [voice_unavailable(parse_voice(v))
                    for v in (AudioConfig().respeak_voices if voices is None else voices)]
    except (AudioError, OSError) as e:  # flite -lv failing
        reasons.append(str(e))
    reasons = list(dict.fromkeys(r for r in reasons if r))
    return "; ".join(reasons) or None


def resolve_words(args) -> None:
    """``--words`` when it was not given: ``auto`` (the clip's recognised words said by
    synthetic voices, optional in preprocessing: what cannot be made is warned about) where
    the recogniser and synthesisers are installed, else none with a warning; a rerun into an
    existing OUT keeps what its run.json recorded. ``none`` means none. Idempotent."""
    if getattr(args, "_words_resolved", False):
        return
    args._words_resolved = True
    words = getattr(args, "words", None)
    if words == "none":
        args.words = None
        return
    if words or getattr(args, "transcript", None):
        return
    record = Path(args.out) / "run.json"
    if record.is_file():  # the work was started with or without them: keep it so
        had = json.loads(record.read_text()).get("preprocess_options") or []
        args.words = (None if AUTO_WORDS not in had else
                      "default" if "audio.respeak_optional=true" in had else "auto")
        return
    if _hubert(args):  # no voices to train on: the words only give the score under EVAL_VOICE
        reason = synthetic_voices_missing([EVAL_VOICE])
        if reason:
            log.warning("nerfhead run: no lip-sync score under another voice (%s). --words none "
                        "silences this", reason)
            args.words = None
            return
        log.info("nerfhead run: the clip's words will be recognised, to score lip sync under "
                 "another voice (--transcript FILE gives the right words; --words none: without)")
        args.words = "default"
        return
    reason = synthetic_voices_missing()
    if reason:
        log.warning("nerfhead run: training without synthetic voices of the clip's words (%s); "
                    "with them the mouth follows other speakers better (docs/benchmarks.md, "
                    "\"Word timings from the clip's audio\"). --words none silences this", reason)
        args.words = None
        return
    log.info("nerfhead run: the clip's words will be recognised and said by synthetic voices "
             "for training (--transcript FILE gives the right words; --words none: without)")
    args.words = "default"


def preprocess_options(args) -> list[str]:
    """The options that shape the dataset (recorded in OUT/run.json: a rerun must match)."""
    resolve_words(args)
    options = []
    if getattr(args, "max_seconds", None):
        options += ["--max-seconds", str(args.max_seconds)]
    if getattr(args, "crop_size", None):
        options += ["--crop-size", str(args.crop_size)]
    if getattr(args, "rotate", None):
        options += ["--rotate", str(args.rotate)]
    words = getattr(args, "words", None)
    hubert = _hubert(args)
    if words == "default":  # recognised, and optional: run goes on where they cannot be made
        options += ["--set", AUTO_WORDS, "--set", "audio.respeak_optional=true"]
    elif words == "auto" or (words and not hubert):
        options += ["--set", f"audio.respeak_words={words if words == 'auto' else Path(words).resolve()}"]
    # (a HuBERT run reads a --words file itself, for the score under EVAL_VOICE: _clip_words)
    if getattr(args, "transcript", None):
        options += ["--set", f"audio.transcript={Path(args.transcript).resolve()}"]
    if hubert:
        options += ["--set", HUBERT_KINDS, *HUBERT_NO_VOICES]
    return options


#: what ``--audio-feature hubert`` adds to preprocessing: HuBERT's features beside the others
HUBERT_KINDS = "audio.kinds=[mel,ow,hubert]"
#: ... and no other voices: they are written for mel and ow only (HuBERT was trained on many
#: voices, and its run's encoder is not refitted), so making them would be minutes for nothing;
#: the words alone are still recognised or aligned (words.txt) for the score under EVAL_VOICE
HUBERT_NO_VOICES = ("--set", "audio.respeak_voices=[]", "--set", "audio.voice_shifts=[]")


def _hubert(args) -> bool:
    return getattr(args, "audio_feature", "auto") == "hubert"


def preprocess(args, extra: list[str] | tuple = ()) -> Path:
    """``nerfhead preprocess`` into OUT/data (finished steps are skipped), after checking that
    OUT holds no other video's work; ``extra``: further preprocess arguments (``--set``...).
    Returns the dataset folder."""
    out, video = Path(args.out), Path(args.video)
    data = out / "data"
    options = preprocess_options(args)
    check_same_job(out, video, options)
    pre = ["preprocess", str(video), "--out", str(data), *options]
    if getattr(args, "allow_silence", False):
        pre.append("--allow-silence")
    _subcommand(pre + list(extra))
    return data


def _has_synthetic_voices(data: Path, args) -> bool:
    """Whether preprocessing wrote the synthetic voices: always, unless they were the
    optional default (``--words`` not given) and could not be made (warned about then)."""
    if getattr(args, "words", None) != "default":
        return True
    try:
        stats = json.loads((data / "manifest.json").read_text())["steps"]["audio"]["stats"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(stats.get("respoken_voices"))


#: train.voice_encoder_steps of the head and lips stages when preprocessing made synthetic voices
VOICE_ENCODER_STEPS = 3000
#: the voice settings a stage keeps once begun (a resume with others is refused)
VOICE_SETTINGS = ("voice_augment", "voice_encoder_steps")


def _voice_settings(args, run_dir: Path, data: Path) -> list[str]:
    """``--set`` options of how a head or lips stage learns other voices. With the synthetic
    voices --words made, the audio encoder is refitted to read them as the speaker's voice
    at the stage's end (train.voice_encoder_steps; docs/benchmarks.md, "One face field, an
    audio encoder refitted for other voices"). A stage begun earlier keeps what it was begun
    with (work from before this default trained with train.voice_augment 0.5), and what the
    user sets with --set wins."""
    user = {o.split("=", 1)[0] for o in args.overrides}
    if _hubert(args):  # the other voices are written for mel and ow only: nothing to refit
        return []
    had = _saved_train_settings(run_dir)
    if had is not None:
        return [f for name in VOICE_SETTINGS if f"train.{name}" not in user
                for f in ("--set", f"train.{name}={had.get(name, 0)}")]
    if ((getattr(args, "words", None) or getattr(args, "transcript", None))
            and "train.voice_encoder_steps" not in user and _has_synthetic_voices(data, args)):
        return ["--set", f"train.voice_encoder_steps={VOICE_ENCODER_STEPS}"]
    return []


def train(args, k: int, stage: str, init: Path | None) -> Path:
    """``nerfhead train`` of the k-th stage (resumes from its newest checkpoint), started
    from ``init`` (the previous stage's run) when given. Returns the run folder."""
    out = Path(args.out)
    run_dir = run_dir_of(out, k, stage)
    cmd = ["train", str(out / "data"), "--config", stage, "--out", str(run_dir), "--device",
           args.device, "--no-progress"]
    if args.iters:
        cmd += ["--iters", str(args.iters)]
    if init is not None:
        cmd += ["--init", str(init)]
    resolve_words(args)
    if stage != "torso":
        cmd += _voice_settings(args, run_dir, out / "data")
    if _hubert(args) and not any(o.startswith("data.audio=") for o in args.overrides):
        cmd += ["--set", "data.audio=hubert"]
    for o in args.overrides:
        cmd += ["--set", o]
    _subcommand(cmd)
    return run_dir


def _saved_train_settings(run_dir: Path) -> dict | None:
    """The ``train`` section of a stage's RUN/config.yaml (written when it began); None before
    it exists, {} when it cannot be read (the stage's own train command then says why)."""
    import yaml

    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return None
    try:
        train = (yaml.safe_load(saved.read_text()) or {}).get("train")
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return train if isinstance(train, dict) else {}


def trained_torso(args, run_dir: Path) -> bool:
    """Whether ``run_dir``, the last stage, is a torso stage (its config.yaml; before it is
    written, the preset's last stage name)."""
    stage = (_saved_train_settings(run_dir) or {}).get("stage")
    return stage == "torso" if stage else stage_names(args.preset)[-1] == "torso"


def render(args, run_dir: Path) -> bool:
    """OUT/render.mp4: the validation audio with the validation poses; False when skipped
    (the video is newer than the run's newest checkpoint and ``args.force`` is not set).
    Without a torso stage (``tiny``, ``head``, ``head,lips``) the head goes over the clip's
    own torso images of those frames (``--gt-torso``), not floating over the plate."""
    out = Path(args.out)
    audio = write_val_audio(out / "data", out / "val_audio.wav")
    video = out / "render.mp4"
    if not args.force and _newer_than(video, run_dir):
        return False
    cmd = ["render", str(run_dir), "--audio", str(audio), "--poses", "val", "--out",
           str(video), "--device", args.device]
    if not trained_torso(args, run_dir):
        cmd.append("--gt-torso")
    _subcommand(cmd)
    return True


def evaluate(args, run_dir: Path) -> bool:
    """OUT/eval/metrics.json and report.md; False when skipped (metrics.json is newer than the
    run's newest checkpoint and ``args.force`` is not set)."""
    out = Path(args.out)
    metrics = out / "eval" / "metrics.json"
    if not args.force and _newer_than(metrics, run_dir):
        return False
    cmd = ["evaluate", str(run_dir), "--out", str(out / "eval"), "--device", args.device]
    if args.eval_frames:
        cmd += ["--max-frames", str(args.eval_frames)]
    _subcommand(cmd)
    return True


#: the voice ``run`` also scores lip sync under: none of the training voices (preprocessing's
#: default ``audio.respeak_voices``), a statistical voice built from a real speaker's recordings
EVAL_VOICE = "flite:slt"


def _clip_words(args, data: Path, dest: Path) -> tuple[Path | None, str]:
    """The clip's word timings on aud.wav's clock, or None and why not: the dataset's
    words.txt (recognised or aligned), or the --words file (timed on the source video's
    clock) cut to the clip and written to ``dest``."""
    if (data / "words.txt").is_file():
        return data / "words.txt", ""
    words = getattr(args, "words", None)
    if not words or words in ("auto", "default") or not Path(words).is_file():
        return None, "the clip has no word timings (no synthetic voices were made)"
    from nerfhead.audio.features import SAMPLE_RATE, AudioError, load_audio
    from nerfhead.audio.respeak import words_in_clip
    from nerfhead.audio.words import write_word_timings

    try:
        start = float(json.loads((data / "manifest.json").read_text())["video"].get("start_seconds") or 0.0)
        seconds = len(load_audio(data / "aud.wav")) / SAMPLE_RATE
        clip = words_in_clip(words, start, seconds)
    except (OSError, ValueError, KeyError, AudioError) as e:
        return None, f"the words of {words} could not be put on the clip's clock ({e})"
    if not clip:
        return None, f"none of the words of {words} lies within the clip"
    write_word_timings(dest, clip, header=f"the words of {words} within the clip, on aud.wav's clock")
    return dest, ""


def evaluate_other_voice(args, run_dir: Path) -> bool:
    """OUT/eval_other_voice: the held-out frames driven by their words said by ``EVAL_VOICE``
    (``nerfhead respeak``), scored against the real mouth (``evaluate --speech``): lip sync for
    a voice the model never heard, beside eval/'s for the speaker's own. False when skipped:
    up to date, or no word timings or no such voice here (said in the log)."""
    from nerfhead.audio.respeak import parse_voice, voice_unavailable

    out = Path(args.out)
    data = out / "data"
    dest = out / "eval_other_voice"
    if not args.force and _newer_than(dest / "metrics.json", run_dir):
        return False
    why = voice_unavailable(parse_voice(EVAL_VOICE))
    voice_dir = dest / "voice"
    if not why:
        voice_dir.mkdir(parents=True, exist_ok=True)
        words, why = _clip_words(args, data, voice_dir / "clip_words.txt")
    if why:
        log.info("nerfhead run: no lip-sync score under another voice: %s", why)
        return False
    wav = voice_dir / (EVAL_VOICE.replace(":", "_") + ".wav")
    cmd = ["evaluate", str(run_dir), "--speech", str(wav), "--out", str(dest), "--device", args.device]
    if args.eval_frames:
        cmd += ["--max-frames", str(args.eval_frames)]
    try:
        _subcommand(["respeak", str(words), "--like", str(data), "--voice", EVAL_VOICE, "--out",
                     str(voice_dir)])
        _subcommand(cmd)
    except SystemExit as e:  # the model and its own-voice evaluation are done: say, go on
        log.warning("nerfhead run: the lip-sync score under %s failed (%s); render.mp4 and eval/ "
                    "are complete. Rerunning the same command tries it again", EVAL_VOICE, e)
        return False
    return True


def run(args) -> int:
    from nerfhead.fileio import OutputLocationError, check_output_dir, move_aside

    out = Path(args.out)
    video = Path(args.video)
    if not video.is_file():
        what = "is a folder, not a video file" if video.is_dir() else "not found"
        print(f"nerfhead run: video {video} {what}", file=sys.stderr)
        return 2
    if args.force_new and out.is_dir() and any(out.iterdir()):
        log.warning("--force-new: moved the previous work %s to %s (delete it when no longer "
                    "needed)", out, move_aside(out))
    try:
        check_output_dir(out, "nerfhead run --out")
    except OutputLocationError as e:
        print(f"nerfhead run: {e}", file=sys.stderr)
        return 2
    preprocess(args)
    run_dir, prev = None, None
    for k, stage in enumerate(stage_names(args.preset)):
        run_dir = prev = train(args, k, stage, prev)
    render(args, run_dir)
    evaluate(args, run_dir)
    evaluate_other_voice(args, run_dir)
    other = out / "eval_other_voice" / "report.md"
    print(f"done: {out / 'render.mp4'}, {out / 'eval' / 'report.md'}"
          + (f", {other} (lip sync under {EVAL_VOICE})" if other.is_file() else ""))
    return 0
