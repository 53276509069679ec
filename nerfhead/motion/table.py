"""The motion file: one row per video frame, in CSV (for spreadsheets) or JSON.

Columns (docs/motion.md explains each, with units, axes and how it reaches the model):

- ``frame`` (0-based video frame), ``time_s`` (seconds, ``frame / fps``);
- ``yaw_deg, pitch_deg, roll_deg, tx_m, ty_m, tz_m``: head pose relative to the speaker's rest
  pose (``nerfhead.motion.pose``);
- the 52 MediaPipe blendshapes by name (``_neutral`` .. ``noseSneerRight``), each in [0, 1];
- ``blink_left, blink_right``: derived eye closure in [0, 1] (0: the speaker's usual open eye,
  1: the speaker's usual closed eye during a blink; ``nerfhead.motion.blink``). Left and right
  are the subject's own, as in the blendshape names. Read by ``--blink FILE``, not by
  ``--motion`` (which reads the eyeBlink* blendshapes themselves).

A CSV starts with ``#`` comment lines (format, conventions, the columns the model is
conditioned on); a reader skips them, so a spreadsheet that keeps or drops them both work.
The JSON holds the same table column-wise under ``"columns"`` plus the metadata.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerfhead.motion.pose import POSE_COLUMNS

log = logging.getLogger("nerfhead.motion")

FORMAT = "nerfhead-motion"
VERSION = 1

#: MediaPipe Face Landmarker's blendshape categories, in its output order (= bs.npy columns)
BLENDSHAPES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")
TIME_COLUMNS = ("frame", "time_s")
BLINK_COLUMNS = ("blink_left", "blink_right")
ALL_COLUMNS = TIME_COLUMNS + POSE_COLUMNS + BLENDSHAPES + BLINK_COLUMNS

#: values beyond these are not head poses (hard errors); the trained range is checked later
MAX_ANGLE_DEG = 90.0
MAX_TRANSLATION_M = 0.5
DECIMALS = {"time_s": 4, "yaw_deg": 4, "pitch_deg": 4, "roll_deg": 4, "tx_m": 6, "ty_m": 6,
            "tz_m": 6}


class MotionFileError(ValueError):
    """A motion file cannot be used; the message names the file, the place and the fix."""


@dataclass
class MotionTable:
    """A per-frame motion: poses [N, 6], blendshapes [N, 52] (NaN where a column was absent
    from the file), blinks [N, 2] (NaN where absent), at ``fps`` frames per second."""

    pose: np.ndarray
    blendshapes: np.ndarray
    blink: np.ndarray
    fps: float = 25.0
    meta: dict = field(default_factory=dict)
    present: tuple[str, ...] = ALL_COLUMNS  #: columns that were in the file

    def __len__(self) -> int:
        return len(self.pose)

    def column(self, name: str) -> np.ndarray:
        if name in POSE_COLUMNS:
            return self.pose[:, POSE_COLUMNS.index(name)]
        if name in BLENDSHAPES:
            return self.blendshapes[:, BLENDSHAPES.index(name)]
        if name in BLINK_COLUMNS:
            return self.blink[:, BLINK_COLUMNS.index(name)]
        if name == "frame":
            return np.arange(len(self), dtype=np.float64)
        if name == "time_s":
            return np.arange(len(self), dtype=np.float64) / self.fps
        raise KeyError(name)


# ---------------------------------------------------------------------------------- writing
def _fmt(name: str, v: float) -> str:
    if name == "frame":
        return str(int(v))
    return f"{v:.{DECIMALS.get(name, 4)}f}"


def header_lines(meta: dict) -> list[str]:
    """The ``#`` lines at the top of a CSV: what the file is and how to read it."""
    rest = meta.get("rest_pose", {})
    lines = [f"{FORMAT} v{VERSION}: one row per video frame at {meta.get('fps', 25):g} fps; "
             "every column is explained in docs/motion.md",
             "pose: yaw/pitch/roll in degrees, tx/ty/tz in metres, relative to the speaker's rest "
             "pose (mean training pose); head axes: x = subject's left, y = up, z = out of the face",
             "signs: yaw > 0 turns to the subject's left, pitch > 0 tips the chin down, roll > 0 "
             "tilts towards the subject's right shoulder; R = R0 Rz(roll) Ry(yaw) Rx(pitch)",
             "blendshapes: MediaPipe's 52, in [0, 1], Left/Right = the subject's own side; "
             "blink_left/right: derived eye closure (0 open, 1 closed), read by --blink FILE"]
    if meta.get("condition_columns"):
        lines.append(f"model condition ({meta.get('condition_source', 'model')}): "
                     + " ".join(meta["condition_columns"]) + "; the mouth follows the audio")
    if rest:
        lines.append("rest pose seen from the camera: yaw {yaw_deg:.2f} pitch {pitch_deg:.2f} "
                     "roll {roll_deg:.2f} deg".format(**rest))
    if meta.get("source"):
        lines.append(f"source: {meta['source']}")
    return ["# " + line for line in lines]


