"""Frame-to-frame jitter of a rendered face, for ``nerfhead evaluate``.

**Measure.** MediaPipe face landmarks of every frame (detected at 512x512, as for LMD); per
frame ``t`` and landmark ``k`` the second temporal difference ``|x_k(t+1) - 2 x_k(t) +
x_k(t-1)|`` in pixels of the 512-px frame, averaged over the rigid landmarks (nose, upper face
outline from temple to temple over the forehead, eye corners: points that do not move with
speech, blinks or brows); the report gives the mean, median and 95th percentile over frames.
A smooth head motion scores near 0; shaking, popping or a flickering face scores high. Frame
triples where a landmark set is missing are left out (and counted). The same measure on the
ground-truth frames (the real video, through the same detector) is the reference: the
detector's own noise is in both.

**Pose sources.** The evaluated frames are rendered with their tracked poses already (source
``tracked``); jitter also renders the first ``max_frames`` of them with the other pose sources,
the same audio and expressions and the mean latent: ``smooth`` (tracked poses smoothed in time,
sigma 2 frames, as ``--poses smooth``), ``static`` (the speaker's rest pose) and ``audio`` (head
motion generated from the audio, ``nerfhead.motion.generator``). The ground truth of the same
frames is measured for each.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("nerfhead.motion")

#: MediaPipe mesh indices: FACEMESH_NOSE, the upper half of FACEMESH_FACE_OVAL (temples and
#: forehead) and the four eye corners
RIGID_LANDMARKS = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278,
                   294, 326, 327, 344, 440,
                   10, 338, 297, 332, 284, 251, 389, 356, 454, 109, 67, 103, 54, 21, 162, 127, 234,
                   33, 133, 362, 263)
SOURCES = ("tracked", "smooth", "static", "audio")
DETECT_SIZE = 512
SAMPLES_PER_FRAME = 16000 // 25


def add_arguments(p) -> None:
    """``nerfhead evaluate`` options of the jitter section."""
    p.add_argument("--jitter-sources", default=",".join(SOURCES),
                   help=f"pose sources whose jitter is measured (default {','.join(SOURCES)}; "
                        "'' for none); each but tracked renders --jitter-frames more frames")
    p.add_argument("--jitter-frames", type=int, default=100,
                   help="frames rendered per extra pose source for jitter (default 100; 0: all)")


def landmark_jitter(landmarks, points=RIGID_LANDMARKS) -> dict:
    """Jitter (px at 512) of a sequence of landmark sets ([478, 2] at 512 px, or None)."""
    vals = []
    skipped = 0
    idx = list(points)
    for a, b, c in zip(landmarks[:-2], landmarks[1:-1], landmarks[2:]):
        if a is None or b is None or c is None:
            skipped += 1
            continue
        a, b, c = (np.asarray(x, np.float64)[idx, :2] for x in (a, b, c))
        vals.append(float(np.linalg.norm(c - 2 * b + a, axis=1).mean()))
    v = np.asarray(vals)
    out = {"frames": len(landmarks), "triples": int(v.size), "triples_without_face": skipped}
    if v.size:
        out.update(mean_px=float(v.mean()), median_px=float(np.median(v)),
                   p95_px=float(np.percentile(v, 95)))
    else:
        out.update(mean_px=None, median_px=None, p95_px=None)
    return out


def source_poses(name: str, c2w: np.ndarray, data_dir, run, samples, seed: int = 0) -> np.ndarray:
    """Poses [K, 4, 4] of pose source ``name`` for the evaluated frames ``c2w`` [K, 4, 4]."""
    from nerfhead.motion.pose import canonical_to_c2w, rest_pose
    from nerfhead.render.poses import dataset_poses, smooth_poses

    k = len(c2w)
    if name == "tracked":
        return c2w
    if name == "smooth":
        return smooth_poses(c2w, 2.0)
    rest = rest_pose(dataset_poses(data_dir, "train")[0])
    if name == "static":
        return np.repeat(rest[None].astype(np.float32), k, 0)
    if name == "audio":
        from nerfhead.motion.generator import generate, load_or_fit

        if samples is None:
            raise ValueError("no audio for the evaluated frames")
        model = load_or_fit(run.dataset_dir if run is not None else data_dir,
                            run.run_dir if run is not None else None)
        pose6, _ = generate(model, samples, k, seed)
        return canonical_to_c2w(pose6, rest)
    raise ValueError(f"unknown pose source {name!r}; choose from {', '.join(SOURCES)}")


def detect(detector, img: np.ndarray):
    import cv2

    interp = cv2.INTER_AREA if img.shape[0] > DETECT_SIZE else cv2.INTER_LINEAR
    return detector(cv2.resize(img, (DETECT_SIZE, DETECT_SIZE), interpolation=interp))


def evaluate_jitter(model, c2w, feats_seq, expressions, camera, detector, render_landmarks,
                    gt_landmarks, data_dir, run=None, samples=None, sources=SOURCES,
                    max_frames: int = 100, seed: int = 0, progress: bool = True,
                    detector_reason: str | None = None) -> dict:
    """The ``jitter`` section of metrics.json (see the module docstring).

    ``render_landmarks`` / ``gt_landmarks``: per evaluated frame (tracked poses), from the main
    evaluation; the other sources are rendered here for the first ``max_frames`` frames."""
    from tqdm import tqdm

    from nerfhead.render.cli import to_uint8

    if detector is None:
        return {"unavailable": f"no landmark detector ({detector_reason or 'none given'})"}
    out = {"unit": "px at 512x512", "landmarks": "rigid: nose, upper face outline, eye corners "
           f"({len(RIGID_LANDMARKS)} MediaPipe points)", "gt": landmark_jitter(gt_landmarks),
           "sources": {}}
    k = min(len(c2w), max_frames) if max_frames else len(c2w)
    gt_k = landmark_jitter(gt_landmarks[:k])
    for name in sources:
        if name == "tracked":
            res = {"render": landmark_jitter(render_landmarks), "gt": out["gt"],
                   "frames": len(render_landmarks)}
        else:
            try:
                poses = source_poses(name, np.asarray(c2w[:k]), data_dir, run,
                                     None if samples is None else samples[:k * SAMPLES_PER_FRAME], seed)
            except (ValueError, OSError, RuntimeError) as e:  # e.g. too short to fit motion
                out["sources"][name] = {"unavailable": str(e)}
                log.warning("jitter, pose source %s: %s", name, e)
                continue
            lms = []
            for j in tqdm(range(k), desc=f"jitter ({name} poses)", unit="frame",
                          disable=not progress):
                img = to_uint8(model.render_frame(poses[j], feats_seq, j, expressions[j],
                                                  latent_index=None, camera=camera)["rgb"])
                lms.append(detect(detector, img))
            res = {"render": landmark_jitter(lms), "gt": gt_k, "frames": k}
        r, g = res["render"].get("mean_px"), res["gt"].get("mean_px")
        res["ratio_to_gt"] = (r / g) if r is not None and g else None
        out["sources"][name] = res
    return out


def markdown_lines(section: dict | None) -> list[str]:
    """Lines for report.md."""
    if not section:
        return []
    lines = ["", "## Jitter", ""]
    if "unavailable" in section:
        return lines + [f"Unavailable: {section['unavailable']}", ""]
    lines += ["Frame-to-frame jitter of the face: second temporal difference of the "
              f"{section['landmarks']} landmarks, {section['unit']}, mean over frames (median, "
              "95th percentile); the same on the ground-truth frames for reference.", "",
              "| pose source | frames | render jitter | GT jitter (same frames) | render / GT |",
              "|---|---|---|---|---|"]
    fmt = lambda d: ("n/a" if d.get("mean_px") is None else  # noqa: E731
                     f"{d['mean_px']:.3f} ({d['median_px']:.3f}, {d['p95_px']:.3f})")
    for name, res in section["sources"].items():
        if "unavailable" in res:
            lines.append(f"| {name} | | unavailable: {res['unavailable']} | | |")
            continue
        ratio = res.get("ratio_to_gt")
        lines.append(f"| {name} | {res['frames']} | {fmt(res['render'])} | {fmt(res['gt'])} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} |")
    return lines + [""]
