"""Render-time motion controls: poses and expression curves [N, 52] for ``nerfhead render``.

``render_inputs`` turns the render options into arrays the renderer consumes (a
``PoseSequence`` of camera-to-world matrices and, when anything changes the expressions, the
per-frame blendshapes), in this order:

1. poses and base expressions: ``--motion FILE`` (both from the file), ``--poses audio``
   (generated poses, expressions of the train frames cycled alongside), or the existing pose
   sources (``nerfhead.render.poses``);
2. ``--blink``: ``clip`` keeps the base curves' blinks, ``none`` / ``natural`` / ``FILE`` set
   the eye columns (``nerfhead.motion.blink``);
3. ``--expression NAME=SCALE``: multiplies a blendshape curve (clipped to [0, 1]).

Frames whose poses are not tied to a training frame (motion files, generated poses, static
or other clips' poses with set blinks or expressions) use the mean per-frame latent, as
``evaluate`` does for frames never trained on, so the appearance does not flicker with the
latents of unrelated frames. Values outside what the model was trained on (poses beyond the
training range, condition blendshapes beyond their training range) are
rendered with a warning that names the column, the frames and the range.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerfhead.motion.table import BLENDSHAPES, MotionFileError, MotionTable, _ranges

log = logging.getLogger("nerfhead.motion")

POSE_UNITS = ("deg", "deg", "deg", "m", "m", "m")
#: slack before a pose counts as outside the trained range: degrees, metres
POSE_SLACK = np.array([1.0, 1.0, 1.0, 0.005, 0.005, 0.005])
EXPR_SLACK = 0.05


@dataclass
class TrainedRange:
    """What the model saw in training: canonical poses and blendshapes, min and max."""

    pose_lo: np.ndarray
    pose_hi: np.ndarray
    expr_lo: np.ndarray
    expr_hi: np.ndarray

    @classmethod
    def from_dataset(cls, data_dir) -> "TrainedRange":
        from nerfhead.motion.export import load_blendshapes
        from nerfhead.motion.pose import c2w_to_canonical, rest_pose
        from nerfhead.render.poses import dataset_poses

        c2w, ids = dataset_poses(data_dir, "train")
        pose = c2w_to_canonical(c2w, rest_pose(c2w))
        bs = load_blendshapes(data_dir)
        if bs is None:
            bs = np.zeros((1, len(BLENDSHAPES)))
        else:
            bs = bs[ids[ids < len(bs)]]
        return cls(pose.min(0), pose.max(0), bs.min(0), bs.max(0))


def warn_outside_range(pose6: np.ndarray | None, expr: np.ndarray | None, trained: TrainedRange,
                       condition_cols, what: str) -> list[str]:
    """Log (and return) one line per column that leaves the trained range."""
    from nerfhead.motion.pose import POSE_COLUMNS

    notes = []
    if pose6 is not None:
        for j, name in enumerate(POSE_COLUMNS):
            lo, hi = trained.pose_lo[j] - POSE_SLACK[j], trained.pose_hi[j] + POSE_SLACK[j]
            bad = np.flatnonzero((pose6[:, j] < lo) | (pose6[:, j] > hi))
            if bad.size:
                worst = pose6[bad, j][np.argmax(np.abs(pose6[bad, j]))]
                notes.append(f"{what}: {name} reaches {worst:.4g} {POSE_UNITS[j]} at frame(s) "
                             f"{_ranges(bad)}, but the model was trained on "
                             f"{trained.pose_lo[j]:.4g}..{trained.pose_hi[j]:.4g}: the head is "
                             "seen from where the model never looked (expect blur or holes)")
    if expr is not None:
        for name in condition_cols:
            i = BLENDSHAPES.index(name)
            lo, hi = trained.expr_lo[i] - EXPR_SLACK, trained.expr_hi[i] + EXPR_SLACK
            bad = np.flatnonzero((expr[:, i] < lo) | (expr[:, i] > hi))
            if bad.size:
                notes.append(f"{what}: {name} goes to {expr[bad, i].min():.3f}..{expr[bad, i].max():.3f}"
                             f" at frame(s) {_ranges(bad)}, beyond the "
                             f"{trained.expr_lo[i]:.3f}..{trained.expr_hi[i]:.3f} it was trained "
                             "on: the model extrapolates there")
    for n in notes:
        log.warning(n)
    return notes


def fit_length(rows: int, num_frames: int, mode: str, what: str) -> np.ndarray:
    """Row indices giving ``num_frames`` from ``rows``, saying what was done."""
    from nerfhead.render.poses import extend_indices

    if rows > num_frames:
        log.info("%s: %d frames, the audio %d: the last %d are not used", what, rows, num_frames,
                 rows - num_frames)
    elif rows < num_frames:
        how = ("mirrored (played back and forth: rows 0..%d, %d..0, ...)" % (rows - 1, max(rows - 2, 0))
               if mode == "mirror" else "looped (rows 0..%d, then 0.. again)" % (rows - 1))
        log.warning("%s: %d frames (%.2f s) but the audio needs %d (%.2f s): extended by --pose-mode "
                    "%s, %s; give a file as long as the audio to avoid it", what, rows, rows / 25.0,
                    num_frames, num_frames / 25.0, mode, how)
    return extend_indices(rows, num_frames, mode)


def motion_file_inputs(table: MotionTable, rest_c2w: np.ndarray, num_frames: int, condition_cols,
                       fill_expression: np.ndarray, mode: str = "mirror",
                       what: str = "motion file") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c2w [N, 4, 4], expressions [N, 52], canonical poses [N, 6]) for ``num_frames`` from a
    motion table. Condition columns must be present; other absent blendshapes take
    ``fill_expression`` [52] (they do not reach the model)."""
    from nerfhead.motion.pose import canonical_to_c2w

    present = set(table.present)
    missing = [c for c in condition_cols if c not in present]
    if missing:
        raise MotionFileError(f"{what}: missing column(s) {', '.join(missing)}, which the model "
                              f"is conditioned on (it reads {', '.join(condition_cols)}); add them "
                              "or start from `nerfhead motion export`")
    absent = [c for c in BLENDSHAPES if c not in present]
    expr = table.blendshapes.copy()
    if absent:
        idx = [BLENDSHAPES.index(c) for c in absent]
        expr[:, idx] = np.asarray(fill_expression)[idx]
        log.info("%s: %d blendshape column(s) absent (%s...); they do not reach the model and "
                 "are filled with the speaker's median", what, len(absent), ", ".join(absent[:3]))
    idx = fit_length(len(table), num_frames, mode, what)
    pose6 = table.pose[idx]
    return canonical_to_c2w(pose6, rest_c2w), expr[idx].astype(np.float32), pose6