def table_columns(table: MotionTable) -> dict[str, np.ndarray]:
    return {name: table.column(name) for name in ALL_COLUMNS}


def write_motion(table: MotionTable, path) -> Path:
    """Write ``table`` as CSV or JSON (by the suffix), atomically."""
    from nerfhead.fileio import atomic_path

    path = Path(path)
    cols = table_columns(table)
    if path.suffix.lower() == ".json":
        doc = {"format": FORMAT, "version": VERSION, "fps": table.fps, **table.meta,
               "num_frames": len(table),
               "columns": {k: [int(x) if k == "frame" else round(float(x), DECIMALS.get(k, 4))
                               for x in v] for k, v in cols.items()}}
        text = json.dumps(doc, indent=1)
    elif path.suffix.lower() == ".csv":
        rows = [",".join(ALL_COLUMNS)]
        for i in range(len(table)):
            rows.append(",".join(_fmt(k, cols[k][i]) for k in ALL_COLUMNS))
        text = "\n".join(header_lines({"fps": table.fps, **table.meta}) + rows) + "\n"
    else:
        raise MotionFileError(f"motion file {path}: unknown format {path.suffix!r}; use .csv or .json")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# ---------------------------------------------------------------------------------- reading
def _read_csv(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and their 1-based line numbers; ``#`` rows are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = [line for line in f.read(16384).splitlines()
                  if line.strip() and not line.lstrip().lstrip('"').startswith("#")]
        f.seek(0)
        try:  # a spreadsheet in a decimal-comma locale saves with ';' (or tabs)
            dialect = csv.Sniffer().sniff("\n".join(sample[:5]), delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        header, rows, lines = None, [], []
        for lineno, row in enumerate(csv.reader(f, dialect), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip() for c in row]
                while header and not header[-1]:  # spreadsheets pad rows with empty cells
                    header.pop()
                continue
            rows.append(row)
            lines.append(lineno)
    if header is None:
        raise MotionFileError(f"motion file {path}: no header row (expected column names such "
                              f"as {', '.join(POSE_COLUMNS[:3])}, ...)")
    return header, rows, lines


def _parse_columns(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """name -> float64 column, and the JSON metadata (empty for CSV)."""
    if not path.is_file():
        raise MotionFileError(f"motion file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text())
            cols = doc["columns"]
            if not isinstance(cols, dict):
                raise TypeError("'columns' is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MotionFileError(f"motion file {path}: not a nerfhead motion JSON with a "
                                  f"'columns' mapping ({e})") from None
        out = {}
        for name, values in cols.items():
            try:
                arr = np.array([math.nan if v is None else v for v in values], np.float64)
            except (TypeError, ValueError):
                raise MotionFileError(f"motion file {path}: column {name!r} holds a value that "
                                      "is not a number") from None
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise MotionFileError(f"motion file {path}: column {name!r} has no number at "
                                      f"frame(s) {_ranges(bad)}")
            out[name] = arr
        lengths = {len(v) for v in out.values()}
        if len(lengths) > 1:
            raise MotionFileError(f"motion file {path}: columns differ in length "
                                  f"({sorted(lengths)}); every column needs one value per frame")
        meta = {k: v for k, v in doc.items() if k not in ("columns",)}
        return out, meta
    if path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        raise MotionFileError(f"motion file {path}: unknown format {path.suffix!r}; use .csv or .json")
    header, rows, lines = _read_csv(path)
    out = {name: np.empty(len(rows)) for name in header if name}
    for r, (row, lineno) in enumerate(zip(rows, lines)):
        for c, name in enumerate(header):
            if not name:
                continue
            cell = row[c].strip() if c < len(row) else ""
            try:  # a decimal comma (from a ';'-separated spreadsheet) reads as a point
                v = float(cell) if "," not in cell else float(cell.replace(",", "."))
            except ValueError:
                what = "is empty" if not cell else f"holds {cell!r}, not a number"
                raise MotionFileError(f"motion file {path}, line {lineno}, column {name!r}: the "
                                      f"cell {what}") from None
            if not math.isfinite(v):
                raise MotionFileError(f"motion file {path}, line {lineno}, column {name!r}: "
                                      f"{cell!r} is not a finite number")
            out[name][r] = v
    if not rows:
        raise MotionFileError(f"motion file {path}: the header is there but no rows follow")
    return out, {}


def _ranges(idx) -> str:
    """'3-7, 12' from sorted indices (at most 5 ranges, then how many more)."""
    idx = np.asarray(idx, int)
    if idx.size == 0:
        return "none"
    splits = np.flatnonzero(np.diff(idx) > 1) + 1
    parts = [f"{g[0]}-{g[-1]}" if len(g) > 1 else f"{g[0]}" for g in np.split(idx, splits)]
    more = f" and {len(parts) - 5} more" if len(parts) > 5 else ""
    return ", ".join(parts[:5]) + more


def _check_range(path, name, values, lo, hi, why) -> None:
    bad = np.flatnonzero((values < lo - 1e-6) | (values > hi + 1e-6))
    if bad.size:
        worst = values[bad[np.argmax(np.abs(values[bad] - (lo + hi) / 2))]]
        raise MotionFileError(f"motion file {path}: {name} = {worst:g} at frame(s) {_ranges(bad)} "
                              f"is outside [{lo:g}, {hi:g}] ({why})")


def read_motion(path, require_pose: bool = True, fps: float = 25.0) -> MotionTable:
    """Read and check a motion file (CSV or JSON), resampled to ``fps``.

    Errors (``MotionFileError``, naming file, line/frame, column and the fix): unreadable file,
    missing pose columns (when ``require_pose``), cells that are not numbers, time not
    increasing, blendshapes or blinks outside [0, 1], angles beyond +-90 degrees, translations
    beyond +-0.5 m. Unknown column names are logged with the closest known name. Blendshape
    columns absent from the file are NaN (the caller fills or refuses them).
    """
    path = Path(path)
    cols, meta = _parse_columns(path)
    unknown = [c for c in cols if c not in ALL_COLUMNS]
    for c in unknown:
        near = difflib.get_close_matches(c, ALL_COLUMNS, n=1)
        log.warning("motion file %s: column %r is not a motion column and is ignored%s", path, c,
                    f" (did you mean {near[0]!r}?)" if near else "")
    missing = [c for c in POSE_COLUMNS if c not in cols]
    if require_pose and missing:
        raise MotionFileError(f"motion file {path}: missing column(s) {', '.join(missing)}; a "
                              f"motion file needs {', '.join(POSE_COLUMNS)} (export one to edit "
                              f"with `nerfhead motion export DATA --out motion.csv`)")
    n = len(next(iter(cols.values()))) if cols else 0
    if n == 0:
        raise MotionFileError(f"motion file {path}: no frames")
    file_fps = float(meta.get("fps", fps))
    times = None
    if "time_s" in cols:
        times = cols["time_s"]
    elif "frame" in cols:
        times = cols["frame"] / file_fps
    if times is not None and n > 1:
        step = np.diff(times)
        if (step <= 0).any():
            bad = np.flatnonzero(step <= 0)
            raise MotionFileError(f"motion file {path}: time does not increase at row(s) "
                                  f"{_ranges(bad + 1)}; rows must be in time order, one per frame")
        file_fps = 1.0 / float(np.median(step))
    for c in POSE_COLUMNS[:3]:
        if c in cols:
            _check_range(path, c, cols[c], -MAX_ANGLE_DEG, MAX_ANGLE_DEG, "a head turns less than "
                         "90 degrees from its rest pose; angles are in degrees")
    for c in POSE_COLUMNS[3:]:
        if c in cols:
            _check_range(path, c, cols[c], -MAX_TRANSLATION_M, MAX_TRANSLATION_M,
                         "translations are in metres from the rest pose")
    for c in BLENDSHAPES + BLINK_COLUMNS:
        if c in cols:
            _check_range(path, c, cols[c], 0.0, 1.0, "blendshapes and blinks are in [0, 1]")
    pose = np.column_stack([cols.get(c, np.zeros(n)) for c in POSE_COLUMNS])
    bs = np.column_stack([cols.get(c, np.full(n, np.nan)) for c in BLENDSHAPES])
    blink = np.column_stack([cols.get(c, np.full(n, np.nan)) for c in BLINK_COLUMNS])
    present = tuple(c for c in ALL_COLUMNS if c in cols)
    table = MotionTable(pose, np.clip(bs, 0, 1), np.clip(blink, 0, 1), file_fps, meta, present)
    if times is not None and n > 1 and not _uniform(times, file_fps):
        raise MotionFileError(f"motion file {path}: rows are not evenly spaced in time (steps "
                              f"from {np.diff(times).min():.4f} to {np.diff(times).max():.4f} s); "
                              f"give one row per frame")
    if abs(file_fps - fps) > 1e-3 * fps:
        log.info("motion file %s: %.3f frames/s, resampled to %g", path, file_fps, fps)
        table = resample(table, fps)
    return table


def _uniform(times: np.ndarray, fps: float) -> bool:
    return bool(np.abs(np.diff(times) - 1.0 / fps).max() <= 0.05 / fps)


def resample(table: MotionTable, fps: float) -> MotionTable:
    """Linear interpolation of every column onto a grid of ``fps`` (angles are small enough
    away from +-90 degrees for per-angle interpolation)."""
    n_in = len(table)
    duration = (n_in - 1) / table.fps
    n_out = max(1, int(math.floor(duration * fps + 1e-6)) + 1)
    t_in = np.arange(n_in) / table.fps
    t_out = np.arange(n_out) / fps

    def interp(a):
        return np.column_stack([np.interp(t_out, t_in, a[:, j]) for j in range(a.shape[1])])

    return MotionTable(interp(table.pose), interp(table.blendshapes), interp(table.blink), fps,
                       dict(table.meta, resampled_from_fps=table.fps), table.present)
