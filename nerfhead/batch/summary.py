"""``DIR/summary.csv`` and ``DIR/summary.md``: one row per speaker of the speakers file.

A row joins the speaker's ``batch.json`` (status, last stage, error, training time, render
speed) with its ``eval/metrics.json``. The evaluation's keys grow over time, so every value
is looked up defensively: a column a speaker's evaluation lacks reads ``n/a`` (never 0), and
per-mode metrics or ``*jitter*`` figures the evaluation adds later become columns by
themselves. Modes: ``full`` = without masks (whole rendered frame against the GT frame),
``portrait`` = with masks (the face pasted into the original frame with the parsing mask).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

NA = "n/a"
MODES = {"full": "no mask", "portrait": "mask"}
#: per-mode metrics first in the table, in this order (others found follow, sorted)
CORE_METRICS = ("psnr", "ssim", "lpips", "lmd", "face_psnr", "mouth_psnr")
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "lmd": "LMD", "face_psnr": "face PSNR",
          "mouth_psnr": "mouth PSNR"}
#: where ``load_metrics`` puts eval_other_voice/metrics.json inside the speaker's metrics
OTHER_VOICE = "eval_other_voice"
#: lip-sync figures: column id -> (label, path in metrics.json)
LIPSYNC = {
    "sync_proxy_r": ("sync proxy r (render)", ("lipsync_proxy", "render", "best_correlation")),
    "sync_proxy_offset": ("sync proxy offset (frames)", ("lipsync_proxy", "render", "best_offset")),
    "sync_proxy_r_gt": ("sync proxy r (GT)", ("lipsync_proxy", "gt", "best_correlation")),
    "mouth_opening_r": ("mouth opening r", ("mouth_opening", "correlation")),
    "mouth_amplitude": ("mouth amplitude ratio", ("mouth_opening", "amplitude_ratio")),
    # nerfhead run's second evaluation: the held-out frames under a voice the model never heard
    "other_voice_r": ("mouth opening r (other voice)", (OTHER_VOICE, "mouth_opening", "correlation")),
    "other_voice_amplitude": ("mouth amplitude ratio (other voice)",
                              (OTHER_VOICE, "mouth_opening", "amplitude_ratio")),
    "lse_c": ("LSE-C", ("syncnet", "lse_c")),
    "lse_d": ("LSE-D", ("syncnet", "lse_d")),
}


def get(d: Any, *path) -> Any:
    """``d[path[0]][path[1]]...`` or None anywhere along the way."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def scalar(v: Any) -> float | str | None:
    """A number (or "inf") from a value or a {"mean": ...} summary; None when there is none."""
    if isinstance(v, dict):
        v = v.get("mean", v.get("value"))
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return None if math.isnan(v) else float(v)
    if v in ("inf", "-inf"):
        return v
    return None


def _jitter_paths(m: dict, prefix=()) -> list[tuple]:
    """Paths to figures whose key names jitter (per_frame series left out)."""
    found = []
    for k, v in m.items():
        if k in ("per_frame", OTHER_VOICE):
            continue
        path = prefix + (k,)
        if "jitter" in str(k).lower() and scalar(v) is not None:
            found.append(path)
        elif isinstance(v, dict):
            found += _jitter_paths(v, path)
    return found


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_metrics(speaker_dir: Path) -> dict:
    """eval/metrics.json, with eval_other_voice/metrics.json under ``OTHER_VOICE`` when there."""
    metrics = _read_json(speaker_dir / "eval" / "metrics.json")
    other = _read_json(speaker_dir / "eval_other_voice" / "metrics.json")
    if metrics and other:
        metrics[OTHER_VOICE] = other
    return metrics


