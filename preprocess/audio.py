"""Steps ``speech`` (is there speech in ``aud.wav``?) and ``audio`` (per-frame audio features
from ``aud.wav``, ``nerfhead.audio.features``).

``speech`` runs right after decode, before the long steps: a silent track would give constant
audio features, and a track that ends before the video is padded with silence; either way the
model would learn a mouth that moves without sound. It finds the speech with
``nerfhead.audio.vad`` and refuses (unless ``speech.allow_silence``, ``--allow-silence``) when
speech covers less than ``min_speech_fraction`` of the clip or the track ends more than
``max_padding_seconds`` early, naming the silent time ranges; shorter gaps of at least
``warn_silence_seconds`` are warned about. Its findings go into the manifest (``speech``).

``audio`` writes ``aud_mel.npy`` [N, 16, 80] always and ``aud_ow.npy`` [N, 16, 96] when the
speech embedding model (onnxruntime + openwakeword's shipped ONNX files) is installed; which
kinds were written is recorded in the manifest so training can pick one that exists. Asked
for (``kinds`` with ``hubert``), it also writes HuBERT's features, ``aud_hu.npy`` [N, 2, 1024]
(ER-NeRF's layout; ``nerfhead.audio.hubert``: transformers and the model's weights, or the
step refuses saying which is missing), without other voices (the refit and
``train.voice_augment`` read the ``mel`` and ``ow`` ones; HuBERT was trained on many
speakers). Beside
each it writes the same features of the clip's speech in other voices (``voice_shifts``,
semitones; ``nerfhead.audio.voice``), ``aud_<kind>_voices.npy`` [V, N, 16, C] float16, which
training mixes in (``train.voice_augment``) so that the mouth follows other speakers too.
Given the clip's word timings (``respeak_words``: whisperX JSON, text, GRID .align, on the
source video's clock; or made from aud.wav, ``nerfhead.audio.words``: a ``transcript``
aligned, or ``respeak_words=auto`` recognised, either written to ``words.txt``), the same
file also holds the clip's words said by speech synthesisers
(``respeak_voices``; ``preprocess/synthetic_voices.py``), each word in the span the speaker took: other
speakers altogether, not shifts of this one, which is what helps with other people's speech
(docs/benchmarks.md, "Lip sync for other speakers"). Order: the shifts, then those voices;
``previews/respeak.png`` shows where their words fall.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preprocess import synthetic_voices
from preprocess.steps import Step, StepContext, StepError, atomic_path

STEP = "audio"
SPEECH_STEP = "speech"
FILES = {"mel": "aud_mel.npy", "ow": "aud_ow.npy", "hubert": "aud_hu.npy"}
VOICE_FILES = {"mel": "aud_mel_voices.npy", "ow": "aud_ow_voices.npy"}
CHANNELS = {"mel": 80, "ow": 96, "hubert": 1024}


@dataclass
class AudioConfig:
    """Audio features written for training."""

    #: feature kinds to write: 'mel' always works; 'ow' needs onnxruntime + openwakeword
    #: (skipped with a warning without them); 'hubert' needs transformers and HuBERT-large's
    #: weights (refused without them: it is only there when asked for)
    kinds: list[str] = field(default_factory=lambda: ["mel", "ow"])
    require_all: bool = False  #: fail instead of warning when a requested kind is not installed
    window: int = 16  #: feature frames per video frame
    #: the clip's speech also in these other voices (pitch and formants shifted, semitones;
    #: nerfhead.audio.voice), for train.voice_augment; [] writes none
    voice_shifts: list[float] = field(default_factory=lambda: [-4.0, -2.0, 2.0, 4.0])
    #: the clip's word timings (whisper/whisperX JSON, 'start end word' text in seconds, GRID
    #: .align) on the source video's clock; with them the clip's words said by
    #: ``respeak_voices`` join the voices for train.voice_augment. "auto": the words
    #: recognised in aud.wav (PocketSphinx, US English; often wrong words, right spans),
    #: written to words.txt. None: no such voices
    respeak_words: str | None = None
    #: plain text of the words said in the clip (as cut by --start-seconds/--max-seconds),
    #: aligned to aud.wav (PocketSphinx) to give the word timings (words.txt) when
    #: respeak_words is unset or "auto": right words, unlike recognition
    transcript: str | None = None
    #: speech-synthesiser voices (ENGINE:VOICE; flite / espeak-ng programs must be installed)
    respeak_voices: list[str] = field(default_factory=lambda: [
        "flite:kal16", "espeak-ng:en+m3", "espeak-ng:en-gb-x-rp+f2"])
    #: when the words or those voices cannot be made here (no recogniser or synthesiser
    #: installed, no words recognised), warn and write the other voices without them instead
    #: of stopping (what ``nerfhead run`` asks for when it adds them by default)
    respeak_optional: bool = False


@dataclass
class SpeechConfig:
    """When the source's sound is too silent to train a talking head on."""

    allow_silence: bool = False  #: proceed (with a warning) instead of refusing (--allow-silence)
    min_speech_fraction: float = 0.1  #: refuse when speech covers less of the clip than this
    max_padding_seconds: float = 1.0  #: refuse when the track ends more than this before the video
    warn_silence_seconds: float = 2.0  #: warn about silent stretches at least this long
    detector: str = "auto"  #: "auto" (Silero VAD when installed, else energy), "silero-vad", "energy"