def parse_expression_scales(items) -> dict[str, float]:
    """``["browInnerUp=1.5", ...]`` -> {name: scale}; clear errors for a bad item."""
    out = {}
    for item in items or []:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"--expression {item!r}: write NAME=SCALE, e.g. browInnerUp=1.5")
        if name not in BLENDSHAPES:
            near = difflib.get_close_matches(name, BLENDSHAPES, n=1)
            raise ValueError(f"--expression {item!r}: {name!r} is not a MediaPipe blendshape"
                             + (f" (did you mean {near[0]!r}?)" if near else "")
                             + "; the names are listed in docs/motion.md")
        try:
            scale = float(value)
        except ValueError:
            raise ValueError(f"--expression {item!r}: {value!r} is not a number") from None
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"--expression {item!r}: the scale must be a number >= 0")
        out[name] = scale
    return out


def scale_expressions(expr: np.ndarray, scales: dict, condition_cols) -> np.ndarray:
    """Multiply blendshape curves by their scales, clipped to [0, 1]."""
    out = np.array(expr, np.float32, copy=True)
    for name, scale in scales.items():
        if name not in condition_cols:
            log.warning("--expression %s=%g: this model does not read %s (it reads %s); it will "
                        "not change the picture%s", name, scale, name, ", ".join(condition_cols),
                        " (the mouth follows the audio)" if name.startswith(("jaw", "mouth")) else "")
        i = BLENDSHAPES.index(name)
        clipped = np.flatnonzero(out[:, i] * scale > 1.0)
        out[:, i] = np.clip(out[:, i] * scale, 0.0, 1.0)
        if clipped.size:
            log.warning("--expression %s=%g: %d frame(s) clipped at 1.0", name, scale, clipped.size)
    return out