def columns(metrics: list[dict]) -> list[tuple[str, str, Any]]:
    """(column id, label, getter(metrics) -> value) for every column some speaker has, core
    ones always (so a missing metric shows as n/a rather than vanishing)."""
    extra = sorted({k for m in metrics for mode in MODES for k, v in (get(m, "modes", mode) or {}).items()
                    if k not in CORE_METRICS and isinstance(v, dict) and "mean" in v})
    cols = []
    for name in (*CORE_METRICS, *extra):
        for mode, mlabel in MODES.items():
            cols.append((f"{name}_{mode}", f"{LABELS.get(name, name)} ({mlabel})",
                         lambda m, n=name, md=mode: scalar(get(m, "modes", md, n))))
    for cid, (label, path) in LIPSYNC.items():
        cols.append((cid, label, lambda m, p=path: scalar(get(m, *p))))
    for path in sorted({p for m in metrics for p in _jitter_paths(m)}):
        cid = "_".join(x for x in path if x != "modes")
        cols.append((cid, " ".join(path), lambda m, p=path: scalar(get(m, *p))))
    return cols


def rows(specs, out: Path) -> tuple[list[str], list[str], list[list]]:
    """(column ids, labels, one list of values per speaker; None = n/a)."""
    states, metrics = [], []
    for spec in specs:
        path = out / spec.name / "batch.json"
        states.append(json.loads(path.read_text()) if path.is_file() else {})
        metrics.append(load_metrics(out / spec.name))
    cols = columns(metrics)
    ids = ["speaker", "status", "stage", "train_seconds", "render_fps", "eval_frames"]
    labels = ["speaker", "status", "last stage", "training time (s)", "render FPS", "eval frames"]
    ids += [c[0] for c in cols] + ["error"]
    labels += [c[1] for c in cols] + ["error"]
    table = []
    for spec, st, m in zip(specs, states, metrics):
        train_s = st.get("train_seconds") or None  # 0 = never trained here: n/a
        row = [spec.name, st.get("status", "not run"), st.get("stage"), train_s,
               st.get("render_fps"), m.get("frames")]
        row += [c[2](m) for c in cols] + [st.get("error")]
        table.append(row)
    return ids, labels, table


def _fmt(v, digits: int = 4) -> str:
    if v is None or v == "":
        return NA
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


def write_summary(specs, out: Path) -> tuple[Path, Path]:
    """Write DIR/summary.csv and DIR/summary.md (atomically); returns their paths."""
    from nerfhead.fileio import atomic_path

    ids, labels, table = rows(specs, out)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(ids)
    for row in table:
        w.writerow([NA if v is None or v == "" else (round(v, 6) if isinstance(v, float) else v)
                    for v in row])
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(specs, out, labels, table))
    return csv_path, md_path


def markdown(specs, out: Path, labels: list[str], table: list[list]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    body = [r[:-1] for r in table]  # errors get their own section (they are long)
    lines = [f"# nerfhead batch: {len(specs)} speaker(s) in `{out}`", "",
             "| " + " | ".join(esc(x) for x in labels[:-1]) + " |",
             "|" + "---|" * (len(labels) - 1)]
    for row in body:
        lines.append("| " + " | ".join(esc(_fmt(v)) for v in row) + " |")
    lines += ["", "*no mask*: the whole rendered frame against the GT frame; *mask*: the face "
              "pasted into the original frame with the parsing mask. n/a: not measured (stage "
              "not reached, or the evaluation does not provide it; see the speaker's "
              "report.md). Training time: wall seconds of the training tasks that advanced "
              "the model, summed over reruns. Render FPS: frames per second of the render "
              "loop (render, composite, encode; model loading excluded).", ""]
    failed = [(s, r[-1]) for s, r in zip(specs, table) if r[-1]]
    if failed:
        lines += ["## Errors", ""]
        lines += [f"- **{s.name}**: {esc(e)} (log: `{out / s.name / 'logs'}`)" for s, e in failed]
        lines.append("")
    lines += ["## Reports", ""]
    for s in specs:
        rep = out / s.name / "eval" / "report.md"
        lines.append(f"- {s.name}: " + (f"[{s.name}/eval/report.md]({s.name}/eval/report.md)"
                                         if rep.is_file() else "no evaluation yet"))
    return "\n".join(lines) + "\n"