def speech_run(ctx: StepContext) -> dict:
    from nerfhead.audio.features import AudioError, load_audio
    from nerfhead.audio.level import CLIPPED_FRACTION, clipped_fraction
    from nerfhead.audio.vad import find_speech, format_ranges

    cfg: SpeechConfig = ctx.cfg.speech
    wav = ctx.path("aud.wav")
    try:
        samples = load_audio(wav)
        report = find_speech(samples, detector=cfg.detector)
    except (AudioError, ValueError) as e:
        raise StepError(SPEECH_STEP, str(e), wav) from e
    source = ctx.manifest.get("video", {}).get("source", ctx.video)
    clipped = clipped_fraction(samples)
    if clipped > CLIPPED_FRACTION and report.fraction < cfg.min_speech_fraction:
        # distorted past recognition: the detector hears no speech, and that is not the cause
        raise StepError(SPEECH_STEP, f"{100 * clipped:.0f}% of the clip's audio samples are at "
                                     f"full scale (source {source}): its sound is clipped so "
                                     "hard (recorded or amplified far too loud) that no speech "
                                     f"is found in it ({report.detector}). Use a recording of the "
                                     "speaker made at a lower level (turning this one down does "
                                     "not undo the clipping)", wav)
    if clipped > CLIPPED_FRACTION:  # the model would learn the mouth from distorted speech
        ctx.log.warning("%s: %.1f%% of the clip's audio samples are at full scale: its sound is "
                        "clipped (recorded or amplified too loud). The model learns the mouth "
                        "from distorted speech and will hear clean speech differently; use a "
                        "recording of the speaker made at a lower level if there is one "
                        "(turning this one down does not undo the clipping)", source,
                        100 * clipped)
    problems = []
    if report.padded_from is not None and report.padded_from < 0.05:
        problems.append(f"the audio track is digital silence (all {report.seconds:.1f} s are zero)")
    elif report.fraction < cfg.min_speech_fraction:
        problems.append(
            f"no speech found in the {report.seconds:.1f} s of audio" if report.speech_seconds == 0
            else f"speech in only {100 * report.fraction:.0f}% of the clip "
                 f"({report.speech_seconds:.1f} s of {report.seconds:.1f} s; silent "
                 f"{format_ranges(report.silent)})")
    padding = report.seconds - report.padded_from if report.padded_from is not None else 0.0
    if padding > cfg.max_padding_seconds and report.padded_from >= 0.05:
        problems.append(f"the audio track ends at {report.padded_from:.1f} s, {padding:.1f} s "
                        f"before the video ({report.padded_from:.1f}-{report.seconds:.1f} s is "
                        "padded with silence)")
    if problems and report.speech_seconds == 0:
        from nerfhead.audio.channels import cancelling_channels

        # a track that plays loud but mixes to silence: say why, not just "silence"
        if cause := cancelling_channels(ctx.video):
            problems = [f"{problems[0]}: {cause}", *problems[1:]]
    if problems:
        text = (f"{'; '.join(problems)} (source {source}, detector {report.detector}): the model "
                "would learn a mouth that moves without sound")
        if not cfg.allow_silence:
            raise StepError(SPEECH_STEP, f"{text}. Use a clip where the speaker talks throughout "
                                         "(--start-seconds/--max-seconds), or pass --allow-silence "
                                         "to preprocess it anyway", wav)
        ctx.log.warning("%s: %s (allowed by --allow-silence)", wav, text)
    long_gaps = report.silent_longer_than(cfg.warn_silence_seconds)
    if long_gaps and not problems:
        ctx.log.warning("%s: no speech in %s (%s; source %s)", wav, format_ranges(long_gaps),
                        report.detector, source)
    if 0 < padding <= cfg.max_padding_seconds:
        ctx.log.warning("%s: the audio track ends %.2f s before the video (padded with silence)",
                        source, padding)
    record = {"detector": report.detector, "seconds": report.seconds,
              "speech_seconds": report.speech_seconds, "fraction": round(report.fraction, 3),
              "silent_ranges": report.silent, "padded_from": report.padded_from,
              "allowed_silence": bool(problems), "clipped_fraction": round(clipped, 5)}
    return {**record, "manifest": {"speech": record}}


