"""What a run folder holds, for ``nerfhead info RUN``: its stage and step, the dataset it was
trained on, which audio encoder it renders with (and whether the one the speaker's voice
trained is kept beside a refit), the floaters its grid has, and what training measured along
the way (validation PSNR, the lip-sync checks) from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from nerfhead.audio.level import training_level_db
from nerfhead.train.checkpoint import list_checkpoints, load_run, read_metrics


def describe_run(run_dir) -> dict:
    """A summary of the run folder ``run_dir`` (its newest readable checkpoint, loaded as
    render and evaluate load it)."""
    run = load_run(run_dir)
    root = Path(run.run_dir)
    rows = read_metrics(root)
    validations = [r for r in rows if "psnr" in r]
    checks = [{"step": r["step"], **{k: r["lipsync_check"].get(k) for k in
                                     ("correlation", "amplitude_ratio", "frames_used")}}
              for r in rows if isinstance(r.get("lipsync_check"), dict)]
    best = max(validations, key=lambda r: r["psnr"]) if validations else None
    train = run.configs["train"]
    return {
        "run": str(root), "checkpoint": str(run.checkpoint), "stage": run.stage, "step": run.step,
        "iters": train.iters, "finished": run.step >= train.iters,
        "checkpoints": [p.name for p in list_checkpoints(root)],
        "collapsed": sorted(p.name for p in (root / "collapsed").glob("*.pt")),
        "dataset": str(run.dataset_dir), "dataset_exists": run.dataset_dir.is_dir(),
        "audio_kind": run.model.audio_kind,
        "resolution": [run.camera.height, run.camera.width],
        "audio_encoder": run.audio_encoder_note(),
        "trained_encoder_kept": run.trained_encoder_kept,
        "speech_level_db": (training_level_db(run.dataset_dir) if run.dataset_dir.is_dir()
                            else None),
        "floaters": run.floaters_note(),
        "last_validation": ({"step": validations[-1]["step"], "psnr": validations[-1]["psnr"]}
                            if validations else None),
        "best_validation": {"step": best["step"], "psnr": best["psnr"]} if best else None,
        "lipsync_checks": checks,
    }


def describe_lines(d: dict) -> list[str]:
    """``describe_run``'s summary as lines to print."""
    f = lambda v, n=2: "n/a" if v is None else f"{v:.{n}f}"  # noqa: E731
    val = lambda v: "none" if v is None else f"{v['psnr']:.2f} dB at step {v['step']}"  # noqa: E731
    lines = [
        f"run          {d['run']}",
        f"stage        {d['stage']}, step {d['step']} of {d['iters']}"
        f"{'' if d['finished'] else ' (unfinished: the same train command resumes it)'}",
        f"checkpoints  {', '.join(d['checkpoints'])}"
        + (f"; set aside after a collapse: {', '.join(d['collapsed'])}" if d["collapsed"] else ""),
        f"dataset      {d['dataset']}{'' if d['dataset_exists'] else ' (not there: pass --data)'}",
        f"audio        {d['audio_kind']}; encoder {d['audio_encoder']}",
    ]
    if d["trained_encoder_kept"] is not None:
        lines.append("             the encoder as trained is " + (
            "kept: --audio-encoder trained renders with it" if d["trained_encoder_kept"]
            else "not kept (refitted by an older nerfhead)"))
    level = d.get("speech_level_db")
    lines.append("             trained on speech at " + (
        f"{level:.1f} dBFS: new audio is brought to it for the features (--audio-level)"
        if level is not None else "an unknown level (no aud.wav): new audio is heard as given"))
    lines += [f"resolution   {d['resolution'][1]}x{d['resolution'][0]}",
              f"floaters     on loading: {d['floaters']}",
              f"validation   last {val(d['last_validation'])}, best {val(d['best_validation'])}"]
    checks = d["lipsync_checks"]
    lines.append("lip sync     " + ("no check recorded" if not checks else "; ".join(
        f"step {c['step']}: r {f(c['correlation'])}, amplitude {f(c['amplitude_ratio'])}"
        for c in checks[-4:])))
    return lines
