"""A run that diverged or collapsed stops (``TrainingDiverged``, ``TrainingCollapsed``).

A loss that became NaN or infinite stops the run at once (the trainer's step). A collapse
is quieter: with a learning rate or loss weight too high the loss can stay finite while
the validation PSNR falls far below what the run already reached. So each validation is
compared with the best so far (train.collapse_db), and a collapsed run stops with the
checkpoints after the best one moved to ``RUN/collapsed/``: the run's latest checkpoint,
which render and evaluate read, is then the best one.
"""

from __future__ import annotations

import math

from nerfhead.train.checkpoint import checkpoint_step, set_aside_after


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class TrainingCollapsed(TrainingDiverged):
    """A validation PSNR fell train.collapse_db below the best; the run stopped, and the
    best validation's checkpoint is again the run's latest."""


def best_validation(validations: list[dict]) -> dict | None:
    """The highest-PSNR row of ``validations`` (``{"step", "psnr", ...}``; a non-finite PSNR
    is left out), or None."""
    rows = [r for r in validations if math.isfinite(r["psnr"])]
    return max(rows, key=lambda r: r["psnr"]) if rows else None


def check_collapse(result: dict, best: dict | None, limit: float, run_dir, step: int) -> None:
    """Raise TrainingCollapsed when validation ``result`` (at ``step``) is ``limit`` dB
    (train.collapse_db; 0: never) below ``best``: the checkpoints after the best one go to
    RUN/collapsed/."""
    if limit <= 0 or best is None or result["psnr"] >= best["psnr"] - limit:
        return
    kept, moved = set_aside_after(run_dir, best["step"])
    where = (f"the run's latest checkpoint is again {kept} (step {checkpoint_step(kept)})"
             + (f"; the {len(moved)} after it were moved to {moved[0].parent}" if moved else "")
             if kept else f"no checkpoint of step {best['step']} or before is left to fall back to")
    raise TrainingCollapsed(
        f"training collapsed: validation PSNR {result['psnr']:.2f} dB at step {step}, "
        f"{best['psnr'] - result['psnr']:.1f} dB below the best, {best['psnr']:.2f} dB at step "
        f"{best['step']} (train.collapse_db {limit:g}); {where}. Rerunning the same command "
        "would collapse the same way: lower the learning rates or the loss weight you raised "
        "(train.lr_grid, train.lr_net, train.lambda_*) and train a new --out, e.g. with "
        f"--init {kept or 'CHECKPOINT'} to start from the best weights, or set "
        "train.collapse_db=0 to train on regardless")