def speech_check(ctx: StepContext) -> None:
    if not ctx.path("aud.wav").is_file():
        raise StepError(SPEECH_STEP, "missing", ctx.path("aud.wav"))


def speech_settings(cfg) -> dict:
    from nerfhead.audio.vad import _silero_path
    from nerfhead.config import to_dict

    return {**to_dict(cfg.speech), "silero_available": _silero_path() is not None}


def _available(kind: str) -> bool:
    from nerfhead.audio.features import ow_available
    from nerfhead.audio.hubert import transformers_available

    return (kind == "mel" or (kind == "ow" and ow_available())
            or (kind == "hubert" and transformers_available()))


def _kinds(cfg: AudioConfig) -> list[str]:
    bad = [k for k in cfg.kinds if k not in FILES]
    if bad:
        raise StepError(STEP, f"unknown audio feature kind(s) {bad}; known: {sorted(FILES)}")
    return [k for k in cfg.kinds if _available(k)]


def run(ctx: StepContext) -> dict:
    from nerfhead.audio.features import AudioError, extract, load_audio

    cfg: AudioConfig = ctx.cfg.audio
    n = ctx.num_frames()
    fps = float(ctx.manifest["video"].get("fps", 25.0))
    missing = [k for k in cfg.kinds if k in FILES and not _available(k)]
    if "hubert" in cfg.kinds:  # before the minutes of other voices: transformers or the
        # weights may be missing (asked for, so refused, not skipped as 'ow' is)
        from nerfhead.audio.hubert import load_hubert
        from nerfhead.weights import WeightsUnavailable

        try:
            load_hubert()
        except WeightsUnavailable as e:
            raise StepError(STEP, f"{e} (or leave hubert out of audio.kinds)",
                            ctx.path(FILES["hubert"])) from e
    if missing and cfg.require_all:
        raise StepError(STEP, f"audio feature(s) {missing} not installed "
                              "(pip install onnxruntime openwakeword==0.4.0)")
    for k in missing:
        ctx.log.warning("audio feature %r skipped: onnxruntime/openwakeword not installed", k)
    try:
        samples = load_audio(ctx.path("aud.wav"))
    except AudioError as e:
        raise StepError(STEP, str(e), ctx.path("aud.wav")) from e
    shifts = _voice_shifts(cfg, ctx.log)
    voices = [_shifted(ctx, samples, s) for s in shifts]
    respoken = synthetic_voices.respoken(ctx, cfg, samples)
    voices += [r.samples for r in respoken]
    if not voices:  # no voices of an older aud.wav may stay beside the new features
        for f in VOICE_FILES.values():
            ctx.path(f).unlink(missing_ok=True)
    written = {}
    for kind in _kinds(cfg):
        if kind == "hubert":
            written[kind] = _write_hubert(ctx, samples, n, fps)
            continue
        feat = extract(samples, kind=kind, num_frames=n, fps=fps, window=cfg.window)
        with atomic_path(ctx.path(FILES[kind])) as tmp:
            np.save(tmp, feat)
        written[kind] = {"file": FILES[kind], "shape": list(feat.shape),
                         "mean": float(feat.mean()), "std": float(feat.std())}
        if voices:
            other = np.stack([extract(v, kind=kind, num_frames=n, fps=fps, window=cfg.window)
                              for v in voices]).astype(np.float16)
            with atomic_path(ctx.path(VOICE_FILES[kind])) as tmp:
                np.save(tmp, other)
            written[kind]["voices"] = {"file": VOICE_FILES[kind], "shape": list(other.shape)}
    return {"kinds": sorted(written), "features": written, "unavailable": missing,
            "voice_shifts": shifts, "respoken_voices": [r.voice for r in respoken],
            "respeak_words_from": None if not respoken else "transcript" if cfg.transcript
            else "recognised" if cfg.respeak_words == "auto" else "file",
            "respoken_unfitted_words": {r.voice: len(r.unfitted) for r in respoken}}