@dataclass
class RenderInputs:
    """What the renderer needs beyond the audio."""

    seq: object  #: nerfhead.render.poses.PoseSequence
    expressions: np.ndarray | None  #: [N, 52] or None (the frames' own blendshapes)
    mean_latent: bool  #: use the mean per-frame latent instead of the frames' own
    notes: list = field(default_factory=list)  #: warnings about the trained range
    pose6: np.ndarray | None = None  #: canonical poses [N, 6] when known


def render_inputs(data_dir, run, num_frames: int, samples=None, *, poses: str | None = None,
                  pose_file=None, pose_from=None, pose_mode: str = "mirror",
                  smooth_sigma: float = 2.0, motion=None, blink: str = "clip", expression=(),
                  seed: int = 0, motion_model=None) -> RenderInputs:
    """Poses and expressions for rendering ``num_frames`` of ``run`` (see the module docstring).
    ``samples``: the driving audio (16 kHz), needed by ``poses="audio"``."""
    from nerfhead.motion.blink import apply_closure, blink_closure
    from nerfhead.motion.export import condition_columns, load_blendshapes, speaker_blinks
    from nerfhead.motion.pose import c2w_to_canonical, canonical_to_c2w, rest_pose
    from nerfhead.motion.table import read_motion
    from nerfhead.render.poses import PoseSequence, build_sequence, dataset_poses, extend_indices

    data_dir = Path(data_dir)
    cond, _ = condition_columns(run)
    others = [name for name, v in (("--poses", poses), ("--pose-file", pose_file),
                                   ("--pose-from", pose_from)) if v is not None]
    if motion is not None and others:
        raise ValueError(f"--motion sets the poses; drop {', '.join(others)}")
    train_c2w, train_ids = dataset_poses(data_dir, "train")
    rest = rest_pose(train_c2w)
    trained = TrainedRange.from_dataset(data_dir)
    bs = load_blendshapes(data_dir)
    notes: list[str] = []
    cycled = train_ids[extend_indices(len(train_ids), num_frames, pose_mode)]
    expr, pose6 = None, None
    if motion is not None:
        table = read_motion(motion)
        median = np.median(bs[train_ids[train_ids < len(bs)]], 0) if bs is not None else np.zeros(52)
        c2w, expr, pose6 = motion_file_inputs(table, rest, num_frames, cond, median, pose_mode,
                                              f"motion file {motion}")
        seq = PoseSequence(c2w, cycled, False, f"motion file {motion}")
        notes += warn_outside_range(pose6, expr, trained, cond, f"motion file {motion}")
    elif poses == "audio":
        from nerfhead.motion.generator import generate, load_or_fit

        if samples is None:
            raise ValueError("--poses audio needs the driving audio")
        model = motion_model or load_or_fit(data_dir, run.run_dir if run is not None else None)
        pose6, info = generate(model, samples, num_frames, seed)
        seq = PoseSequence(canonical_to_c2w(pose6, rest), cycled, False,
                           f"generated from the audio (seed {seed}; {100 * info['limited_fraction']:.1f}%"
                           " of values softly limited to the trained range)")
    else:
        seq = build_sequence(data_dir, num_frames, poses or "train", pose_file=pose_file,
                             pose_from=pose_from, mode=pose_mode, smooth_sigma=smooth_sigma)
        if pose_file is not None or pose_from is not None:
            pose6 = c2w_to_canonical(seq.c2w, rest)
            notes += warn_outside_range(pose6, None, trained, cond, seq.source)
    scales = parse_expression_scales(expression)
    if blink != "clip" or scales:
        if expr is None:
            if bs is None:
                raise ValueError(f"{data_dir} has no bs.npy: there are no expression curves to "
                                 "change (--blink/--expression need them)")
            expr = bs[np.minimum(seq.frame_ids, len(bs) - 1)].astype(np.float32)
        profile = speaker_blinks(data_dir)
        if profile is None and blink != "clip":
            raise ValueError(f"--blink {blink}: {data_dir} has no bs.npy, so the speaker's open "
                             "and closed eyes are unknown; use --blink clip")
        closure = blink_closure(blink, num_frames, profile, seed=seed) if blink != "clip" else None
        if closure is not None:
            expr = apply_closure(expr, closure, profile)
        if scales:
            expr = scale_expressions(expr, scales, cond)
            notes += warn_outside_range(None, expr, trained, cond, "--expression")
    controlled = motion is not None or poses == "audio" or expr is not None
    return RenderInputs(seq, expr, mean_latent=not seq.tied_to_frames and controlled, notes=notes,
                        pose6=pose6)