def _write_hubert(ctx: StepContext, samples: np.ndarray, n: int, fps: float) -> dict:
    """aud_hu.npy [n, 2, 1024]: HuBERT's 50-Hz frames, two per video frame."""
    from nerfhead.audio.hubert import HUBERT_MODEL, hubert_stream, per_video_frame
    from nerfhead.weights import WeightsUnavailable

    try:
        feat = per_video_frame(hubert_stream(samples), n, fps)
    except (WeightsUnavailable, ValueError) as e:
        raise StepError(STEP, f"{e} (or leave hubert out of audio.kinds)",
                        ctx.path(FILES["hubert"])) from e
    with atomic_path(ctx.path(FILES["hubert"])) as tmp:
        np.save(tmp, feat)
    return {"file": FILES["hubert"], "shape": list(feat.shape), "model": HUBERT_MODEL,
            "mean": float(feat.mean()), "std": float(feat.std()), "voices": None}


def _voice_shifts(cfg: AudioConfig, log=None) -> list[float]:
    """The shifts to write: none where the bundled ffmpeg cannot shift voices (warned about:
    only train.voice_augment needs them, so preprocessing goes on without)."""
    from nerfhead.audio.voice import rubberband_available

    shifts = [float(s) for s in cfg.voice_shifts]
    bad = [s for s in shifts if s == 0 or not -12 <= s <= 12]
    if bad:
        raise StepError(STEP, f"audio.voice_shifts {bad}: each shift must be a non-zero number "
                              "of semitones within +-12 (the clip's own voice is always used)")
    if shifts and not rubberband_available():
        if log is not None:
            log.warning("audio: the clip's speech in other voices is not written: the ffmpeg "
                        "that imageio-ffmpeg bundles has no rubberband filter, so "
                        "train.voice_augment will train on the clip's own voice only (an "
                        "imageio-ffmpeg whose ffmpeg has rubberband adds them on the next run)")
        return []
    return shifts


def _shifted(ctx: StepContext, samples: np.ndarray, semitones: float) -> np.ndarray:
    from nerfhead.audio.features import AudioError
    from nerfhead.audio.voice import shift_voice

    try:
        return shift_voice(samples, semitones)
    except AudioError as e:
        raise StepError(STEP, str(e), ctx.path("aud.wav")) from e


def check(ctx: StepContext) -> None:
    n = ctx.num_frames()
    cfg: AudioConfig = ctx.cfg.audio
    for kind in _kinds(cfg):
        p = ctx.path(FILES[kind])
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise StepError(STEP, f"unreadable: {e}", p) from e
        want = (n, 2 if kind == "hubert" else cfg.window, CHANNELS[kind])
        if kind == "hubert" and arr.ndim == 3:  # channels: the model's hidden size (1024 for
            want = (*want[:2], arr.shape[2])     # HuBERT-large; smaller models in the tests)
        if arr.shape != want or arr.dtype != np.float32:
            raise StepError(STEP, f"expected float32 {want}, got {arr.dtype} {arr.shape}", p)
        if kind not in VOICE_FILES:  # written without other voices
            continue
        shifts = len(_voice_shifts(cfg))
        v = shifts + (len(cfg.respeak_voices) if synthetic_voices.respeaks(cfg) else 0)
        # optional synthetic voices may have been left out (warned about when the step ran)
        allowed = {v, shifts} if cfg.respeak_optional else {v}
        p = ctx.path(VOICE_FILES[kind])
        if allowed == {0} or (0 in allowed and not p.exists()):
            continue
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise StepError(STEP, f"unreadable: {e}", p) from e
        if (arr.shape[0] not in allowed or arr.shape[1:] != (n, cfg.window, CHANNELS[kind])
                or arr.dtype != np.float16):
            raise StepError(STEP, f"expected float16 {(v, n, cfg.window, CHANNELS[kind])}, "
                                  f"got {arr.dtype} {arr.shape}", p)


def settings(cfg) -> dict:
    from nerfhead.config import to_dict

    # which kinds can run here is part of the fingerprint: installing onnxruntime later
    # makes a rerun add aud_ow.npy instead of trusting the old record
    from nerfhead.audio.voice import rubberband_available

    # the words file by content, not by path: a moved or copied file is the same input
    audio = {k: v for k, v in to_dict(cfg.audio).items() if k not in ("respeak_words", "transcript")}
    if not audio["respeak_optional"]:  # datasets made before the option stay up to date
        del audio["respeak_optional"]
    elif synthetic_voices.respeaks(cfg.audio):  # installing what was missing makes a rerun add the voices
        audio["respeak_missing"] = synthetic_voices.missing(cfg.audio)
    words = cfg.audio.respeak_words
    # hubert only where asked for: installing transformers must not redo other datasets' step
    out = {**audio, "available": [k for k in FILES if _available(k)
                                  and (k != "hubert" or k in cfg.audio.kinds)],
           "voices_available": rubberband_available(),
           "respeak_words_sha256": "auto" if words == "auto" else _file_sha256(words)}
    if cfg.audio.transcript or words == "auto":  # another recogniser makes other words
        from importlib.metadata import PackageNotFoundError, version

        try:
            out["pocketsphinx"] = version("pocketsphinx")
        except PackageNotFoundError:
            out["pocketsphinx"] = None
        out["transcript_sha256"] = _file_sha256(cfg.audio.transcript)
    return out


def _file_sha256(path: str | None) -> str | None:
    """The words file's content is a setting: an edited file makes the step run again."""
    if not path:
        return None
    import hashlib
    from pathlib import Path

    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"


AUDIO = Step(STEP, inputs=("aud.wav",), outputs=(*FILES.values(), *VOICE_FILES.values(), synthetic_voices.WORDS_FILE),
             run=run, check=check,
             settings=settings, doc="log-mel (and speech-embedding) windows per frame")

SPEECH = Step(SPEECH_STEP, inputs=("aud.wav",), outputs=(), run=speech_run, check=speech_check,
              settings=speech_settings,
              doc="is there speech in aud.wav? refuses silent or early-ending tracks")
